"""`--tags` converges one concern of the converged lab, and changes nothing there (issue 19's tags, on real hosts);
`--tags pki` also takes a renewed certificate to the servers without restarting them.

`--tags backups` is the run that skips the server roles, so it must find the current primary (under Patroni,
Patroni's leader) and PostgreSQL's layout on its own: it once failed on `postgres_tls_dir` being undefined.
"""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import pytest

from dbfleet.spec import PostgresCluster, RedisCluster

pytestmark = pytest.mark.lab


def test_tags_backups_alone_converges_and_changes_nothing(configured: Any) -> None:
    result = configured.converge("site.yml", ["--tags", "backups"])
    assert result.ok, f"site.yml --tags backups failed:\n{result.failures()}\n{result.output[-2000:]}"
    assert result.changed == {}, f"a converged lab changed under --tags backups: {result.changed}"
    assert "TASK [pgbackrest :" in result.output, "--tags backups ran no pgBackRest task"
    # Ansible runs each role's argument validation whatever the tags (it is tagged `always`); nothing else of the
    # server roles may run.
    other = [line for line in result.output.splitlines() if line.startswith(("TASK [redis_server :",
             "TASK [prometheus :", "TASK [postgres_exporter :")) and "Validating arguments" not in line]
    assert other == [], other


def roles_run(output: str) -> set[str]:
    """The roles whose tasks a run's output shows, but the argument validation Ansible runs for every role."""
    return {line.split("TASK [", 1)[1].split(" :", 1)[0] for line in output.splitlines()
            if line.startswith("TASK [") and " : " in line and "Validating arguments" not in line}


def test_tags_pki_alone_converges_and_changes_nothing(configured: Any) -> None:
    result = configured.converge("site.yml", ["--tags", "pki"])
    assert result.ok, f"site.yml --tags pki failed:\n{result.failures()}\n{result.output[-2000:]}"
    assert result.changed == {}, f"a converged lab changed under --tags pki: {result.changed}"
    assert "TASK [pki : Install the host's private key (server.key)]" in result.output, "--tags pki ran no pki task"
    roles = roles_run(result.output)
    assert roles <= {"pki", "mongo_common", "prometheus"}, roles


def served_certificate(address: str, port: int, ca: Path, postgres: bool) -> bytes:
    """The DER certificate a TLS server presents (PostgreSQL after its SSLRequest), checked against the fleet CA."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((address, port), timeout=10) as raw:
        if postgres:
            raw.sendall(struct.pack("!ii", 8, 80877103))
            assert raw.recv(1) == b"S", "the server refused TLS"
        with context.wrap_socket(raw, server_hostname=address) as conn:
            der = conn.getpeercert(binary_form=True)
    assert der
    return der


def main_pid(lab: Any, host: str, process: str) -> str:
    return str(lab.host(host).check_output(f"pgrep -o -x {process}")).strip()


def test_a_renewed_certificate_is_served_after_tags_pki_without_a_restart(configured: Any) -> None:
    """The pki role's copies notify the calling role: PostgreSQL and Patroni reload, a Redis data node sets its TLS
    files again (CONFIG SET), so a renewed certificate is served to new connections and no server restarts."""
    lab = configured
    targets: list[tuple[str, int, str, bool]] = []  # host, port, the server's process name, PostgreSQL?
    for cluster in lab.fleet.clusters:
        if not lab.has(cluster.engine):
            continue
        if isinstance(cluster, PostgresCluster):
            targets.append((cluster.hosts[-1], cluster.port, "postgres", True))
        elif isinstance(cluster, RedisCluster) and cluster.tls.enabled:
            targets.append((cluster.hosts[-1], cluster.port, "redis-server", False))
    if not targets:
        pytest.skip("no PostgreSQL or TLS Redis cluster in this lab")
    hosts = lab.inventory_path.parent / "pki" / "hosts"
    ca = lab.inventory_path.parent / "pki" / "ca.crt"
    before = {host: (served_certificate(lab.address(host), port, ca, pg), main_pid(lab, host, process))
              for host, port, process, pg in targets}
    for host, *_ in targets:  # the certificate (not the key) is made again, with a new serial, at the next converge
        (hosts / f"{host}.crt").unlink()
    limit = ",".join(host for host, *_ in targets)
    result = lab.converge("site.yml", ["--tags", "pki", "--limit", limit])
    assert result.ok, f"--tags pki failed:\n{result.failures()}\n{result.output[-2000:]}"
    for host, port, process, pg in targets:
        assert host in result.changed, f"{host}: a new certificate was made but nothing changed: {result.changed}"
        new = ssl.PEM_cert_to_DER_cert((hosts / f"{host}.crt").read_text())
        assert new != before[host][0], f"{host}: the certificate was not renewed"
        served = served_certificate(lab.address(host), port, ca, pg)
        assert served == new, f"{host}: still serves the old certificate after the converge"
        assert main_pid(lab, host, process) == before[host][1], f"{host}: {process} was restarted"
    again = lab.converge("site.yml", ["--tags", "pki", "--limit", limit])
    assert again.ok and again.changed == {}, f"a second --tags pki changed: {again.changed}"


ENGINE_TAGS = {  # tag -> (the engine the lab must have, roles it may run, a task it must run)
    "postgres": ("postgres",
                 {"postgres_server", "patroni", "etcd", "haproxy", "pgbackrest", "postgres_exporter", "pki"},
                 "TASK [patroni :"),
    "redis": ("redis", {"redis_common", "redis_server", "redis_sentinel", "redis_exporter", "pki"},
              "TASK [redis_server :"),
    "monitoring": ("postgres",
                   {"node_exporter", "postgres_exporter", "redis_exporter", "mongodb_exporter", "prometheus", "pki"},
                   "TASK [node_exporter :"),
}


@pytest.mark.parametrize("tag", sorted(ENGINE_TAGS))
def test_an_engine_tag_alone_converges_its_part_and_changes_nothing(configured: Any, tag: str) -> None:
    engine, allowed, expected = ENGINE_TAGS[tag]
    if not configured.has(engine):
        pytest.skip(f"the lab has no {engine}")
    result = configured.converge("site.yml", ["--tags", tag])
    assert result.ok, f"site.yml --tags {tag} failed:\n{result.failures()}\n{result.output[-2000:]}"
    assert result.changed == {}, f"a converged lab changed under --tags {tag}: {result.changed}"
    assert expected in result.output, f"--tags {tag} did not run {expected}"
    roles = roles_run(result.output)
    assert roles <= allowed, roles - allowed
