"""Which backup and which drill are due now, from the spec's cron schedules (evaluated in UTC).

A run counts for its own kind and every smaller one: a full taken at 02:00
also satisfies the diff and the hourly incremental due then. Pending and
orphaned backups do not count as runs, so an interrupted backup is taken again
at the next cycle; a backup that failed waits for its next slot (and raises
the backup-age alert meanwhile) rather than being retried in a tight loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from dbfleet.backups.manifest import COMPLETE, FAILED, RANK, VERIFIED, DrillRecord, Manifest
from dbfleet.schedule import is_due, parse_cron
from dbfleet.spec import BackupPolicy

ATTEMPTED = (COMPLETE, VERIFIED, FAILED)


def engine_kind(engine: str, kind: str) -> str:
    """The backup kind an engine actually takes for a schedule entry: Redis snapshots, Mongo fulls."""
    if engine == "redis":
        return "snapshot"
    if engine == "mongo":
        return "full"
    return "full" if kind == "snapshot" else kind


@dataclass(frozen=True)
class DueBackup:
    kind: str
    schedule: str
    fired_at: datetime
    last_run: datetime | None

    def reason(self) -> str:
        last = self.last_run.isoformat(timespec="minutes") if self.last_run else "never"
        return f"schedule {self.schedule!r} fired at {self.fired_at.isoformat(timespec='minutes')}; " \
               f"last {self.kind} or bigger: {last}"


def last_run(manifests: Iterable[Manifest], kind: str) -> datetime | None:
    """Start of the newest attempted backup of this kind or a bigger one."""
    starts = [m.started for m in manifests if m.status in ATTEMPTED and RANK[m.kind] >= RANK[kind]]
    return max(starts) if starts else None


def due_backup(engine: str, policy: BackupPolicy, manifests: list[Manifest], now: datetime) -> DueBackup | None:
    """The biggest backup kind whose schedule has fired since it last ran, or None."""
    if not policy.enabled:
        return None
    due: list[DueBackup] = []
    for entry, expr in policy.schedule.items():
        kind = engine_kind(engine, entry)
        last = last_run(manifests, kind)
        if is_due(expr, last, now):
            fired = parse_cron(expr).previous(now.replace(second=59)) or now
            due.append(DueBackup(kind, expr, fired, last))
    if not due:
        return None
    return max(due, key=lambda d: RANK[d.kind])


def drill_due(policy: BackupPolicy, last: DrillRecord | None, now: datetime) -> bool:
    if not policy.enabled:
        return False
    return is_due(policy.drill.schedule, last.finished if last else None, now)
