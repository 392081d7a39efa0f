"""RedisCluster: Redis data nodes and the Sentinels that watch them and elect a new primary."""

from __future__ import annotations

import pulumi

from dbfleet import spec

from .cluster import ClusterComponent, Ingress, RolePlan, scraped
from .context import FleetContext

REDIS_EXPORTER = 9121


def redis_roles(cluster: spec.RedisCluster) -> list[RolePlan]:
    """Sentinels reach Redis and each other; Redis never dials a Sentinel, so that direction stays closed."""
    return [
        RolePlan("redis", tuple(cluster.data_hosts()),
                 ingress=(Ingress(cluster.port, ("self",), "replicas sync from the primary"),
                          Ingress(cluster.port, ("sentinel",), "Sentinels monitor and reconfigure Redis"),
                          Ingress(cluster.port, ("clients", "operator"), "clients and the operator"),
                          *scraped(REDIS_EXPORTER)),
                 # redis-cli --rdb writes a spool file the operator fetches and uploads: no S3 rights here.
                 data_dir="/var/lib/redis"),
        RolePlan("sentinel", tuple(cluster.sentinel_hosts()),
                 ingress=(Ingress(cluster.sentinel_port, ("self",), "Sentinels agree on failover"),
                          Ingress(cluster.sentinel_port, ("clients", "operator"), "clients ask who is primary"),
                          *scraped()),
                 ),
    ]


class RedisCluster(ClusterComponent):
    """A Redis cluster with Sentinel on EC2."""

    def __init__(self, cluster: spec.RedisCluster, ctx: FleetContext,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dbfleet:aws:RedisCluster", cluster.name, redis_roles(cluster), cluster.instance,
                         cluster.allowed_clients, ctx, opts)
