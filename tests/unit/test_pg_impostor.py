"""A server that is not the fleet's never gets the operator's PostgreSQL password.

Issue: the operator connected with sslmode=require and no require_auth, so an
impostor on the network with any self-signed certificate asked for a
cleartext password and received the superuser's. The impostor here is a
small TLS listener on loopback that speaks just enough of the PostgreSQL
protocol to ask for a cleartext password and record what comes back.
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path

import psycopg
import pytest

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
