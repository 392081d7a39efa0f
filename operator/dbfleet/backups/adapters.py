"""Each engine's backup adapter, by engine name: pgBackRest, mongodump or redis-cli --rdb."""

from __future__ import annotations

from dbfleet.backups.engine import EngineBackups
from dbfleet.backups.mongo import MongoBackups
from dbfleet.backups.postgres import PostgresBackups
from dbfleet.backups.redis import RedisBackups

ADAPTERS: dict[str, type[EngineBackups]] = {"postgres": PostgresBackups, "mongo": MongoBackups,
                                            "redis": RedisBackups}


def adapter_for(engine: str) -> EngineBackups:
    """The backup adapter of an engine: 'postgres', 'mongo' or 'redis'."""
    try:
        return ADAPTERS[engine]()
    except KeyError:
        raise ValueError(f"no backup adapter for engine {engine!r}") from None
