"""The index reconciler: observe through the engine's index module, diff with the pure diff_indexes, act."""

from __future__ import annotations

from typing import Any

from dbfleet.actions import Action
from dbfleet.engines import AnySession
from dbfleet.engines.base import AnyCluster
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


def _indexed(cluster: AnyCluster) -> IndexedCluster:
    if not isinstance(cluster, (PostgresCluster, MongoCluster)):
        raise PermanentError(f"{cluster.name}: {cluster.engine} has no index policy")
    return cluster


def _engine(session: AnySession) -> PostgresIndexes | MongoIndexes:
    if isinstance(session, PostgresSession):
        return PostgresIndexes(session)
    if isinstance(session, MongoSession):
        return MongoIndexes(session)
    raise PermanentError(f"no index adapter for a {type(session).__name__}")


class IndexReconciler:
    """Observe, diff and act on declared indexes for PostgreSQL and MongoDB clusters."""

    name = RECONCILER

    def applies_to(self, cluster: AnyCluster) -> bool:
        return isinstance(cluster, (PostgresCluster, MongoCluster))

    def observe(self, cluster: AnyCluster, session: AnySession) -> ObservedIndexes:
        return _engine(session).observe()

    def diff(self, cluster: AnyCluster, observed: ObservedIndexes) -> list[Action]:
        indexed = _indexed(cluster)
        return diff_indexes(indexed.name, indexed.indexes.declared, observed, indexed.indexes)

    def act(self, action: Action, session: AnySession) -> str:
        return _engine(session).apply(action)

    def notes(self, observed: ObservedIndexes) -> list[str]:
        return observed.notes()

    def status(self, cluster: AnyCluster, observed: ObservedIndexes, actions: list[Action]) -> dict[str, Any]:
        """Index counts for `dbfleet status`, also exported as the dbfleet_indexes metric."""
        declared = _indexed(cluster).indexes.declared
        counts = index_counts(declared, observed, actions)
        metrics.set_index_counts(cluster.name, counts)
        return {"indexes": len(observed.all_indexes()),
                "declared": f"{counts['declared']}/{len(declared)}",
                "invalid": counts["invalid"], "unused": counts["unused"], "duplicate": counts["duplicate"]}
