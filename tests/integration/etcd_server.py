"""A real etcd on loopback, set up as the etcd role sets up a Patroni cluster's: TLS for clients, v3 authentication,
`root`, and the operator's user with a role that may read and write only below its prefix.

Debian's etcd-server (3.4, the version the role installs) is started with a
temporary data directory on free ports of 127.0.0.1, its certificate signed
by a CA made for the test, and short-lived auth tokens so that re-authentication
is exercised. Users and roles are made with etcdctl, passwords on its stdin.
The server is stopped and its files removed when the fixture ends.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from process_support import stop

from dbfleet.engines.credentials import ETCD_OPERATOR

TOKEN_TTL = 3
"""Seconds an auth token lives unused (etcd's --auth-token-ttl; 300 by default): short, so tests see one expire."""


@dataclass(frozen=True)
class EtcdServer:
    endpoint: str
    ca_file: Path
    other_ca_file: Path
    """A CA that did not sign the server's certificate."""
    root_password: str
    operator_password: str
    workdir: Path

    def etcdctl(self, *args: str, stdin: str = "", user: bool = True) -> str:
        """etcdctl against this server, as root once authentication is on."""
        return run_etcdctl(self.endpoint, self.ca_file, args, stdin, f"root:{self.root_password}" if user else None)


def etcd_binaries() -> tuple[str, str] | None:
    etcd, etcdctl = shutil.which("etcd"), shutil.which("etcdctl")
    return (etcd, etcdctl) if etcd and etcdctl else None


def run_etcdctl(endpoint: str, ca: Path, args: tuple[str, ...], stdin: str = "", user: str | None = None) -> str:
    argv = ["etcdctl", f"--endpoints={endpoint}", f"--cacert={ca}", "--command-timeout=10s", *args]
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
    if user:
        env["ETCDCTL_USER"] = user  # in the environment, not on the command line
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"etcdctl {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(root: Path) -> None:
    """ca.crt signs server.crt (for 127.0.0.1 and localhost); other-ca.crt signs nothing here."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=test fleet CA", "-days", "2",
             cwd=root)
    _openssl("req", "-x509", *ec, "-keyout", "other-ca.key", "-out", "other-ca.crt", "-subj", "/CN=another CA",
             "-days", "2", cwd=root)
    _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=etcd-1", cwd=root)
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=root)


def _wait_healthy(endpoint: str, ca: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"etcd exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{endpoint}/health", timeout=2, context=context) as response:
                if b'"true"' in response.read():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"etcd at {endpoint} not healthy within {timeout:.0f}s: {log.read_text()[-2000:]}")


def setup_auth(server: EtcdServer, prefix: str) -> None:
    """root with the root role; the operator's role may read and write below `prefix` only; authentication on."""
    ctl = server.etcdctl
    ctl("user", "add", "root", "--interactive=false", stdin=server.root_password + "\n", user=False)
    ctl("user", "grant-role", "root", "root", user=False)
    name = str(ETCD_OPERATOR.user)
    ctl("role", "add", name, user=False)
    ctl("role", "grant-permission", name, "readwrite", prefix, "--prefix=true", user=False)
    ctl("user", "add", name, "--interactive=false", stdin=server.operator_password + "\n", user=False)
    ctl("user", "grant-role", name, name, user=False)
    ctl("auth", "enable", user=False)


def run_etcd(workdir: Path, prefix: str) -> Iterator[EtcdServer]:
    """Start etcd with TLS and authentication; yield how to reach it; stop it."""
    binaries = etcd_binaries()
    if binaries is None:
        raise FileNotFoundError("etcd")
    workdir.mkdir(parents=True, exist_ok=True)
    make_pki(workdir)
    client, peer = _free_port(), _free_port()
    endpoint = f"https://127.0.0.1:{client}"
    log = workdir / "etcd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([
            binaries[0], "--name", "etcd-1", "--data-dir", str(workdir / "data"),
            "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}", "--initial-cluster", f"etcd-1=http://127.0.0.1:{peer}",
            "--cert-file", str(workdir / "server.crt"), "--key-file", str(workdir / "server.key"),
            "--auth-token-ttl", str(TOKEN_TTL), "--log-level", "warn",
        ], stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        _wait_healthy(endpoint, workdir / "ca.crt", proc, log)
        server = EtcdServer(endpoint, workdir / "ca.crt", workdir / "other-ca.crt", secrets.token_urlsafe(16),
                            secrets.token_urlsafe(16), workdir)
        setup_auth(server, prefix)
        yield server
    finally:
        stop(proc, grace=10)
        shutil.rmtree(workdir / "data", ignore_errors=True)
