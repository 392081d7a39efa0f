"""Restore drills: prove the newest backup restores, and record RTO and RPO; plus restores on demand.

A drill takes the newest finished backup of a cluster, checks every stored
file against the manifest's sha256 (naming the first file that differs),
restores it into a scratch host (backups.scratch), and runs the engine's checks there.
RTO is the time from the start of the restore to a server answering queries;
RPO is how old, when the drill ends, the newest point the restored server
holds is. The record is saved next to the backups, the backup's manifest
becomes `verified` or `failed`, and the metrics (and so `status` and the
alert) follow. A failed backup is never drilled again: it stays red until a
newer backup passes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from dbfleet.backups.access import BackupAccess
from dbfleet.backups.adapters import adapter_for
from dbfleet.backups.engine import EngineBackups, Restored, RestoreTarget
from dbfleet.backups.manifest import FAILED, Check, DrillRecord, Manifest, iso, utcnow
from dbfleet.backups.plan import drill_candidate
from dbfleet.backups.scratch import ScratchHost
from dbfleet.errors import PermanentError, ReconcileError

log = logging.getLogger(__name__)


@contextmanager
def scratch_for(access: BackupAccess, purpose: str, keep: bool = False) -> Iterator[ScratchHost]:
    """A scratch server host for this cluster's engine from the access's provider, removed unless `keep`."""
    if access.scratch is None:
        raise PermanentError("restores into scratch need scratch hosts, which only the lab provides today "
                             "(the inventory has no dbfleet_lab); on AWS restore onto a fresh host with the restore "
                             "playbook", cluster=access.name, action=purpose)
    with access.scratch.scratch(access.cluster.engine, purpose, keep=keep) as scratch:
        yield scratch


def _describe(exc: BaseException) -> str:
    return exc.render() if isinstance(exc, ReconcileError) else f"{type(exc).__name__}: {exc}"


def run_drill(access: BackupAccess, adapter: EngineBackups | None = None,
              extra: Callable[[], list[Check]] | None = None) -> DrillRecord:
    """Drill the newest backup of the cluster in access's target; the record says ok or not (it does not raise on
    a failed check). Given a cluster's second target (`access.dr`), it is the DR drill: restored from there,
    recorded there, and measured by the dbfleet_dr_drill_* metrics. `extra` adds checks of the live cluster (the DR
    drill's standby-site replay lag against the RPO)."""
    from dbfleet.monitoring.metrics import record_drill

    adapter = adapter or adapter_for(access.cluster.engine)
    manifests = access.storage.manifests(access.name)
    backup = drill_candidate(manifests)
    if backup is None:
        raise PermanentError("no finished backup to drill; take one with `dbfleet backup run`", cluster=access.name,
                             action="drill")
    drill_id = utcnow().strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:4]
    started = utcnow()
    checks: list[Check] = []
    rto = rpo = None
    restored: Restored | None = None
    if backup.status == FAILED:
        checks.append(Check("previous verdict", False, f"backup already failed: {backup.error or _verdict(backup)}"))
    else:
        problems = access.storage.verify_files(backup)
        checks.append(Check("checksums", not problems,
                            "; ".join(problems[:5]) if problems else f"{len(backup.files)} files match the manifest"))
    if all(c.ok for c in checks):
        try:
            with access.progress.step(f"{access.name}: drill {drill_id} restores {backup.id} into scratch"):
                with scratch_for(access, "drill") as scratch:
                    clock = time.monotonic()
                    restored = adapter.restore(access, backup, scratch, RestoreTarget("latest"))
                    rto = round(time.monotonic() - clock, 3)
                    checks.append(Check("restore", True, f"{restored.detail}; usable after {rto:.1f}s"))
                    checks.extend(adapter.verify(access, backup, scratch, restored))
        except Exception as exc:  # a drill records every failure; it never raises it away
            log.error("%s: drill %s failed: %s", access.name, drill_id, _describe(exc))
            checks.append(Check("restore", False, _describe(exc)))
    if extra is not None:
        try:
            checks.extend(extra())
        except Exception as exc:  # a drill records every failure; it never raises it away
            checks.append(Check("live checks", False, _describe(exc)))
    finished = utcnow()
    if restored is not None and restored.recovered_to is not None:
        rpo = round((finished - restored.recovered_to).total_seconds(), 3)
    ok = all(c.ok for c in checks)
    failing = [c for c in checks if not c.ok]
    message = "all checks passed" if ok else "; ".join(f"{c.name}: {c.detail}" for c in failing)[:2000]
    record = DrillRecord(id=drill_id, cluster=access.name, backup_id=backup.id, started_at=iso(started) or "",
                         finished_at=iso(finished) or "", ok=ok, message=message, rto_seconds=rto, rpo_seconds=rpo,
                         recovered_to=iso(restored.recovered_to) if restored else None, checks=tuple(checks))
    access.storage.save_drill(record)
    access.storage.save_manifest(backup.judged(ok, message, finished, drill_id))
    record_drill(access.name, ok, rto, rpo, finished.timestamp(), dr=access.second)
    what = "DR drill (from the second target)" if access.second else "restore drill"
    if not ok:
        log.error("ALERT %s: %s %s of backup %s FAILED: %s", access.name, what, drill_id, backup.id, message)
    return record


def _verdict(backup: Manifest) -> str:
    return backup.verification.message if backup.verification else "failed"


def restore(access: BackupAccess, target: RestoreTarget, backup_id: str | None = None,
            adapter: EngineBackups | None = None, keep: bool = False) -> tuple[Manifest, Restored, list[Check], str]:
    """Restore into a scratch container (never the live cluster) and check it; returns the container name
    when `keep` leaves it running for inspection."""
    adapter = adapter or adapter_for(access.cluster.engine)
    manifests = access.storage.manifests(access.name)
    if backup_id:
        backup = next((m for m in manifests if m.id == backup_id or m.detail.get("label") == backup_id), None)
        if backup is None:
            raise PermanentError(f"no backup {backup_id}", cluster=access.name, action="restore")
    else:
        backup = choose_backup(adapter, manifests, target)
    with scratch_for(access, "restore", keep=keep) as scratch:
        restored = adapter.restore(access, backup, scratch, target)
        checks = adapter.verify(access, backup, scratch, restored)
    return backup, restored, checks, scratch.name if keep else ""


def choose_backup(adapter: EngineBackups, manifests: list[Manifest], target: RestoreTarget) -> Manifest:
    chooser = getattr(adapter, "choose_backup", None)
    if chooser is not None:
        chosen: Manifest = chooser(manifests, target)
        return chosen
    from dbfleet.backups.manifest import newest_good

    found = newest_good(manifests)
    if found is None:
        raise PermanentError("no good backup to restore")
    return found


def drill_age(record: DrillRecord | None, now: datetime | None = None) -> float | None:
    if record is None:
        return None
    return ((now or utcnow()) - record.finished).total_seconds()
