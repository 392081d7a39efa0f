"""A server that is not the fleet's never gets the operator's PostgreSQL password.

Issue: the operator connected with sslmode=require and no require_auth, so an
impostor on the network with any self-signed certificate asked for a
cleartext password and received the superuser's. The impostor here is a
small TLS listener on loopback that speaks just enough of the PostgreSQL
protocol to ask for a cleartext password and record what comes back.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path

import psycopg
import pytest
import yaml

from dbfleet.engines.access import FleetAccess
from dbfleet.engines.postgres import connect
from dbfleet.errors import PermanentError
from dbfleet.spec import PostgresCluster, load_fleet

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-superuser-secret"
SSL_REQUEST = 80877103


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fleet CA (where the pki role puts it, beside an inventory), an impostor's self-signed certificate,
    and a certificate the fleet CA signed for 127.0.0.1."""
    root = tmp_path_factory.mktemp("pki-impostor")
    (root / "pki").mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "pki/ca.key", "-out", "pki/ca.crt", "-subj", "/CN=fleet CA",
            "-days", "2", cwd=root)
    openssl("req", "-x509", *ec, "-keyout", "self.key", "-out", "self.crt", "-subj", "/CN=impostor", "-days", "2",
            "-addext", "subjectAltName=IP:127.0.0.1", cwd=root)
    openssl("req", "-new", *ec, "-keyout", "signed.key", "-out", "signed.csr", "-subj", "/CN=pg-1", cwd=root)
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "signed.csr", "-CA", "pki/ca.crt", "-CAkey", "pki/ca.key", "-CAcreateserial",
            "-out", "signed.crt", "-days", "2", "-extfile", "san.ext", cwd=root)
    return root


class Impostor:
    """Accepts one connection: TLS with its certificate, then asks for a cleartext password."""

    def __init__(self, cert: Path, key: Path):
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.listener.accept()
            raw.settimeout(10)
            length, code = struct.unpack("!ii", raw.recv(8))
            if code != SSL_REQUEST:
                return
            raw.sendall(b"S")
            conn = self.context.wrap_socket(raw, server_side=True)
            length = struct.unpack("!i", conn.recv(4))[0]
            conn.recv(length - 4)  # the startup message: user, database, options
            conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            while chunk := conn.recv(4096):
                self.received += chunk
        except (OSError, ssl.SSLError, struct.error):
            pass  # the client hung up, which is the point
        finally:
            self.listener.close()

    def finish(self) -> bytes:
        self.thread.join(30)
        return self.received


def cluster_on(port: int) -> PostgresCluster:
    cluster = load_fleet(REPO / "fleet.example.yaml").cluster("pg-main")
    assert isinstance(cluster, PostgresCluster) and cluster.tls.enabled
    return cluster.model_copy(update={"port": port})


def operator_access(pki: Path) -> FleetAccess:
    return FleetAccess({"pg-1": "127.0.0.1"}, {"postgres_superuser_password": PASSWORD}, pki / "hosts.yml")


def test_the_impostor_is_real_a_client_without_verification_hands_it_the_password(pki: Path) -> None:
    impostor = Impostor(pki / "self.crt", pki / "self.key")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=impostor.port, user="postgres", password=PASSWORD,
                        sslmode="require", connect_timeout=10)
    assert PASSWORD.encode() in impostor.finish()  # what the operator used to do


def test_a_self_signed_server_gets_no_password_and_a_clear_error(pki: Path) -> None:
    impostor = Impostor(pki / "self.crt", pki / "self.key")
    with pytest.raises(PermanentError, match="certificate verify failed") as err:
        connect(cluster_on(impostor.port), operator_access(pki), "pg-1", "postgres")
    assert PASSWORD not in err.value.render()
    assert PASSWORD.encode() not in impostor.finish()


def test_a_server_with_a_fleet_certificate_that_asks_for_a_cleartext_password_gets_none(pki: Path) -> None:
    impostor = Impostor(pki / "signed.crt", pki / "signed.key")
    with pytest.raises(PermanentError, match="scram-sha-256") as err:
        connect(cluster_on(impostor.port), operator_access(pki), "pg-1", "postgres")
    assert "cleartext" in err.value.render() and PASSWORD not in err.value.render()
    assert PASSWORD.encode() not in impostor.finish()


def basebackup_conninfo(pki: Path, port: int, passfile: Path) -> str:
    """The conninfo postgres_server's tasks/replica.yml gives pg_basebackup (the role's
    postgres_server_primary_conninfo), rendered for a primary on 127.0.0.1:`port`, with the fleet CA and
    .pgpass at this test's paths."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from role_support import ROLES, trusted

    defaults = trusted(yaml.safe_load((ROLES / "postgres_server" / "defaults" / "main.yml").read_text()))
    variables = {**defaults, "postgres_server_primary_address": "127.0.0.1", "postgres_server_port": port,
                 "postgres_server_slot": "pg_2", "postgres_server_application_name": "pg_2",
                 "postgres_server_tls_enabled": True, "postgres_tls_dir": str(pki)}
    rendered = str(Templar(loader=DataLoader(), variables=variables).template(
        defaults["postgres_server_primary_conninfo"]))
    assert "passfile=/var/lib/postgresql/.pgpass" in rendered and "sslmode=verify-full" in rendered, rendered
    return rendered.replace("passfile=/var/lib/postgresql/.pgpass", f"passfile={passfile}")


def pg_basebackup(conninfo: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pg_basebackup", "-D", str(out), "-X", "stream", "-c", "fast", "-S", "pg_2", "-w",
                           "-d", conninfo], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(shutil.which("pg_basebackup") is None, reason="pg_basebackup is not installed")
def test_pg_basebackup_with_the_roles_conninfo_gives_a_self_signed_server_no_password(pki: Path,
                                                                                      tmp_path: Path) -> None:
    """pg_basebackup (Debian 12's libpq 15: no require_auth) clones a replica over TCP with the role's conninfo:
    verify-full against the fleet CA is what keeps the replication password from an impostor. Without it
    (sslmode=require, what a conninfo without verification amounts to) the impostor gets the password."""
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:replicator:{PASSWORD}\n")
    passfile.chmod(0o600)
    impostor = Impostor(pki / "self.crt", pki / "self.key")
    conninfo = basebackup_conninfo(pki / "pki", impostor.port, passfile)
    done = pg_basebackup(conninfo, tmp_path / "clone")
    assert done.returncode != 0 and "certificate verify failed" in done.stderr, done.stderr
    assert PASSWORD.encode() not in impostor.finish()

    unverified = Impostor(pki / "self.crt", pki / "self.key")
    plain = basebackup_conninfo(pki / "pki", unverified.port, passfile)
    # (sslmode=require with an sslrootcert given checks the chain as verify-ca would: drop both.)
    plain = " ".join(p for p in plain.split() if not p.startswith("sslrootcert=")).replace(
        "sslmode=verify-full", "sslmode=require") + " connect_timeout=3"
    done = pg_basebackup(plain, tmp_path / "clone-unverified")
    assert done.returncode != 0
    assert PASSWORD.encode() in unverified.finish()  # the impostor is real for pg_basebackup too
