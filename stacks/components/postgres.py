"""PostgresCluster: a primary and its streaming replicas, open to clients, each other, the operator and Prometheus."""

from __future__ import annotations

import pulumi

from dbfleet import spec

from .cluster import ClusterComponent, Ingress, RolePlan, scraped
from .context import FleetContext

POSTGRES_EXPORTER = 9187


def postgres_roles(cluster: spec.PostgresCluster) -> list[RolePlan]:
    """One role: every member may become primary, so primary and replicas share a group and a profile."""
    return [RolePlan(
        "postgres", tuple(cluster.all_hosts()),
        ingress=(Ingress(cluster.port, ("clients", "operator"), "clients and the operator"),
                 Ingress(cluster.port, ("self",), "replicas stream from the primary; pg_rewind after failover"),
                 *scraped(POSTGRES_EXPORTER)),
        data_dir="/var/lib/postgresql",
        backups=True,
    )]


class PostgresCluster(ClusterComponent):
    """A PostgreSQL cluster on EC2."""

    def __init__(self, cluster: spec.PostgresCluster, ctx: FleetContext,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dbfleet:aws:PostgresCluster", cluster.name, postgres_roles(cluster), cluster.instance,
                         cluster.allowed_clients, ctx, opts)
