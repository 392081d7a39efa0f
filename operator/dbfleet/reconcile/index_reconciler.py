"""The index reconciler: observe through the engine's index module, diff with the pure diff_indexes, act."""

from __future__ import annotations

from typing import Any

from dbfleet.actions import Action
from dbfleet.engines.mongo import MongoSession
from dbfleet.engines.postgres import PostgresSession
from dbfleet.errors import PermanentError
from dbfleet.monitoring import metrics
from dbfleet.reconcile.index_observation import ObservedIndexes
from dbfleet.reconcile.indexes import RECONCILER, diff_indexes, index_counts
from dbfleet.reconcile.mongo_indexes import MongoIndexes
from dbfleet.reconcile.pg_indexes import PostgresIndexes
from dbfleet.spec import MongoCluster, PostgresCluster

IndexedCluster = PostgresCluster | MongoCluster


def _engine(session: Any) -> PostgresIndexes | MongoIndexes:
    if isinstance(session, PostgresSession):
        return PostgresIndexes(session)
    if isinstance(session, MongoSession):
        return MongoIndexes(session)
    raise PermanentError(f"no index adapter for a {type(session).__name__}")


class IndexReconciler:
    """Observe, diff and act on declared indexes for PostgreSQL and MongoDB clusters."""

    name = RECONCILER

    def applies_to(self, cluster: Any) -> bool:
        return isinstance(cluster, (PostgresCluster, MongoCluster))

    def observe(self, cluster: Any, session: Any) -> ObservedIndexes:
        return _engine(session).observe(cluster)

    def diff(self, cluster: Any, observed: ObservedIndexes) -> list[Action]:
        return diff_indexes(cluster.name, cluster.indexes.declared, observed, cluster.indexes)

    def act(self, action: Action, session: Any) -> str:
        return _engine(session).apply(action)

    def notes(self, observed: ObservedIndexes) -> list[str]:
        return observed.notes()

    def status(self, cluster: Any, observed: ObservedIndexes, actions: list[Action]) -> dict[str, Any]:
        """Index counts for `dbfleet status`, also exported as the dbfleet_indexes metric."""
        counts = index_counts(cluster.indexes.declared, observed, actions)
        metrics.set_index_counts(cluster.name, counts)
        return {"indexes": len(observed.all_indexes()),
                "declared": f"{counts['declared']}/{len(cluster.indexes.declared)}",
                "invalid": counts["invalid"], "unused": counts["unused"], "duplicate": counts["duplicate"]}
