"""Issue 25 in the lab: the leader lock's store loses its quorum (etcd stopped on two of the first PostgreSQL
cluster's three members).

Two operators run `reconcile --watch` side by side, the first serving /metrics
where the lab's Prometheus scrapes it. While etcd has no quorum neither may act:
a Sentinel stopped in that window stays stopped, both say in each cycle's report
that the lock's store does not answer, and OperatorNoLeader fires. When etcd is
back, exactly one of them leads again and starts the Sentinel. Bounded in time;
etcd, the Sentinel and the operators are restored or stopped whatever happens.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from patroni_support import bounded, docker
from test_pg_failover import HEALTHY_BOUND, _start_etcd, _stop_etcd, operator_heals
from test_pg_leader_on_etcd import sentinel_active

from dbfleet.spec import PostgresCluster, RedisCluster

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "fleet.example.yaml"
INTERVAL = 3
STORE_DOWN_BOUND = 60.0
"""Seconds for both operators to notice etcd has no quorum: the etcd calls time out (5 s each member)."""
ALERT_BOUND = 120.0
"""no_leader_alert_cycles cycles, then a scrape and a rule evaluation of the lab's Prometheus."""
RESUME_BOUND = 90.0
QUIET_CYCLES = 3


class Operator:
    """One `reconcile --watch --json` process; its cycle reports, as they come."""

    def __init__(self, lab: Any, cache: RedisCluster, workdir: Path, name: str, metrics: bool):
        argv = [sys.executable, "-m", "dbfleet", "--spec", str(SPEC), "reconcile", "--watch", "--interval",
                str(INTERVAL), "--reconciler", "members", "--cluster", cache.name, "--json",
                "--inventory", str(lab.inventory_path), "--secrets", str(lab.state.secrets),
                "--state", str(workdir / f"{name}-state.json")]
        argv += ["--metrics-port", str(lab.fleet.monitoring.operator_metrics_port)] if metrics else ["--no-metrics"]
        self.name = name
        self.reports: list[dict[str, Any]] = []
        self.process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.reports.append({**json.loads(line), "seen": time.monotonic()})

    def since(self, moment: float) -> list[dict[str, Any]]:
        return [r for r in self.reports if r["seen"] > moment]

    def starts_done(self, moment: float) -> list[str]:
        return [o["target"] for r in self.since(moment) for c in r.get("clusters", [])
                for o in c.get("outcomes", []) if o.get("kind") == "start" and o.get("status") == "done"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def firing(lab: Any, alert: str) -> bool:
    monitor = lab.address(lab.fleet.monitoring.host)
    url = f"http://{monitor}:{lab.fleet.monitoring.prometheus_port}/api/v1/alerts"
    with urllib.request.urlopen(url, timeout=5) as response:
        alerts = json.load(response)["data"]["alerts"]
    return any(a["labels"]["alertname"] == alert and a["state"] == "firing" for a in alerts)


@pytest.fixture(scope="module")
def fleet(configured: Any) -> tuple[Any, PostgresCluster, RedisCluster]:
    lab = configured
    if not (lab.has("postgres") and lab.has("redis")) or lab.fleet.monitoring.host not in lab.hostvars:
        pytest.skip("needs the lab's PostgreSQL and Redis clusters and its monitoring host")
    pg, cache = lab.fleet.of_engine("postgres")[0], lab.fleet.of_engine("redis")[0]
    if pg.ha != "patroni" or lab.fleet.leader_backend() != "etcd":
        pytest.skip("the lab's spec does not keep the leader lock in etcd (ha: patroni, operator.leader: etcd)")
    return lab, pg, cache


@pytest.fixture
def operators(fleet: tuple[Any, PostgresCluster, RedisCluster], tmp_path: Path) -> Iterator[list[Operator]]:
    lab, _, cache = fleet
    running = [Operator(lab, cache, tmp_path, "scraped", metrics=True),
               Operator(lab, cache, tmp_path, "second", metrics=False)]
    try:
        yield running
    finally:
        for operator in running:
            operator.stop()


def test_lock_store_without_quorum_nobody_acts_the_alert_fires_and_acting_resumes(
        fleet: tuple[Any, PostgresCluster, RedisCluster], operators: list[Operator]) -> None:
    lab, pg, cache = fleet
    bounded("a healthy PostgreSQL cluster", operator_heals(lab, pg), HEALTHY_BOUND, every=1)

    def one_leads() -> bool:
        latest = [op.reports[-1]["leader"] for op in operators if op.reports]
        return len(latest) == 2 and sorted(text == "this process leads" for text in latest) == [False, True]

    bounded("one operator leading, the other observing", one_leads, 60, 1)
    victims = [h.name for h in pg.etcd_hosts()][1:]
    sentinel = cache.sentinel_hosts()[-1].name
    lost = time.monotonic()
    for host in victims:
        _stop_etcd(lab, host)
    try:
        def both_report_no_leader() -> bool:
            latest = [op.since(lost)[-1]["leader"] for op in operators if op.since(lost)]
            return len(latest) == 2 and all(text.startswith("no leader known") for text in latest)

        bounded("both operators reporting the lock's store down", both_report_no_leader, STORE_DOWN_BOUND, 1)
        docker("exec", lab.container(sentinel), "systemctl", "stop", "redis-sentinel")
        stopped = time.monotonic()
        bounded("OperatorNoLeader firing", lambda: firing(lab, "OperatorNoLeader"), ALERT_BOUND, 2)
        bounded(f"{QUIET_CYCLES} more cycles of each operator", lambda: all(
            len(op.since(stopped)) >= QUIET_CYCLES for op in operators), QUIET_CYCLES * 20, 1)
        assert not sentinel_active(lab, sentinel), "a Sentinel was started while no operator could hold the lock"
        assert [op.starts_done(lost) for op in operators] == [[], []]
        reasons = {op.name: op.since(stopped)[-1]["leader"] for op in operators}
        assert all("did not answer" in text for text in reasons.values()), reasons
    finally:
        back = time.monotonic()
        for host in victims:
            _start_etcd(lab, host)
    try:
        bounded(f"{sentinel}'s Sentinel started again by the leader", lambda: sentinel_active(lab, sentinel),
                RESUME_BOUND, 1)
        # The report of the cycle that started it comes when that cycle ends.
        bounded("the start in an operator's report", lambda: any(op.starts_done(back) for op in operators),
                RESUME_BOUND, 1)
        starts = [op.starts_done(back) for op in operators]
        assert sorted(len(s) for s in starts) == [0, 1] and sentinel in sum(starts, []), starts
        bounded("OperatorNoLeader resolved", lambda: not firing(lab, "OperatorNoLeader"), ALERT_BOUND, 2)
        print(f"\nlock store down: both operators reported it within {stopped - lost:.0f}s, nobody acted, "
              f"OperatorNoLeader fired; after etcd was back {sentinel}'s Sentinel was started by "
              f"{next(op.name for op, s in zip(operators, starts, strict=True) if s)}")
    finally:
        if not sentinel_active(lab, sentinel):
            docker("exec", lab.container(sentinel), "systemctl", "start", "redis-sentinel", check=False)
        bounded("the PostgreSQL cluster healthy again", operator_heals(lab, pg), HEALTHY_BOUND, every=1)
