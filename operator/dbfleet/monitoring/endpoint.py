"""Where and how the operator serves /metrics: on its own address, optionally over HTTPS with basic auth.

The fleet's Prometheus scrapes the operator at the inventory's
`dbfleet_operator_address` (the lab writes its network's gateway, the AWS
inventory the monitoring host's address; playbooks/roles/prometheus uses the
same variable), so /metrics listens there by default, and on loopback when
the inventory names no such address: never on every interface unless
`--metrics-address` asks for it.

With the spec's `monitoring.operator_metrics.tls`, the endpoint speaks HTTPS
with the certificate the pki role made for that address
(`<inventory dir>/pki/operator.crt` and `.key`, signed by the fleet CA). With
`basic_auth` it also requires the spec's user and the secrets file's
`operator_metrics_password`, checked by a small WSGI wrapper (prometheus-client
serves TLS but has no server-side basic auth). The TLS handshake runs in the
request's own thread, with a timeout, so a client that connects and stays silent
cannot stall the endpoint.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from dbfleet.engines.tls import PKI_DIR
from dbfleet.errors import PermanentError
from dbfleet.monitoring.metrics import REGISTRY
from dbfleet.spec import OperatorMetrics

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
ADDRESS_VAR = "dbfleet_operator_address"
"""The inventory variable naming the address Prometheus scrapes the operator on."""
PASSWORD_SECRET = "operator_metrics_password"
"""The secrets file's key for the basic auth password; the prometheus role reads the same one."""
CERT_FILE = "operator.crt"
KEY_FILE = "operator.key"
"""The operator's certificate and key in the pki role's directory beside the inventory (pki/tasks/operator.yml)."""
HANDSHAKE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
REALM = "dbfleet operator"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class EndpointError(PermanentError):
    """The /metrics endpoint cannot be set up as the spec and inventory say."""


@dataclass(frozen=True)
class Binding:
    """The address /metrics listens on, and where that choice came from (said on start)."""

    address: str
    source: str


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Endpoint:
    """Everything needed to serve /metrics: address, port, and TLS and basic auth when the spec asks."""

    binding: Binding
    port: int
    tls: TlsFiles | None = None
    auth: BasicAuth | None = None

    def describe(self) -> str:
        scheme = "https" if self.tls else "http"
        auth = f", basic auth as {self.auth.username}" if self.auth else ""
        host = f"[{self.binding.address}]" if ":" in self.binding.address else self.binding.address
        return f"{scheme}://{host}:{self.port}/metrics ({self.binding.source}{auth})"


def choose_binding(explicit: str | None, inventory_vars: Mapping[str, Any], inventory: Path | None = None) -> Binding:
    """--metrics-address when given; else the inventory's dbfleet_operator_address; else loopback."""
    if explicit:
        return Binding(explicit, "--metrics-address")
    value = inventory_vars.get(ADDRESS_VAR)
    if value in (None, ""):
        return Binding(LOOPBACK, f"loopback: the inventory names no {ADDRESS_VAR}")
    try:
        address = str(ipaddress.ip_address(str(value)))
    except ValueError:
        where = f"{inventory}: " if inventory else ""
        raise EndpointError(f"{where}{ADDRESS_VAR} {str(value)!r} is not an IP address") from None
    return Binding(address, f"the inventory's {ADDRESS_VAR}, where Prometheus scrapes the operator")


def plan_endpoint(settings: OperatorMetrics, binding: Binding, port: int, inventory: Path | None,
                  secrets: Mapping[str, str]) -> Endpoint:
    """The endpoint the spec describes: TLS files beside the inventory, the password from the secrets."""
    tls = auth = None
    if settings.tls:
        if inventory is None:
            raise EndpointError("monitoring.operator_metrics.tls needs an inventory, beside which pki/ holds "
                                f"{CERT_FILE} and {KEY_FILE}")
        pki = inventory.parent / PKI_DIR
        tls = TlsFiles(pki / CERT_FILE, pki / KEY_FILE)
    if settings.basic_auth:
        password = secrets.get(PASSWORD_SECRET)
        if not password:
            raise EndpointError(f"monitoring.operator_metrics.basic_auth needs {PASSWORD_SECRET} in the secrets file "
                                "(`dbfleet lab up` adds it to the lab's; add it to your vault file)")
        auth = BasicAuth(settings.username, password)
    return Endpoint(binding, port, tls, auth)


def _unauthorized(start_response: Callable[..., Any]) -> list[bytes]:
    start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                        ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')])
    return [b"401 Unauthorized\n"]


def require_basic_auth(app: WsgiApp, auth: BasicAuth) -> WsgiApp:
    """`app` behind HTTP basic auth: anything but exactly this user and password gets 401."""
    expected = f"{auth.username}:{auth.password}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        scheme, _, encoded = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            given = b""
        # compare_digest: the time taken says nothing about how much of the password matched.
        if scheme.lower() != "basic" or not hmac.compare_digest(given, expected):
            return _unauthorized(start_response)
        return app(environ, start_response)

    return guarded


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context with the operator's certificate, TLS 1.2 at least; an unusable file is an EndpointError."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    except FileNotFoundError:
        raise EndpointError(f"no operator certificate at {files.cert} and {files.key}: run `dbfleet configure` "
                            "(the prometheus role has the pki role make them)") from None
    except (ssl.SSLError, OSError) as exc:
        raise EndpointError(f"cannot use {files.cert} with {files.key}: {exc.__class__.__name__}") from None
    return context


class _Handler(WSGIRequestHandler):
    """One request per connection, logged nowhere; the TLS handshake happens here, in the request's thread."""

    timeout = REQUEST_TIMEOUT

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(HANDSHAKE_TIMEOUT)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: a request line is no news, and it is the client's to write."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, client = self.socket.accept()
        if self.tls is not None:
            connection = self.tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, client

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that is not Prometheus (a port scan, a plain-HTTP probe, a bad certificate) is no traceback.
        log.debug("/metrics: request from %s failed", client_address, exc_info=True)


class MetricsServer:
    """A running /metrics endpoint; stop() frees the port."""

    def __init__(self, server: WSGIServer, thread: threading.Thread):
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(port: int, address: str, tls: TlsFiles | None = None, auth: BasicAuth | None = None,
          registry: CollectorRegistry = REGISTRY) -> MetricsServer:
    """Serve /metrics on address:port from a daemon thread (port 0 picks a free port)."""
    context = tls_context(tls) if tls else None
    app: WsgiApp = make_wsgi_app(registry)
    if auth is not None:
        app = require_basic_auth(app, auth)

    class Server(_Server):
        """_Server with this address's family (an IPv6 address needs AF_INET6) and this TLS context."""

    Server.address_family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
    Server.tls = context
    server = make_server(address, port, app, Server, handler_class=_Handler)
    thread = threading.Thread(target=server.serve_forever, name="dbfleet-metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
