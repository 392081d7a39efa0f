"""The maintenance policy's rewrites as jobs: the diff around a running, stopped or in-flight rewrite, the true end
of a stopped one from the catalog (settle_rewrite), the reconciler starting a job with the relation's file node,
the wiring's records of rewrite jobs, and the backups planner leaving rewrite records alone and holding prunes
while a user's restore runs. No servers: stand-in engines and a local target."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dbfleet.actions import Action
from dbfleet.backups.job_runner import JobRunner
from dbfleet.backups.jobs import DONE, INTERRUPTED, RESTORE, REWRITE, RUNNING, JobRecord, JobView, settle
from dbfleet.backups.manifest import Manifest, ManifestError, iso
from dbfleet.backups.plan import BackupObservation, planned_backup_actions
from dbfleet.backups.reconciler import job_columns
from dbfleet.backups.storage import LocalStorage
from dbfleet.errors import Waiting
from dbfleet.monitoring import metrics
from dbfleet.reconcile.maintenance import diff_maintenance, rewrite_busy, settle_rewrite
from dbfleet.reconcile.maintenance_observation import (
    EXACT,
    Debris,
    IndexBloat,
    MaintenanceDatabase,
    ObservedMaintenance,
    RewriteInFlight,
    RewriteJob,
    TableBloat,
)
from dbfleet.reconcile.maintenance_reconciler import MaintenanceReconciler
from dbfleet.spec import JobLimits, PostgresMaintenance, load_fleet
from dbfleet.wiring import RewriteJobs

FLEET = load_fleet(Path(__file__).resolve().parents[2] / "fleet.example.yaml")
MB = 1 << 20
INSIDE = datetime(2026, 11, 28, 2, 30)
POLICY = PostgresMaintenance.model_validate({
    "window": {"start": "0 2 * * 6", "end": "0 5 * * 6"},
    "index_bloat": {"action": "reindex", "max_ratio": 0.3, "disk_margin": 2.0, "clean_debris": True},
    "table_bloat": {"action": "repack", "max_ratio": 0.3, "disk_margin": 2.0}})


def job(state: str = RUNNING, alive: bool = True, action: str = "reindex-index",
        target: str = "app/public.orders_a", before: str = "16400") -> RewriteJob:
    return RewriteJob("rewrite-pg-main-20261128T020000Z", action, target, state, alive, "other:42",
                      "2026-11-28T02:00:00Z", before, f"rewrite {target} running")


def observed(job_: RewriteJob | None = None, debris: list[Debris] | None = None, in_flight: bool = False,
             filenode: int | None = None, repack_debris: list[str] | None = None) -> ObservedMaintenance:
    db = MaintenanceDatabase("app", extensions={"pg_repack"}, debris=debris or [], repack_debris=repack_debris or [])
    db.indexes = [IndexBloat("app", "public", "orders", "orders_a", 100 * MB, 60 * MB, EXACT)]
    db.tables = [TableBloat("app", "public", "orders", 500 * MB, 600 * MB, 300 * MB, "pgstattuple_approx", True)]
    obs = ObservedMaintenance("pg-main", INSIDE, "pg-1", 100_000 * MB, "/data", {"app": db}, job=job_,
                              job_filenode=filenode)
    if in_flight:
        obs.in_flight = [RewriteInFlight("app", 4242, "REINDEX INDEX CONCURRENTLY public.orders_a", 75.0)]
    return obs


def kinds(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.kind, a.target) for a in actions]


# --------------------------------------------------------------------------- the diff


def test_one_rewrite_per_cluster_indexes_first_and_it_says_it_runs_as_a_job() -> None:
    actions = diff_maintenance("pg-main", POLICY, observed())
    assert kinds(actions) == [("reindex-index", "app/public.orders_a"), ("report-table-bloat", "app/public.orders")]
    assert "runs as the cluster's rewrite job" in actions[0].reason
    assert "one rewrite at a time per cluster, app/public.orders_a goes first" in actions[1].reason


def test_nothing_is_rewritten_nor_debris_dropped_while_a_rewrite_runs() -> None:
    debris = [Debris("app", "public", "orders", "orders_b_ccnew", MB)]
    for obs, words in ((observed(job(), debris), "rewrite job rewrite app/public.orders_a running"),
                       (observed(job(state=DONE, alive=False), debris, in_flight=True),
                        "a rewrite runs in database app (pid 4242, 1m"),
                       (observed(None, debris, in_flight=True), "REINDEX INDEX CONCURRENTLY public.orders_a")):
        actions = diff_maintenance("pg-main", POLICY, obs)
        assert [a for a in actions if a.changes] == [], kinds(actions)
        assert {a.kind for a in actions} == {"report-index-bloat", "report-table-bloat", "report-debris"}
        assert all(words in a.reason for a in actions), [a.reason for a in actions]
    unread = observed()
    unread.job_unread = "OSError: target offline"
    assert "record cannot be read: OSError: target offline" in (rewrite_busy(unread) or "")
    assert not any(a.changes for a in diff_maintenance("pg-main", POLICY, unread))


def test_a_stopped_operators_rewrite_is_settled_first_and_only_once_nothing_of_it_runs() -> None:
    stopped = observed(job(alive=False), filenode=16401)
    actions = diff_maintenance("pg-main", POLICY, stopped)
    assert kinds(actions)[0] == ("settle-rewrite", "rewrite-pg-main-20261128T020000Z")
    assert actions[0].changes and not actions[0].destructive
    assert actions[0].detail["state"] == DONE
    assert not any(a.kind in ("reindex-index", "repack-table") for a in actions)
    still = diff_maintenance("pg-main", POLICY, observed(job(alive=False), in_flight=True, filenode=16400))
    assert not any(a.kind == "settle-rewrite" for a in still)  # its statement outlived its operator: wait for it
    ended = diff_maintenance("pg-main", POLICY, observed(job(state=INTERRUPTED, alive=False)))
    assert kinds(ended)[0] == ("reindex-index", "app/public.orders_a")  # an ended job holds nothing


# --------------------------------------------------------------------------- the true end, from the catalog


def test_a_rewritten_relation_has_a_new_file_node() -> None:
    state, message = settle_rewrite(job(), observed(job(), filenode=16999))
    assert state == DONE and "was rewritten (file node 16400 -> 16999)" in message
    old = [Debris("app", "public", "orders", "orders_a_ccold", MB)]
    state, message = settle_rewrite(job(), observed(job(), old, filenode=16999))
    assert state == DONE and "it left app/public.orders_a_ccold, which the debris rule drops" in message


def test_a_cut_off_rebuild_is_interrupted_with_its_debris_named_or_nothing_left() -> None:
    new = [Debris("app", "public", "orders", "orders_a_ccnew", MB), Debris("app", "public", "orders", "other_ccnew", 1)]
    state, message = settle_rewrite(job(), observed(job(), new, filenode=16400))
    assert state == INTERRUPTED and "not rewritten (file node 16400); it left app/public.orders_a_ccnew," in message
    assert "other_ccnew" not in message
    state, message = settle_rewrite(job(), observed(job(), filenode=16400))
    assert state == INTERRUPTED and "nothing of it is left" in message and "planned again" in message
    state, message = settle_rewrite(job(), observed(job(), filenode=None))
    assert state == INTERRUPTED and "no longer exists" in message


def test_an_interrupted_repack_names_its_trigger_and_tables() -> None:
    repack = job(action="repack-table", target="app/public.orders", before="17000")
    left = ["table repack.log_17000", 'trigger repack_trigger on public.orders']
    state, message = settle_rewrite(repack, observed(repack, filenode=17000, repack_debris=left))
    assert state == INTERRUPTED and "repack.log_17000" in message and "reported until removed" in message
    assert settle_rewrite(repack, observed(repack, filenode=17001))[0] == DONE
    reports = diff_maintenance("pg-main", POLICY, observed(None, repack_debris=left))
    assert ("report-repack-debris", "app/table repack.log_17000") in kinds(reports)


# --------------------------------------------------------------------------- the reconciler starts jobs


class FakeEngineSession:
    """What PgMaintenance's act path reads: the cluster, a primary, and file nodes."""

    def __init__(self, cluster: Any, nodes: list[int | None]):
        self.cluster = cluster
        self.nodes = nodes
        self.closed = False
        self.statements: list[str] = []

    def primary(self) -> str:
        return "pg-1"

    def run(self, host: str, dbname: str, query: Any, params: Any = None) -> list[dict[str, Any]]:
        text = query if isinstance(query, str) else repr(query)
        self.statements.append(text)
        if "pg_relation_filenode" in text:
            return [{"n": self.nodes.pop(0)}]
        return [{"size": 1}]

    def close(self) -> None:
        self.closed = True


class FakeJobs:
    def __init__(self) -> None:
        self.started: list[tuple[Action, str]] = []

    def observe(self, cluster: Any, session: Any) -> RewriteJob | None:
        return None

    def start(self, action: Action, session: Any, before: str, work: Any) -> str:
        self.started.append((action, before))
        return f"started rewrite job for {action.target}; ran: {work()}"

    def settle(self, *args: Any) -> str:
        raise AssertionError("not planned here")


def reindex_action() -> Action:
    return Action("pg-main", "maintenance", "reindex-index", "app/public.orders_a", "bloated",
                  detail={"database": "app", "schema": "public", "name": "orders_a", "table": "orders",
                          "lock_timeout": "5s", "size_bytes": 100})


def test_the_act_starts_a_job_with_the_file_node_and_the_job_rebuilds_on_a_session_of_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dbfleet.reconcile import maintenance_reconciler
    monkeypatch.setattr(maintenance_reconciler, "PostgresSession", FakeEngineSession)
    cycle = FakeEngineSession(FLEET.cluster("pg-main"), [16400])
    own = FakeEngineSession(FLEET.cluster("pg-main"), [])
    jobs = FakeJobs()
    reconciler = MaintenanceReconciler(jobs=jobs, session_for=lambda cluster, session: own)
    said = reconciler.act(reindex_action(), cycle)  # type: ignore[arg-type]
    assert jobs.started[0][1] == "16400" and "started rewrite job for app/public.orders_a" in said
    assert any("REINDEX INDEX CONCURRENTLY" in s for s in own.statements) and own.closed
    assert any("application_name" in s and "dbfleet-rewrite" in s for s in own.statements)
    assert not any("REINDEX" in s for s in cycle.statements)  # the cycle's session only read the file node
    gone = FakeEngineSession(FLEET.cluster("pg-main"), [None])
    assert "no longer exists" in reconciler.act(reindex_action(), gone)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the wiring's records


@pytest.fixture()
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalStorage:
    monkeypatch.setenv("DBFLEET_LOCK_DIR", str(tmp_path / "locks"))
    return LocalStorage(tmp_path / "target")


class Session:
    def __init__(self, cluster: Any):
        self.cluster = cluster


def test_rewrite_jobs_are_recorded_observed_limited_fleet_wide_and_settled(storage: LocalStorage) -> None:
    pg = FLEET.cluster("pg-main")
    runner = JobRunner(JobLimits(rewrites=1), heartbeat=0.05)
    jobs = RewriteJobs(runner, storage=lambda cluster, session: storage)
    gate = threading.Event()
    said = jobs.start(reindex_action(), Session(pg), "16400", lambda: "rebuilt" if gate.wait(10) else "timeout")
    assert said.startswith("started rewrite job")
    for _ in range(100):  # the heartbeat writes the step in flight; bounded at ~5 s
        seen = jobs.observe(pg, Session(pg))
        if seen is not None and "reindex-index" in seen.line:
            break
        threading.Event().wait(0.05)
    assert seen is not None and seen.alive and seen.before == "16400" and seen.action == "reindex-index"
    assert seen.target == "app/public.orders_a" and "reindex-index app/public.orders_a" in seen.line
    other = Action("other", "maintenance", "repack-table", "app/public.t", "bloated")
    with pytest.raises(Waiting, match="1 of 1 rewrite jobs run fleet-wide \\(operator.jobs.rewrites\\)"):
        jobs.start(other, Session(pg), "1", lambda: "never")
    text = metrics.render().decode()
    assert 'dbfleet_jobs_running{kind="rewrite"} 1.0' in text
    assert 'dbfleet_job_heartbeat_age_seconds{cluster="pg-main",kind="rewrite"}' in text
    gate.set()
    assert runner.wait(10)
    ended = jobs.observe(pg, Session(pg))
    assert ended is not None and ended.state == DONE and not ended.alive
    assert "needs no settling" in jobs.settle(pg, Session(pg), ended.id, INTERRUPTED, "x")
    # A record another machine's operator left running, its heartbeat stale: settled with the catalog's verdict.
    old = datetime.now(UTC) - timedelta(minutes=5)
    stale = JobRecord("pg-main", REWRITE, "rewrite-pg-main-1", "app/public.orders_a", RUNNING, "gone:1", "elsewhere",
                      iso(old) or "", iso(old) or "", before="reindex-index 16400")
    storage.put_bytes(stale.key, stale.to_json().encode())
    view = jobs.observe(pg, Session(pg))
    assert view is not None and view.stopped_unsettled
    assert jobs.settle(pg, Session(pg), stale.id, DONE, "rewritten").startswith("rewrite job rewrite-pg-main-1: done")
    assert [r.state for r in storage.jobs("pg-main")] == [DONE]


def test_a_rewrite_record_keeps_its_target_and_file_node_and_a_forged_one_is_refused() -> None:
    one = JobRecord("pg-main", REWRITE, "rewrite-pg-main-1", 'app/public."Odd Name"', RUNNING, "h:1", "h",
                    "2026-11-28T02:00:00Z", "2026-11-28T02:00:00Z", before="repack-table 17000")
    assert JobRecord.from_json(one.to_json()) == one
    for forged in (one.to_json().replace("repack-table 17000", "17000; DROP"),
                   one.to_json().replace('"kind": "rewrite"', '"kind": "backup"')):
        with pytest.raises(ManifestError):
            JobRecord.from_json(forged)
    with pytest.raises(ValueError, match="settled from the catalog"):
        settle(one, [], [], datetime.now(UTC))


def test_status_shows_a_running_rewrite_when_backups_list_no_jobs() -> None:
    line = "rewrite app/public.orders_a (rewrite-pg-main-1) running for 42s: reindex-index app/public.orders_a"
    row = job_columns({"rewrite_job": {"id": "rewrite-pg-main-1", "state": "running", "line": line}})
    assert row == {"jobs": line}
    assert job_columns({"rewrite_job": None}) == {}


# --------------------------------------------------------------------------- the backups planner


def test_backups_leave_rewrite_records_alone_and_hold_prunes_while_a_restore_runs() -> None:
    now = datetime.now(UTC)
    stale = now - timedelta(minutes=5)
    rewrite = JobRecord("cache", REWRITE, "rewrite-cache-1", "app/public.t", RUNNING, "gone:1", "elsewhere",
                        iso(stale) or "", iso(stale) or "")
    restore = JobRecord("cache", RESTORE, "restore-cache-1", "latest", RUNNING, "me:1", "elsewhere",
                        iso(now) or "", iso(now) or "")
    old = [Manifest(cluster="cache", engine="redis", id=f"2026010{d}T000000Z-snapshot", kind="snapshot",
                    status="verified", tool="redis-cli", tool_version="7",
                    started_at=iso(now - timedelta(days=40 - d)) or "",
                    finished_at=iso(now - timedelta(days=40 - d)) or "", size_bytes=1) for d in range(1, 9)]
    fleet = FLEET.model_copy(update={"clusters": [FLEET.cluster("cache")]})
    idle = planned_backup_actions(fleet, {"cache": BackupObservation(old, jobs=(JobView(rewrite, False),))}, now)
    assert not any(a.kind == "settle-job" for a in idle)
    assert any(a.kind == "prune" for a in idle), [a.kind for a in idle]
    held = planned_backup_actions(fleet, {"cache": BackupObservation(old, jobs=(JobView(restore, True),))}, now)
    assert not any(a.kind == "prune" for a in held)
    waits = [a for a in held if a.kind == "report-prune-waits"]
    assert waits and "waits while restore job restore-cache-1 (me:1) reads the backups" in waits[0].reason
    stopped = planned_backup_actions(fleet, {"cache": BackupObservation(old, jobs=(JobView(restore, False),))}, now)
    assert ("settle-job", "restore-cache-1") in kinds(stopped)
    assert settle(restore, [], [], now).state == INTERRUPTED


# --------------------------------------------------------------------------- a user's restore as a job


class RestoreAccess:
    """What restore_as_job reads of a BackupAccess: the cluster's name, its target, its progress."""

    def __init__(self, storage: LocalStorage):
        self.name = "pg-main"
        self.storage = storage
        self.progress: Any = None


def fake_restore(gate: threading.Event | None = None, ok: bool = True) -> Any:
    from dbfleet.backups.manifest import Check

    def run(access: Any, target: Any, backup_id: Any, keep: bool = False) -> Any:
        access.progress.say("restoring into scratch")
        if gate is not None:
            assert gate.wait(10), "the test never opened the gate"
        backup = Manifest(cluster="pg-main", engine="postgres", id="20261130T120000Z-full", kind="full",
                          status="verified", tool="pgbackrest", tool_version="2", started_at="2026-11-30T12:00:00Z")
        return backup, None, [Check("rows", ok, "counted")], ""

    return run


def test_a_restore_runs_under_its_job_record_and_a_second_one_is_refused_with_exit_2(
        storage: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    from dbfleet.backups.engine import RestoreTarget
    from dbfleet.commands import backup as command
    from dbfleet.commands.common import UsageError

    gate = threading.Event()
    monkeypatch.setattr(command, "restore", fake_restore(gate))
    access = RestoreAccess(storage)
    result: list[Any] = []
    first = threading.Thread(target=lambda: result.append(command.restore_as_job(access, RestoreTarget("latest"),
                                                                                 None, False)))  # type: ignore[arg-type]
    first.start()
    for _ in range(100):  # until its record says it runs; bounded at ~5 s
        records = {r.kind: r for r in storage.jobs("pg-main")}
        if RESTORE in records:
            break
        threading.Event().wait(0.05)
    assert records[RESTORE].state == RUNNING and records[RESTORE].target == "latest"
    with pytest.raises(UsageError, match="one restore of a cluster at a time"):
        command.restore_as_job(RestoreAccess(storage), RestoreTarget("latest"), None, False)  # type: ignore[arg-type]
    gate.set()
    first.join(10)
    assert result and result[0][0].id == "20261130T120000Z-full"
    ended = {r.kind: r for r in storage.jobs("pg-main")}[RESTORE]
    assert ended.state == DONE and ended.result == "20261130T120000Z-full" and "1 checks ok" in ended.message
    # Elsewhere: a fresh heartbeat from another machine refuses too; a failed check is recorded failed.
    now = datetime.now(UTC)
    other = JobRecord("pg-main", RESTORE, "restore-pg-main-2", "latest", RUNNING, "them:7", "elsewhere",
                      iso(now) or "", iso(now) or "")
    storage.put_bytes(other.key, other.to_json().encode())
    with pytest.raises(UsageError, match="restore job restore-pg-main-2 \\(them:7\\) runs since"):
        command.restore_as_job(access, RestoreTarget("latest"), None, False)  # type: ignore[arg-type]
    storage.put_bytes(other.key, other.ended(INTERRUPTED, "gone", now).to_json().encode())
    monkeypatch.setattr(command, "restore", fake_restore(ok=False))
    _, _, checks, _ = command.restore_as_job(access, RestoreTarget("latest"), None, False)  # type: ignore[arg-type]
    assert not checks[0].ok
    assert {r.kind: r for r in storage.jobs("pg-main")}[RESTORE].state == "failed"


def test_a_job_another_process_runs_is_in_the_metrics_from_its_record() -> None:
    now = datetime.now(UTC).timestamp()
    metrics.set_observed_jobs("pg-main", [(RESTORE, now - 120, now - 3)])
    text = metrics.render().decode()
    age = next(line for line in text.splitlines()
               if line.startswith('dbfleet_job_age_seconds{cluster="pg-main",kind="restore"}'))
    beat = next(line for line in text.splitlines()
                if line.startswith('dbfleet_job_heartbeat_age_seconds{cluster="pg-main",kind="restore"}'))
    assert 119 <= float(age.split()[-1]) < 200 and 2 <= float(beat.split()[-1]) < 80
    metrics.set_observed_jobs("pg-main", [])
    assert 'dbfleet_job_age_seconds{cluster="pg-main",kind="restore"}' not in metrics.render().decode()


def test_a_drain_leaves_a_rewrite_record_running_for_the_next_operator_to_settle(storage: LocalStorage) -> None:
    pg = FLEET.cluster("pg-main")
    runner = JobRunner(JobLimits(), heartbeat=60)
    jobs = RewriteJobs(runner, storage=lambda cluster, session: storage)
    gate = threading.Event()
    jobs.start(reindex_action(), Session(pg), "16400", lambda: "rebuilt" if gate.wait(10) else "timeout")
    left = runner.drain(0.2)
    assert [r.state for r in left] == [RUNNING]
    assert [r.state for r in storage.jobs("pg-main")] == [RUNNING]  # not guessed interrupted: its statement runs on
    gate.set()


def test_one_restore_per_cluster_across_both_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dbfleet.backups.engine import RestoreTarget
    from dbfleet.commands import backup as command
    from dbfleet.commands.common import UsageError

    monkeypatch.setenv("DBFLEET_LOCK_DIR", str(tmp_path / "locks"))
    first, second = LocalStorage(tmp_path / "first"), LocalStorage(tmp_path / "second")
    now = datetime.now(UTC)
    other = JobRecord("pg-main", RESTORE, "restore-pg-main-2", "latest", RUNNING, "them:7", "elsewhere",
                      iso(now) or "", iso(now) or "")
    first.put_bytes(other.key, other.to_json().encode())  # a restore from the first target runs elsewhere
    monkeypatch.setattr(command, "restore", fake_restore())
    with pytest.raises(UsageError, match="restore job restore-pg-main-2 \\(them:7\\) runs since"):
        command.restore_as_job(RestoreAccess(second), RestoreTarget("latest"), None, False,  # type: ignore[arg-type]
                               others=[RestoreAccess(first)])  # type: ignore[list-item]
    assert not second.jobs("pg-main"), "the refused restore wrote no record"
    first.put_bytes(other.key, other.ended(INTERRUPTED, "gone", now).to_json().encode())
    command.restore_as_job(RestoreAccess(second), RestoreTarget("latest"), None, False,  # type: ignore[arg-type]
                           others=[RestoreAccess(first)])  # type: ignore[list-item]
    assert {r.kind: r for r in second.jobs("pg-main")}[RESTORE].state == DONE


# --------------------------------------------------------------------------- a relation named with dots


def dotted_action() -> Action:
    return Action("pg-main", "maintenance", "reindex-index", "app/sales.eu.orders_a", "bloated",
                  detail={"database": "app", "schema": "sales.eu", "name": "orders_a", "table": "orders",
                          "lock_timeout": "5s", "size_bytes": 100})


def test_a_rewrite_record_keeps_schema_and_name_apart(storage: LocalStorage) -> None:
    pg = FLEET.cluster("pg-main")
    runner = JobRunner(JobLimits(rewrites=1), heartbeat=60)  # no heartbeat: the first write alone must hold them
    jobs = RewriteJobs(runner, storage=lambda cluster, session: storage)
    gate = threading.Event()
    jobs.start(dotted_action(), Session(pg), "16400", lambda: "rebuilt" if gate.wait(10) else "gate never opened")
    [first] = storage.jobs("pg-main")  # an operator killed now leaves this record
    assert first.state == RUNNING and (first.database, first.schema, first.relation) == ("app", "sales.eu", "orders_a")
    gate.set()
    assert runner.wait(10)
    [record] = storage.jobs("pg-main")
    assert (record.database, record.schema, record.relation) == ("app", "sales.eu", "orders_a")
    assert JobRecord.from_json(record.to_json()) == record
    seen = jobs.observe(pg, Session(pg))
    assert seen is not None and seen.place == ("app", "sales.eu", "orders_a")


def test_an_old_record_is_read_by_its_target_unless_a_dot_makes_it_ambiguous() -> None:
    assert job(target="app/public.orders_a").place == ("app", "public", "orders_a")
    ambiguous = job(alive=False, target="app/sales.eu.orders_a")
    assert ambiguous.place is None
    state, message = settle_rewrite(ambiguous, observed(ambiguous, filenode=16999))
    assert state == INTERRUPTED and "ambiguous" in message and "not judged from the catalog" in message
    debris = [Debris("app", "sales", "eu", "orders_a_ccnew", MB)]
    assert "orders_a_ccnew" not in settle_rewrite(ambiguous, observed(ambiguous, debris, filenode=1))[1]


class OneEngine:
    """A PgMaintenance stand-in: an observation, and file nodes looked up (or failing)."""

    def __init__(self, fail: bool = False):
        self.looked_up: list[tuple[str, str, str]] = []
        self.fail = fail

    def observe(self) -> ObservedMaintenance:
        return observed()

    def filenode(self, database: str, schema: str, name: str) -> int | None:
        self.looked_up.append((database, schema, name))
        if self.fail:
            raise RuntimeError("to_regclass: invalid name syntax")
        return 16999


class OneJob(FakeJobs):
    def __init__(self, seen: RewriteJob):
        super().__init__()
        self.seen = seen

    def observe(self, cluster: Any, session: Any) -> RewriteJob | None:
        return self.seen


def test_observe_looks_a_stopped_jobs_relation_up_by_its_stored_parts_and_survives_a_failing_lookup() -> None:
    pg = FLEET.cluster("pg-main")
    stored_apart = RewriteJob("rewrite-pg-main-1", "reindex-index", "app/sales.eu.orders_a", RUNNING, False, "o:1",
                              "2026-11-28T02:00:00Z", "16400", "line", relation=("app", "sales.eu", "orders_a"))
    for seen, engine, looked, node in (
            (stored_apart, OneEngine(), [("app", "sales.eu", "orders_a")], 16999),
            (job(alive=False, target="app/sales.eu.orders_a"), OneEngine(), [], None),
            (stored_apart, OneEngine(fail=True), [("app", "sales.eu", "orders_a")], None)):
        reconciler = MaintenanceReconciler(jobs=OneJob(seen))
        reconciler._engine = lambda session, e=engine: e  # type: ignore[method-assign,misc]
        obs = reconciler.observe(pg, None)  # type: ignore[arg-type]
        assert engine.looked_up == looked and obs.job_filenode == node
        if seen.place is None:
            assert any("ambiguous" in note for note in obs.notes), obs.notes
        if engine.fail:
            assert obs.job_unread and "invalid name syntax" in obs.job_unread
            assert rewrite_busy(obs) and not any(a.kind == "settle-rewrite"
                                                 for a in diff_maintenance("pg-main", POLICY, obs))
