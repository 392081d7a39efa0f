"""PostgresCluster: a primary and its streaming replicas, open to clients, each other, the operator and Prometheus.

With `ha: patroni` it also holds etcd (on the PostgreSQL hosts unless the spec
names hosts of their own), Patroni's REST API and HAProxy's endpoints: etcd's
peer port is open only between the cluster's own hosts and its client port to
them and the operator (its leader lease; etcd's authentication keeps it below
its own prefix), the REST API to its members, HAProxy, the operator and
Prometheus, and the endpoints to the cluster's clients and the operator.
"""

from __future__ import annotations

import pulumi

from dbfleet import spec

from .cluster import ClusterComponent, Ingress, RolePlan, scraped
from .context import FleetContext

POSTGRES_EXPORTER = 9187
DATA_DIR = "/var/lib/postgresql"


def postgres_roles(cluster: spec.PostgresCluster) -> list[RolePlan]:
    """Every member may become primary, so primary and replicas share a group and a profile; with Patroni, etcd
    and HAProxy are roles of their own (sharing the PostgreSQL hosts by default)."""
    postgres = [Ingress(cluster.port, ("clients", "operator"), "clients and the operator"),
                Ingress(cluster.port, ("self",), "replicas stream from the primary; pg_rewind after failover"),
                *scraped(POSTGRES_EXPORTER)]
    standby = cluster.dr.standby if cluster.dr is not None else None
    if standby is not None and standby.vpc_cidr is not None:
        postgres.append(Ingress(cluster.port, (standby.vpc_cidr,), "the standby site streams from the primary (VPC "
                                                                   "peering: no group id across regions)"))
    if cluster.ha != "patroni":
        return [RolePlan("postgres", tuple(cluster.all_hosts()), ingress=tuple(postgres),
                         data_dir=DATA_DIR, backups=True)]
    api, etcd = cluster.patroni.rest_api_port, cluster.patroni.etcd
    postgres += [
        Ingress(cluster.port, ("haproxy",), "HAProxy forwards the sessions of the endpoints"),
        Ingress(api, ("self",), "Patroni members ask each other (failover, failsafe)"),
        Ingress(api, ("haproxy",), "HAProxy health checks (/primary, /replica)"),
        Ingress(api, ("operator",), "the operator reads roles and lag, and asks for a switchover"),
        Ingress(api, ("monitoring",), "Prometheus scrapes the Patroni /metrics"),
    ]
    return [
        RolePlan("postgres", tuple(cluster.all_hosts()), ingress=tuple(postgres), data_dir=DATA_DIR,
                 backups=True),
        RolePlan("etcd", tuple(cluster.etcd_hosts()),
                 ingress=(Ingress(etcd.client_port, ("postgres",), "Patroni keeps its leader lock in etcd"),
                          Ingress(etcd.client_port, ("operator",), "the operator keeps its leader lease in etcd"),
                          Ingress(etcd.client_port, ("self",), "etcd members and etcdctl on them"),
                          Ingress(etcd.peer_port, ("self",), "etcd peers (Raft)"),
                          *scraped()),
                 data_dir="/var/lib/etcd"),
        RolePlan("haproxy", tuple(cluster.endpoint_hosts()),
                 ingress=(Ingress(cluster.endpoints.rw_port, ("clients", "operator"), "the read-write endpoint"),
                          Ingress(cluster.endpoints.ro_port, ("clients", "operator"), "the read-only endpoint"),
                          *scraped())),
    ]


class PostgresCluster(ClusterComponent):
    """A PostgreSQL cluster on EC2."""

    def __init__(self, cluster: spec.PostgresCluster, ctx: FleetContext,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dbfleet:aws:PostgresCluster", cluster.name, postgres_roles(cluster), cluster.instance,
                         cluster.allowed_clients, ctx, opts)
