"""The maintenance policy against the lab's real PostgreSQL primary.

A scratch database, `mainttest`, is made here and dropped at the end; the specs the tests write name only
that database. `plan` runs through the CLI on the real clock, outside a window that opens once a year
(January 1st, 03:00-04:00 UTC); cycles that must stand inside it run in-process with the maintenance
reconciler given an injected clock, and, for the disk guard, a simulated free-disk reading.

The last tests run rewrites as jobs, as a watching operator does: a rebuild made long honestly (an index of
BIG_ROWS text keys, most of them deleted) runs as pg-main's rewrite job while the loop goes on, and a dropped
declared index on another table is back within the interval plus 2 s; an operator killed (SIGKILL, the real
CLI in a subprocess) while its rewrite runs is followed by cycles that settle the job from the catalog.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from dbfleet.backups.job_runner import JobRunner
from dbfleet.backups.jobs import DONE, INTERRUPTED, REWRITE, RUNNING, JobRecord, job_key
from dbfleet.backups.storage import Storage
from dbfleet.cli import main
from dbfleet.engines.access import FleetAccess
from dbfleet.reconcile.index_reconciler import IndexReconciler
from dbfleet.reconcile.leader import FileLeaderLock
from dbfleet.reconcile.loop import CycleReport, Operator, watch
from dbfleet.reconcile.maintenance_reconciler import MaintenanceReconciler
from dbfleet.reconcile.pg_maintenance import probe_free_disk
from dbfleet.reconcile.retry import RetryPolicy
from dbfleet.spec import parse_fleet
from dbfleet.wiring import RewriteJobs, job_runner, open_access

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
DB = "mainttest"
CLUSTER = "pg-main"
WINDOW = {"start": "0 3 1 1 *", "end": "0 4 1 1 *"}
INSIDE = datetime(2027, 1, 1, 3, 30)
LOCK_TIMEOUT_S = 2
POLICY: dict[str, Any] = {
    "window": WINDOW,
    "lock_timeout": f"{LOCK_TIMEOUT_S}s",
    "index_bloat": {"max_ratio": 0.25, "action": "reindex", "disk_margin": 2},
    "table_bloat": {"max_ratio": 0.3, "action": "repack", "disk_margin": 2},
    "vacuum": {"dead_tuple_ratio_max": 0.2, "min_dead_tuples": 10000, "autovacuum_age_max": "1h"},
}


@dataclass
class MaintEnv:
    lab: Any
    workdir: Path
    specs: list[Path] = field(default_factory=list)

    @property
    def cluster(self) -> Any:
        return self.lab.fleet.cluster(CLUSTER)

    def connect(self, dbname: str = DB, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(host=self.lab.address(self.cluster.primary), port=self.cluster.port, dbname=dbname,
                               user="postgres", password=self.lab.secrets["postgres_superuser_password"],
                               sslmode="require", connect_timeout=5, autocommit=autocommit)

    def sql(self, statement: str, dbname: str = DB) -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def one(self, statement: str) -> Any:
        return self.sql(statement)[0][0]

    def spec_text(self, declared: list[dict[str, Any]] | None = None, **changes: Any) -> str:
        data = yaml.safe_load((REPO / "fleet.example.yaml").read_text())
        pg = next(c for c in data["clusters"] if c["name"] == CLUSTER)
        pg["databases"] = [DB]
        pg["indexes"] = {"declared": declared or []}
        pg["maintenance"] = {**POLICY, **changes}
        data["operator"] = {"leader": "file"}
        return yaml.safe_dump(data, sort_keys=False)

    def write_spec(self, **changes: Any) -> Path:
        path = self.workdir / f"spec-{len(self.specs)}.yaml"
        path.write_text(self.spec_text(**changes))
        self.specs.append(path)
        return path

    def plan(self, **changes: Any) -> dict[str, Any]:
        """`dbfleet plan --json` on the real clock, for the maintenance reconciler of pg-main."""
        argv = ["--spec", str(self.write_spec(**changes)), "plan", "--json", "--cluster", CLUSTER,
                "--reconciler", "maintenance", "--inventory", str(self.lab.inventory_path),
                "--secrets", str(self.lab.state.secrets)]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(argv)
        data = json.loads(out.getvalue())
        assert code == 0, data
        return data

    def cycle(self, now: datetime = INSIDE, free_bytes: int | None = None, apply: bool = True,
              jobs: RewriteJobs | None = None, **changes: Any) -> CycleReport:
        """One in-process cycle of the maintenance reconciler with the clock at `now` and, when given, a
        simulated free-disk reading and the rewrite jobs it starts and reads."""
        fleet = parse_fleet(self.spec_text(**changes))
        access = FleetAccess.load(self.lab.inventory_path, self.lab.state.secrets)
        disk = probe_free_disk if free_bytes is None else (lambda session, host: (free_bytes, "simulated"))
        operator = Operator(fleet, access, reconcilers=[MaintenanceReconciler(clock=lambda: now, disk=disk,
                                                                              jobs=jobs)],
                            clusters={CLUSTER}, retry=RetryPolicy(attempts=1))
        try:
            return operator.run_cycle(apply=apply)
        finally:
            operator.close()

    def size(self, relation: str) -> int:
        return int(self.one(f"SELECT pg_relation_size('{relation}')"))

    def filenode(self, relation: str) -> int:
        return int(self.one(f"SELECT pg_relation_filenode('{relation}')"))

    def vacuum_clean(self, table: str, timeout: float = 90) -> None:
        """VACUUM until no dead tuple is left: with hot_standby_feedback, the replicas' reported xmin holds the
        dead tuples of a statement that just ran until their next status message (wal_receiver_status_interval)."""
        deadline = time.monotonic() + timeout
        while True:
            self.settle_stats()
            self.sql(f"VACUUM ANALYZE {table}")
            self.settle_stats()
            dead = self.one(f"SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = '{table}'::regclass")
            if dead == 0:
                return
            assert time.monotonic() < deadline, f"{table} still has {dead} dead tuples after {timeout:.0f}s of VACUUM"
            time.sleep(2)

    def settle_stats(self) -> None:
        """Counters of the last statements reach pg_stat_* (PostgreSQL 15 flushes them lazily)."""
        with self.connect() as conn:
            conn.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(1.2)


def by_target(actions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["target"]: a for a in actions}


def report_actions(report: CycleReport) -> dict[str, Any]:
    return {a.target: a for a in report.actions()}


def report_outcomes(report: CycleReport) -> dict[str, Any]:
    return {o.action.target: o for c in report.clusters for o in c.outcomes}


@pytest.fixture(scope="module")
def env(configured: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MaintEnv]:
    if not configured.has("postgres"):
        pytest.skip("no PostgreSQL hosts in this lab (DBFLEET_TEST_ENGINES)")
    env = MaintEnv(configured, tmp_path_factory.mktemp("maintenance"))
    env.sql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", dbname="postgres")
    env.sql(f"CREATE DATABASE {DB}", dbname="postgres")
    env.sql("CREATE EXTENSION pgstattuple")
    yield env
    env.sql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", dbname="postgres")


def bloat_index(env: MaintEnv) -> None:
    """An index half of whose entries are dead: update half the table's keys, then vacuum the old entries away."""
    env.sql("DROP TABLE IF EXISTS ledger")
    env.sql("CREATE TABLE ledger (id bigint, v int, pad text) WITH (autovacuum_enabled = false)")
    env.sql("INSERT INTO ledger SELECT g, g, md5(g::text) FROM generate_series(1, 200000) g")
    env.sql("CREATE INDEX ledger_v_idx ON ledger (v)")
    env.sql("UPDATE ledger SET v = v + 1 WHERE id % 2 = 0")
    env.vacuum_clean("ledger")


def test_the_role_creates_pgstattuple_where_the_spec_has_a_policy(env: MaintEnv):
    assert env.sql("SELECT 1 FROM pg_extension WHERE extname = 'pgstattuple'", dbname="app") == [(1,)]


def test_plan_reports_a_bloated_index_and_outside_the_window_nothing_runs(env: MaintEnv):
    bloat_index(env)
    plan = env.plan()
    finding = by_target(plan["actions"])[f"{DB}/public.ledger_v_idx"]
    assert finding["kind"] == "report-index-bloat" and not finding["changes"]
    assert finding["detail"]["method"] == "pgstatindex" and finding["detail"]["ratio"] > 0.25
    assert "reindex waiting for the window (next start 20" in finding["reason"]
    assert "-01-01 03:00 UTC)" in finding["reason"]
    node = env.filenode("ledger_v_idx")
    outside = env.cycle(now=datetime(2027, 1, 1, 4, 0))
    assert not any(a.changes for a in outside.actions()) and outside.ok
    assert env.filenode("ledger_v_idx") == node


def test_inside_the_window_the_index_is_rebuilt_concurrently_and_readers_are_never_blocked(env: MaintEnv):
    bloat_index(env)
    before = env.size("ledger_v_idx")
    node = env.filenode("ledger_v_idx")
    stop = threading.Event()
    latencies: list[float] = []
    errors: list[str] = []

    def read() -> None:
        with env.connect() as conn:
            conn.execute("SET enable_seqscan = off")
            low = 0
            while not stop.is_set():
                start = time.monotonic()
                try:
                    conn.execute("SELECT count(*) FROM ledger WHERE v BETWEEN %s AND %s", [low, low + 2000]).fetchall()
                except psycopg.Error as exc:
                    errors.append(str(exc))
                latencies.append(time.monotonic() - start)
                low = (low + 5000) % 400000

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        time.sleep(0.5)
        report = env.cycle()
    finally:
        stop.set()
        reader.join(30)
    outcome = report_outcomes(report)[f"{DB}/public.ledger_v_idx"]
    assert outcome.status == "done", outcome.render()
    assert outcome.action.kind == "reindex-index"
    after = env.size("ledger_v_idx")
    assert env.filenode("ledger_v_idx") != node
    assert after < before * 0.75, (before, after)
    assert env.one("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ledger_v_idx'::regclass") is True
    assert not errors and len(latencies) > 10
    print(f"\nreindex: {before} -> {after} bytes in {outcome.seconds:.2f}s; reader: {len(latencies)} queries, "
          f"longest {max(latencies) * 1000:.0f} ms (lock_timeout {LOCK_TIMEOUT_S}s)")
    assert max(latencies) < LOCK_TIMEOUT_S
    again = env.cycle()
    assert not any(a.changes for a in again.actions())


def test_the_disk_guard_refuses_a_rebuild_that_would_not_fit(env: MaintEnv):
    bloat_index(env)
    size = env.size("ledger_v_idx")
    node = env.filenode("ledger_v_idx")
    report = env.cycle(free_bytes=int(size * 1.5))
    finding = report_actions(report)[f"{DB}/public.ledger_v_idx"]
    assert finding.kind == "report-index-bloat" and not finding.changes
    assert "reindex refused:" in finding.reason and "(simulated) is not more than" in finding.reason
    assert env.filenode("ledger_v_idx") == node
    # The real probe reads df on the primary's data_directory.
    status = env.cycle(apply=False).clusters[0].status["maintenance"]
    assert status["free_bytes"] and status["free_bytes"] > size


def bloat_table(env: MaintEnv) -> None:
    env.sql("DROP TABLE IF EXISTS churn")
    env.sql("CREATE TABLE churn (id bigint PRIMARY KEY, pad text)")
    env.sql("INSERT INTO churn SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 100000) g")
    env.sql("DELETE FROM churn WHERE id % 5 < 3")
    env.vacuum_clean("churn")


def test_pg_repack_refuses_without_its_extension_and_shrinks_the_table_with_it(env: MaintEnv):
    bloat_table(env)
    env.sql("DROP EXTENSION IF EXISTS pg_repack")
    total = int(env.one("SELECT pg_total_relation_size('churn')"))
    only_tables = {"max_ratio": 0.25, "action": "report"}  # no index rebuild changes churn's size meanwhile
    refused = env.cycle(index_bloat=only_tables)
    finding = report_actions(refused)[f"{DB}/public.churn"]
    assert finding.kind == "report-table-bloat" and "pg_repack extension is not installed" in finding.reason
    assert int(env.one("SELECT pg_total_relation_size('churn')")) == total
    env.sql("CREATE EXTENSION pg_repack")
    report = env.cycle(index_bloat=only_tables)
    outcome = report_outcomes(report)[f"{DB}/public.churn"]
    assert outcome.status == "done", outcome.render()
    after = int(env.one("SELECT pg_total_relation_size('churn')"))
    print(f"\npg_repack: {total} -> {after} bytes in {outcome.seconds:.2f}s")
    assert after < total * 0.6
    assert env.one("SELECT count(*) FROM churn") == 40000


def test_declared_autovacuum_settings_are_applied_and_drift_is_reported(env: MaintEnv):
    env.sql("CREATE TABLE IF NOT EXISTS tuned (id bigint PRIMARY KEY)")
    declared = [{"database": DB, "table": "tuned",
                 "settings": {"autovacuum_vacuum_scale_factor": 0.05, "autovacuum_analyze_threshold": 500}}]
    plan = env.plan(autovacuum=declared)
    first = by_target(plan["actions"])[f"{DB}/public.tuned"]
    assert first["kind"] == "set-autovacuum" and not first["detail"]["drift"]
    report = env.cycle(autovacuum=declared)
    assert report_outcomes(report)[f"{DB}/public.tuned"].status == "done"
    options = set(env.one("SELECT reloptions FROM pg_class WHERE oid = 'tuned'::regclass"))
    assert {"autovacuum_vacuum_scale_factor=0.05", "autovacuum_analyze_threshold=500"} <= options
    assert f"{DB}/public.tuned" not in by_target(env.plan(autovacuum=declared)["actions"])
    env.sql("ALTER TABLE tuned SET (autovacuum_vacuum_scale_factor = 0.3)")
    drift = by_target(env.plan(autovacuum=declared)["actions"])[f"{DB}/public.tuned"]
    assert drift["detail"]["drift"] is True
    assert "autovacuum_vacuum_scale_factor is 0.3 on the server, the spec says 0.05" in drift["reason"]
    assert report_outcomes(env.cycle(autovacuum=declared))[f"{DB}/public.tuned"].status == "done"
    assert "autovacuum_vacuum_scale_factor=0.05" in env.one("SELECT reloptions FROM pg_class "
                                                            "WHERE oid = 'tuned'::regclass")


def test_dead_tuples_and_wraparound_ages_are_observed(env: MaintEnv):
    env.sql("DROP TABLE IF EXISTS stale")
    env.sql("CREATE TABLE stale (id bigint, n int) WITH (autovacuum_enabled = false)")
    env.sql("INSERT INTO stale SELECT g, 0 FROM generate_series(1, 30000) g")
    env.sql("UPDATE stale SET n = 1")
    env.settle_stats()
    plan = env.plan()
    finding = by_target(plan["actions"])[f"{DB}/public.stale"]
    assert finding["kind"] == "report-dead-tuples" and "never vacuumed" in finding["reason"]
    assert "autovacuum is not keeping up" in finding["reason"]
    ages = {d["name"]: d for d in plan["clusters"][0]["status"]["maintenance"]["databases"]}
    assert ages[DB]["xid_age"] > 0 and "template0" in ages


def test_an_interrupted_rebuild_is_bounded_by_lock_timeout_and_its_debris_cleaned_in_the_window(env: MaintEnv):
    bloat_index(env)
    blocker = env.connect(autocommit=False)
    try:
        blocker.execute("SELECT count(*) FROM ledger").fetchall()  # an open snapshot the rebuild must wait for
        start = time.monotonic()
        report = env.cycle()
        waited = time.monotonic() - start
    finally:
        blocker.rollback()
        blocker.close()
    outcome = report_outcomes(report)[f"{DB}/public.ledger_v_idx"]
    assert outcome.status == "failed" and "lock timeout" in outcome.message, outcome.render()
    assert waited < LOCK_TIMEOUT_S + 30
    debris = [r[0] for r in env.sql("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                    "WHERE NOT i.indisvalid AND c.relname ~ '_cc(new|old)[0-9]*$'")]
    assert debris
    kept = env.cycle(index_bloat={**POLICY["index_bloat"], "clean_debris": False})
    assert not any(a.kind == "drop-debris-index" for a in kept.actions())
    cleaned = env.cycle(index_bloat={**POLICY["index_bloat"], "clean_debris": True})
    drops = [o for c in cleaned.clusters for o in c.outcomes if o.action.kind == "drop-debris-index"]
    assert {o.action.target for o in drops} == {f"{DB}/public.{name}" for name in debris}
    assert all(o.status == "done" for o in drops) and all(o.action.destructive for o in drops)
    assert env.sql("SELECT 1 FROM pg_index WHERE NOT indisvalid") == []


def test_the_exporter_reports_wraparound_ages_per_database(env: MaintEnv):
    """What PostgresWraparoundApproaching reads (the fleet's Prometheus scrapes it; test_monitoring checks there)."""
    import urllib.request

    url = f"http://{env.lab.address(env.cluster.primary)}:9187/metrics"
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline and f'datname="{DB}"' not in text:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        time.sleep(1)
    lines = [line for line in text.splitlines() if line.startswith("dbfleet_pg_database_xid_age{")]
    assert any(f'datname="{DB}"' in line for line in lines), lines
    assert any(line.startswith("dbfleet_pg_database_mxid_age{") for line in text.splitlines())


# --------------------------------------------------------------------------- rewrites as jobs

BIG_ROWS = 3_000_000
"""Rows of a 64-character text key in mainttest.big: what makes its index's REINDEX CONCURRENTLY long once 60% of
them are deleted (2M rows took 5 s at load average 20 on the 2-core lab). The table is UNLOGGED: the rebuild
sorts and writes the same, without sending some 600 MB of WAL to two replicas on a machine other labs share
(under that load Patroni's 6 s TTL once lost pg-main's leader)."""
INTERVAL = 1.0
JOB_WAIT = 900
"""Upper bound, in seconds, on one rebuild of big's index on a loaded 2-core machine."""
CANARY = {"database": DB, "table": "canary", "name": "canary_v_idx", "columns": ["v"]}
"""A declared index on another table than the rebuild's: the loop repairs it while the rewrite job runs."""
TABLES_REPORTED = {"max_ratio": 0.3, "action": "report"}
"""Only the index is rewritten: big's heap is as bloated, and a repack of it would follow the rebuild."""


def bloat_big_index(env: MaintEnv) -> None:
    env.sql("DROP TABLE IF EXISTS big")
    env.sql("CREATE UNLOGGED TABLE big (id bigint, k text) WITH (autovacuum_enabled = false)")
    env.sql(f"INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, {BIG_ROWS}) g")
    env.sql("CREATE INDEX big_k_idx ON big (k)")
    env.sql("DELETE FROM big WHERE id % 5 < 3")
    env.sql("VACUUM ANALYZE big")  # the estimate reads reltuples and pg_stats: a few dead tuples left do not matter


def rewrite_store(env: MaintEnv) -> Storage:
    """pg-main's backup target, where its rewrite job record lives; an earlier test's record removed."""
    store = open_access(env.cluster, env.lab.inventory_path).storage
    with contextlib.suppress(Exception):
        store.delete(job_key(CLUSTER, REWRITE))
    return store


def rewrite_job(store: Storage) -> JobRecord | None:
    return next((r for r in store.jobs(CLUSTER) if r.kind == REWRITE), None)


def wait_rewrite(store: Storage, state: str, timeout: float, alive: Any = None) -> JobRecord:
    """Until pg-main's rewrite job record is in `state`; bounded by `timeout`; `alive()` False fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        record = rewrite_job(store)
        if record is not None and record.state == state:
            return record
        if alive is not None:
            assert alive(), f"the operator stopped before its rewrite job was {state}; last record: {record}"
        assert time.monotonic() < deadline, f"no rewrite job {state} within {timeout:.0f}s; last: {record}"
        time.sleep(0.3)


def index_valid(env: MaintEnv, name: str) -> bool | None:
    rows = env.sql(f"SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('public.{name}')")
    return rows[0][0] if rows else None


def in_flight(env: MaintEnv) -> list[int]:
    return [r[0] for r in env.sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'dbfleet-rewrite'",
                                  dbname="postgres")]


@contextlib.contextmanager
def watching_in_process(env: MaintEnv, **changes: Any) -> Iterator[list[CycleReport]]:
    """A watching operator in this process (the clock inside the window): indexes and maintenance on pg-main, its
    rewrites as jobs on a real runner; stopped (SIGTERM's path: the jobs drained) at the end."""
    fleet = parse_fleet(env.spec_text(declared=[CANARY], **changes))
    access = FleetAccess.load(env.lab.inventory_path, env.lab.state.secrets)
    runner = job_runner(fleet, inline=False)
    operator = Operator(fleet, access, reconcilers=[IndexReconciler(), MaintenanceReconciler(
        clock=lambda: INSIDE, jobs=RewriteJobs(runner))], clusters={CLUSTER}, retry=RetryPolicy(attempts=1),
        keep_sessions=True, jobs=runner)
    reports: list[CycleReport] = []
    thread = threading.Thread(target=watch, args=(operator, FileLeaderLock(env.workdir / "leader.lock"), INTERVAL),
                              kwargs={"on_cycle": reports.append, "job_grace": JOB_WAIT}, daemon=True)
    thread.start()
    try:
        yield reports
    finally:
        operator.stop.set()
        thread.join(JOB_WAIT + 60)
    assert not thread.is_alive()


def test_a_rewrite_runs_as_a_job_while_a_dropped_declared_index_elsewhere_is_back_within_the_interval(env: MaintEnv):
    env.sql("CREATE TABLE IF NOT EXISTS canary (id bigint, v int)")
    bloat_big_index(env)
    node, before = env.filenode("big_k_idx"), env.size("big_k_idx")
    store = rewrite_store(env)
    with watching_in_process(env, table_bloat=TABLES_REPORTED) as reports:
        running = wait_rewrite(store, RUNNING, 300)
        assert running.target == f"{DB}/public.big_k_idx" and running.before == f"reindex-index {node}", running
        deadline = time.monotonic() + 120
        while index_valid(env, "canary_v_idx") is not True:  # the operator creates it on its first cycle
            assert time.monotonic() < deadline, "canary_v_idx never created"
            time.sleep(0.2)
        env.sql("DROP INDEX canary_v_idx")
        dropped = time.monotonic()
        while index_valid(env, "canary_v_idx") is not True:
            assert time.monotonic() - dropped < 120, "canary_v_idx not back within 120 s"
            time.sleep(0.1)
        took = time.monotonic() - dropped
        still = rewrite_job(store)
        assert still is not None and still.id == running.id and still.state == RUNNING, \
            f"the rewrite job ended before the index came back ({took:.1f}s): nothing shown; {still}"
        assert in_flight(env), "the rebuild's statement is not in pg_stat_activity as dbfleet-rewrite"
        assert took <= INTERVAL + 2, f"the dropped index came back after {took:.1f}s, not within {INTERVAL + 2}s"
        done = wait_rewrite(store, DONE, JOB_WAIT)
    seen = [r for r in reports if any(f"job rewrite {DB}/public.big_k_idx" in n for c in r.clusters
                                      for n in c.notes)]
    assert seen, f"no cycle noted the running rewrite job ({len(reports)} cycles)"
    assert all(not any(a.kind == "reindex-index" for a in r.actions()) for r in seen), \
        "a second rewrite was planned while the job ran"
    assert all(r.ok for r in reports), [r.render()[:2000] for r in reports if not r.ok][:1]
    assert env.filenode("big_k_idx") != node and index_valid(env, "big_k_idx") is True
    job_s = (done.heartbeat - done.started).total_seconds()
    print(f"\nwhile a {job_s:.0f}s rewrite job rebuilt big_k_idx ({before} -> {env.size('big_k_idx')} bytes), a "
          f"dropped declared index on another table was back in {took:.1f}s (interval {INTERVAL:g}s); "
          f"{len(reports)} cycles, median {sorted(r.seconds for r in reports)[len(reports) // 2]:.2f}s")


def window_now(env: MaintEnv) -> dict[str, str]:
    """A window open now on the real clock (minutes 0-58 of every hour); waits out an hour's last minutes."""
    now = datetime.now(UTC)
    if now.minute >= 55:
        time.sleep((60 - now.minute) * 60 - now.second + 1)
    return {"start": "0 * * * *", "end": "59 * * * *"}


@pytest.mark.parametrize("terminated", [False, True], ids=["statement-outlives", "statement-terminated"])
def test_a_killed_operators_rewrite_is_settled_from_what_the_catalog_shows(env: MaintEnv, terminated: bool):
    bloat_big_index(env)
    node = env.filenode("big_k_idx")
    store = rewrite_store(env)
    spec = env.workdir / f"kill-spec-{int(terminated)}.yaml"
    index_rule = {**POLICY["index_bloat"], "clean_debris": True}
    spec.write_text(env.spec_text(window=window_now(env), table_bloat=TABLES_REPORTED, index_bloat=index_rule))
    argv = [sys.executable, "-m", "dbfleet", "--spec", str(spec), "reconcile", "--watch", "--interval",
            str(INTERVAL), "--no-metrics", "--json", "--state", str(env.workdir / f"kill-state-{int(terminated)}.json"),
            "--cluster", CLUSTER, "--reconciler", "maintenance", "--inventory", str(env.lab.inventory_path),
            "--secrets", str(env.lab.state.secrets)]
    with (env.workdir / "kill-operator.log").open("a") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            running = wait_rewrite(store, RUNNING, 300, alive=lambda: proc.poll() is None)
            deadline = time.monotonic() + 60
            while not in_flight(env):
                assert time.monotonic() < deadline, "the rebuild never showed in pg_stat_activity"
                time.sleep(0.2)
        finally:
            proc.kill()
            proc.wait(30)
    pids = in_flight(env)
    if terminated:  # the server cut it off too (a restart, an administrator): it leaves its _ccnew copy
        env.sql(f"SELECT pg_terminate_backend({pids[0]})", dbname="postgres")
    else:
        # The killed operator's statement runs on without it: nothing is settled meanwhile.
        waiting = env.cycle(jobs=RewriteJobs(JobRunner(inline=True)), table_bloat=TABLES_REPORTED,
                            index_bloat=index_rule)
        if in_flight(env):
            kinds = {a.kind for a in waiting.actions()}
            assert "settle-rewrite" not in kinds and "reindex-index" not in kinds, kinds
            assert any("a rewrite runs in database" in a.reason for a in waiting.actions()), \
                [a.reason for a in waiting.actions()]
    deadline = time.monotonic() + JOB_WAIT
    while in_flight(env):
        assert time.monotonic() < deadline, "the killed operator's statement never ended"
        time.sleep(1)
    stale = rewrite_job(store)
    assert stale is not None and stale.id == running.id and stale.state == RUNNING  # nobody wrote its end yet
    jobs = RewriteJobs(JobRunner(inline=True))
    settled = env.cycle(jobs=jobs, table_bloat=TABLES_REPORTED, index_bloat={**index_rule, "max_ratio": 0.99})
    outcome = report_outcomes(settled)[running.id]
    assert outcome.action.kind == "settle-rewrite" and outcome.status == "done", outcome.render()
    record = rewrite_job(store)
    assert record is not None and record.id == running.id
    debris = [r[0] for r in env.sql("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                    "WHERE NOT i.indisvalid AND c.relname LIKE 'big_k_idx_cc%'")]
    rebuilt = env.filenode("big_k_idx") != node
    # The true outcome, whichever happened: rebuilt (a new file node) is done; otherwise interrupted, naming its copy.
    assert record.state == (DONE if rebuilt else INTERRUPTED), (record, rebuilt, debris)
    assert all(f"{DB}/public.{name}" in record.message for name in debris), (record.message, debris)
    if terminated:
        assert not rebuilt and debris and record.state == INTERRUPTED
        cleaned = env.cycle(jobs=jobs, table_bloat=TABLES_REPORTED, index_bloat={**index_rule, "max_ratio": 0.99})
        drops = [o for c in cleaned.clusters for o in c.outcomes if o.action.kind == "drop-debris-index"]
        assert {o.action.target for o in drops} == {f"{DB}/public.{name}" for name in debris}
        assert all(o.status == "done" for o in drops)
    print(f"\nkilled mid-rewrite ({'terminated' if terminated else 'statement left running'}): settled "
          f"{record.state}: {record.message}")
