"""Planned PostgreSQL switchover under write load: writes continue on the new primary and nothing acknowledged is lost.

A bounded writer commits numbered rows, one transaction each, and records every
commit the server acknowledged; when its primary goes away it looks for the
host that is no longer in recovery and carries on there. The switchover play
promotes a replica; afterwards every acknowledged row must be on the new
primary. The test then switches back to the spec's first host, so the rest of
the suite sees the cluster as it was.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import psycopg
import pytest

from dbfleet.spec import PostgresCluster

pytestmark = pytest.mark.lab
TABLE = "switchover_probe"
WRITE_SECONDS_MAX = 400


@dataclass
class Writer:
    lab: Any
    cluster: PostgresCluster
    acked: list[tuple[int, float, str]] = field(default_factory=list)
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def connect(self, host: str) -> psycopg.Connection[Any]:
        return psycopg.connect(host=self.lab.address(host), port=self.cluster.port, dbname=self.cluster.databases[0],
                               user="postgres", password=self.lab.secrets["postgres_superuser_password"],
                               sslmode="require", connect_timeout=2, autocommit=True)

    def find_primary(self) -> tuple[str, psycopg.Connection[Any]] | None:
        for host in self.cluster.host_names():
            try:
                conn = self.connect(host)
            except psycopg.OperationalError:
                continue
            if conn.execute("select pg_is_in_recovery()").fetchone()[0] is False:
                return host, conn
            conn.close()
        return None

    def run(self) -> None:
        deadline = time.monotonic() + WRITE_SECONDS_MAX
        current: tuple[str, psycopg.Connection[Any]] | None = None
        i = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            if current is None:
                current = self.find_primary()
                if current is None:
                    time.sleep(0.1)
                    continue
            host, conn = current
            try:
                conn.execute(f"insert into {TABLE} (id) values (%s)", (i,))
            except psycopg.Error:
                self.errors += 1
                conn.close()
                current = None
                continue
            self.acked.append((i, time.monotonic(), host))
            i += 1
            time.sleep(0.02)
        if current:
            current[1].close()

    def longest_gap(self, since: float) -> float:
        times = [t for _, t, _ in self.acked if t >= since]
        return max((b - a for a, b in pairwise(times)), default=0.0)


def primary_of(writer: Writer) -> str:
    found = writer.find_primary()
    assert found is not None, "no primary answers"
    found[1].close()
    return found[0]


def switch_over(lab: Any, cluster: PostgresCluster, writer: Writer, new_primary: str) -> dict[str, float]:
    """Run the play to `new_primary` under the writer's load; return the figures and check 0 lost."""
    started = time.monotonic()
    before = len(writer.acked)
    result = lab.converge("pg_switchover.yml", ["-e", f"new_primary={new_primary}"])
    took = time.monotonic() - started
    assert result.ok, result.output[-5000:]
    deadline = time.monotonic() + 30
    while not any(h == new_primary for _, t, h in writer.acked[before:] if t > started):
        assert time.monotonic() < deadline, f"no write acknowledged by {new_primary} within 30 s of the play"
        time.sleep(0.2)
    assert primary_of(writer) == new_primary
    return {"play_seconds": took, "write_outage_seconds": writer.longest_gap(started)}


def test_switchover_keeps_every_acknowledged_commit(configured: Any) -> None:
    lab = configured
    if not lab.has("postgres"):
        pytest.skip("the lab runs no PostgreSQL hosts")
    cluster: PostgresCluster = lab.fleet.of_engine("postgres")[0]
    if cluster.replicas < 1:
        pytest.skip("no replica to switch over to")
    writer = Writer(lab, cluster)
    home = cluster.primary
    start = primary_of(writer)
    with writer.connect(start) as conn:
        conn.execute(f"drop table if exists {TABLE}")
        conn.execute(f"create table {TABLE} (id bigint primary key, at timestamptz default now())")
    target = next(h for h in cluster.host_names() if h != start)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    try:
        time.sleep(2)
        there = switch_over(lab, cluster, writer, target)
        back = switch_over(lab, cluster, writer, home) if home != target else None
    finally:
        writer.stop.set()
        thread.join(timeout=30)
    with writer.connect(primary_of(writer)) as conn:
        stored = {row[0] for row in conn.execute(f"select id from {TABLE}")}
        conn.execute(f"drop table {TABLE}")
    lost = [i for i, _, _ in writer.acked if i not in stored]
    print(f"\nswitchover {start} -> {target}: play {there['play_seconds']:.1f}s, "
          f"write outage {there['write_outage_seconds']:.2f}s")
    if back:
        print(f"switchover {target} -> {home}: play {back['play_seconds']:.1f}s, "
              f"write outage {back['write_outage_seconds']:.2f}s")
    print(f"acknowledged commits {len(writer.acked)}, lost {len(lost)}, failed attempts {writer.errors}")
    assert lost == [], f"acknowledged but missing after the switchover: {lost[:20]}"
    assert primary_of(writer) == home
    with writer.connect(home) as conn:
        streaming = conn.execute("select count(*) from pg_stat_replication where state = 'streaming'").fetchone()[0]
    assert streaming == cluster.replicas
