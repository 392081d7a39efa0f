"""The maintenance policy against the lab's real PostgreSQL primary.

A scratch database, `mainttest`, is made here and dropped at the end; the specs the tests write name only
that database. `plan` runs through the CLI on the real clock, outside a window that opens once a year
(January 1st, 03:00-04:00 UTC); cycles that must stand inside it run in-process with the maintenance
reconciler given an injected clock, and, for the disk guard, a simulated free-disk reading.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from dbfleet.cli import main
from dbfleet.engines.access import FleetAccess
from dbfleet.reconcile.loop import CycleReport, Operator
from dbfleet.reconcile.maintenance_reconciler import MaintenanceReconciler
from dbfleet.reconcile.pg_maintenance import probe_free_disk
from dbfleet.reconcile.retry import RetryPolicy
from dbfleet.spec import parse_fleet

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

    def spec_text(self, **changes: Any) -> str:
        data = yaml.safe_load((REPO / "fleet.example.yaml").read_text())
        pg = next(c for c in data["clusters"] if c["name"] == CLUSTER)
        pg["databases"] = [DB]
        pg["indexes"] = {"declared": []}
        pg["maintenance"] = {**POLICY, **changes}
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
              **changes: Any) -> CycleReport:
        """One in-process cycle of the maintenance reconciler with the clock at `now` and, when given, a
        simulated free-disk reading."""
        fleet = parse_fleet(self.spec_text(**changes))
        access = FleetAccess.load(self.lab.inventory_path, self.lab.state.secrets)
        disk = probe_free_disk if free_bytes is None else (lambda session, host: (free_bytes, "simulated"))
        operator = Operator(fleet, access, reconcilers=[MaintenanceReconciler(clock=lambda: now, disk=disk)],
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
