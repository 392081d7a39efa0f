"""The reconcile loop: one cycle observes every cluster, diffs it against the spec and (as leader) acts.

`Operator.run_cycle` is the whole state machine, run once per loop as in
Patroni: for each cluster it opens an engine session, observes the topology,
then for each reconciler that applies observes, diffs and acts. Clusters run
side by side on up to `parallel` threads; one that takes longer than
`cluster_timeout` is reported failed, the cycle goes on without it, and it is
skipped until its work ends. It returns a CycleReport whose sentences say what
happened, in spec order. Retries belong to the loop: a TemporaryError is
retried with backoff, a PermanentError is recorded, a Waiting is reported
skipped (it is planned again next cycle), and a failing cluster never stops the
others. Long work (backups, drills) runs as jobs outside the cycle
(dbfleet.backups.job_runner): an act starts one, later cycles observe it.
`watch` repeats cycles until SIGTERM, finishing the action in flight first and
giving the jobs in flight a grace period to end.

Fencing: when a cycle applies, the leader lock is confirmed with its store
(`Leader.confirm`, for etcd a keep-alive) just before each act, and no act
starts without it; once lost, the rest of the cycle's changes are skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from dbfleet.actions import Action, Outcome
from dbfleet.engines import AnySession, open_session
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.base import AnyCluster, Topology
from dbfleet.errors import PermanentError, ReconcileError, TemporaryError, Waiting
from dbfleet.monitoring import metrics
from dbfleet.reconcile.capacity import shrink_problems, unreachable
from dbfleet.reconcile.retry import DEFAULT_RETRY, ClusterBackoff, RetryPolicy, call_with_retry
from dbfleet.spec import Fleet

log = logging.getLogger("dbfleet.reconcile")


Observed = TypeVar("Observed")


class Reconciler(Protocol[Observed]):
    """A plain object per concern (indexes, backups, monitoring); the loop owns retries and logging.

    observe reads through the cluster's engine session; diff is pure; act
    changes one thing. The reconcilers a cycle runs are listed in one place,
    dbfleet.wiring.reconcilers().
    """

    name: str

    def applies_to(self, cluster: AnyCluster) -> bool: ...

    def observe(self, cluster: AnyCluster, session: AnySession) -> Observed: ...

    def diff(self, cluster: AnyCluster, observed: Observed) -> list[Action]: ...

    def act(self, action: Action, session: AnySession) -> str: ...

    def notes(self, observed: Observed) -> list[str]: ...

    def status(self, cluster: AnyCluster, observed: Observed, actions: list[Action]) -> dict[str, Any]: ...


class Jobs(Protocol):
    """The long jobs the operator runs outside its cycles (dbfleet.backups.job_runner.JobRunner)."""

    def begin_cycle(self) -> None: ...

    def drain(self, grace: float) -> list[Any]:
        """SIGTERM: let the jobs in flight finish for `grace` seconds; record the rest interrupted and return them."""
        ...


DEFAULT_PARALLEL = 4
"""Clusters observed, diffed and acted on at once: a small machine's share (they mostly wait on the network)."""
DEFAULT_CLUSTER_TIMEOUT = 300.0
"""Seconds one cluster's part of a cycle may take before the cycle reports it failed and goes on without it."""


@dataclass
class ClusterReport:
    """One cluster's part of a cycle."""

    cluster: str
    engine: str
    topology: Topology | None = None
    actions: list[Action] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    queries: int = 0
    """Statements the engine session sent this cycle (the reconcile benchmark counts them)."""
    connections: int = 0
    skipped: str | None = None
    """Why the cluster was not looked at this cycle (backoff after failures)."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and all(o.ok for o in self.outcomes)

    def sentence(self) -> str:
        head = f"{self.cluster} ({self.engine})"
        if self.skipped:
            return f"{head}: skipped, {self.skipped}"
        parts = [self.topology.summary()] if self.topology else []
        if self.error:
            parts.append(f"FAILED: {self.error}")
        changes = [a for a in self.actions if a.changes]
        reports = len(self.actions) - len(changes)
        if self.outcomes:
            done = sum(o.status == "done" for o in self.outcomes)
            failed = sum(o.status == "failed" for o in self.outcomes)
            parts.append(f"{done} of {len(changes)} changes done" + (f", {failed} failed" if failed else ""))
        elif changes:
            parts.append(f"{len(changes)} changes planned")
        elif not self.error:
            parts.append("in sync")
        if reports:
            parts.append(f"{reports} findings reported")
        return f"{head}: {'; '.join(parts)}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster, "engine": self.engine, "ok": self.ok, "sentence": self.sentence(),
            "topology": self.topology.as_dict() if self.topology else None,
            "actions": [a.as_dict() for a in self.actions],
            "outcomes": [o.as_dict() for o in self.outcomes],
            "notes": self.notes, "status": self.status, "error": self.error, "skipped": self.skipped,
            "seconds": round(self.seconds, 3), "queries": self.queries, "connections": self.connections,
        }


@dataclass
class CycleReport:
    applied: bool
    clusters: list[ClusterReport] = field(default_factory=list)
    leader: str = ""
    """Who leads, or why nobody is known to (leadership())."""
    leader_backend: str = ""
    started: float = field(default_factory=time.time)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.clusters)

    @property
    def queries(self) -> int:
        return sum(c.queries for c in self.clusters)

    @property
    def connections(self) -> int:
        return sum(c.connections for c in self.clusters)

    def actions(self) -> list[Action]:
        return [a for c in self.clusters for a in c.actions]

    def sentences(self) -> list[str]:
        return [c.sentence() for c in self.clusters]

    def render(self) -> str:
        """Human text: each cluster's sentence, then its actions (with outcomes once applied) and notes."""
        lines = [f"leader: {self.leader}"] if self.leader else []
        for c in self.clusters:
            lines.append(c.sentence())
            by_action = {o.action: o for o in c.outcomes}
            for action in c.actions:
                outcome = by_action.get(action)
                lines.append("  " + (outcome.render() if outcome else action.render()))
                if not outcome:
                    lines += [f"      {statement}" for statement in action.detail.get("statements", ())]
            lines += [f"  note: {n}" for n in c.notes]
        if any(c.actions for c in self.clusters):
            lines.append("(+ change, ! destructive change, - report only)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "ok": self.ok, "leader": self.leader,
                "leader_backend": self.leader_backend, "started": self.started,
                "seconds": round(self.seconds, 3), "queries": self.queries, "connections": self.connections,
                "actions": [a.as_dict() for a in self.actions()],
                "clusters": [c.as_dict() for c in self.clusters]}


SessionFactory = Callable[[AnyCluster, FleetAccess], AnySession]

ActionRecorder = Callable[[Outcome], None]
"""Keeps the audit trail: called once for every action the operator applies (done, failed or skipped). It raises
if it could not record; the operator then acts on nothing more this cycle. dbfleet.wiring.audit_trail builds the
one `reconcile` uses."""


class Operator:
    """Runs cycles over a fleet. Stateless between cycles except for the per-cluster backoff."""

    def __init__(self, fleet: Fleet, access: FleetAccess, *, reconcilers: list[Reconciler[Any]],
                 retry: RetryPolicy = DEFAULT_RETRY, session_factory: SessionFactory = open_session,
                 sleep: Callable[[float], None] = time.sleep, stop: threading.Event | None = None,
                 clusters: set[str] | None = None, keep_sessions: bool = False,
                 record: ActionRecorder | None = None, parallel: int = DEFAULT_PARALLEL,
                 cluster_timeout: float = DEFAULT_CLUSTER_TIMEOUT, jobs: Jobs | None = None):
        self.fleet = fleet
        self.access = access
        self.reconcilers = reconcilers
        self.retry = retry
        self.session_factory = session_factory
        self.sleep = sleep
        self.stop = stop or threading.Event()
        self.only = clusters
        self.backoff = ClusterBackoff()
        self.keep_sessions = keep_sessions
        """Keep each cluster's connections open from one cycle to the next (--watch); dropped after a failure."""
        self.record = record
        """The audit trail's recorder; None only where nothing is applied (plan, status) or in tests."""
        self._unrecorded: str | None = None
        """Why the last action could not be recorded: nothing more is applied this cycle."""
        self._fence: Leader | None = None
        self._unfenced: str | None = None
        """Why leadership could not be confirmed before an act: nothing more is applied this cycle."""
        self._sessions: dict[str, AnySession] = {}
        self.parallel = max(1, parallel)
        self.cluster_timeout = cluster_timeout
        self.jobs = jobs
        """The job runner the reconcilers start long work on; drained on SIGTERM."""
        self._busy: dict[str, float] = {}
        """Clusters whose part of an earlier cycle outlived its timeout and still runs: since when (monotonic)."""
        self._guard = threading.Lock()
        """Serialises what the cluster threads share: the fencing check and the audit trail."""

    @property
    def unfenced(self) -> str | None:
        """Why the last cycle stopped acting: leadership could not be confirmed before an act; None if it could."""
        return self._unfenced

    def close(self) -> None:
        """Close the sessions kept between cycles."""
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()

    def run_cycle(self, apply: bool, respect_backoff: bool = False, leader: Leader | None = None) -> CycleReport:
        """Observe and diff every cluster; act on the diffs when `apply`. Never raises for one cluster.

        With `leader`, each act starts only after leader.confirm() (fencing); without one (tests, benchmarks)
        acts are not fenced."""
        report = CycleReport(applied=apply)
        start = time.monotonic()
        self._unrecorded = None
        self._fence, self._unfenced = leader, None
        if self.jobs is not None and apply:
            self.jobs.begin_cycle()
        chosen: list[AnyCluster] = []
        for cluster in self.fleet.clusters:
            if self.only is not None and cluster.name not in self.only:
                continue
            skipped = self._skip(cluster, respect_backoff)
            report.clusters.append(ClusterReport(cluster.name, cluster.engine, skipped=skipped))
            if skipped is None:
                chosen.append(cluster)
        results = self._run_clusters(chosen, apply)
        for i, placeholder in enumerate(report.clusters):
            if placeholder.skipped is not None:
                continue
            result = report.clusters[i] = results[placeholder.cluster]
            if result.error:
                delay = self.backoff.failed(result.cluster, time.monotonic())
                log.warning("%s; next try in %.0fs", result.sentence(), delay)
            else:
                self.backoff.succeeded(result.cluster)
                log.info("%s", result.sentence())
        report.seconds = time.monotonic() - start
        return report

    def _skip(self, cluster: AnyCluster, respect_backoff: bool) -> str | None:
        """Why the cluster is not looked at this cycle, or None."""
        if not any(h.name in self.access.addresses for h in cluster.all_hosts()):
            # The lab starts no MongoDB without a server image: such a cluster is not deployed here.
            return "none of its hosts is in the inventory"
        now = time.monotonic()
        busy = self._busy.get(cluster.name)
        if busy is not None:
            return f"its part of an earlier cycle still runs after {now - busy:.0f}s (cluster timeout " \
                   f"{self.cluster_timeout:g}s)"
        if respect_backoff and not self.backoff.ready(cluster.name, now):
            return f"retrying in {self.backoff.not_before[cluster.name] - now:.0f}s after failures"
        return None

    def _run_clusters(self, clusters: list[AnyCluster], apply: bool) -> dict[str, ClusterReport]:
        """Each cluster's part of the cycle on its own thread, `parallel` at a time; one that outlives
        `cluster_timeout` is reported failed and left to finish in the background (its thread is a daemon)."""
        results: dict[str, ClusterReport] = {}
        running: dict[str, float] = {}
        queue = list(clusters)
        changed = threading.Condition()

        def work(cluster: AnyCluster) -> None:
            result = self._cluster_cycle(cluster, apply)
            with changed:
                self._busy.pop(cluster.name, None)
                if cluster.name in running:
                    del running[cluster.name]
                    results[cluster.name] = result
                changed.notify_all()

        with changed:
            while queue or running:
                while queue and len(running) < self.parallel:
                    cluster = queue.pop(0)
                    running[cluster.name] = self._busy[cluster.name] = time.monotonic()
                    threading.Thread(target=work, args=(cluster,), daemon=True, name=f"cycle-{cluster.name}").start()
                now = time.monotonic()
                for name, since in list(running.items()):
                    if now - since >= self.cluster_timeout:
                        del running[name]
                        engine = next(c.engine for c in clusters if c.name == name)
                        results[name] = ClusterReport(name, engine, seconds=now - since, error=(
                            f"cluster {name}: its part of the cycle took longer than the cluster timeout "
                            f"({self.cluster_timeout:g}s); the others went on, and it is skipped until it ends"))
                        log.error("%s", results[name].error)
                if running:
                    changed.wait(max(0.01, min(since + self.cluster_timeout for since in running.values()) - now))
        return results

    def _cluster_cycle(self, cluster: AnyCluster, apply: bool) -> ClusterReport:
        result = ClusterReport(cluster.name, cluster.engine)
        start = time.monotonic()
        session = self._sessions.pop(cluster.name, None)
        queries = connections = 0
        current: tuple[str, float] | None = None
        try:
            if session is None:
                session = self.session_factory(cluster, self.access)
            queries, connections = session.queries, session.connections
            session.begin_cycle()
            topology, _ = call_with_retry(session.observe_topology, f"{cluster.name} topology",
                                          self.retry, self.sleep)
            result.topology = topology
            down = unreachable(topology)
            if down:
                # Reconcilers that read only the backup target would otherwise report this cluster green.
                raise TemporaryError(down, cluster=cluster.name, action="observe")
            problems = shrink_problems(cluster, topology)
            if problems:
                raise PermanentError("; ".join(problems), cluster=cluster.name, action="check the spec")
            for reconciler in self.reconcilers:
                if not reconciler.applies_to(cluster):
                    continue
                current = (reconciler.name, time.monotonic())
                self._reconcile(cluster, reconciler, session, apply, result)
                metrics.record_reconcile(cluster.name, reconciler.name, time.monotonic() - current[1])
                current = None
        except ReconcileError as exc:
            result.error = exc.located(cluster=cluster.name).render()
        except Exception as exc:  # a bug in a reconciler must not stop the other clusters
            log.exception("%s: unexpected error", cluster.name)
            result.error = f"cluster {cluster.name}: unexpected {type(exc).__name__}: {exc}"
        finally:
            if session is not None:
                result.queries = session.queries - queries
                result.connections = session.connections - connections
                if self.keep_sessions and result.error is None:
                    self._sessions[cluster.name] = session
                else:
                    session.close()
        if current is not None:
            metrics.record_reconcile(cluster.name, current[0], time.monotonic() - current[1], error=True)
        result.seconds = time.monotonic() - start
        return result

    def _reconcile(self, cluster: AnyCluster, reconciler: Reconciler[Any], session: AnySession, apply: bool,
                   result: ClusterReport) -> None:
        """Observe, diff and (when applying) act for one reconciler on one cluster."""
        observed, _ = call_with_retry(lambda: reconciler.observe(cluster, session),
                                      f"{cluster.name} {reconciler.name} observe", self.retry, self.sleep)
        actions = reconciler.diff(cluster, observed)
        result.notes += reconciler.notes(observed)
        result.status.update(reconciler.status(cluster, observed, actions))
        result.actions += actions
        for action in actions:
            log.info("%s", action.render())
        if apply:
            self._act_all(reconciler, actions, session, result)

    def _act_all(self, reconciler: Reconciler[Any], actions: list[Action], session: AnySession,
                 result: ClusterReport) -> None:
        gave_up: str | None = None
        for action in actions:
            if not action.changes:
                continue
            if self._unrecorded:
                # Not recorded either: the trail just failed. The report and the log still say it.
                result.outcomes.append(Outcome(action, "skipped", f"the audit trail failed: {self._unrecorded}"))
                continue
            if self.stop.is_set():
                self._append(Outcome(action, "skipped", "the operator is stopping"), result)
                continue
            if gave_up:
                self._append(Outcome(action, "skipped", f"after a temporary failure: {gave_up}"), result)
                continue
            if not self._fenced():
                self._append(Outcome(action, "skipped", f"not started: leadership not confirmed ({self._unfenced})"),
                             result)
                continue
            start = time.monotonic()
            try:
                message, attempts = call_with_retry(lambda a=action: reconciler.act(a, session),  # type: ignore[misc]
                                                    f"{action.cluster} {action.kind} {action.target}",
                                                    self.retry, self.sleep)
                outcome = Outcome(action, "done", message, attempts, time.monotonic() - start)
                metrics.record_action(action.cluster, action.kind)
                log.info("%s", outcome.render())
            except Waiting as exc:
                outcome = Outcome(action, "skipped", exc.message, 1, time.monotonic() - start)
                log.info("%s", outcome.render())
            except ReconcileError as exc:
                error = exc.located(cluster=action.cluster, action=f"{action.kind} {action.target}")
                outcome = Outcome(action, "failed", error.render(), self.retry.attempts
                                  if isinstance(exc, TemporaryError) else 1, time.monotonic() - start)
                log.warning("%s", outcome.render())
                if isinstance(exc, TemporaryError):
                    gave_up = exc.message
            self._append(outcome, result)

    def _fenced(self) -> bool:
        """The fencing check just before an act: the leader lock confirmed with its store now. Once it fails,
        it fails for the rest of the cycle; the next cycle's acquire decides again."""
        if self._fence is None:
            return True
        with self._guard:
            return self._confirm_fence()

    def _confirm_fence(self) -> bool:
        assert self._fence is not None
        if self._unfenced is None and not self._fence.confirm():
            self._unfenced = self._fence.fault or f"this process no longer holds the lock; holder: {self._fence.holder}"
            log.error("leadership lost before an act (%s); nothing more is applied this cycle", self._unfenced)
        return self._unfenced is None

    def _append(self, outcome: Outcome, result: ClusterReport) -> None:
        """Add an applied action's outcome to the report and to the audit trail."""
        result.outcomes.append(outcome)
        if self.record is None:
            return
        try:
            with self._guard:
                self.record(outcome)
        except Exception as exc:  # whatever the recorder's failure, acting on unrecorded is what must stop
            self._unrecorded = str(exc)
            what = f"{outcome.action.kind} {outcome.action.target}"
            error = f"cluster {outcome.action.cluster}: the audit trail did not record {what}: {exc}"
            log.error("%s; nothing more is applied this cycle", error)
            result.error = result.error or error


class Leader(Protocol):
    """The lock that makes one operator the one that acts (dbfleet.wiring.leader_lock chooses it)."""

    backend: str
    """etcd, postgres or file (the spec's operator.leader)."""
    where: str
    holder: str
    """Who leads, as the last acquire or confirm saw it ("this process" when it is us)."""
    fault: str
    """Why the lock's store could not say who leads, after the last acquire or confirm; "" when it answered."""

    @property
    def held(self) -> bool: ...

    def acquire(self) -> bool: ...

    def confirm(self) -> bool:
        """Fencing: asks the lock's store whether this process still holds the lock (and renews it)."""
        ...

    def release(self) -> None: ...

    def current_holder(self) -> str:
        """Who holds the lock now, read only; for `status`."""
        ...


def leadership(is_leader: bool, leader: Leader, cycles_without_leader: int = 0, lost: str | None = None) -> str:
    """The cycle report's sentence on leadership: that this process leads (or led until an act could not confirm
    it: `lost`), who does, or why nobody is known to and so why this process only observes."""
    if is_leader:
        return f"this process led until the fencing check before an act failed: {lost}" if lost else \
            "this process leads"
    if leader.fault:
        count = f" for {cycles_without_leader} cycles" if cycles_without_leader > 1 else ""
        return (f"no leader known{count}, observed only, nothing acted on: the leader lock ({leader.backend}, "
                f"{leader.where}) did not answer: {leader.fault}")
    return f"not leader, observed only: {leader.holder or 'another operator'} leads"


def watch(operator: Operator, leader: Leader, interval: float,
          on_cycle: Callable[[CycleReport], None] = lambda report: None, max_cycles: int | None = None,
          job_grace: float = 30.0) -> int:
    """Cycle until operator.stop is set (SIGTERM): act while leader, only observe otherwise. On the way out the
    jobs in flight get `job_grace` seconds to end (the lock still held); the rest are recorded interrupted.

    A cycle in which the lock's store does not answer counts towards dbfleet_operator_cycles_without_leader;
    observing, /metrics and the state file go on."""
    cycles = without_leader = 0
    try:
        while not operator.stop.is_set():
            is_leader = leader.acquire()
            without_leader = 0 if is_leader or not leader.fault else without_leader + 1
            metrics.record_leadership(leader.backend, is_leader, without_leader)
            report = operator.run_cycle(apply=is_leader, respect_backoff=True, leader=leader)
            report.leader = leadership(is_leader, leader, without_leader, operator.unfenced)
            report.leader_backend = leader.backend
            on_cycle(report)
            cycles += 1
            if max_cycles is not None and cycles >= max_cycles:
                break
            operator.stop.wait(interval)
    finally:
        if operator.jobs is not None:
            for record in operator.jobs.drain(job_grace):
                log.warning("job %s left %s on stopping: %s", getattr(record, "id", record),
                            getattr(record, "state", ""), getattr(record, "message", ""))
        leader.release()
        operator.close()
    return 0
