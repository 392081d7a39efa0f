"""The maintenance reconciler: observe bloat, vacuum health and wraparound, diff with diff_maintenance, act.

PostgreSQL clusters with a `maintenance:` block only. The clock and the free-disk probe are given at
construction, so tests can stand anywhere in the window and simulate a full disk; dbfleet.wiring builds
the one a cycle runs.
"""

from __future__ import annotations

from typing import Any

from dbfleet.actions import Action
from dbfleet.engines import AnySession
from dbfleet.engines.base import AnyCluster
from dbfleet.engines.postgres import PostgresSession
from dbfleet.errors import PermanentError
from dbfleet.monitoring import metrics
from dbfleet.reconcile.maintenance import RECONCILER, diff_maintenance
from dbfleet.reconcile.maintenance_observation import ObservedMaintenance
from dbfleet.reconcile.pg_maintenance import Clock, DiskProbe, PgMaintenance, probe_free_disk, utc_now
from dbfleet.schedule import window_state
from dbfleet.spec import PostgresCluster, PostgresMaintenance


def _maintained(cluster: AnyCluster) -> tuple[PostgresCluster, PostgresMaintenance]:
    if not isinstance(cluster, PostgresCluster) or cluster.maintenance is None:
        raise PermanentError(f"{cluster.name}: no PostgreSQL maintenance policy")
    return cluster, cluster.maintenance


class MaintenanceReconciler:
    """Bloat, vacuum health, wraparound and autovacuum settings of PostgreSQL clusters with a maintenance policy."""

    name = RECONCILER

    def __init__(self, clock: Clock = utc_now, disk: DiskProbe = probe_free_disk):
        self.clock = clock
        self.disk = disk

    def _engine(self, session: AnySession) -> PgMaintenance:
        if not isinstance(session, PostgresSession):
            raise PermanentError(f"no maintenance adapter for a {type(session).__name__}")
        return PgMaintenance(session, self.clock, self.disk)

    def applies_to(self, cluster: AnyCluster) -> bool:
        return isinstance(cluster, PostgresCluster) and cluster.maintenance is not None

    def observe(self, cluster: AnyCluster, session: AnySession) -> ObservedMaintenance:
        return self._engine(session).observe()

    def diff(self, cluster: AnyCluster, observed: ObservedMaintenance) -> list[Action]:
        pg, policy = _maintained(cluster)
        return diff_maintenance(pg.name, policy, observed)

    def act(self, action: Action, session: AnySession) -> str:
        return self._engine(session).apply(action)

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
        return {"window": window, "bloated": f"{bloated} idx, {tables} tbl", "xid_age": oldest,
                "maintenance": observed.summary()}
