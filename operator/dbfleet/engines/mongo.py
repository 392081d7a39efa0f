"""MongoDB adapter: every read and write goes through mongos, as the operator's admin login.

The login is engines.credentials.MONGO_ADMIN (`dbfleet_admin`, the user the
mongo roles create) and TLS follows engines.tls, so the backups, which reach
mongos through this session too, use the same.
"""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from dbfleet.engines.access import CONNECT_TIMEOUT, FleetAccess
from dbfleet.engines.base import EngineSession, Member, Topology
from dbfleet.engines.credentials import MONGO_ADMIN
from dbfleet.engines.tls import mongo_client_tls
from dbfleet.errors import PermanentError, ReconcileError, TemporaryError
from dbfleet.spec import MongoCluster

TEMPORARY_CODES = {
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,  # host unreachable, stepdown, shutdown
    50,  # MaxTimeMSExpired
}


def mongos_hosts(cluster: MongoCluster) -> list[str]:
    """The names of the cluster's mongos hosts, in spec order."""
    return [h if isinstance(h, str) else h.name for h in cluster.mongos]


def classify(exc: PyMongoError, what: str) -> ReconcileError:
    if isinstance(exc, ConnectionFailure):
        return TemporaryError(f"{what}: {exc}")
    if isinstance(exc, OperationFailure) and exc.code in TEMPORARY_CODES:
        return TemporaryError(f"{what}: {exc}")
    return PermanentError(f"{what}: {exc}")


class MongoSession(EngineSession[MongoCluster]):
    engine = "mongo"

    def __init__(self, cluster: MongoCluster, access: FleetAccess):
        super().__init__(cluster, access)
        self._client: MongoClient[Any] | None = None

    def client(self) -> MongoClient[Any]:
        if self._client is None:
            cluster = self.cluster
            hosts = [f"{self.access.address(h)}:{cluster.port}" for h in mongos_hosts(cluster)]
            self._client = MongoClient(hosts, username=MONGO_ADMIN.user, password=self.access.password(MONGO_ADMIN),
                                       authSource="admin", appname="dbfleet-operator",
                                       serverSelectionTimeoutMS=CONNECT_TIMEOUT * 1000,
                                       connectTimeoutMS=CONNECT_TIMEOUT * 1000,
                                       **mongo_client_tls(cluster, self.access.ca_file(cluster)))
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

    def read_topology(self) -> Topology:
        cluster = self.cluster
        members = []
        try:
            self.command("admin", {"ping": 1})
            shards = self.command("admin", {"listShards": 1}).get("shards", [])
        except ReconcileError as exc:
            names = mongos_hosts(cluster)
            return Topology(cluster.name, self.engine, None,
                            tuple(Member(n, "mongos", False, exc.message) for n in names))
        router_host = self._router()
        members.append(Member(router_host, "mongos", True, "answering router"))
        for shard in shards:
            members.append(Member(shard["_id"], "shard", shard.get("state", 1) == 1, shard.get("host", "")))
        return Topology(cluster.name, self.engine, router_host, tuple(members))

    def _router(self) -> str:
        """The mongos host the client talks to (with several, pymongo balances and names none: the first)."""
        fallback = mongos_hosts(self.cluster)[0]
        try:
            address = self.client().address
        except PyMongoError:
            return fallback
        by_address = {(a, self.cluster.port): h for h, a in self.access.addresses.items()}
        return by_address.get(address, fallback) if address else fallback
