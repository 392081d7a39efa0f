"""MongoShardedCluster: config servers, shard replica sets and mongos routers, each role in its own group."""

from __future__ import annotations

import pulumi

from dbfleet import spec

from .cluster import ClusterComponent, Ingress, RolePlan, scraped
from .context import FleetContext
from .placement import as_hosts

MONGODB_EXPORTER = 9216
DATA_DIR = "/var/lib/mongodb"


def mongo_roles(cluster: spec.MongoCluster) -> list[RolePlan]:
    """Clients reach only mongos; mongos reaches shards and config servers; the balancer (config) reaches shards."""
    port = cluster.port
    return [
        RolePlan("config", tuple(cluster.config_servers.hosts()),
                 ingress=(Ingress(port, ("self",), "config replica set members"),
                          Ingress(port, ("mongos", "shard", "operator"), "routers, shards and the operator"),
                          *scraped(MONGODB_EXPORTER)),
                 data_dir=DATA_DIR),
        RolePlan("shard", tuple(h for shard in cluster.shards for h in shard.hosts()),
                 ingress=(Ingress(port, ("self",), "replica set members, and chunk migrations between shards"),
                          Ingress(port, ("mongos", "config", "operator"), "routers, the balancer and the operator"),
                          *scraped(MONGODB_EXPORTER)),
                 data_dir=DATA_DIR),
        # mongodump runs on a member of each replica set and writes a spool file there, which the operator
        # fetches and uploads (dbfleet.backups.spool): no MongoDB host touches backup storage.
        RolePlan("mongos", tuple(as_hosts(cluster.mongos)),
                 ingress=(Ingress(port, ("clients", "operator"), "clients and the operator"),
                          *scraped(MONGODB_EXPORTER))),
    ]


class MongoShardedCluster(ClusterComponent):
    """A sharded MongoDB cluster on EC2."""

    def __init__(self, cluster: spec.MongoCluster, ctx: FleetContext,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dbfleet:aws:MongoShardedCluster", cluster.name, mongo_roles(cluster), cluster.instance,
                         cluster.allowed_clients, ctx, opts)
