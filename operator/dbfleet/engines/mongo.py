"""MongoDB adapter: every read and write goes through mongos, as the `admin` user of the admin database.

Indexes are listed per collection (listIndexes) with their usage ($indexStats,
one entry per shard, summed) and created with createIndexes, which mongos
sends to every shard. Counters come from the member of each shard that
mongos reads from, so usage on other secondaries is not counted: unused
MongoDB indexes are reported, never dropped.
TLS follows the cluster spec: with no CA file given the server certificate
is not verified, like PostgreSQL's sslmode=require.
"""

from __future__ import annotations

import time
from typing import Any

from dbfleet.engines.base import CONNECT_TIMEOUT, EngineSession, FleetAccess, Member, Topology
from dbfleet.actions import Action
from dbfleet.errors import PermanentError, ReconcileError, TemporaryError
from dbfleet.reconcile.index_defs import observed_mongo
from dbfleet.reconcile.indexes import ObservedDatabase, ObservedIndexes, TableStats
from dbfleet.spec import MongoCluster
from pymongo import MongoClient
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

ADMIN_USER = "admin"
ADMIN_SECRET = "mongo_admin_password"
TEMPORARY_CODES = {
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,  # host unreachable, stepdown, shutdown
    50,  # MaxTimeMSExpired
}


def classify(exc: PyMongoError, what: str) -> ReconcileError:
    if isinstance(exc, ConnectionFailure):
        return TemporaryError(f"{what}: {exc}")
    if isinstance(exc, OperationFailure) and exc.code in TEMPORARY_CODES:
        return TemporaryError(f"{what}: {exc}")
    return PermanentError(f"{what}: {exc}")


def stats_window_days(stats: list[dict[str, Any]], now: float) -> float | None:
    """Days the $indexStats counters cover: since the newest `accesses.since` (a restart or a new index)."""
    since = [s["accesses"]["since"].timestamp() for s in stats if s.get("accesses", {}).get("since")]
    return (now - max(since)) / 86400 if since else None


class MongoSession(EngineSession):
    engine = "mongo"

    def __init__(self, cluster: MongoCluster, access: FleetAccess):
        super().__init__(cluster, access)
        self._client: MongoClient[Any] | None = None

    def client(self) -> MongoClient[Any]:
        if self._client is None:
            cluster: MongoCluster = self.cluster
            hosts = [f"{self.access.address(h if isinstance(h, str) else h.name)}:{cluster.port}"
                     for h in cluster.mongos]
            tls: dict[str, Any] = {}
            if cluster.tls.enabled:
                tls = {"tls": True}
                if cluster.tls.ca_cert:
                    tls["tlsCAFile"] = cluster.tls.ca_cert
                else:
                    tls["tlsAllowInvalidCertificates"] = True
            self._client = MongoClient(hosts, username=ADMIN_USER, password=self.access.secret(ADMIN_SECRET),
                                       authSource="admin", appname="dbfleet-operator",
                                       serverSelectionTimeoutMS=CONNECT_TIMEOUT * 1000,
                                       connectTimeoutMS=CONNECT_TIMEOUT * 1000, **tls)
            self.connections += 1
        return self._client

    def command(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        self.queries += 1
        try:
            return self.client()[database].command(command)
        except PyMongoError as exc:
            raise classify(exc, f"{next(iter(command))} on {database}") from None

    def aggregate(self, database: str, collection: str, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.queries += 1
        try:
            return list(self.client()[database][collection].aggregate(pipeline))
        except PyMongoError as exc:
            raise classify(exc, f"aggregate on {database}.{collection}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- topology ------------------------------------------------------------

    def observe_topology(self) -> Topology:
        cluster: MongoCluster = self.cluster
        members = []
        try:
            self.command("admin", {"ping": 1})
            shards = self.command("admin", {"listShards": 1}).get("shards", [])
        except ReconcileError as exc:
            names = [h if isinstance(h, str) else h.name for h in cluster.mongos]
            return Topology(cluster.name, self.engine, None,
                            tuple(Member(n, "mongos", False, exc.message) for n in names))
        router_host = self._router()
        members.append(Member(router_host, "mongos", True, "answering router"))
        for shard in shards:
            members.append(Member(shard["_id"], "shard", shard.get("state", 1) == 1, shard.get("host", "")))
        return Topology(cluster.name, self.engine, router_host, tuple(members))

    def _router(self) -> str:
        """The mongos host the client talks to (with several, pymongo balances and names none: the first)."""
        first = self.cluster.mongos[0]
        fallback = first if isinstance(first, str) else first.name
        try:
            address = self.client().address
        except PyMongoError:
            return fallback
        by_address = {(a, self.cluster.port): h for h, a in self.access.addresses.items()}
        return by_address.get(address, fallback) if address else fallback

    # -- indexes -------------------------------------------------------------

    def observe_indexes(self, cluster: MongoCluster) -> ObservedIndexes:
        observed = ObservedIndexes(cluster.name, self.engine)
        databases = sorted({i.database for i in cluster.indexes.declared}
                           | {s.database for s in cluster.sharded_collections})
        now = time.time()
        for name in databases:
            collections = self.command(name, {"listCollections": 1, "filter": {"type": "collection"},
                                              "nameOnly": True})["cursor"]["firstBatch"]
            database = ObservedDatabase(name, members_counted=("one member per shard, through mongos",),
                                        every_member_counted=False)
            windows = []
            for coll in sorted(c["name"] for c in collections if not c["name"].startswith("system.")):
                docs = self.command(name, {"listIndexes": coll})["cursor"]["firstBatch"]
                stats = self.aggregate(name, coll, [{"$indexStats": {}}])
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

    def apply_index_action(self, action: Action) -> str:
        detail = action.detail
        database, collection = detail["database"], detail["collection"]
        if action.kind == "create-index":
            spec = {"key": {f: d for f, d in detail["keys"]}, "name": detail["name"], **detail["options"]}
            self.command(database, {"createIndexes": collection, "indexes": [spec]})
            return f"created {action.target} through mongos"
        if action.kind == "drop-index":
            if detail["name"] == "_id_":
                raise PermanentError("refusing to drop the _id index")
            self.command(database, {"dropIndexes": collection, "index": detail["name"]})
            return f"dropped {action.target} through mongos"
        raise PermanentError(f"the mongo adapter cannot apply {action.kind}")
