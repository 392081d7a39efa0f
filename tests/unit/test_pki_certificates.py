"""pki_certificates, the pki role's controller-side module: one call checks and makes the fleet CA and every
host certificate of a play. Real keys and certificates in a temporary directory; openssl reads what it made."""

from __future__ import annotations

import datetime
import importlib.util
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "playbooks/roles/pki/library/pki_certificates.py"
_spec = importlib.util.spec_from_file_location("pki_certificates", MODULE)
assert _spec and _spec.loader
pki = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pki)

SANS = ["DNS:pg-1", "DNS:localhost", "IP:127.0.0.1", "IP:10.0.1.11"]


def params(root: Path, **over: Any) -> dict[str, Any]:
    base = {"ca_cert": str(root / "ca.crt"), "ca_key": str(root / "ca.key"), "make_ca": True,
            "ca_common_name": "dbfleet test CA", "ca_days": 3650, "cert_days": 825, "renew_days": 30,
            "hosts_dir": str(root / "hosts"), "hosts": {"pg-1": SANS, "pg-2": ["DNS:pg-2", "IP:10.0.1.12"]},
            "certificates": []}
    return {**base, **over}


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def stamp(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_first_call_makes_the_ca_and_every_host_certificate_and_a_second_changes_nothing(tmp_path: Path) -> None:
    made = pki.converge(params(tmp_path), check=False)
    assert set(made) == {str(tmp_path / n) for n in ("ca.crt", "ca.key", "hosts/pg-1.key", "hosts/pg-1.crt",
                                                     "hosts/pg-2.key", "hosts/pg-2.crt")}
    verified = openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "hosts/pg-1.crt"))
    assert "OK" in verified
    text = openssl("x509", "-in", str(tmp_path / "hosts/pg-1.crt"), "-noout", "-text")
    assert "DNS:pg-1, DNS:localhost, IP Address:127.0.0.1, IP Address:10.0.1.11" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "CA:TRUE" in openssl("x509", "-in", str(tmp_path / "ca.crt"), "-noout", "-text")
    assert os.stat(tmp_path / "hosts/pg-1.key").st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "hosts/pg-1.crt").st_mode & 0o777 == 0o644
    before = stamp(tmp_path)
    assert pki.converge(params(tmp_path), check=False) == {}
    assert stamp(tmp_path) == before


def test_a_certificate_openssl_made_with_the_same_names_is_kept(tmp_path: Path) -> None:
    """What community.crypto (or a site by hand) made before is accepted as it is: no churn on upgrade."""
    pki.converge(params(tmp_path, hosts={}), check=False)
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(hosts / "pg-1.key"))
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=DNS:pg-1,DNS:localhost,IP:127.0.0.1,IP:10.0.1.11\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", "-new", "-key", str(hosts / "pg-1.key"), "-subj", "/CN=pg-1", "-out", str(tmp_path / "csr"))
    openssl("x509", "-req", "-in", str(tmp_path / "csr"), "-CA", str(tmp_path / "ca.crt"), "-CAkey",
            str(tmp_path / "ca.key"), "-CAcreateserial", "-days", "800", "-extfile", str(ext),
            "-out", str(hosts / "pg-1.crt"))
    os.chmod(hosts / "pg-1.key", 0o600)
    os.chmod(hosts / "pg-1.crt", 0o644)
    made = pki.converge(params(tmp_path, hosts={"pg-1": SANS}), check=False)
    assert made == {}


@pytest.mark.parametrize(("change", "why"), [
    ({"hosts": {"pg-1": SANS + ["IP:10.0.9.9"], "pg-2": ["DNS:pg-2", "IP:10.0.1.12"]}}, "names differ"),
    ({"renew_days": 900}, "expires within 900 days"),
])
def test_a_certificate_whose_names_changed_or_that_expires_soon_is_signed_again_with_its_key(
        tmp_path: Path, change: dict[str, Any], why: str) -> None:
    pki.converge(params(tmp_path), check=False)
    key = (tmp_path / "hosts/pg-1.key").read_bytes()
    old = (tmp_path / "hosts/pg-1.crt").read_bytes()
    made = pki.converge(params(tmp_path, **change), check=False)
    assert why in made[str(tmp_path / "hosts/pg-1.crt")]
    assert (tmp_path / "hosts/pg-1.key").read_bytes() == key
    assert (tmp_path / "hosts/pg-1.crt").read_bytes() != old


def test_a_certificate_another_ca_signed_is_replaced(tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.converge(params(other, hosts_dir=str(tmp_path / "hosts")), check=False)
    made = pki.converge(params(tmp_path), check=False)
    assert made[str(tmp_path / "hosts/pg-1.crt")] == "the CA did not sign it"
    assert str(tmp_path / "hosts/pg-1.key") not in made
    assert "OK" in openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "hosts/pg-1.crt"))


def test_a_supplied_ca_is_used_and_never_made(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        pki.converge(params(tmp_path, make_ca=False), check=False)
    assert not (tmp_path / "ca.crt").exists()


def test_check_mode_writes_nothing_and_says_what_it_would_make(tmp_path: Path) -> None:
    made = pki.converge(params(tmp_path), check=True)
    assert str(tmp_path / "hosts/pg-2.crt") in made and str(tmp_path / "ca.key") in made
    assert stamp(tmp_path) == {}
    pki.converge(params(tmp_path), check=False)
    (tmp_path / "hosts/pg-2.key").chmod(0o644)
    before = stamp(tmp_path)
    assert pki.converge(params(tmp_path), check=True) == {str(tmp_path / "hosts/pg-2.key"): "its mode was not 0600"}
    assert stamp(tmp_path) == before and os.stat(tmp_path / "hosts/pg-2.key").st_mode & 0o777 == 0o644


def test_a_malformed_name_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither DNS"):
        pki.converge(params(tmp_path, hosts={"pg-1": ["email:x@y"]}), check=False)
    assert not (tmp_path / "hosts").exists()


def test_the_operator_certificate_is_a_server_certificate_only(tmp_path: Path) -> None:
    operator = {"key": str(tmp_path / "operator.key"), "cert": str(tmp_path / "operator.crt"),
                "common_name": "dbfleet operator", "subject_alt_name": ["DNS:localhost", "IP:127.0.0.1"],
                "extended_key_usage": ["serverAuth"]}
    pki.converge(params(tmp_path, hosts={}, certificates=[operator]), check=False)
    text = openssl("x509", "-in", operator["cert"], "-noout", "-text")
    assert "TLS Web Server Authentication" in text and "Client Authentication" not in text
    assert pki.converge(params(tmp_path, hosts={}, certificates=[dict(operator)]), check=False) == {}


def test_validity_is_cert_days(tmp_path: Path) -> None:
    pki.converge(params(tmp_path, cert_days=10, renew_days=1), check=False)
    end = openssl("x509", "-in", str(tmp_path / "hosts/pg-1.crt"), "-noout", "-enddate").split("=", 1)[1].strip()
    left = datetime.datetime.strptime(end, "%b %d %H:%M:%S %Y %Z") - datetime.datetime.utcnow()
    assert datetime.timedelta(days=9) < left <= datetime.timedelta(days=10)
