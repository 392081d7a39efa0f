"""Job records: what a long job (a backup, a restore drill, a maintenance rewrite, a user's restore) that runs
outside the operator's cycle is doing, and how it ended, kept beside the backups so a restarted operator or a new
leader learns it.

One record per cluster and kind, at dbfleet/<cluster>/jobs/<kind>.json in the
backup target, written when the job starts, at every heartbeat and when it
ends. Whether a `running` record's job still runs is decided here (job_alive):
on the machine that runs it, its job lock (an flock the job holds) says so at
once; from another machine, a heartbeat older than STALE_AFTER means its
operator stopped. A stopped job's true outcome comes from what it left behind
(settle): the backup's manifest or the drill's record; a rewrite's from the
catalog (dbfleet.reconcile.maintenance.settle_rewrite). A backup it left
`pending` is then orphaned by the existing rule and taken again when the
schedule says so; a complete one is never taken twice.

Pure: no storage or clock of its own; the runner (job_runner.py) and the
reconciler read and write the records.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any

from dbfleet.backups.manifest import (
    FAILED,
    FORMAT,
    GOOD,
    RECORD_ID,
    ROOT,
    DrillRecord,
    Fields,
    Manifest,
    ManifestError,
    checked_time,
    iso,
    json_object,
)
from dbfleet.monitoring.metrics import JOB_HEARTBEAT_SECONDS, JOB_STALE_AFTER

BACKUP, DRILL, REWRITE, RESTORE, DR_DRILL = "backup", "drill", "rewrite", "restore", "dr-drill"
JOB_KINDS = (BACKUP, DRILL, REWRITE, RESTORE, DR_DRILL)
"""rewrite: the maintenance policy's REINDEX INDEX CONCURRENTLY or pg_repack; restore: `dbfleet restore`, run by a
user, recorded so the operator neither prunes what it reads nor a second one starts; dr-drill: a drill that restores
from the second target (dbfleet.backups.dr), its record kept there."""
TARGET_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,300}")
"""A rewrite's target as plans name it (database/schema.relation, identifiers as the catalog spells them)."""

RUNNING, DONE, JOB_FAILED, INTERRUPTED = "running", "done", "failed", "interrupted"
JOB_STATES = (RUNNING, DONE, JOB_FAILED, INTERRUPTED)

HEARTBEAT_SECONDS = JOB_HEARTBEAT_SECONDS
"""How often a running job's record is rewritten with its step and the time."""
STALE_AFTER = JOB_STALE_AFTER
"""A running record from another machine whose heartbeat is older than this: its operator stopped."""
SLACK = timedelta(seconds=5)
"""Clocks of the operator and the target's writer may differ this much when matching a job to what it left."""

IDENTIFIER_TEXT = re.compile(r"[^\x00-\x1f\x7f]{0,200}")
"""A database, schema or relation name as the catalog spells it (PostgreSQL's are at most 63 bytes)."""
BEFORE = re.compile(r"([a-z-]{1,40} [0-9]{1,20})?")
CLUSTER_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}[a-z0-9]")


def job_key(cluster: str, kind: str) -> str:
    return f"{ROOT}/{cluster}/jobs/{kind}.json"


def new_job_id(kind: str, cluster: str, when: datetime) -> str:
    return f"{kind}-{cluster}-{when.strftime('%Y%m%dT%H%M%SZ')}"


@dataclass(frozen=True)
class JobRecord:
    """One job of one kind on one cluster: the running one, or the last one to end."""

    cluster: str
    kind: str
    """backup, drill, rewrite or restore."""
    id: str
    target: str
    """What it works on: the backup kind to take, the backup a drill or restore restores, the relation a rewrite
    rebuilds."""
    state: str
    owner: str
    """The operator process that runs it, as the leader lock names it (host:pid)."""
    host: str
    """The machine that process runs on: there, the job lock says at once whether the job still runs."""
    started_at: str
    heartbeat_at: str
    finished_at: str | None = None
    step: str = ""
    """The step in flight, as the job's progress lines say it."""
    message: str = ""
    result: str = ""
    """What the job made, once known: the backup's id."""
    before: str = ""
    """A rewrite's action and its relation's file node when the job began ('reindex-index 16423'): a later file
    node says the relation was rewritten."""
    database: str = ""
    schema: str = ""
    relation: str = ""
    """A rewrite's relation, its database, schema and name apart, as the catalog spells them: `target` joins them
    for people (database/schema.name), which a '.' or '/' in a name makes ambiguous. Empty in records older than
    these fields, and until the job's first heartbeat."""
    format: int = FORMAT

    @property
    def key(self) -> str:
        return job_key(self.cluster, self.kind)

    @property
    def started(self) -> datetime:
        return checked_time(self.started_at)

    @property
    def heartbeat(self) -> datetime:
        return checked_time(self.heartbeat_at)

    def beat(self, now: datetime, step: str | None = None, result: str | None = None) -> JobRecord:
        return replace(self, heartbeat_at=iso(now) or "", step=self.step if step is None else step[:300],
                       result=self.result if result is None else result)

    def ended(self, state: str, message: str, now: datetime, result: str | None = None) -> JobRecord:
        return replace(self, state=state, message=message[:2000], finished_at=iso(now), heartbeat_at=iso(now) or "",
                       result=self.result if result is None else result)

    def age(self, now: datetime) -> float:
        return max(0.0, (now - self.started).total_seconds())

    def describe(self, now: datetime) -> str:
        """One line for notes and `status`: kind, target, state, age, and the step or the outcome."""
        head = f"{self.kind} {self.target} ({self.id})"
        if self.state == RUNNING:
            return f"{head} running for {self.age(now):.0f}s" + (f": {self.step}" if self.step else "")
        return f"{head} {self.state}" + (f": {self.message}" if self.message else "")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "<job>") -> JobRecord:
        """A job record read from a target, every field checked; ManifestError naming `where` and the reason."""
        data = json_object(text, where, "job record")
        try:
            _check_job(data)
        except ValueError as exc:
            raise ManifestError(where, str(exc)) from None
        return cls(**data)


def _check_job(data: dict[str, Any]) -> None:
    check = Fields(data, [f.name for f in fields(JobRecord)])
    if data.get("format") != FORMAT:
        raise check.fail("format", f"{data.get('format')!r}, expected {FORMAT}")
    check.text("cluster", pattern=CLUSTER_NAME)
    check.text("kind", choices=JOB_KINDS)
    check.text("id", pattern=RECORD_ID)
    check.text("target", pattern=TARGET_TEXT if data.get("kind") == REWRITE else RECORD_ID)
    check.text("state", choices=JOB_STATES)
    for key in ("owner", "host", "step", "message"):
        check.text(key, required=key in ("owner", "host"))
    check.text("result", required=False)
    check.text("before", required=False, pattern=BEFORE)
    for key in ("database", "schema", "relation"):
        check.text(key, required=False, pattern=IDENTIFIER_TEXT)
    if data.get("result"):
        check.text("result", pattern=RECORD_ID)
    check.time("started_at")
    check.time("heartbeat_at")
    check.time("finished_at", required=False)


def job_alive(record: JobRecord, now: datetime, this_host: str, lock_held: bool) -> bool:
    """Whether a job still runs: not if its record says it ended; on this machine, while its job lock is held;
    from elsewhere, while its heartbeat is fresh."""
    if record.state != RUNNING:
        return False
    if record.host == this_host:
        return lock_held
    return (now - record.heartbeat).total_seconds() < STALE_AFTER


def settle(record: JobRecord, manifests: list[Manifest], drills: list[DrillRecord], now: datetime) -> JobRecord:
    """The true end of a job whose operator stopped while it ran: from the manifest it wrote or the drill record
    it saved. What it left unfinished is `interrupted`: the orphan rule and the schedule take it from there."""
    stopped = f"its operator ({record.owner}) stopped while it ran"
    if record.kind == RESTORE:
        return record.ended(INTERRUPTED, f"its process ({record.owner}) stopped while it ran; a restore is never "
                                         "resumed: run it again", now)
    if record.kind == REWRITE:
        raise ValueError("a rewrite is settled from the catalog (dbfleet.reconcile.maintenance.settle_rewrite)")
    if record.kind == BACKUP:
        backup = _backup_of(record, manifests)
        if backup is None:
            return record.ended(INTERRUPTED, f"{stopped}, before its backup was recorded; the schedule takes the "
                                             "backup again", now)
        if backup.status in GOOD:
            return record.ended(DONE, f"{stopped}, after its backup {backup.id} was {backup.status}", now, backup.id)
        if backup.status == FAILED:
            return record.ended(JOB_FAILED, f"{stopped}; its backup {backup.id} failed: {backup.error}", now,
                                backup.id)
        return record.ended(INTERRUPTED, f"{stopped}; its backup {backup.id} was left {backup.status}, never counted"
                                         "; the schedule takes the backup again", now, backup.id)
    drill = next((d for d in drills if d.backup_id == record.target and d.finished >= record.started - SLACK), None)
    if drill is None:
        return record.ended(INTERRUPTED, f"{stopped}, before the drill was recorded; it runs again while due", now)
    return record.ended(DONE if drill.ok else JOB_FAILED, f"{stopped}; drill {drill.id}: {drill.message}", now,
                        drill.id)


def _backup_of(record: JobRecord, manifests: list[Manifest]) -> Manifest | None:
    """The manifest the job wrote: named in its record once known, else the first one started after it."""
    if record.result:
        return next((m for m in manifests if m.id == record.result), None)
    later = sorted((m for m in manifests if m.started >= record.started - SLACK), key=lambda m: (m.started, m.id))
    return later[0] if later else None


@dataclass(frozen=True)
class JobView:
    """A job record as one observation saw it: alive or not."""

    record: JobRecord
    alive: bool

    @property
    def stopped_unsettled(self) -> bool:
        """Its record says running, but nothing runs it any more: its true outcome is still to be written."""
        return self.record.state == RUNNING and not self.alive
