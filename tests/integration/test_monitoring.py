"""The lab's real Prometheus: every exporter and the operator scraped, sane figures, and a replica-down alert.

The operator runs here as `reconcile --watch` serving /metrics where it binds by
default: the inventory's dbfleet_operator_address, the lab network's gateway
(where the Prometheus config expects it), over HTTPS with basic auth as the lab
spec asks; bounded to this module and stopped at its end.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from dbfleet.spec import PostgresCluster, duration_seconds

pytestmark = pytest.mark.lab
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f}s (last: {last!r})")


class Prometheus:
    def __init__(self, address: str, port: int):
        self.base = f"http://{address}:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """Instant query: value by the series' host label (or the whole label set when there is none)."""
        result = self.get("/api/v1/query", query=expr)["result"]
        return {r["metric"].get("host", json.dumps(r["metric"], sort_keys=True)): float(r["value"][1]) for r in result}

    def targets(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/targets", state="active")["activeTargets"]

    def firing(self, alert: str) -> list[dict[str, Any]]:
        return [a for a in self.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == alert
                and a["state"] == "firing"]


@pytest.fixture(scope="module")
def prom(configured: Any) -> Iterator[tuple[Any, Prometheus]]:
    lab = configured
    monitor = lab.fleet.monitoring.host
    if monitor not in lab.hostvars:
        pytest.skip("the lab runs no monitoring host")
    operator = subprocess.Popen(
        [sys.executable, "-m", "dbfleet", "--spec", os.path.join(REPO, "fleet.example.yaml"), "reconcile", "--watch",
         "--interval", "5",
         "--reconciler", "indexes",
         "--metrics-port", str(lab.fleet.monitoring.operator_metrics_port), "--inventory", str(lab.inventory_path),
         "--secrets", str(lab.state.secrets), "--state", str(lab.inventory_path.parent / "monitoring-test-state.json")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield lab, Prometheus(lab.address(monitor), lab.fleet.monitoring.prometheus_port)
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            operator.kill()


def test_every_target_is_up_including_the_operator(prom: tuple[Any, Prometheus]) -> None:
    lab, p = prom
    deadline = time.monotonic() + 60

    def not_up() -> list[str]:
        """Targets not up yet; a Prometheus that has not loaded its targets yet (right after the converge) has
        none, which is not 'all up'."""
        targets = p.targets()
        return [f"{t['scrapeUrl']}: {t['health']} {t['lastError']}" for t in targets if t["health"] != "up"] \
            or ([] if targets else ["no targets loaded yet"])

    while down := not_up():
        assert time.monotonic() < deadline, f"targets not up within 60s: {down}"
        time.sleep(1)
    jobs = {t["labels"]["job"] for t in p.targets()}
    expected = {"prometheus", "node", "dbfleet-operator"}
    expected |= {"postgres"} if lab.has("postgres") else set()
    expected |= {"redis", "sentinel"} if lab.has("redis") else set()
    assert expected <= jobs, f"jobs scraped: {sorted(jobs)}"
    hosts = {t["labels"].get("host") for t in p.targets() if t["labels"]["job"] == "node"}
    assert hosts == set(lab.hostvars), "a node exporter on every lab host"


def test_the_operator_is_scraped_over_https_and_refuses_a_scrape_without_its_password(
        prom: tuple[Any, Prometheus]) -> None:
    lab, p = prom
    settings = lab.fleet.monitoring.operator_metrics
    if not (settings.tls and settings.basic_auth):
        pytest.skip("the spec serves the operator's /metrics without TLS and basic auth")
    (target,) = wait_for("the operator's target up", lambda: [
        t for t in p.targets() if t["labels"]["job"] == "dbfleet-operator" and t["health"] == "up"], timeout=60)
    port = lab.fleet.monitoring.operator_metrics_port
    url = f"https://{lab.state.gateway}:{port}/metrics"
    assert target["scrapeUrl"] == url
    fleet_ca = ssl.create_default_context(cafile=str(lab.inventory_path.parent / "pki" / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5, context=fleet_ca)
    assert refused.value.code == 401
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{lab.state.gateway}:{port}/metrics", timeout=5)


def test_figures_are_sane(prom: tuple[Any, Prometheus]) -> None:
    lab, p = prom
    wait_for("operator reconcile metrics", lambda: p.query("dbfleet_reconcile_duration_seconds_count"), timeout=60)
    assert p.query('dbfleet_indexes{state="declared"}'), "index counts published"
    # Disk usage of every host's data directory, as the rules compute it.
    disk = wait_for("data directory disk usage", lambda: p.query("dbfleet:data_dir_used_ratio"), timeout=30)
    assert disk and all(0 < v < 1 for v in disk.values()), disk
    if lab.has("postgres"):
        used = wait_for("pg connections", lambda: p.query("dbfleet_pg_connections_used / dbfleet_pg_connections_max"),
                        timeout=30)
        assert all(0 < v < 1 for v in used.values()), used
        hit = p.query("dbfleet_pg_cache_hit_ratio")
        assert hit and all(0 <= v <= 1 for v in hit.values()), hit
        assert p.query("dbfleet_pg_statements_mean_seconds"), "mean query time"
        assert p.query("dbfleet_pg_statements_p95_seconds"), "p95 query time"
        # Wraparound ages per database from the exporter, and the operator's vacuum figures (maintenance policy).
        ages = wait_for("xid ages", lambda: p.get("/api/v1/query", query="dbfleet_pg_database_xid_age")["result"],
                        timeout=30)
        assert {r["metric"]["datname"] for r in ages} >= {"postgres", "template0"}
        assert all(0 < float(r["value"][1]) < 2**31 for r in ages), ages
        assert p.query("dbfleet_pg_database_mxid_age"), "multixact ages"
        # WAL archiving works on the primary (and a replica reports 0): PostgresArchivingFailing reads this.
        archiving = p.query("dbfleet_pg_archiver_failing")
        assert len(archiving) == len(lab.hosts_of("postgres")) and set(archiving.values()) == {0.0}, archiving
    if lab.has("redis"):
        memory = p.query("redis_memory_used_bytes / redis_memory_max_bytes")
        assert memory and all(0 < v < 1 for v in memory.values()), memory
        assert p.query("redis_evicted_keys_total"), "evictions"


def _pg(lab: Any) -> PostgresCluster:
    return lab.fleet.of_engine("postgres")[0]


def _sql(lab: Any, host: str, statement: str) -> list[tuple[Any, ...]]:
    cluster = _pg(lab)
    with psycopg.connect(host=lab.address(host), port=cluster.port, dbname="postgres", user="postgres",
                         password=lab.secrets["postgres_superuser_password"], sslmode="require", connect_timeout=5,
                         autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def _replicas(lab: Any) -> tuple[str, list[str]]:
    states = {h: _sql(lab, h, "select pg_is_in_recovery()")[0][0] for h in _pg(lab).host_names()}
    return next(h for h, s in states.items() if not s), [h for h, s in states.items() if s]


def test_held_back_replay_makes_the_replica_lag_grow(prom: tuple[Any, Prometheus]) -> None:
    """Replay on a replica is held back by a lock conflict: a transaction there reads the table the primary then
    locks ACCESS EXCLUSIVE, so replay waits (max_standby_streaming_delay) while the WAL that follows arrives.
    Not pg_wal_replay_pause(): Patroni resumes a paused replay on PostgreSQL 14 and later."""
    lab, p = prom
    if not lab.has("postgres"):
        pytest.skip("no PostgreSQL hosts in this lab")
    primary, replicas = _replicas(lab)
    replica = replicas[0]
    _sql(lab, primary, "create table if not exists lag_probe (pad text)")
    wait_for(f"lag_probe on {replica}", lambda: _sql(lab, replica, "select to_regclass('lag_probe')")[0][0],
             timeout=30)
    cluster = _pg(lab)
    reader = psycopg.connect(host=lab.address(replica), port=cluster.port, dbname="postgres", user="postgres",
                             password=lab.secrets["postgres_superuser_password"], sslmode="require",
                             connect_timeout=5)
    try:
        reader.execute("select count(*) from lag_probe")  # holds ACCESS SHARE until the transaction ends
        _sql(lab, primary, "do $$ begin lock table lag_probe in access exclusive mode; end $$")
        _sql(lab, primary, "insert into lag_probe select md5(random()::text) from generate_series(1, 50000)")
        lag = wait_for(f"{replica}'s lag metric above 1 MB",
                       lambda: {h: v for h, v in p.query("dbfleet_pg_recovery_lag_bytes").items()
                                if h == replica and v > 1_000_000}, timeout=25)
        print(f"\n{replica} lag with replay held back: {lag[replica]:.0f} bytes")
    finally:
        with contextlib.suppress(psycopg.Error):
            reader.rollback()
        reader.close()
        _sql(lab, primary, "drop table if exists lag_probe")
    wait_for(f"{replica}'s lag back to 0", lambda: p.query("dbfleet_pg_recovery_lag_bytes").get(replica) == 0,
             timeout=30)


def test_stopping_a_replica_fires_the_replica_down_alert(prom: tuple[Any, Prometheus]) -> None:
    lab, p = prom
    if not lab.has("postgres"):
        pytest.skip("no PostgreSQL hosts in this lab")
    cluster = _pg(lab)
    _, replicas = _replicas(lab)
    replica = replicas[-1]
    # for: plus one scrape to see the replica gone, plus one rule evaluation (Prometheus evaluates at the
    # same interval), plus 2 s for systemctl stop and this loop's polling.
    window = (duration_seconds(cluster.monitoring.alerts.replica_down_for)
              + 2 * duration_seconds(cluster.monitoring.scrape_interval) + 2)
    assert not p.firing("PostgresReplicaDown"), "no replica-down alert before the fault"
    # Under Patroni the server is Patroni's: stopping Patroni stops it (and Patroni would restart a killed one).
    unit = "patroni" if cluster.ha == "patroni" else "postgresql@15-main"
    service = lab.host(replica).service(unit)
    stopped = time.monotonic()
    assert lab.host(replica).run(f"systemctl stop {unit}").rc == 0
    try:
        wait_for("PostgresReplicaDown firing", lambda: p.firing("PostgresReplicaDown"), timeout=window)
        print(f"\nPostgresReplicaDown fired {time.monotonic() - stopped:.1f}s after {replica} stopped "
              f"(for: {cluster.monitoring.alerts.replica_down_for}, bound {window:.0f}s)")
    finally:
        assert lab.host(replica).run(f"systemctl start {unit}").rc == 0
    assert service.is_running

    standby_site = {h.name for h in cluster.standby_hosts()}  # dr.standby streams too, and is no replica here

    def streaming_again() -> bool:
        try:  # the restarted server refuses connections until it has started
            primary = _replicas(lab)[0]
            rows = _sql(lab, primary, "select application_name from pg_stat_replication where state = 'streaming'")
            return len([r for r in rows if r[0] not in standby_site]) == cluster.replicas
        except psycopg.OperationalError:
            return False

    wait_for("the replica streaming again", streaming_again, timeout=120)
    wait_for("PostgresReplicaDown resolved", lambda: not p.firing("PostgresReplicaDown"), timeout=window)


def test_patroni_metrics_show_one_primary_and_every_member_running(prom: tuple[Any, Prometheus]) -> None:
    lab, p = prom
    if not lab.has("postgres") or _pg(lab).ha != "patroni":
        pytest.skip("no ha: patroni cluster in this lab")
    cluster = _pg(lab)
    site = f'cluster="{cluster.name}",scope="{cluster.name}"'
    primaries = wait_for("Patroni's /metrics scraped",
                         lambda: p.query(f'sum by (cluster) (patroni_primary{{{site}}})'), timeout=60)
    assert list(primaries.values()) == [1.0], primaries

    def all_running() -> dict[Any, float] | None:
        # The primary site's members (Patroni's scope is the cluster's name; a standby site's is <name>-dr).
        running = p.query(f'patroni_postgres_running{{{site}}}')
        every = len(running) == len(cluster.host_names()) and all(v == 1 for v in running.values())
        return running if every else None

    # A member restarted by the test before may still show its last scrape's 0: wait for fresh scrapes.
    window = 3 * duration_seconds(cluster.monitoring.scrape_interval) + 10
    wait_for("every member running in Patroni's /metrics", all_running, timeout=window)
    wait_for("PatroniNoLeader and PatroniMemberNotRunning resolved",
             lambda: not p.firing("PatroniNoLeader") and not p.firing("PatroniMemberNotRunning"), timeout=window)
