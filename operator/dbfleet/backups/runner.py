"""Take and prune backups for one cluster: the manifest life cycle around whichever tool the engine drives.

A backup runs under the cluster's lock. Before it starts, manifests still
`pending` from an earlier, interrupted run are marked `orphaned` (the lock
proves nothing else is writing them). The new manifest is saved `pending`,
the tool runs, and only then is it saved `complete` with its checksums. A tool
failure saves it `failed`; a killed operator leaves it `pending`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from datetime import datetime

from dbfleet.actions import Outcome
from dbfleet.backups.access import BackupAccess, backup_lock
from dbfleet.backups.adapters import adapter_for
from dbfleet.backups.dr import describe, failed_copy
from dbfleet.backups.engine import EngineBackups, Prepared
from dbfleet.backups.job_runner import job_lock_held
from dbfleet.backups.jobs import RESTORE, JobRecord, JobView, job_alive
from dbfleet.backups.manifest import PENDING, Manifest, utcnow
from dbfleet.backups.plan import BackupObservation, prune_action
from dbfleet.backups.retention import Expiry, expired_backups
from dbfleet.errors import ReconcileError

log = logging.getLogger(__name__)


def mark_orphans(access: BackupAccess, manifests: list[Manifest] | None = None) -> list[Manifest]:
    """Mark every pending manifest orphaned (of `manifests`, when just read); call only while holding the
    cluster's backup lock."""
    marked = []
    for m in access.storage.manifests(access.name) if manifests is None else manifests:
        if m.status == PENDING:
            orphan = m.orphaned(f"interrupted: still pending when a later run started at {utcnow():%Y-%m-%dT%H:%M}Z")
            access.storage.save_manifest(orphan)
            marked.append(orphan)
            log.warning("%s: backup %s never finished; marked orphaned", access.name, m.id)
    return marked


def take_backup(access: BackupAccess, kind: str, adapter: EngineBackups | None = None,
                now: datetime | None = None, on_pending: Callable[[Manifest], None] | None = None) -> Manifest:
    """Take one backup of `kind` now; return its complete manifest or raise (manifest saved failed).

    `on_pending` is told the pending manifest once it is saved (a job names its backup in its record)."""
    from dbfleet.monitoring.metrics import record_action, record_backup

    adapter = adapter or adapter_for(access.cluster.engine)
    with backup_lock(access.name):
        history = access.storage.manifests(access.name)
        mark_orphans(access, history)
        prepared = adapter.prepare(access, history)
        pending = adapter.new_manifest(access, kind, now or utcnow(), prepared.tool_version)
        access.storage.save_manifest(pending)
        if on_pending is not None:
            on_pending(pending)
        try:
            with access.progress.step(f"{access.name}: {kind} backup {pending.id} with {adapter.tool}"):
                done = adapter.take(access, pending, prepared)
        except Exception as exc:
            message = exc.render() if isinstance(exc, ReconcileError) else f"{type(exc).__name__}: {exc}"
            access.storage.save_manifest(pending.aborted(message, utcnow()))
            raise
        access.storage.save_manifest(done)
        if access.dr is not None:
            copy_to_dr(access, access.dr, adapter, pending, done, prepared)
    finished = done.finished or utcnow()
    record_backup(access.name, done.kind, finished.timestamp(), done.size_bytes,
                  (finished - done.started).total_seconds())
    record_action(access.name, "backup")
    return done


def copy_to_dr(access: BackupAccess, dr: BackupAccess, adapter: EngineBackups, pending: Manifest, done: Manifest,
               prepared: Prepared) -> Manifest:
    """Write the backup `done` to the second target too (under the cluster's backup lock): its manifest there is
    pending while the engine copies it, then complete, or failed with the reason. Never raises: the backup is in
    the first target, and the planner reports a copy the second target lacks."""
    from dbfleet.monitoring.metrics import record_action

    mark_orphans(dr)
    dr.storage.save_manifest(pending)
    try:
        with access.progress.step(f"{access.name}: backup {done.id} to the second target {dr.storage.description}"):
            copy = adapter.copy_to_dr(access, dr, pending, done, prepared)
    except Exception as exc:  # recorded in the second target's manifest and reported by the planner
        copy = failed_copy(pending, describe(exc))
        log.error("%s: backup %s did not reach the second target %s: %s", access.name, done.id,
                  dr.storage.description, copy.error)
    dr.storage.save_manifest(copy)
    if copy.good:
        record_action(access.name, "dr-copy")
    return copy


def targets(access: BackupAccess) -> list[BackupAccess]:
    """The cluster's targets: the first, and the second (dr) when it has one."""
    return [access] + ([access.dr] if access.dr is not None else [])


def restore_running(accesses: list[BackupAccess]) -> JobRecord | None:
    """A restore of the cluster that its record in one of `accesses`' targets says runs now (its job lock on this
    machine, or a fresh heartbeat from another): nothing is pruned meanwhile, nor a second restore started."""
    now, host = utcnow(), socket.gethostname()
    for access in accesses:
        held = job_lock_held(access.name, RESTORE)
        for record in access.storage.jobs(access.name):
            if record.kind == RESTORE and job_alive(record, now, host, held):
                return record
    return None


def plan_prune(access: BackupAccess, now: datetime | None = None) -> list[Expiry]:
    return expired_backups(access.storage.manifests(access.name), access.cluster.backup.retention, now or utcnow())


def prune(access: BackupAccess, adapter: EngineBackups | None = None, now: datetime | None = None,
          record: Callable[[Outcome], None] | None = None) -> list[str]:
    """Delete what retention allows (only backups a newer verified one supersedes); return what went. With
    `record` (the audit trail's, for `dbfleet backup prune`), each backup's deletion is recorded as the loop's
    prune action would be: done with its line, or failed with the error."""
    adapter = adapter or adapter_for(access.cluster.engine)
    expiries = plan_prune(access, now)
    if not expiries:
        return []
    started = time.monotonic()
    with backup_lock(access.name):
        try:
            done = adapter.delete(access, expiries)
        except Exception as exc:
            if record is not None:
                for expiry in expiries:
                    record(Outcome(prune_action(access.name, expiry), "failed", str(exc), 1,
                                   time.monotonic() - started))
            raise
    if record is not None:
        seconds = time.monotonic() - started
        for expiry, line in zip(expiries, done, strict=True):
            record(Outcome(prune_action(access.name, expiry), "done", line, 1, seconds))
    return done


def observe(access: BackupAccess, runs_here: Callable[[str, str], bool] | None = None) -> BackupObservation:
    """What the target holds for the planner, and which of the cluster's jobs still run (`runs_here`: those of
    this process's job runner)."""
    from dbfleet.backups.access import backup_running

    manifests = access.storage.manifests(access.name)
    last_drill = access.storage.last_drill(access.name)
    now, host = utcnow(), socket.gethostname()
    jobs = tuple(JobView(r, bool(runs_here and runs_here(r.cluster, r.kind))
                         or job_alive(r, now, host, job_lock_held(r.cluster, r.kind)))
                 for r in access.storage.jobs(access.name))
    second = observe(access.dr, runs_here) if access.dr is not None else None
    absent = absent_files(access, manifests) if access.second else {}
    return BackupObservation(manifests, last_drill, backup_running(access.name),
                             tuple(access.storage.invalid_records(access.name)), jobs, second, absent)


def absent_files(access: BackupAccess, manifests: list[Manifest]) -> dict[str, tuple[str, ...]]:
    """The files each good manifest lists that its target no longer holds, by backup id (only those missing
    some). One listing per directory the files are in, not per file: the sizes and checksums are the drill's."""
    wanted = [m for m in manifests if m.good]
    folders = {entry.key.rsplit("/", 1)[0] + "/" for m in wanted for entry in m.files}
    present = {obj.key for folder in sorted(folders) for obj in access.storage.list(folder)}
    found = {m.id: tuple(e.key for e in m.files if e.key not in present) for m in wanted}
    return {backup: keys for backup, keys in found.items() if keys}
