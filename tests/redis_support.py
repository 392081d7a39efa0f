"""What the Redis integration and fault tests share: clients that reach the lab's data nodes and Sentinels the
way the operator does (TLS, the server checked against the fleet CA, when the spec asks for it)."""

from __future__ import annotations

from typing import Any

import redis
from redis.sentinel import Sentinel

from dbfleet.engines.tls import fleet_ca, redis_client_tls
from dbfleet.spec import RedisCluster

TIMEOUT = 2.0


def tls_options(lab: Any, cluster: RedisCluster) -> dict[str, Any]:
    """redis-py's TLS arguments, from engines.tls with the CA the pki role made beside the lab's inventory."""
    if not cluster.tls.enabled:
        return {}
    return redis_client_tls(cluster, fleet_ca(cluster, lab.inventory_path))


def node(lab: Any, host: str, cluster: RedisCluster, user: str = "dbfleet_admin",
         secret: str = "redis_admin_password", timeout: float = TIMEOUT, **kwargs: Any) -> redis.Redis:
    """A client of one data node, logged in as `user`."""
    return redis.Redis(lab.address(host), cluster.port, username=user, password=lab.secrets[secret],
                       socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True,
                       **tls_options(lab, cluster), **kwargs)


def sentinel_node(lab: Any, host: str, cluster: RedisCluster, timeout: float = TIMEOUT) -> redis.Redis:
    """A client of one Sentinel, with its requirepass."""
    return redis.Redis(lab.address(host), cluster.sentinel_port, password=lab.secrets["redis_sentinel_password"],
                       socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True,
                       **tls_options(lab, cluster))


def sentinels(lab: Any, cluster: RedisCluster, timeout: float = TIMEOUT, **kwargs: Any) -> Sentinel:
    """An application's view: ask the Sentinels for the master, then reach it with `kwargs` (its login)."""
    tls = tls_options(lab, cluster)
    return Sentinel([(lab.address(h.name), cluster.sentinel_port) for h in cluster.sentinel_hosts()],
                    sentinel_kwargs={"password": lab.secrets["redis_sentinel_password"], "socket_timeout": timeout,
                                     "socket_connect_timeout": timeout, **tls},
                    socket_timeout=timeout, socket_connect_timeout=timeout, **tls, **kwargs)

