"""Backups and drills as jobs: records, liveness, settling a stopped job, the planner around running jobs, the
runner's limits and heartbeats, and the backup reconciler starting jobs that later cycles observe. No servers: a
stand-in tool writes into a local target."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dbfleet.actions import Action
from dbfleet.backups import runner as runner_module
from dbfleet.backups.access import BackupAccess
from dbfleet.backups.engine import EngineBackups, Prepared
from dbfleet.backups.job_runner import Job, JobContext, JobRunner, job_lock_held
from dbfleet.backups.jobs import (
    DONE,
    INTERRUPTED,
    JOB_FAILED,
    RUNNING,
    STALE_AFTER,
    JobRecord,
    JobView,
    job_alive,
    settle,
)
from dbfleet.backups.manifest import DrillRecord, Manifest, ManifestError, iso, utcnow
from dbfleet.backups.plan import BackupObservation, planned_backup_actions
from dbfleet.backups.reconciler import BackupReconciler, job_columns
from dbfleet.backups.storage import LocalStorage
from dbfleet.errors import PermanentError, Waiting
from dbfleet.monitoring import metrics
from dbfleet.progress import Progress
from dbfleet.spec import JobLimits, load_fleet

FLEET = load_fleet(Path(__file__).resolve().parents[2] / "fleet.example.yaml")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def record(state: str = RUNNING, *, host: str = "elsewhere", beat: datetime = NOW, kind: str = "backup",
           cluster: str = "cache", target: str = "snapshot", result: str = "",
           started: datetime | None = None) -> JobRecord:
    start = started or NOW - timedelta(minutes=10)
    return JobRecord(cluster, kind, f"{kind}-{cluster}-1", target, state, "other:42", host, iso(start) or "",
                     iso(beat) or "", result=result)


def manifest(id_: str, status: str, started: datetime) -> Manifest:
    return Manifest(cluster="cache", engine="redis", id=id_, kind="snapshot", status=status, tool="redis-cli",
                    tool_version="7", started_at=iso(started) or "", error="boom" if status == "failed" else "")


# --------------------------------------------------------------------------- records and liveness


def test_a_job_record_round_trips_and_a_forged_one_is_refused() -> None:
    one = record().beat(NOW, step="uploading", result="20261130T115000Z-snapshot")
    assert JobRecord.from_json(one.to_json()) == one
    assert one.key == "dbfleet/cache/jobs/backup.json"
    forged = one.to_json().replace('"running"', '"sleeping"')
    with pytest.raises(ManifestError, match="state"):
        JobRecord.from_json(forged, "x")
    with pytest.raises(ManifestError, match="result"):
        JobRecord.from_json(one.to_json().replace("20261130T115000Z-snapshot", "../../etc"), "x")


def test_a_job_is_alive_by_its_lock_here_and_by_its_heartbeat_elsewhere() -> None:
    here = record(host="me")
    assert job_alive(here, NOW, "me", lock_held=True)
    assert not job_alive(here, NOW, "me", lock_held=False)  # its process on this machine died: at once
    fresh = record(beat=NOW - timedelta(seconds=STALE_AFTER / 2))
    stale = record(beat=NOW - timedelta(seconds=STALE_AFTER + 1))
    assert job_alive(fresh, NOW, "me", lock_held=False)
    assert not job_alive(stale, NOW, "me", lock_held=False)
    assert not job_alive(record(DONE), NOW, "me", lock_held=True)


def test_a_stopped_jobs_true_outcome_comes_from_what_it_left() -> None:
    job = record(started=NOW - timedelta(minutes=10))
    took = NOW - timedelta(minutes=9)
    complete = settle(job, [manifest("B", "complete", took)], [], NOW)
    assert (complete.state, complete.result) == (DONE, "B") and "complete" in complete.message
    pending = settle(job, [manifest("B", "pending", took)], [], NOW)
    assert pending.state == INTERRUPTED and "schedule takes the backup again" in pending.message
    assert settle(job, [manifest("B", "failed", took)], [], NOW).state == JOB_FAILED
    older = settle(job, [manifest("A", "complete", NOW - timedelta(hours=3))], [], NOW)
    assert older.state == INTERRUPTED  # a backup from before the job is not its result
    named = settle(record(result="A"), [manifest("A", "complete", NOW - timedelta(hours=3))], [], NOW)
    assert named.state == DONE
    drill_job = record(kind="drill", target="B", started=NOW - timedelta(minutes=10))
    drill = DrillRecord("D1", "cache", "B", iso(NOW - timedelta(minutes=9)) or "", iso(NOW - timedelta(minutes=8))
                        or "", ok=True, message="all checks passed")
    assert settle(drill_job, [], [drill], NOW).state == DONE
    assert settle(drill_job, [], [], NOW).state == INTERRUPTED


# --------------------------------------------------------------------------- the planner around jobs


AFTER_SNAPSHOT = NOW.replace(minute=20)
"""cache takes a snapshot at minute 15 of each hour."""


def plan(obs: BackupObservation, now: datetime = AFTER_SNAPSHOT) -> list[tuple[str, str]]:
    fleet = FLEET.model_copy(update={"clusters": [FLEET.cluster("cache")]})
    return [(a.kind, a.target) for a in planned_backup_actions(fleet, {"cache": obs}, now)]


def test_a_running_backup_job_is_not_started_again_nor_its_pending_backup_orphaned() -> None:
    pending = manifest("B", "pending", NOW - timedelta(minutes=1))
    alive = JobView(record(started=NOW - timedelta(minutes=1)), alive=True)
    assert plan(BackupObservation([pending], jobs=(alive,))) == []
    assert ("backup", "snapshot") in plan(BackupObservation([], jobs=()))


def test_a_stopped_job_is_settled_before_its_backup_is_orphaned_and_taken_again() -> None:
    pending = manifest("B", "pending", NOW - timedelta(minutes=1))
    stopped = JobView(record(started=NOW - timedelta(minutes=1)), alive=False)
    kinds = [k for k, _ in plan(BackupObservation([pending], jobs=(stopped,)))]
    assert kinds == ["settle-job", "mark-orphaned", "backup"]


def test_a_complete_backup_of_a_stopped_job_is_never_taken_twice() -> None:
    done = manifest("B", "complete", NOW.replace(minute=15))
    stopped = JobView(record(started=NOW.replace(minute=15)), alive=False)
    kinds = [k for k, _ in plan(BackupObservation([done], jobs=(stopped,)))]
    assert kinds[0] == "settle-job" and "backup" not in kinds and "mark-orphaned" not in kinds


def test_a_running_drill_job_holds_the_drill_and_a_failed_backup_job_is_reported() -> None:
    done = manifest("B", "complete", NOW - timedelta(hours=1))
    drilling = JobView(record(kind="drill", target="B"), alive=True)
    at_drill_time = NOW.replace(hour=4, minute=50)
    assert "drill" not in [k for k, _ in plan(BackupObservation([done], jobs=(drilling,)), at_drill_time)]
    assert "drill" in [k for k, _ in plan(BackupObservation([done]), at_drill_time)]
    failed = JobView(record(JOB_FAILED).ended(JOB_FAILED, "disk full", NOW), alive=False)
    assert ("report-job-failed", failed.record.id) in plan(BackupObservation([done], jobs=(failed,)))


# --------------------------------------------------------------------------- the runner


@pytest.fixture()
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalStorage:
    monkeypatch.setenv("DBFLEET_LOCK_DIR", str(tmp_path / "locks"))
    return LocalStorage(tmp_path / "target")


def gated_job(storage: LocalStorage, cluster: str, gate: threading.Event, kind: str = "backup",
              fail: bool = False) -> Job:
    def work(context: JobContext) -> str:
        context.progress.say("copying files")
        context.result("20261130T120000Z-snapshot")
        assert gate.wait(10), "the test never opened the gate"
        if fail:
            raise PermanentError("disk full")
        return "backup taken"

    return Job(cluster, kind, "snapshot", storage, work)


def stored(storage: LocalStorage, cluster: str) -> dict[str, JobRecord]:
    return {r.kind: r for r in storage.jobs(cluster)}


def test_a_job_runs_beside_the_caller_with_its_record_heartbeat_and_step(storage: LocalStorage) -> None:
    gate = threading.Event()
    runner = JobRunner(JobLimits(backups=2), heartbeat=0.05)
    said = runner.start(gated_job(storage, "cache", gate))
    assert said.startswith("started backup job")
    assert runner.is_running("cache", "backup") and job_lock_held("cache", "backup")
    first = stored(storage, "cache")["backup"]
    assert first.state == RUNNING
    for _ in range(200):  # the job names its backup, and the heartbeat writes the step in flight; bounded at ~10 s
        now = stored(storage, "cache")["backup"]
        if now.step == "copying files" and now.result:
            break
        threading.Event().wait(0.05)
    assert now.step == "copying files" and now.result == "20261130T120000Z-snapshot" and now.state == RUNNING
    assert "cache" in metrics.render().decode().split("dbfleet_job_age_seconds{")[1][:40]
    gate.set()
    assert runner.wait(10)
    ended = stored(storage, "cache")["backup"]
    assert ended.state == DONE and ended.message == "backup taken" and not job_lock_held("cache", "backup")


def test_a_heartbeat_never_writes_a_finished_job_back_to_running(storage: LocalStorage,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat is made to pause after it has begun a beat until the job's end is recorded (or 3 s): its
    beat must not then overwrite the end, nor the result the job named meanwhile."""
    from dbfleet.backups import job_runner

    beating, ended = threading.Event(), threading.Event()
    real_utcnow = job_runner.utcnow

    def utcnow_pausing_the_heartbeat() -> datetime:
        if threading.current_thread().name == "job-heartbeats" and not beating.is_set():
            beating.set()
            ended.wait(3)
        return real_utcnow()

    monkeypatch.setattr(job_runner, "utcnow", utcnow_pausing_the_heartbeat)

    def work(context: JobContext) -> str:
        assert beating.wait(10), "no heartbeat began"
        context.result("20261130T120000Z-restore")
        return "restored"

    runner = JobRunner(heartbeat=0.02, on_end=lambda job, rec: ended.set())
    runner.start(Job("cache", "restore", "snapshot", storage, work))
    assert runner.wait(15) and ended.wait(15)
    threading.Event().wait(0.3)  # a late beat, if any, has written by now
    final = stored(storage, "cache")["restore"]
    assert final.state == DONE and final.result == "20261130T120000Z-restore", final


def test_one_job_per_cluster_and_kind_and_the_fleet_wide_limit(storage: LocalStorage) -> None:
    gate = threading.Event()
    runner = JobRunner(JobLimits(backups=1), heartbeat=60)
    runner.start(gated_job(storage, "cache", gate))
    with pytest.raises(Waiting, match="already runs"):
        runner.start(gated_job(storage, "cache", gate))
    with pytest.raises(Waiting, match="1 of 1 backup jobs run fleet-wide"):
        runner.start(gated_job(storage, "pg-main", gate))
    assert runner.waiting()["backup"] == 1
    assert 'dbfleet_jobs_waiting{kind="backup"} 1.0' in metrics.render().decode()
    runner.start(gated_job(storage, "pg-main", gate, kind="drill"))  # drills have their own limit
    gate.set()
    assert runner.wait(10)
    runner.begin_cycle()
    assert runner.waiting()["backup"] == 0
    runner.start(gated_job(storage, "pg-main", gate))  # a slot is free again
    assert runner.wait(10)


def test_a_dr_drill_shares_the_drill_slots(storage: LocalStorage) -> None:
    gate = threading.Event()
    runner = JobRunner(JobLimits(drills=1), heartbeat=60)
    runner.start(gated_job(storage, "cache", gate, kind="drill"))
    with pytest.raises(Waiting, match="1 of 1 drill and dr-drill jobs run fleet-wide \\(operator.jobs.drills\\)"):
        runner.start(gated_job(storage, "pg-main", gate, kind="dr-drill"))  # both start a scratch server
    assert runner.waiting()["dr-drill"] == 1
    gate.set()
    assert runner.wait(10)
    runner.begin_cycle()
    two = JobRunner(JobLimits(drills=2), heartbeat=60)
    gate.clear()
    two.start(gated_job(storage, "cache", gate, kind="dr-drill"))
    two.start(gated_job(storage, "pg-main", gate, kind="drill"))
    gate.set()
    assert two.wait(10)


def test_a_failed_job_is_recorded_failed_and_inline_it_raises(storage: LocalStorage) -> None:
    gate = threading.Event()
    gate.set()
    ended: list[JobRecord] = []
    runner = JobRunner(on_end=lambda job, rec: ended.append(rec))
    runner.start(gated_job(storage, "cache", gate, fail=True))
    assert runner.wait(10)
    assert stored(storage, "cache")["backup"].state == JOB_FAILED and "disk full" in ended[0].message
    inline = JobRunner(inline=True)
    with pytest.raises(PermanentError, match="disk full"):
        inline.start(gated_job(storage, "cache", gate, fail=True))
    assert inline.start(gated_job(storage, "cache", gate)) == "backup taken"


def test_drain_waits_its_grace_then_leaves_the_rest_interrupted(storage: LocalStorage) -> None:
    gate = threading.Event()
    runner = JobRunner(heartbeat=60)
    runner.start(gated_job(storage, "cache", gate))
    left = runner.drain(0.2)
    assert [r.state for r in left] == [INTERRUPTED]
    assert stored(storage, "cache")["backup"].state == INTERRUPTED
    with pytest.raises(Waiting, match="stopping"):
        runner.start(gated_job(storage, "pg-main", gate))
    gate.set()


# --------------------------------------------------------------------------- the reconciler on jobs


class SlowTool(EngineBackups):
    """A stand-in tool whose backup waits for the test's gate, then writes one file."""

    engine, tool = "redis", "cp"

    def __init__(self, gate: threading.Event):
        self.gate = gate

    def tool_version(self, access: BackupAccess) -> str:
        return "1.0"

    def take(self, access: BackupAccess, pending: Manifest, prepared: Prepared | None = None) -> Manifest:
        assert self.gate.wait(10)
        key = f"dbfleet/cache/{pending.id}/dump.rdb"
        access.storage.put_bytes(key, b"REDIS0011")
        return pending.completed(utcnow(), [access.storage.measure(key)])

    def restore(self, *a: Any) -> Any:
        raise NotImplementedError

    def verify(self, *a: Any) -> Any:
        raise NotImplementedError


class Session:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_the_reconciler_starts_a_backup_job_and_later_cycles_observe_it(
        storage: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    monkeypatch.setattr(runner_module, "adapter_for", lambda engine: SlowTool(gate))
    cache = FLEET.cluster("cache")
    sessions: list[Session] = []

    def own_session(cluster: Any, session: Any) -> Any:
        sessions.append(Session())
        return sessions[-1]

    reconciler = BackupReconciler(lambda cluster, session: BackupAccess(
        cluster, None, storage, session=session, progress=Progress("t", quiet=True)),  # type: ignore[arg-type]
        JobRunner(heartbeat=60), own_session)
    cycle_session: Any = Session()
    action = Action("cache", "backups", "backup", "snapshot", "due", detail={"kind": "snapshot"})
    reconciler.observe(cache, cycle_session)
    assert reconciler.act(action, cycle_session).startswith("started backup job")
    _, obs = reconciler.observe(cache, cycle_session)
    assert obs.backing_up and [v.alive for v in obs.jobs] == [True]
    assert "backup" not in [a.kind for a in reconciler.diff(cache, (cache, obs))]
    assert any("running for" in n for n in reconciler.notes((cache, obs)))
    assert "backup snapshot" in job_columns(reconciler.status(cache, (cache, obs), []))["jobs"]
    gate.set()
    assert reconciler.runner.wait(10)
    _, obs = reconciler.observe(cache, cycle_session)
    [m] = obs.manifests
    assert m.status == "complete" and obs.jobs[0].record.state == DONE and obs.jobs[0].record.result == m.id
    assert sessions[0].closed == 1 and cycle_session.closed == 0  # the job used, and closed, a session of its own


def test_a_job_left_running_by_a_dead_operator_is_settled_and_its_backup_never_taken_twice(
        storage: LocalStorage) -> None:
    cache = FLEET.cluster("cache")
    # Started now: after the schedule's latest firing whatever the minute, so no new snapshot is due.
    done = manifest("20261130T120000Z-snapshot", "complete", utcnow())
    storage.save_manifest(done)
    dead = record(host="gone-machine", beat=utcnow() - timedelta(seconds=STALE_AFTER + 5),
                  started=utcnow() - timedelta(minutes=2))
    storage.put_bytes(dead.key, dead.to_json().encode())
    reconciler = BackupReconciler(lambda cluster, session: BackupAccess(
        cluster, None, storage, session=session, progress=Progress("t", quiet=True)),  # type: ignore[arg-type]
        JobRunner(heartbeat=60), lambda cluster, session: Session())  # type: ignore[arg-type,return-value]
    session: Any = Session()
    _, obs = reconciler.observe(cache, session)
    [settle_action] = [a for a in reconciler.diff(cache, (cache, obs)) if a.kind == "settle-job"]
    said = reconciler.act(settle_action, session)
    assert "done" in said and done.id in said
    _, obs = reconciler.observe(cache, session)
    assert obs.jobs[0].record.state == DONE
    assert {a.kind for a in reconciler.diff(cache, (cache, obs))} & {"backup", "settle-job", "mark-orphaned"} == set()
    assert reconciler.act(settle_action, session) == f"job {dead.id} needs no settling any more"
