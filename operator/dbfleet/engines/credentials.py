"""The logins the operator and its tools use: one place for each user name and its password's secrets key.

The roles create these users (playbooks/roles/*/defaults/main.yml);
tests/unit/test_credentials.py reads the role defaults and these, so the two
cannot drift again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Login:
    """A user name (None where the server has only a password, like Sentinel's requirepass) and the key of
    its password in the secrets file."""

    user: str | None
    secret: str


POSTGRES_SUPERUSER = Login("postgres", "postgres_superuser_password")
"""The operator's PostgreSQL login: index DDL, the leader lock, backups (pgBackRest runs as the OS user)."""

PATRONI_REST = Login("patroni", "patroni_rest_password")
"""Patroni's REST API user, for the calls that write (switchover, restart, PATCH /config); reads need none."""

ETCD_ROOT = Login("root", "etcd_root_password")
"""etcd's administrator: the etcd role sets up authentication with it."""

ETCD_PATRONI = Login("patroni", "etcd_patroni_password")
"""Patroni's etcd user: read and write below Patroni's namespace only."""

ETCD_OPERATOR = Login("dbfleet_operator", "etcd_operator_password")
"""The operator's etcd user: its leader lease and key, read and write below engines.etcd.OPERATOR_PREFIX only."""

MONGO_ADMIN = Login("dbfleet_admin", "mongo_admin_password")
"""The operator's MongoDB login through mongos, and mongodump's."""

REDIS_ADMIN = Login("dbfleet_admin", "redis_admin_password")
"""redis-cli --rdb for snapshots and the members' checks."""

REDIS_MONITOR = Login("dbfleet_monitor", "redis_monitor_password")
"""The operator's read-only Redis login (INFO)."""

REDIS_SENTINEL = Login(None, "redis_sentinel_password")
"""Sentinel's own requirepass."""

EXPLAIN_ROLE = "dbfleet_explain"
"""A PostgreSQL role without login that can read every table and nothing more (pg_read_all_data): the
index advisor plans the spec's queries as it, never as the superuser (planning runs IMMUTABLE functions)."""
