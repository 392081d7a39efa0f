"""The backup reconciler's diff: from the spec and what the targets hold, the actions `plan` shows first.

Pure: the observation (manifests, last drill, whether a backup runs now) is
gathered elsewhere (`observe_backups`), so this is unit-tested without servers.
Action kinds: `settle-job` (a job whose operator stopped gets its true outcome
written), `mark-orphaned`, `backup` and `drill` (each starts a job), `prune`
(destructive), and `report-drill-failed`, which only informs (and is what the
alert fires on), `report-job-failed`, and `report-invalid-manifest`, which names
a manifest, drill or job record in the target that failed its checks and was
left out. A backup or drill whose job still runs is not planned again; while
a user's restore (`dbfleet restore`) is recorded running in either target, a
prune in either is reported waiting (`report-prune-waits`) rather than expiring
what the restore reads; a prune of the second target also waits while a backup
runs (it copies into that target).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from dbfleet.actions import Action
from dbfleet.backups.jobs import BACKUP, DR_DRILL, DRILL, JOB_FAILED, RESTORE, JobRecord, JobView
from dbfleet.backups.manifest import FAILED, PENDING, DrillRecord, Manifest, newest_first, utcnow
from dbfleet.backups.retention import Expiry, expired_backups
from dbfleet.backups.scheduler import drill_due, due_backup
from dbfleet.backups.storage import InvalidRecord
from dbfleet.schedule import is_due
from dbfleet.spec import BackupPolicy, DrPolicy, Fleet

RECONCILER = "backups"


@dataclass(frozen=True)
class BackupObservation:
    """What one cluster's backup target holds now."""

    manifests: list[Manifest] = field(default_factory=list)
    last_drill: DrillRecord | None = None
    running: bool = False
    """A backup of this cluster is in progress (its lock is held), so pending manifests are live."""
    invalid: tuple[InvalidRecord, ...] = ()
    """Manifests and drill records in the target that failed their checks: left out of `manifests`."""
    jobs: tuple[JobView, ...] = ()
    """The cluster's job records (one per kind at most), each seen alive or not."""
    dr: BackupObservation | None = None
    """What the second target (the spec's dr.target) holds, when the cluster has one."""
    absent: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Second target only: the files each good manifest lists that are not there (by backup id)."""

    def job_runs(self, kind: str) -> bool:
        return any(v.alive and v.record.kind == kind for v in self.jobs)

    @property
    def backing_up(self) -> bool:
        """A backup runs now: its lock is held on this machine, or its job is alive (on any machine)."""
        return self.running or self.job_runs(BACKUP)


def drill_candidate(manifests: list[Manifest]) -> Manifest | None:
    """The backup a drill restores: the newest one that finished, whatever its verdict so far."""
    return next((m for m in newest_first(manifests) if m.status not in (PENDING, "orphaned")), None)


def planned_backup_actions(fleet: Fleet, observed: Mapping[str, BackupObservation],
                           now: datetime | None = None) -> list[Action]:
    """Actions for every cluster with backups enabled; clusters missing from `observed` are skipped."""
    now = now or utcnow()
    actions: list[Action] = []
    for cluster in fleet.clusters:
        policy = cluster.backup
        obs = observed.get(cluster.name)
        if not policy.enabled or obs is None:
            continue
        name = cluster.name
        for record in obs.invalid:
            actions.append(Action(name, RECONCILER, "report-invalid-manifest", record.key, record.reason,
                                  detail={"key": record.key}))
        actions += job_actions(name, obs.jobs)
        if not obs.backing_up:
            for m in obs.manifests:
                if m.status == PENDING:
                    actions.append(Action(name, RECONCILER, "mark-orphaned", m.id,
                                          f"pending since {m.started_at} and no backup is running",
                                          detail={"backup": m.id}))
        due = due_backup(cluster.engine, policy, obs.manifests, now)
        if due is not None and not obs.backing_up:
            actions.append(Action(name, RECONCILER, "backup", due.kind, due.reason(),
                                  detail={"kind": due.kind, "target": policy.target.kind}))
        if obs.last_drill is not None and not obs.last_drill.ok:
            actions.append(Action(name, RECONCILER, "report-drill-failed", obs.last_drill.backup_id,
                                  f"drill {obs.last_drill.id} failed: {obs.last_drill.message}",
                                  detail={"drill": obs.last_drill.id}))
        candidate = drill_candidate(obs.manifests)
        if candidate is not None and drill_due(policy, obs.last_drill, now) and not obs.job_runs(DRILL):
            if candidate.status == FAILED:
                # Never retried into green: a failed backup stays failed until a newer one is taken.
                actions.append(Action(name, RECONCILER, "report-drill-failed", candidate.id,
                                      f"the newest backup {candidate.id} is failed ({candidate.error or 'drill'}); "
                                      "take a new backup to drill", detail={"backup": candidate.id}))
            else:
                actions.append(Action(name, RECONCILER, "drill", candidate.id,
                                      f"drill schedule {policy.drill.schedule!r} is due; newest backup "
                                      f"{candidate.id} ({candidate.status})", detail={"backup": candidate.id}))
        restoring = live_restore(obs)
        for expiry in expired_backups(obs.manifests, policy.retention, now):
            if restoring is not None:
                actions.append(prune_waits(name, expiry, restoring_why(restoring), restoring.id))
                continue
            actions.append(prune_action(name, expiry))
        if cluster.dr is not None and obs.dr is not None:
            actions += dr_actions(cluster.dr, policy, obs, obs.dr, now, name)
    return actions


def live_restore(obs: BackupObservation) -> JobRecord | None:
    """A user's restore recorded running in either target: neither target prunes meanwhile, whichever one it reads
    (one restore per cluster; the prune act and `dbfleet backup prune` check the records again right before
    deleting: dbfleet.backups.runner.restore_running)."""
    views = obs.jobs + (obs.dr.jobs if obs.dr is not None else ())
    return next((v.record for v in views if v.alive and v.record.kind == RESTORE), None)


def restoring_why(record: JobRecord) -> str:
    return f"restore job {record.id} ({record.owner}) reads the backups"


def prune_waits(cluster: str, expiry: Expiry, why: str, job: str, **where: str) -> Action:
    """A prune the retention allows, held while `why` holds (a restore reads the backups, a backup writes them);
    `job`: the id of the job it waits for ('' when only the backup lock says one runs)."""
    return Action(cluster, RECONCILER, "report-prune-waits", expiry.backup.id, f"{expiry.describe()}; waits while "
                  f"{why}", detail={"backup": expiry.backup.id, "job": job, **where})


def missing_copies(first: list[Manifest], second: list[Manifest], backing_up: bool,
                   absent: Mapping[str, tuple[str, ...]] | None = None) -> list[tuple[Manifest, str]]:
    """Each good backup of the first target that the second does not hold as a good one (`absent`: files its
    manifest there lists that are gone), with why. The newest is left out while a backup runs: its copy is being
    made."""
    held = {m.id: m for m in second}
    absent = absent or {}
    good = newest_first(m for m in first if m.good)
    if backing_up and good:
        good = good[1:]
    missing = []
    for backup in good:
        copy = held.get(backup.id)
        if copy is None:
            missing.append((backup, "the second target holds no manifest of it"))
        elif not copy.good:
            why = copy.error or (copy.verification.message if copy.verification else "")
            missing.append((backup, f"its copy there is {copy.status}" + (f": {why}" if why else "")))
        elif absent.get(backup.id):
            gone = absent[backup.id]
            missing.append((backup, f"{len(gone)} of its {len(copy.files)} files are gone from there, first "
                                    f"{gone[0]}"))
    return missing


def dr_actions(dr: DrPolicy, policy: BackupPolicy, obs: BackupObservation, second: BackupObservation,
               now: datetime, name: str) -> list[Action]:
    """The second target's findings and work: copies it lacks, its records that fail their checks, its DR drill
    (due, failed, over the RPO) and its own retention. Every action names the target in detail."""
    where = {"target": "dr"}
    actions = [Action(name, RECONCILER, "report-invalid-manifest", f"dr:{r.key}", r.reason,
                      detail={"key": r.key, **where}) for r in second.invalid]
    actions += [replace(a, detail={**a.detail, **where}) for a in job_actions(name, second.jobs)]
    for backup, why in missing_copies(obs.manifests, second.manifests, obs.backing_up, second.absent):
        actions.append(Action(name, RECONCILER, "report-dr-copy-missing", backup.id,
                              f"{backup.kind} backup {backup.id} is not in the second target: {why}",
                              detail={"backup": backup.id, **where}))
    last = second.last_drill
    if last is not None and not last.ok:
        actions.append(Action(name, RECONCILER, "report-dr-drill-failed", last.backup_id,
                              f"DR drill {last.id} from the second target failed: {last.message}",
                              detail={"drill": last.id, **where}))
    if last is not None and last.ok and last.rpo_seconds is not None and last.rpo_seconds > dr.rpo_seconds:
        actions.append(Action(name, RECONCILER, "report-dr-rpo-exceeded", last.backup_id,
                              f"DR drill {last.id} restored to {last.rpo_seconds:.0f}s before it ended; "
                              f"dr.rpo_seconds allows {dr.rpo_seconds}s", detail={"drill": last.id, **where}))
    candidate = drill_candidate(second.manifests)
    due = is_due(dr.drill.schedule, last.finished if last else None, now)
    if candidate is not None and due and not second.job_runs(DR_DRILL):
        if candidate.status == FAILED:
            actions.append(Action(name, RECONCILER, "report-dr-drill-failed", candidate.id,
                                  f"the second target's newest backup {candidate.id} is failed "
                                  f"({candidate.error or 'drill'})", detail={"backup": candidate.id, **where}))
        else:
            actions.append(Action(name, RECONCILER, DR_DRILL, candidate.id,
                                  f"dr.drill schedule {dr.drill.schedule!r} is due; the second target's newest "
                                  f"backup {candidate.id} ({candidate.status})", detail={"backup": candidate.id,
                                                                                         **where}))
    restoring = live_restore(obs)
    backing_up = next((v.record for v in obs.jobs if v.alive and v.record.kind == BACKUP), None)
    for expiry in expired_backups(second.manifests, policy.retention, now):
        if restoring is not None:
            actions.append(prune_waits(name, expiry, restoring_why(restoring), restoring.id, **where))
            continue
        if obs.backing_up:
            # pgbackrest --repo=2 expire (or the dump copy's folder deleted) would race the backup's copy into it.
            doing = f"backup job {backing_up.id} ({backing_up.owner})" if backing_up else "a backup of the cluster"
            actions.append(prune_waits(name, expiry, f"{doing} runs and copies into the second target",
                                      backing_up.id if backing_up else "", **where))
            continue
        actions.append(Action(name, RECONCILER, "prune", f"dr:{expiry.backup.id}", expiry.describe(),
                              destructive=True, detail={"backup": expiry.backup.id, "root": expiry.root,
                                                        "superseded_by": expiry.superseded_by, **where}))
    return actions


def prune_action(cluster: str, expiry: Expiry) -> Action:
    """Deleting one backup the retention lets go: the loop's action, and what `dbfleet backup prune` records."""
    return Action(cluster, RECONCILER, "prune", expiry.backup.id, expiry.describe(), destructive=True,
                  detail={"backup": expiry.backup.id, "root": expiry.root, "superseded_by": expiry.superseded_by})


SETTLED_HERE = (BACKUP, DRILL, RESTORE, DR_DRILL)
"""The job kinds whose true end the backup target says: their records are settled by this reconciler."""


def job_actions(cluster: str, jobs: tuple[JobView, ...]) -> list[Action]:
    """A job whose operator stopped while it ran gets its true outcome written (settle-job); a backup job that
    failed is reported until the next one replaces its record (a failed drill has report-drill-failed)."""
    actions = []
    for view in jobs:
        record = view.record
        if record.kind not in SETTLED_HERE:
            continue  # a rewrite is the maintenance reconciler's: settled from the catalog
        if view.stopped_unsettled:
            actions.append(Action(cluster, RECONCILER, "settle-job", record.id,
                                  f"its record says running, but its operator ({record.owner}) stopped: last "
                                  f"heartbeat {record.heartbeat_at}", detail={"job": record.kind}))
        elif record.kind == BACKUP and record.state == JOB_FAILED:
            actions.append(Action(cluster, RECONCILER, "report-job-failed", record.id,
                                  f"{record.kind} {record.target} failed at {record.finished_at}: {record.message}",
                                  detail={"job": record.kind}))
    return actions
