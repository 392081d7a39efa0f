"""The maintenance reconciler: observe bloat, vacuum health and wraparound, diff with diff_maintenance, act.

PostgreSQL clusters with a `maintenance:` block only. The clock and the free-disk probe are given at
construction, so tests can stand anywhere in the window and simulate a full disk; dbfleet.wiring builds
the one a cycle runs. A reindex or a repack runs as the cluster's rewrite job on `jobs` (RewriteJobs, which
dbfleet.wiring puts over the operator's job runner and the cluster's job records): the act starts it on an
engine session of its own and returns, later cycles read its record, and a job whose operator stopped is
settled from the catalog. Without `jobs` a rewrite runs to its end inside the act.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from dbfleet.actions import Action
from dbfleet.engines import AnySession, open_session
from dbfleet.engines.base import AnyCluster
from dbfleet.engines.postgres import PostgresSession
from dbfleet.errors import PermanentError, Waiting
from dbfleet.monitoring import metrics
from dbfleet.reconcile.maintenance import RECONCILER, REWRITES, diff_maintenance, settle_rewrite
from dbfleet.reconcile.maintenance_observation import ObservedMaintenance, RewriteJob
from dbfleet.reconcile.pg_maintenance import Clock, DiskProbe, PgMaintenance, probe_free_disk, utc_now
from dbfleet.schedule import window_state
from dbfleet.spec import PostgresCluster, PostgresMaintenance


def _maintained(cluster: AnyCluster) -> tuple[PostgresCluster, PostgresMaintenance]:
    if not isinstance(cluster, PostgresCluster) or cluster.maintenance is None:
        raise PermanentError(f"{cluster.name}: no PostgreSQL maintenance policy")
    return cluster, cluster.maintenance


class RewriteJobs(Protocol):
    """Where a cluster's rewrite runs as a job, and its record (dbfleet.wiring.RewriteJobs)."""

    def observe(self, cluster: AnyCluster, session: AnySession) -> RewriteJob | None:
        """The cluster's rewrite job record, seen alive or not; None if it has none. Raises if it cannot be read."""
        ...

    def start(self, action: Action, session: AnySession, before: str, work: Callable[[], str]) -> str:
        """Start `work` as the cluster's rewrite job (before: the relation's file node now); Waiting if it may
        not start now (one per cluster, operator.jobs.rewrites fleet-wide)."""
        ...

    def settle(self, cluster: AnyCluster, session: AnySession, job_id: str, state: str, message: str) -> str:
        """Write the end of job `job_id` if its record still says it runs and nothing runs it."""
        ...


class MaintenanceReconciler:
    """Bloat, vacuum health, wraparound and autovacuum settings of PostgreSQL clusters with a maintenance policy."""

    name = RECONCILER

    def __init__(self, clock: Clock = utc_now, disk: DiskProbe = probe_free_disk, jobs: RewriteJobs | None = None,
                 session_for: Callable[[AnyCluster, AnySession], AnySession] | None = None):
        self.clock = clock
        self.disk = disk
        self.jobs = jobs
        """Runs reindexes and repacks as jobs; without it each runs to its end inside the act."""
        self.session_for = session_for or (lambda cluster, session: open_session(cluster, session.access))
        """A job's own engine session: the cycle's is not shared with a thread that outlives the act."""

    def _engine(self, session: AnySession) -> PgMaintenance:
        if not isinstance(session, PostgresSession):
            raise PermanentError(f"no maintenance adapter for a {type(session).__name__}")
        return PgMaintenance(session, self.clock, self.disk)

    def applies_to(self, cluster: AnyCluster) -> bool:
        return isinstance(cluster, PostgresCluster) and cluster.maintenance is not None

    def observe(self, cluster: AnyCluster, session: AnySession) -> ObservedMaintenance:
        engine = self._engine(session)
        observed = engine.observe()
        if self.jobs is None:
            return observed
        try:
            observed.job = job = self.jobs.observe(cluster, session)
            if job is not None and job.stopped_unsettled:
                place = job.place
                if place is None:
                    observed.notes.append(f"rewrite job {job.id}: its record names {job.target} ambiguously; it "
                                          "is settled interrupted, not judged from the catalog")
                elif place[0] in observed.databases:
                    observed.job_filenode = engine.filenode(*place)
        except Exception as exc:  # the record's store or the relation's look-up failing must not hide the rest;
            observed.job_unread = f"{type(exc).__name__}: {exc}"  # no rewrite starts blind, none is settled
            observed.notes.append(f"rewrite job record unread: {observed.job_unread}")
        job = observed.job
        if job is not None and job.alive:
            observed.notes.append(f"job {job.line}")
        return observed

    def diff(self, cluster: AnyCluster, observed: ObservedMaintenance) -> list[Action]:
        pg, policy = _maintained(cluster)
        return diff_maintenance(pg.name, policy, observed)

    def act(self, action: Action, session: AnySession) -> str:
        engine = self._engine(session)
        if action.kind == "settle-rewrite":
            return self._settle(action, session)
        if self.jobs is None or action.kind not in REWRITES:
            return engine.apply(action)
        d = action.detail
        before = engine.filenode(d["database"], d["schema"], d["name"])
        if before is None:
            return f"{action.target} no longer exists; nothing to rewrite"
        cluster = engine.session.cluster

        def work() -> str:
            own = self.session_for(cluster, session)
            try:
                return self._engine(own).apply(action)
            finally:
                own.close()

        return self.jobs.start(action, session, str(before), work)

    def _settle(self, action: Action, session: AnySession) -> str:
        """Judge the stopped job again from the catalog now, and write its end if it still needs one."""
        assert self.jobs is not None, "settle-rewrite is planned only from a job record"
        cluster = self._engine(session).session.cluster
        observed = self.observe(cluster, session)
        job = observed.job
        if job is None or job.id != action.target or not job.stopped_unsettled:
            return f"job {action.target} needs no settling any more"
        if observed.in_flight:
            raise Waiting(f"a rewrite statement runs in the database again (pid {observed.in_flight[0].pid})",
                          cluster=cluster.name, action=action.kind)
        state, message = settle_rewrite(job, observed)
        return self.jobs.settle(cluster, session, job.id, state, message)

    def notes(self, observed: ObservedMaintenance) -> list[str]:
        return observed.notes

    def status(self, cluster: AnyCluster, observed: ObservedMaintenance, actions: list[Action]) -> dict[str, Any]:
        """The window, bloat and wraparound for `dbfleet status` (details under `maintenance` in --json); also the
        metrics of dbfleet.monitoring.metrics.set_maintenance."""
        _, policy = _maintained(cluster)
        metrics.set_maintenance(cluster.name, observed)
        window = "none"
        if policy.window:
            window = window_state(policy.window.start, policy.window.end, observed.now).describe()
        bloated = sum(a.kind in ("report-index-bloat", "reindex-index") for a in actions)
        tables = sum(a.kind in ("report-table-bloat", "repack-table") for a in actions)
        oldest = max((a.xid_age for a in observed.ages), default=0)
        job = observed.job
        rewrite = None if job is None else {"id": job.id, "kind": "rewrite", "target": job.target,
                                            "state": job.state if job.alive or not job.stopped_unsettled
                                            else "stopped (to settle)", "line": job.line, "owner": job.owner}
        return {"window": window, "bloated": f"{bloated} idx, {tables} tbl", "xid_age": oldest,
                "maintenance": observed.summary(), "rewrite_job": rewrite}
