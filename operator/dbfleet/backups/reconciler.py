"""The backups reconciler for the operator loop: observe the target, plan (plan.py), and act.

dbfleet.wiring lists it among the reconcilers a cycle runs and tells it how
to build a cluster's BackupAccess from an engine session. A backup and a drill
run as jobs (job_runner.py) on a session of their own, outside the cycle:
the act starts one, later cycles see it in its record, and a job whose
operator stopped is settled from what it left. A drill that fails raises a
PermanentError in its job, so it is reported once and never retried into
green; a backup whose host is unreachable fails its job and waits for the
next slot of its schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from functools import partial
from typing import Any

from dbfleet.actions import Action
from dbfleet.backups.access import BackupAccess, backup_lock, drop_lock, take_lock
from dbfleet.backups.adapters import adapter_for
from dbfleet.backups.dr import standby_checks
from dbfleet.backups.drills import run_drill
from dbfleet.backups.job_runner import Job, JobContext, JobRunner
from dbfleet.backups.jobs import BACKUP, DR_DRILL, DRILL, JobView, settle
from dbfleet.backups.manifest import PENDING, DrillRecord, newest_good, utcnow
from dbfleet.backups.plan import RECONCILER, BackupObservation, missing_copies, planned_backup_actions
from dbfleet.backups.retention import expired_backups
from dbfleet.backups.runner import mark_orphans, observe, restore_running, take_backup, targets
from dbfleet.engines import AnySession, open_session
from dbfleet.engines.base import AnyCluster
from dbfleet.errors import PermanentError, Waiting
from dbfleet.monitoring import metrics
from dbfleet.spec import Fleet
from dbfleet.units import age

AccessFactory = Callable[[AnyCluster, AnySession], BackupAccess]
"""Builds a cluster's BackupAccess from the cycle's engine session (see dbfleet.wiring)."""


class BackupReconciler:
    """Takes scheduled backups, runs due drills, prunes what retention allows, marks orphans."""

    name = RECONCILER

    def __init__(self, access_for: AccessFactory, runner: JobRunner | None = None,
                 session_for: Callable[[AnyCluster, AnySession], AnySession] | None = None) -> None:
        self.access_for = access_for
        self.runner = runner or JobRunner(inline=True)
        """Runs backups and drills; without one, each runs to its end inside the act (as `--once` does)."""
        self.session_for = session_for or (lambda cluster, session: open_session(cluster, session.access))
        """A job's own engine session: the cycle's is not shared with a thread that outlives the act."""
        self._access: dict[str, BackupAccess] = {}

    def applies_to(self, cluster: AnyCluster) -> bool:
        return bool(cluster.backup.enabled)

    def observe(self, cluster: AnyCluster, session: AnySession) -> tuple[AnyCluster, BackupObservation]:
        access = self._access.get(cluster.name)
        if access is None or access.session is not session:
            access = self._access[cluster.name] = self.access_for(cluster, session)
        observed = observe(access, self.runner.is_running)
        if observed.dr is not None:
            from dbfleet.monitoring.metrics import record_dr_copies_missing

            record_dr_copies_missing(cluster.name, len(missing_copies(observed.manifests, observed.dr.manifests,
                                                                      observed.backing_up, observed.dr.absent)))
        return cluster, observed

    def diff(self, cluster: AnyCluster, observed: tuple[AnyCluster, BackupObservation]) -> list[Action]:
        _, obs = observed
        fleet = Fleet.model_construct(clusters=[cluster])
        return planned_backup_actions(fleet, {cluster.name: obs})

    def act(self, action: Action, session: AnySession) -> str:
        access = self._access[action.cluster]
        if action.kind == "backup":
            return self.runner.start(Job(action.cluster, BACKUP, action.detail["kind"], access.storage,
                                         self._job_work(access, action, session), action))
        if action.kind in (DRILL, DR_DRILL):
            where = target_of(access, action)
            return self.runner.start(Job(action.cluster, action.kind, action.target, where.storage,
                                         self._job_work(access, action, session), action))
        access = target_of(access, action)
        if action.kind == "settle-job":
            return self._settle(access, action.target, action.detail["job"])
        if action.kind == "mark-orphaned":
            with backup_lock(action.cluster):
                return f"marked {len(mark_orphans(access))} orphaned"
        if action.kind == "prune":
            return self._prune(self._access[action.cluster], access, action)
        raise PermanentError(f"unknown backup action {action.kind}", cluster=action.cluster)

    def _prune(self, root: BackupAccess, access: BackupAccess, action: Action) -> str:
        """Re-plan under the current state right before deleting: only the chosen backup, only if still allowed,
        never while a restore reads either target, and under the cluster's backup lock (a backup, and its copy
        into the second target, holds it: pgbackrest expire would race it)."""
        restoring = restore_running(targets(root))
        if restoring is not None:
            raise Waiting(f"restore job {restoring.id} ({restoring.owner}) reads the backups; the prune waits",
                          cluster=action.cluster, action="prune")
        lock = take_lock(action.cluster, "backup")
        if lock is None:
            raise Waiting(f"a backup of {action.cluster} runs (its lock is held); the prune waits",
                          cluster=action.cluster, action="prune")
        try:
            manifests = access.storage.manifests(access.name)
            expiries = [e for e in expired_backups(manifests, access.cluster.backup.retention, utcnow())
                        if e.root == action.detail.get("root")]
            if not expiries:
                return "nothing to prune any more"
            return "; ".join(adapter_for(access.cluster.engine).delete(access, expiries))
        finally:
            drop_lock(lock)

    def _job_work(self, access: BackupAccess, action: Action, session: AnySession) -> Callable[[JobContext], str]:
        """The job that takes the backup or runs the drill, on an engine session of its own."""

        def work(context: JobContext) -> str:
            own = self.session_for(access.cluster, session)
            try:
                job_access = self.access_for(access.cluster, own)
                job_access.progress = context.progress
                if action.kind == "backup":
                    done = take_backup(job_access, action.detail["kind"],
                                       on_pending=lambda pending: context.result(pending.id))
                    return f"{done.kind} backup {done.id} complete, {done.size_bytes} bytes"
                live = partial(standby_checks, access.cluster, own) if action.kind == DR_DRILL else None
                record = run_drill(target_of(job_access, action), extra=live)
                context.result(record.id)
                if not record.ok:
                    raise PermanentError(f"restore drill {record.id} of {record.backup_id} failed: {record.message}",
                                         cluster=action.cluster, action="drill")
                return f"drill {record.id}: RTO {record.rto_seconds}s, RPO {record.rpo_seconds}s"
            finally:
                own.close()

        return work

    def _settle(self, access: BackupAccess, job_id: str, kind: str) -> str:
        """Write the true outcome of a job whose operator stopped, if its record still says so."""
        obs = observe(access, self.runner.is_running)
        view = next((v for v in obs.jobs if v.record.kind == kind and v.record.id == job_id), None)
        if view is None or not view.stopped_unsettled:
            return f"job {job_id} needs no settling any more"
        record = settle(view.record, obs.manifests, access.storage.drills(access.name), utcnow())
        access.storage.put_bytes(record.key, record.to_json().encode())
        return f"{kind} job {job_id}: {record.state}: {record.message}"

    def notes(self, observed: tuple[AnyCluster, BackupObservation]) -> list[str]:
        _, obs = observed
        pending = [m.id for m in obs.manifests if m.status == PENDING]
        now = utcnow()
        notes = [f"job {v.record.describe(now)}" for v, _ in all_jobs(obs) if v.alive]
        if pending and obs.running and not notes:
            notes.append(f"backup {', '.join(pending)} in progress")
        return notes

    def status(self, cluster: AnyCluster, observed: tuple[AnyCluster, BackupObservation],
               actions: list[Action]) -> dict[str, Any]:
        """Also the metrics of the cluster's running jobs that another process runs (a user's restore)."""
        jobs = all_jobs(observed[1])
        metrics.set_observed_jobs(cluster.name, [
            (v.record.kind, v.record.started.timestamp(), v.record.heartbeat.timestamp()) for v, _ in jobs
            if v.alive and not self.runner.is_running(cluster.name, v.record.kind)])
        return {"backups": backup_status(observed[1]), "jobs": job_status(jobs)}


def all_jobs(obs: BackupObservation) -> list[tuple[JobView, str]]:
    """The cluster's job records in both targets, each with where it is ('primary' or 'dr'): a DR drill's and a
    restore from the second target (`restore --from dr`) are kept there."""
    return [(v, "primary") for v in obs.jobs] + [(v, "dr") for v in (obs.dr.jobs if obs.dr is not None else ())]


def target_of(access: BackupAccess, action: Action) -> BackupAccess:
    """The target an action works on: the second (dr) one when its detail says so, else the first."""
    if action.detail.get("target") != "dr":
        return access
    if access.dr is None:
        raise PermanentError("the action names the second target, but the spec gives the cluster no dr section",
                             cluster=access.name, action=action.kind)
    return access.dr


def job_status(jobs: list[tuple[JobView, str]]) -> list[dict[str, Any]]:
    """The cluster's jobs as `status --json` shows them: kind, target, state, age, step or outcome, and the backup
    target its record is in (`in`: primary or dr)."""
    now = utcnow()
    return [{"id": v.record.id, "kind": v.record.kind, "target": v.record.target, "in": where,
             "state": v.record.state if v.alive or not v.stopped_unsettled else "stopped (to settle)",
             "age_s": round(v.record.age(now)), "step": v.record.step, "message": v.record.message,
             "owner": v.record.owner, "line": v.record.describe(now)} for v, where in jobs]


def job_columns(status: dict[str, Any]) -> dict[str, Any]:
    """The `jobs` column of `status`: each running job with its age and step; '-' when none runs. The maintenance
    reconciler's rewrite job (status `rewrite_job`) is shown too when the backups' records did not list it."""
    jobs = status.get("jobs", ())
    rewrite = status.get("rewrite_job")
    if "jobs" not in status and not rewrite:
        return {}
    running = [f"{j['kind']} {j['target']} {age(j['age_s'])}" + (f" ({j['step']})" if j["step"] else "")
               for j in jobs if j["state"] == "running"]
    if rewrite and rewrite["state"] == "running" and rewrite["id"] not in {j["id"] for j in jobs}:
        running.append(rewrite["line"])
    return {"jobs": "; ".join(running) or "-"}


def backup_status(obs: BackupObservation) -> dict[str, Any]:
    """The figures `status` shows: newest good backup, last drill with RTO and RPO."""
    good = newest_good(obs.manifests)
    drill = obs.last_drill
    now = utcnow()
    return {
        "count": len(obs.manifests),
        "newest_good": good.id if good else None,
        "newest_good_kind": good.kind if good else None,
        "newest_good_age_s": round((now - (good.finished or good.started)).total_seconds())
        if good else None,
        "last_drill": drill_figures(drill),
        **({"dr": dr_status(obs, obs.dr)} if obs.dr is not None else {}),
    }


def drill_figures(drill: DrillRecord | None) -> dict[str, Any] | None:
    """A drill record as `status --json` shows it."""
    return None if drill is None else {
        "id": drill.id, "backup": drill.backup_id, "ok": drill.ok, "rto_s": drill.rto_seconds,
        "rpo_s": drill.rpo_seconds, "finished": drill.finished.astimezone(UTC).isoformat(),
        "message": drill.message}


def dr_status(obs: BackupObservation, second: BackupObservation) -> dict[str, Any]:
    """The second target's figures: good backups it lacks, and its last DR drill with RTO and RPO."""
    return {
        "copies_missing": len(missing_copies(obs.manifests, second.manifests, obs.backing_up, second.absent)),
        "count": len(second.manifests),
        "last_drill": drill_figures(second.last_drill),
    }


def backup_columns(cluster: AnyCluster, status: dict[str, Any]) -> dict[str, Any]:
    """`status` columns from `backup_status`: newest good backup and its age, the last drill with RTO and RPO."""
    figures = status.get("backups")
    if not cluster.backup.enabled:
        return {"last_backup": "disabled"}
    if figures is None:
        return {}
    row = {"last_backup": "none" if figures["newest_good"] is None
           else f"{figures['newest_good_kind']} {age(figures['newest_good_age_s'])} ago"}
    drill = figures["last_drill"]
    if drill is None:
        row.update({"last_drill": "never", "rto": "-", "rpo": "-"})
    else:
        row.update({"last_drill": "ok" if drill["ok"] else f"FAILED ({drill['backup']})",
                    "rto": f"{drill['rto_s']:.1f}s" if drill["rto_s"] is not None else "-",
                    "rpo": age(drill["rpo_s"]) if drill["rpo_s"] is not None else "-"})
    if "dr" in figures:
        row["dr"] = dr_column(figures["dr"])
    return row


def dr_column(dr: dict[str, Any]) -> str:
    """The `dr` column of `status`: copies the second target lacks, and its last DR drill with RTO and RPO."""
    missing = f"{dr['copies_missing']} copies missing" if dr["copies_missing"] else "copies ok"
    drill = dr["last_drill"]
    if drill is None:
        return f"{missing}; DR drill never"
    if not drill["ok"]:
        return f"{missing}; DR drill FAILED ({drill['backup']})"
    rto = f"{drill['rto_s']:.1f}s" if drill["rto_s"] is not None else "-"
    rpo = age(drill["rpo_s"]) if drill["rpo_s"] is not None else "-"
    return f"{missing}; DR drill ok, RTO {rto}, RPO {rpo}"

