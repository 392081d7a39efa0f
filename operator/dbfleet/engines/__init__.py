"""Engine adapters behind one small interface: postgres, mongo and redis sessions that observe and act."""

from __future__ import annotations

from typing import Any

from dbfleet.engines.base import EngineSession, FleetAccess


def open_session(cluster: Any, access: FleetAccess) -> EngineSession:
    """A session for one cycle of one cluster, by its engine; connections open on first use."""
    if cluster.engine == "postgres":
        from dbfleet.engines.postgres import PostgresSession

        return PostgresSession(cluster, access)
    if cluster.engine == "mongo":
        from dbfleet.engines.mongo import MongoSession

        return MongoSession(cluster, access)
    if cluster.engine == "redis":
        from dbfleet.engines.redis import RedisSession

        return RedisSession(cluster, access)
    raise ValueError(f"no engine adapter for {cluster.engine!r}")
