"""Engine adapters behind one small interface: postgres, mongo and redis sessions that connect and observe."""

from __future__ import annotations

from typing import overload

from dbfleet.engines.access import FleetAccess
from dbfleet.engines.base import AnyCluster
from dbfleet.engines.mongo import MongoSession
from dbfleet.engines.postgres import PostgresSession
from dbfleet.engines.redis import RedisSession
from dbfleet.spec import MongoCluster, PostgresCluster, RedisCluster

AnySession = PostgresSession | MongoSession | RedisSession


@overload
def open_session(cluster: PostgresCluster, access: FleetAccess) -> PostgresSession: ...
@overload
def open_session(cluster: MongoCluster, access: FleetAccess) -> MongoSession: ...
@overload
def open_session(cluster: RedisCluster, access: FleetAccess) -> RedisSession: ...
def open_session(cluster: AnyCluster, access: FleetAccess) -> AnySession:
    """A session for one cluster, by its engine; connections open on first use."""
    if isinstance(cluster, PostgresCluster):
        return PostgresSession(cluster, access)
    if isinstance(cluster, MongoCluster):
        return MongoSession(cluster, access)
    if isinstance(cluster, RedisCluster):
        return RedisSession(cluster, access)
    raise ValueError(f"no engine adapter for {cluster.engine!r}")
