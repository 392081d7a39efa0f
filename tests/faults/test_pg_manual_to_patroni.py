"""ha: manual, then the conversion to ha: patroni, in a lab of its own (the session's lab runs Patroni already).

1. The cluster is built with `ha: manual` and switched over under write load
   with playbooks/pg_switchover.yml: every acknowledged commit must survive.
2. The spec changes to `ha: patroni` and postgres.yml runs again: Patroni takes
   over each data directory. The test checks that no acknowledged commit is
   lost, that the system identifier is the same, that a marker file left in
   every data directory is still there (no server was re-cloned), that the
   primary from before leads, that the read-write endpoint takes writes, and
   that another converge changes nothing.

A bounded writer commits one row per transaction straight to whichever host
is not in recovery (there is no endpoint before the conversion).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from patroni_support import Patroni, bounded, docker

from dbfleet.lab import lifecycle
from dbfleet.lab.topology import container_name
from dbfleet.playbook import PlaybookResult, run_playbook
from dbfleet.secrets import load_secrets
from dbfleet.spec import PostgresCluster, load_fleet

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
TABLE = "conversion_probe"
MARKER = "dbfleet-clone-marker"
WRITE_SECONDS_MAX = 900


def specs(workdir: Path) -> tuple[Path, Path]:
    """(manual, patroni) specs: pg-main of the example alone, with each `ha`."""
    data = yaml.safe_load((REPO / "fleet.example.yaml").read_text())
    data["clusters"] = [c for c in data["clusters"] if c["name"] == "pg-main"]
    # Without the standby site (a Patroni standby cluster: ha: manual refuses it; tests/faults/test_region_loss.py).
    (data["clusters"][0].get("dr") or {}).pop("standby", None)
    patroni = workdir / "patroni.yaml"
    patroni.write_text(yaml.safe_dump(data, sort_keys=False))
    pg = data["clusters"][0]
    pg["ha"] = "manual"
    pg.pop("patroni", None)
    pg.pop("endpoints", None)
    manual = workdir / "manual.yaml"
    manual.write_text(yaml.safe_dump(data, sort_keys=False))
    return manual, patroni


@dataclass
class ManualLab:
    name: str
    state: lifecycle.LabState
    cluster: PostgresCluster
    secrets: dict[str, str]

    def address(self, host: str) -> str:
        return next(h.address for h in self.state.hosts if h.name == host)

    def container(self, host: str) -> str:
        return container_name(self.name, host)

    def converge(self, playbook: str, extra: list[str] | None = None) -> PlaybookResult:
        return run_playbook(playbook, self.state.inventory, extra, echo=os.environ.get("DBFLEET_ECHO", "1") == "1")

    @property
    def inventory_path(self) -> Path:
        return self.state.inventory


@pytest.fixture(scope="module")
def manual_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ManualLab, Path]]:
    """Three PostgreSQL containers of their own, removed afterwards even with DBFLEET_KEEP_LAB=1 (that keeps the
    session's lab): the suite never leaves two labs running."""
    engines = os.environ.get("DBFLEET_TEST_ENGINES")
    if engines and "postgres" not in {e.strip() for e in engines.split(",")}:
        pytest.skip("DBFLEET_TEST_ENGINES leaves PostgreSQL out")
    if not shutil.which("docker") and os.geteuid() != 0:
        pytest.skip("lab unavailable: no docker client and not root to install docker.io")
    manual_spec, patroni_spec = specs(tmp_path_factory.mktemp("conversion"))
    name = os.environ.get("DBFLEET_TEST_LAB", "test") + "m"
    inventories = REPO / "inventories"
    fleet = load_fleet(manual_spec)
    state = lifecycle.up(fleet, name, inventories, {"postgres"})
    cluster = fleet.of_engine("postgres")[0]
    try:
        yield ManualLab(name, state, cluster, load_secrets(state.secrets)), patroni_spec
    finally:
        lifecycle.down(name, inventories)


@dataclass
class DirectWriter:
    """Commits numbered rows to the host that is not in recovery, and records every acknowledged commit."""

    lab: ManualLab
    acked: list[tuple[int, float, str]] = field(default_factory=list)
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def connect(self, host: str) -> psycopg.Connection[Any]:
        return psycopg.connect(host=self.lab.address(host), port=self.lab.cluster.port,
                               dbname=self.lab.cluster.databases[0], user="postgres",
                               password=self.lab.secrets["postgres_superuser_password"], sslmode="require",
                               connect_timeout=2, autocommit=True)

    def find_primary(self) -> tuple[str, psycopg.Connection[Any]] | None:
        for host in self.lab.cluster.host_names():
            try:
                conn = self.connect(host)
            except psycopg.OperationalError:
                continue
            try:
                if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False:  # type: ignore[index]
                    return host, conn
            except psycopg.Error:
                pass
            conn.close()
        return None

    def run(self) -> None:
        deadline = time.monotonic() + WRITE_SECONDS_MAX
        current: tuple[str, psycopg.Connection[Any]] | None = None
        i = len(self.acked)
        while not self.stop.is_set() and time.monotonic() < deadline:
            if current is None:
                current = self.find_primary()
                if current is None:
                    time.sleep(0.1)
                    continue
            host, conn = current
            try:
                conn.execute(f"INSERT INTO {TABLE} (id) VALUES (%s)", (i,))
            except psycopg.Error:
                self.errors += 1  # not acknowledged, perhaps committed: never retry its id
                conn.close()
                current = None
                i += 1
                continue
            self.acked.append((i, time.monotonic(), host))
            i += 1
            time.sleep(0.02)
        if current:
            current[1].close()

    def longest_gap(self, since: float) -> float:
        times = [t for _, t, _ in self.acked if t >= since]
        return max((b - a for a, b in pairwise(times)), default=0.0)

    def primary(self) -> str:
        found = self.find_primary()
        assert found is not None, "no primary answers"
        found[1].close()
        return found[0]

    def lost(self) -> list[int]:
        with self.connect(self.primary()) as conn:
            stored = {row[0] for row in conn.execute(f"SELECT id FROM {TABLE}")}
        return [i for i, _, _ in self.acked if i not in stored]


def sysid(lab: ManualLab, host: str) -> str:
    out = docker("exec", lab.container(host), "sh", "-c",
                 f"/usr/lib/postgresql/{lab.cluster.version}/bin/pg_controldata "
                 f"/var/lib/postgresql/{lab.cluster.version}/main | sed -n 's/^Database system identifier: *//p'")
    return out.stdout.strip()


def test_manual_switchover_then_conversion_to_patroni_keeps_every_commit_and_every_data_directory(
        manual_lab: tuple[ManualLab, Path]) -> None:
    lab, patroni_spec = manual_lab
    cluster = lab.cluster
    first = lab.converge("postgres.yml")
    assert first.ok, "ha: manual converge failed:\n" + first.output[-5000:]
    writer = DirectWriter(lab)
    with writer.connect(writer.primary()) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    try:
        time.sleep(2)
        old = writer.primary()
        target = next(h for h in cluster.host_names() if h != old)
        started = time.monotonic()
        play = lab.converge("pg_switchover.yml", ["-e", f"new_primary={target}"])
        took = time.monotonic() - started
        assert play.ok, play.output[-5000:]
        bounded(f"a write acknowledged by {target}",
                lambda: any(h == target for _, t, h in writer.acked if t > started), 30)
        manual_outage = writer.longest_gap(started)
        assert writer.primary() == target

        # ---- the conversion, under the same writer
        identifier = {h: sysid(lab, h) for h in cluster.host_names()}
        assert len(set(identifier.values())) == 1, identifier
        for host in cluster.host_names():
            docker("exec", lab.container(host), "runuser", "-u", "postgres", "--", "touch",
                   f"/var/lib/postgresql/{cluster.version}/main/{MARKER}")
        fleet = load_fleet(patroni_spec)
        lab.state = lifecycle.up(fleet, lab.name, REPO / "inventories", {"postgres"})
        lab.cluster = fleet.of_engine("postgres")[0]
        converted_at = time.monotonic()
        conversion = lab.converge("postgres.yml")
        conversion_took = time.monotonic() - converted_at
        assert conversion.ok, "conversion to ha: patroni failed:\n" + conversion.output[-6000:]
        bounded("a write acknowledged after the conversion",
                lambda: any(t > converted_at + conversion_took for _, t, _ in writer.acked), 60)
        conversion_outage = writer.longest_gap(converted_at)
    finally:
        writer.stop.set()
        thread.join(timeout=60)
    lost = writer.lost()
    patroni = Patroni(lab, lab.cluster)
    leader, _ = bounded("a healthy Patroni cluster", patroni.healthy, 180, every=1)
    print(f"\nha: manual switchover {old} -> {target}: play {took:.1f}s, write outage {manual_outage:.2f}s")
    print(f"conversion to ha: patroni: play {conversion_took:.1f}s, longest write pause {conversion_outage:.2f}s, "
          f"leader {leader}")
    print(f"acknowledged commits {len(writer.acked)}, lost {len(lost)}, failed attempts {writer.errors}")
    assert lost == [], f"acknowledged but missing: {lost[:20]}"
    assert leader == target, "Patroni must take over the primary that ran before the conversion"
    for host in cluster.host_names():
        assert sysid(lab, host) == identifier[host], f"{host}: the system identifier changed"
        marker = docker("exec", lab.container(host), "test", "-f",
                        f"/var/lib/postgresql/{cluster.version}/main/{MARKER}", check=False)
        assert marker.returncode == 0, f"{host}: its data directory was replaced (re-cloned) by the conversion"
        unit = docker("exec", lab.container(host), "systemctl", "is-enabled", f"postgresql@{cluster.version}-main",
                      check=False)
        assert unit.stdout.strip() != "enabled", f"{host}: the ha: manual unit would start beside Patroni at boot"
    with psycopg.connect(host=lab.address(target), port=lab.cluster.endpoints.rw_port, dbname=cluster.databases[0],
                         user="postgres", password=lab.secrets["postgres_superuser_password"], sslmode="require",
                         connect_timeout=5, autocommit=True) as conn:
        row = conn.execute(f"INSERT INTO {TABLE} (id) VALUES (-1) RETURNING host(inet_server_addr())").fetchone()
        assert row is not None and row[0] == lab.address(target)
        conn.execute(f"DROP TABLE {TABLE}")
    again = lab.converge("postgres.yml")
    assert again.ok, again.output[-4000:]
    assert again.changed == {}, f"a converge after the conversion changed {again.changed}"
