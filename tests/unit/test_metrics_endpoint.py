"""The operator's /metrics endpoint: which address it binds, HTTPS with the fleet CA, and basic auth, over real
HTTP(S) on loopback."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dbfleet.cli import build_parser
from dbfleet.commands.common import UsageError
from dbfleet.commands.reconcile import metrics_endpoint
from dbfleet.engines.access import FleetAccess
from dbfleet.monitoring import metrics
from dbfleet.monitoring.endpoint import (
    LOOPBACK,
    BasicAuth,
    Binding,
    EndpointError,
    MetricsServer,
    TlsFiles,
    choose_binding,
    plan_endpoint,
    serve,
)
from dbfleet.spec import OperatorMetrics, load_fleet

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "metrics-secret-Zq8"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fleet CA and an operator certificate it signed for 127.0.0.1, where the pki role puts them."""
    root = tmp_path_factory.mktemp("metrics-pki")
    (root / "pki").mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "pki/ca.key", "-out", "pki/ca.crt", "-subj", "/CN=fleet CA",
            "-days", "2", cwd=root)
    openssl("req", "-new", *ec, "-keyout", "pki/operator.key", "-out", "operator.csr", "-subj", "/CN=dbfleet operator",
            cwd=root)
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "operator.csr", "-CA", "pki/ca.crt", "-CAkey", "pki/ca.key", "-CAcreateserial",
            "-out", "pki/operator.crt", "-days", "2", "-extfile", "san.ext", cwd=root)
    return root


def _inventory(directory: Path, **all_vars: Any) -> Path:
    path = directory / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"vars": all_vars, "hosts": {}}}))
    return path


# -- the address ------------------------------------------------------------------------------------------------


def test_the_inventorys_operator_address_is_where_metrics_listen() -> None:
    binding = choose_binding(None, {"dbfleet_operator_address": "172.30.5.1"})
    assert binding.address == "172.30.5.1" and "dbfleet_operator_address" in binding.source


def test_loopback_when_the_inventory_names_no_operator_address() -> None:
    assert choose_binding(None, {}) == Binding(LOOPBACK, "loopback: the inventory names no dbfleet_operator_address")
    assert choose_binding(None, {"dbfleet_operator_address": ""}).address == LOOPBACK


def test_an_explicit_address_wins_and_a_bad_inventory_address_is_located() -> None:
    assert choose_binding("10.0.0.7", {"dbfleet_operator_address": "172.30.5.1"}).address == "10.0.0.7"
    with pytest.raises(EndpointError, match=r"inv/hosts.yml: dbfleet_operator_address 'monitor-1' is not an IP"):
        choose_binding(None, {"dbfleet_operator_address": "monitor-1"}, Path("inv/hosts.yml"))


@pytest.mark.parametrize(("all_vars", "address"), [({"dbfleet_operator_address": "172.30.5.1"}, "172.30.5.1"),
                                                   ({}, LOOPBACK)])
def test_reconcile_watch_never_binds_every_interface_by_default(tmp_path: Path, all_vars: dict[str, str],
                                                                address: str) -> None:
    # Regression: --metrics-address defaulted to 0.0.0.0, so /metrics answered on every interface.
    args = build_parser().parse_args(["reconcile", "--watch"])
    assert args.metrics_address is None
    access = FleetAccess({}, {}, _inventory(tmp_path, **all_vars))
    operator = Namespace(fleet=load_fleet(REPO / "fleet.example.yaml"), access=access)
    access.secrets["operator_metrics_password"] = PASSWORD
    planned = metrics_endpoint(operator, args)  # type: ignore[arg-type]
    assert planned.binding.address == address and planned.port == 9640


def test_the_lab_spec_asks_for_https_and_a_password_from_the_secrets(tmp_path: Path) -> None:
    args = build_parser().parse_args(["reconcile", "--watch", "--metrics-port", "0"])
    access = FleetAccess({}, {}, _inventory(tmp_path, dbfleet_operator_address="172.30.5.1"))
    operator = Namespace(fleet=load_fleet(REPO / "fleet.example.yaml"), access=access)
    with pytest.raises(UsageError, match="needs operator_metrics_password in the secrets file"):
        metrics_endpoint(operator, args)  # type: ignore[arg-type]
    access.secrets["operator_metrics_password"] = PASSWORD
    planned = metrics_endpoint(operator, args)  # type: ignore[arg-type]
    assert planned.tls == TlsFiles(tmp_path / "pki" / "operator.crt", tmp_path / "pki" / "operator.key")
    assert planned.auth == BasicAuth("prometheus", PASSWORD) and planned.port == 0
    # What the operator prints on start, and any repr of the plan, carry no password.
    assert PASSWORD not in planned.describe() and PASSWORD not in repr(planned)
    assert planned.describe() == ("https://172.30.5.1:0/metrics (the inventory's dbfleet_operator_address, where "
                                  "Prometheus scrapes the operator, basic auth as prometheus)")


def test_plain_settings_need_no_inventory_or_secrets() -> None:
    planned = plan_endpoint(OperatorMetrics(), Binding(LOOPBACK, "test"), 9640, None, {})
    assert planned.tls is None and planned.auth is None
    with pytest.raises(EndpointError, match="needs an inventory"):
        plan_endpoint(OperatorMetrics(tls=True), Binding(LOOPBACK, "test"), 9640, None, {})


# -- over real HTTP(S) on loopback ------------------------------------------------------------------------------


def _get(url: str, auth: tuple[str, str] | None = None, context: ssl.SSLContext | None = None,
         header: str | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    if header is not None:
        request.add_header("Authorization", header)
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


@pytest.fixture
def guarded(pki: Path) -> Iterator[tuple[MetricsServer, ssl.SSLContext]]:
    metrics.record_action("t-endpoint", "noop")
    server = serve(0, LOOPBACK, TlsFiles(pki / "pki" / "operator.crt", pki / "pki" / "operator.key"),
                   BasicAuth("prometheus", PASSWORD))
    client = ssl.create_default_context(cafile=str(pki / "pki" / "ca.crt"))
    try:
        yield server, client
    finally:
        server.stop()


def test_the_right_user_and_password_get_the_metrics(guarded: tuple[MetricsServer, ssl.SSLContext]) -> None:
    server, client = guarded
    status, body, _ = _get(f"https://127.0.0.1:{server.port}/metrics", ("prometheus", PASSWORD), client)
    assert status == 200 and 'dbfleet_actions_total{cluster="t-endpoint",kind="noop"} 1.0' in body


@pytest.mark.parametrize(("auth", "header"), [
    (None, None),                                   # no password at all
    (("prometheus", "wrong"), None),                # a wrong password
    (("prometheus", PASSWORD[:-1]), None),          # a prefix of the right one
    (("prometheus", PASSWORD + "x"), None),         # the right one and more
    (("admin", PASSWORD), None),                    # the right password for another user
    (None, "Basic !!!not-base64"),                  # garbage
    (None, "Bearer " + PASSWORD),                   # another scheme
], ids=["none", "wrong", "prefix", "longer", "other-user", "garbage", "bearer"])
def test_anything_else_gets_401(guarded: tuple[MetricsServer, ssl.SSLContext], auth: tuple[str, str] | None,
                                header: str | None) -> None:
    server, client = guarded
    status, body, headers = _get(f"https://127.0.0.1:{server.port}/metrics", auth, client, header)
    assert status == 401 and "dbfleet_" not in body
    assert headers["WWW-Authenticate"].startswith('Basic realm="dbfleet operator"')


def test_the_metrics_are_not_served_in_clear_on_the_tls_port(guarded: tuple[MetricsServer, ssl.SSLContext]) -> None:
    server, _ = guarded
    with pytest.raises(ConnectionError):  # the handshake fails on the request line, and the server hangs up
        _get(f"http://127.0.0.1:{server.port}/metrics", ("prometheus", PASSWORD))


def test_a_client_that_does_not_trust_the_fleet_ca_stops(guarded: tuple[MetricsServer, ssl.SSLContext]) -> None:
    server, _ = guarded
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(f"https://127.0.0.1:{server.port}/metrics", ("prometheus", PASSWORD), ssl.create_default_context())


def test_a_silent_client_does_not_stall_the_endpoint(guarded: tuple[MetricsServer, ssl.SSLContext]) -> None:
    server, client = guarded
    # Connects and never starts the TLS handshake: the handshake waits in that connection's thread, not the
    # accept loop's, so Prometheus still gets through.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        status, _, _ = _get(f"https://127.0.0.1:{server.port}/metrics", ("prometheus", PASSWORD), client)
    assert status == 200


def test_basic_auth_over_plain_http_on_loopback() -> None:
    # The wrapper on its own, without TLS (the spec refuses that pairing on a network; loopback is this test).
    server = serve(0, LOOPBACK, auth=BasicAuth("prometheus", PASSWORD))
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        assert _get(url)[0] == 401
        assert _get(url, ("prometheus", "wrong"))[0] == 401
        assert _get(url, ("prometheus", PASSWORD))[0] == 200
    finally:
        server.stop()


def test_a_missing_certificate_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(EndpointError, match=r"no operator certificate at .*operator.crt.*run `dbfleet configure`"):
        serve(0, LOOPBACK, TlsFiles(tmp_path / "operator.crt", tmp_path / "operator.key"))
