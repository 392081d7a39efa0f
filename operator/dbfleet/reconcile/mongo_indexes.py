"""MongoDB indexes through mongos: listed per collection with their usage, created and dropped by name.

Indexes are listed per collection (listIndexes) with their usage ($indexStats,
one entry per shard, summed) and created with createIndexes, which mongos
sends to every shard. Counters come from the member of each shard that
mongos reads from, so usage on other secondaries is not counted: unused
MongoDB indexes are reported, never dropped.
"""

from __future__ import annotations

import time
from typing import Any

from dbfleet.actions import Action
from dbfleet.engines.mongo import MongoSession
from dbfleet.errors import PermanentError
from dbfleet.reconcile.index_defs import observed_mongo
from dbfleet.reconcile.index_observation import ObservedDatabase, ObservedIndexes, TableStats


def stats_window_days(stats: list[dict[str, Any]], now: float) -> float | None:
    """Days the $indexStats counters cover: since the newest `accesses.since` (a restart or a new index)."""
    since = [s["accesses"]["since"].timestamp() for s in stats if s.get("accesses", {}).get("since")]
    return (now - max(since)) / 86400 if since else None


class MongoIndexes:
    """The index reconciler's MongoDB half, on one cluster's session."""

    def __init__(self, session: MongoSession):
        self.session = session

    def observe(self) -> ObservedIndexes:
        cluster = self.session.cluster
        observed = ObservedIndexes(cluster.name, self.session.engine)
        databases = sorted({i.database for i in cluster.indexes.declared}
                           | {s.database for s in cluster.sharded_collections})
        now = time.time()
        for name in databases:
            collections = self.session.command(name, {"listCollections": 1, "filter": {"type": "collection"},
                                              "nameOnly": True})["cursor"]["firstBatch"]
            database = ObservedDatabase(name, members_counted=("one member per shard, through mongos",),
                                        every_member_counted=False)
            windows = []
            for coll in sorted(c["name"] for c in collections if not c["name"].startswith("system.")):
                docs = self.session.command(name, {"listIndexes": coll})["cursor"]["firstBatch"]
                stats = self.session.aggregate(name, coll, [{"$indexStats": {}}])
                ops: dict[str, int] = {}
                for s in stats:
                    ops[s["name"]] = ops.get(s["name"], 0) + int(s.get("accesses", {}).get("ops", 0))
                window = stats_window_days(stats, now)
                if window is not None:
                    windows.append(window)
                database.tables[coll] = TableStats(coll)
                database.indexes += [observed_mongo(name, coll, d, ops.get(d["name"])) for d in docs]
            database.stats_window_days = min(windows) if windows else None
            observed.databases[name] = database
        return observed

    def apply(self, action: Action) -> str:
        detail = action.detail
        database, collection = detail["database"], detail["collection"]
        if action.kind == "create-index":
            spec = {"key": {f: d for f, d in detail["keys"]}, "name": detail["name"], **detail["options"]}
            self.session.command(database, {"createIndexes": collection, "indexes": [spec]})
            return f"created {action.target} through mongos"
        if action.kind == "drop-index":
            if detail["name"] == "_id_":
                raise PermanentError("refusing to drop the _id index")
            self.session.command(database, {"dropIndexes": collection, "index": detail["name"]})
            return f"dropped {action.target} through mongos"
        raise PermanentError(f"the mongo adapter cannot apply {action.kind}")
