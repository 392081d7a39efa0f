"""The job runner: long work (backups, restore drills, the maintenance policy's rewrites) that a cycle starts and
later cycles observe, run on threads of its own so it never holds the loop; `dbfleet restore` runs its restore on
one too, inline, so its record says it runs.

A job starts only from a cycle's act, so the fencing check the loop makes
before every act (the leader lock confirmed) is made before every job start;
nothing is queued to start later unfenced. At most one job per cluster and
kind runs (in this process, and on this machine by its job lock), and at most
the spec's operator.jobs limit of each kind fleet-wide; a due job beyond it is
refused (errors.Waiting), counted as waiting (the queue depth), and planned
again next cycle. Each job's record (jobs.py) is written when it starts, every
HEARTBEAT_SECONDS with the step in flight, and when it ends.

`inline` runs each job in the caller's thread to its end (`reconcile --once`,
`plan` never starts one): the action's outcome is then the job's; its record
still gets heartbeats, so an operator elsewhere sees it alive. On SIGTERM
`drain` lets the jobs in flight finish for a grace period and records the rest
`interrupted`: what they leave pending is orphaned and retaken by policy. A
rewrite's statement outlives the process, so its record is left running for
the next operator to settle from the catalog.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dbfleet.actions import Action
from dbfleet.backups.access import drop_lock, lock_busy, take_lock
from dbfleet.backups.jobs import (
    BACKUP,
    DONE,
    DR_DRILL,
    DRILL,
    HEARTBEAT_SECONDS,
    INTERRUPTED,
    JOB_FAILED,
    JOB_KINDS,
    REWRITE,
    RUNNING,
    JobRecord,
    new_job_id,
)
from dbfleet.backups.manifest import iso, utcnow
from dbfleet.backups.storage import Storage
from dbfleet.errors import ReconcileError, Waiting
from dbfleet.monitoring import metrics
from dbfleet.progress import Progress
from dbfleet.spec import JobLimits

log = logging.getLogger(__name__)


LIMITS = {BACKUP: "backups", DRILL: "drills", DR_DRILL: "drills", REWRITE: "rewrites"}
"""The operator.jobs field that bounds each kind fleet-wide; kinds with one field share its slots (a drill and a DR
drill each start a scratch server). A restore is none of the operator's: `dbfleet restore` runs it in a runner of
its own, so RESTORE_LIMIT is per process (one per cluster and the records say so across processes)."""
RESTORE_LIMIT = 1


def sharing(kind: str) -> tuple[str, ...]:
    """The kinds whose running jobs count against `kind`'s limit (itself, and those bound by the same field)."""
    return tuple(k for k in JOB_KINDS if k == kind or (kind in LIMITS and LIMITS.get(k) == LIMITS[kind]))


def job_lock_name(kind: str) -> str:
    return f"job-{kind}"


def job_lock_held(cluster: str, kind: str) -> bool:
    """Whether a process on this machine (this one included) runs a `kind` job of `cluster` now."""
    return lock_busy(cluster, job_lock_name(kind))


class JobProgress(Progress):
    """A job's progress lines: printed as any Progress, and the latest kept as the step its record shows."""

    def __init__(self, scope: str, on_step: Callable[[str], None]):
        super().__init__(scope)
        self.on_step = on_step

    def say(self, message: str) -> None:
        super().say(message)
        self.on_step(message)


@dataclass
class Job:
    """What to run: `work` does the job and returns the sentence its outcome carries; it raises on failure."""

    cluster: str
    kind: str
    target: str
    storage: Storage
    """Where the job's record lives: the cluster's backup target."""
    work: Callable[[JobContext], str]
    action: Action | None = None
    """The cycle's action that started it, for the audit trail's record of how it ended."""
    before: str = ""
    """Kept in its record (JobRecord.before): a rewrite's relation as it was when the job began."""
    relation: tuple[str, str, str] = ("", "", "")
    """Kept in its record from the first write (JobRecord.database, schema, relation): a rewrite's relation."""
    settled_after: bool = False
    """Its work goes on in the server after this process stops (a rewrite's statement), so a drain leaves its
    record running, and the next operator settles it from what it left rather than this one guessing."""


@dataclass
class JobContext:
    """What a job's work gets: progress lines that become its record's step, and `result` to name what it made."""

    record: JobRecord
    progress: Progress = field(init=False)
    _write: Callable[[JobRecord], None] = field(repr=False, default=lambda record: None)
    lock: threading.RLock = field(repr=False, default_factory=threading.RLock)
    """Held to change `record` and to write it: the job's thread, the heartbeat and the job's end take turns, so
    no one writes a record read before another's change (a lost result, a finished job written back running)."""

    def __post_init__(self) -> None:
        self.progress = JobProgress(f"{self.record.kind} {self.record.cluster}", self.step)

    def step(self, text: str) -> None:
        with self.lock:
            self.record = self.record.beat(utcnow(), step=text)

    def result(self, value: str) -> None:
        """Name what the job made (the backup's id) as soon as it exists, so a restarted operator finds it."""
        with self.lock:
            self.record = self.record.beat(utcnow(), result=value)
            self._write(self.record)


@dataclass
class _Running:
    job: Job
    context: JobContext
    lock: int
    thread: threading.Thread | None = None
    written: float = 0.0
    """When its record was last written (Unix time): its heartbeat as others see it."""
    ended: bool = False
    """Its end was recorded (by drain, when the work outlived the grace): a later true end only rewrites the
    record."""
    final: bool = False
    """An ended record (done, failed, interrupted) was written: no heartbeat writes it running again."""


JobEnded = Callable[[Job, JobRecord], None]
"""Told how each job ended (dbfleet.wiring records it in the audit trail)."""


class JobRunner:
    """Runs jobs on threads, bounded per kind by the spec's operator.jobs; one job per cluster and kind."""

    def __init__(self, limits: JobLimits | None = None, *, inline: bool = False, owner: str = "",
                 on_end: JobEnded | None = None, heartbeat: float = HEARTBEAT_SECONDS):
        self.limits = limits or JobLimits()
        self.inline = inline
        self.host = socket.gethostname()
        self.owner = owner or f"{self.host}:{os.getpid()}"
        self.on_end = on_end
        self.heartbeat = heartbeat
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], _Running] = {}
        self._waiting: set[tuple[str, str]] = set()
        self._closing = threading.Event()
        self._beats: threading.Thread | None = None

    def limit(self, kind: str) -> int:
        field_name = LIMITS.get(kind)
        return RESTORE_LIMIT if field_name is None else int(getattr(self.limits, field_name))

    # -- what the cycle sees -------------------------------------------------

    def running(self) -> list[JobRecord]:
        with self._lock:
            return [r.context.record for r in self._running.values()]

    def is_running(self, cluster: str, kind: str) -> bool:
        with self._lock:
            return (cluster, kind) in self._running

    def waiting(self) -> dict[str, int]:
        with self._lock:
            return {kind: sum(k == kind for _, k in self._waiting) for kind in JOB_KINDS}

    def begin_cycle(self) -> None:
        """A new cycle decides afresh what waits: forget the last one's refusals."""
        with self._lock:
            self._waiting.clear()
        self._publish()

    # -- starting --------------------------------------------------------------

    def start(self, job: Job) -> str:
        """Start `job` (inline: run it to its end), or raise Waiting when it may not start now."""
        key = (job.cluster, job.kind)
        with self._lock:
            if self._closing.is_set():
                raise Waiting("the operator is stopping; no job starts", cluster=job.cluster, action=job.kind)
            if key in self._running:
                raise Waiting(f"a {job.kind} job already runs: {self._running[key].context.record.id}",
                              cluster=job.cluster, action=job.kind)
            busy = sum(k in sharing(job.kind) for _, k in self._running)
            if busy >= self.limit(job.kind):
                self._waiting.add(key)
                self._publish_locked()
                raise Waiting(f"waiting for a free slot: {busy} of {self.limit(job.kind)} "
                              f"{' and '.join(sharing(job.kind))} jobs run "
                              f"fleet-wide (operator.jobs.{LIMITS.get(job.kind, job.kind)})", cluster=job.cluster,
                              action=job.kind)
            fd = take_lock(job.cluster, job_lock_name(job.kind))
            if fd is None:
                raise Waiting(f"another process on this machine runs a {job.kind} job of this cluster",
                              cluster=job.cluster, action=job.kind)
            now = utcnow()
            record = JobRecord(job.cluster, job.kind, new_job_id(job.kind, job.cluster, now), job.target, RUNNING,
                               self.owner, self.host, iso(now) or "", iso(now) or "", before=job.before,
                               database=job.relation[0], schema=job.relation[1], relation=job.relation[2])
            entry = _Running(job, JobContext(record), fd)
            entry.context._write = lambda r, e=entry: self._save(e, r)  # type: ignore[misc]
            try:
                self._save(entry, record)
            except Exception:
                drop_lock(fd)
                raise
            self._waiting.discard(key)
            self._running[key] = entry
            self._publish_locked()
        log.info("%s: %s job %s started (%s)", job.cluster, job.kind, record.id, job.target)
        self._start_heartbeats()
        if self.inline:
            return self._run(entry, raise_failure=True)
        entry.thread = threading.Thread(target=self._run, args=(entry,), daemon=True, name=f"job-{record.id}")
        entry.thread.start()
        return f"started {job.kind} job {record.id}; later cycles observe it"

    def _run(self, entry: _Running, raise_failure: bool = False) -> str:
        job, context = entry.job, entry.context
        failure: BaseException | None = None
        try:
            message = job.work(context)
            state = DONE
        except Exception as exc:  # the job's end is recorded whatever failed; the loop reports it
            message = exc.render() if isinstance(exc, ReconcileError) else f"{type(exc).__name__}: {exc}"
            state, failure = JOB_FAILED, exc
        record = context.record.ended(state, message, utcnow())
        self._end(entry, record)
        if failure is not None and raise_failure:
            raise failure
        return message

    def _end(self, entry: _Running, record: JobRecord) -> None:
        job = entry.job
        try:
            self._save(entry, record, final=True)
        except Exception as exc:  # the job's work is done either way; a later operator settles the record
            log.error("%s: cannot record the end of %s job %s: %s", job.cluster, job.kind, record.id, exc)
        with self._lock:
            if entry.ended:
                return
            entry.ended = True
            if self._running.get((job.cluster, job.kind)) is entry:
                del self._running[(job.cluster, job.kind)]
                drop_lock(entry.lock)
            self._publish_locked()
        metrics.record_job_end(job.kind, record.state)
        level = logging.INFO if record.state == DONE else logging.WARNING
        log.log(level, "%s: %s job %s %s: %s", job.cluster, job.kind, record.id, record.state, record.message)
        if self.on_end is not None:
            try:
                self.on_end(job, record)
            except Exception as exc:  # the audit trail failing here cannot undo the job; it is logged
                log.error("%s: how %s job %s ended was not recorded: %s", job.cluster, job.kind, record.id, exc)

    def _save(self, entry: _Running, record: JobRecord, *, final: bool = False) -> None:
        with entry.context.lock:
            if entry.final and not final:
                return
            entry.job.storage.put_bytes(record.key, record.to_json().encode())
            entry.written = time.time()
            entry.final = entry.final or final

    # -- heartbeats ------------------------------------------------------------

    def _start_heartbeats(self) -> None:
        with self._lock:
            if self._beats is None or not self._beats.is_alive():
                self._beats = threading.Thread(target=self._beat_loop, daemon=True, name="job-heartbeats")
                self._beats.start()

    def _beat_loop(self) -> None:
        """Until the runner closes or no job runs (a daemon thread: it never holds the process up); the next job's
        start begins another."""
        while not self._closing.wait(self.heartbeat):
            with self._lock:
                entries = list(self._running.values())
                if not entries:
                    self._beats = None
                    return
            for entry in entries:
                with entry.context.lock:  # read, beat and write in one turn: never a record older than the last
                    if entry.final:
                        continue
                    record = entry.context.record.beat(utcnow())
                    entry.context.record = record
                    try:
                        self._save(entry, record)
                    except Exception as exc:  # the next beat tries again; a stale one makes others settle it
                        log.warning("%s: heartbeat of job %s not written: %s", entry.job.cluster, record.id, exc)
            self._publish()

    # -- stopping --------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every running job to end; False if some still run after `timeout` seconds."""
        with self._lock:
            threads = [e.thread for e in self._running.values() if e.thread is not None]
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._lock:
            return not self._running

    def drain(self, grace: float) -> list[JobRecord]:
        """SIGTERM: start nothing more, let the jobs in flight finish for `grace` seconds, then record the rest
        interrupted (left resumable: their pending backups are orphaned and retaken by policy), except those
        `settled_after`, whose records stay running. Returns those left."""
        self._closing.set()
        self.wait(grace)
        left = []
        with self._lock:
            entries = list(self._running.values())
        for entry in entries:
            if entry.job.settled_after:
                log.warning("%s: %s job %s still runs after %gs; its record is left running for the next operator "
                            "to settle from what it leaves", entry.job.cluster, entry.job.kind,
                            entry.context.record.id, grace)
                left.append(entry.context.record)
                continue
            record = entry.context.record.ended(
                INTERRUPTED, f"the operator stopped after waiting {grace:g}s for it; left resumable", utcnow())
            self._end(entry, record)
            left.append(record)
        return left

    def _publish(self) -> None:
        with self._lock:
            self._publish_locked()

    def _publish_locked(self) -> None:
        running = [(c, k, e.context.record.started.timestamp(), e.written) for (c, k), e in self._running.items()]
        waiting = {kind: sum(k == kind for _, k in self._waiting) for kind in JOB_KINDS}
        metrics.record_jobs(running, waiting, JOB_KINDS)
