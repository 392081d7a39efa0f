"""Issue 25 in the lab: with the leader lock on etcd, one engine's outage does not take the operator away from
the rest of the fleet.

The first PostgreSQL cluster's primary container is killed (its etcd member
goes with it; the other two keep etcd's quorum) while a Sentinel of the Redis
cluster is stopped. The operator, its leader lease in that cluster's etcd,
still leads: its members reconciler starts the Sentinel, and a Redis snapshot
due in that window is taken; with the old advisory lock on the dead primary
nobody would have acted. Bounded in time;
the killed container is started again and the cluster left healthy.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

import docker as docker_sdk
import pytest
from patroni_support import Patroni, bounded, docker
from test_pg_failover import HEALTHY_BOUND, operator_heals

from dbfleet.cli import main
from dbfleet.spec import PostgresCluster, RedisCluster

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "fleet.example.yaml"
RUN_BOUND = 120.0
"""Seconds one `reconcile --once` may take with a dead primary: its etcd member and its servers time out (5 s
each), Patroni fails over (ttl 6 s in the example), the rest of the fleet is reconciled."""
SENTINEL_BOUND = 30.0


def run_cli(lab: Any, workdir: Path, *args: str, spec: Path = SPEC) -> tuple[int, dict[str, Any]]:
    argv = ["--spec", str(spec), *args, "--json", "--inventory", str(lab.inventory_path),
            "--secrets", str(lab.state.secrets)]
    if args[0] in ("reconcile", "status"):
        argv += ["--state", str(workdir / "state.json")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def fleet(configured: Any) -> tuple[Any, PostgresCluster, RedisCluster]:
    lab = configured
    if not (lab.has("postgres") and lab.has("redis")):
        pytest.skip("needs the lab's PostgreSQL and Redis clusters")
    pg, cache = lab.fleet.of_engine("postgres")[0], lab.fleet.of_engine("redis")[0]
    if pg.ha != "patroni" or lab.fleet.leader_backend() != "etcd":
        pytest.skip("the lab's spec does not keep the leader lock in etcd (ha: patroni, operator.leader: etcd)")
    return lab, pg, cache


def sentinel_active(lab: Any, host: str) -> bool:
    state = docker("exec", lab.container(host), "systemctl", "is-active", "redis-sentinel", check=False)
    return state.stdout.strip() == "active"


def test_with_the_first_primary_killed_the_leader_on_etcd_starts_a_sentinel_and_takes_a_snapshot(
        fleet: tuple[Any, PostgresCluster, RedisCluster], tmp_path: Path) -> None:
    lab, pg, cache = fleet
    patroni = Patroni(lab, pg)
    bounded("a healthy PostgreSQL cluster before the fault", operator_heals(lab, pg), HEALTHY_BOUND, every=1)
    old = patroni.leader()
    assert old, "no Patroni leader to kill"
    sentinel = cache.sentinel_hosts()[-1].name
    primary = docker_sdk.from_env().containers.get(lab.container(old))
    docker("exec", lab.container(sentinel), "systemctl", "stop", "redis-sentinel")
    try:
        assert not sentinel_active(lab, sentinel)
        primary.kill()
        started = time.monotonic()
        code, once = run_cli(lab, tmp_path, "reconcile", "--once", "--cluster", pg.name, "--cluster", cache.name,
                             "--reconciler", "members")
        took = time.monotonic() - started
        assert took < RUN_BOUND, f"the cycle with a dead primary took {took:.0f}s"
        assert once["leader"] == "this process leads", once["leader"]
        assert once["leader_backend"] == "etcd"
        clusters = {c["cluster"]: c for c in once["clusters"]}
        outcomes = {(o["kind"], o["target"]): o for o in clusters[cache.name]["outcomes"]}
        assert outcomes[("start", sentinel)]["status"] == "done", clusters[cache.name]
        bounded(f"{sentinel}'s Sentinel running again", lambda: sentinel_active(lab, sentinel), SENTINEL_BOUND, 1)
        # A Redis snapshot falls due in the same window (the spec's schedule made every minute): it is taken.
        every_minute = tmp_path / "fleet.yaml"
        every_minute.write_text(SPEC.read_text().replace('schedule: {snapshot: "15 * * * *"}',
                                                         'schedule: {snapshot: "* * * * *"}'))
        assert every_minute.read_text() != SPEC.read_text(), "the example's Redis backup schedule moved"
        primary.reload()
        assert primary.status != "running", "the window closed: the killed primary is back"
        code, backups = run_cli(lab, tmp_path, "reconcile", "--once", "--cluster", cache.name, "--reconciler",
                                "backups", spec=every_minute)
        assert backups["leader"] == "this process leads", backups["leader"]
        snapshots = [o for c in backups["clusters"] for o in c["outcomes"] if o["kind"] == "backup"]
        assert [(o["target"], o["status"]) for o in snapshots] == [("snapshot", "done")], backups["clusters"]
        # The trail records the start as this process's act, under the lease.
        trail = (tmp_path / "operator-audit.jsonl").read_text().splitlines()
        assert any(json.loads(line)["action"]["target"] == sentinel and json.loads(line)["outcome"] == "done"
                   for line in trail), trail
        code, status = run_cli(lab, tmp_path, "status", "--cluster", cache.name)
        assert status["leader"]["backend"] == "etcd" and status["leader"]["holder"] == "nobody", status["leader"]
        print(f"\nwith {old} killed, the leader on etcd started {sentinel}'s Sentinel; the cycle took {took:.1f}s "
              f"(pg-main: {clusters[pg.name].get('error') or 'reconciled'})")
    finally:
        if not sentinel_active(lab, sentinel):
            docker("exec", lab.container(sentinel), "systemctl", "start", "redis-sentinel", check=False)
        primary.reload()
        if primary.status != "running":
            primary.start()
        # Also after a failure: the tests after this one need a primary and every member streaming.
        bounded("the PostgreSQL cluster healthy again after the killed primary is back", operator_heals(lab, pg),
                HEALTHY_BOUND, every=1)
