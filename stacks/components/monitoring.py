"""MonitoringHost: the fleet's Prometheus host, which also runs the operator."""

from __future__ import annotations

import pulumi

from dbfleet import spec

from .cluster import ClusterComponent, RolePlan
from .context import FleetContext

PROMETHEUS_DATA = "/var/lib/prometheus"


def monitoring_roles(fleet: spec.Fleet) -> list[RolePlan]:
    """The monitoring host joins the fleet's monitoring and operator groups; nothing else needs to reach it.
    The operator runs there, so its profile carries the operator's backup rights."""
    return [RolePlan("prometheus", (spec.Host(name=fleet.monitoring.host),), data_dir=PROMETHEUS_DATA,
                     operator=True, fleet_groups=("monitoring", "operator"))]


class MonitoringHost(ClusterComponent):
    """Prometheus and the dbfleet operator on one EC2 instance."""

    def __init__(self, fleet: spec.Fleet, ctx: FleetContext, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dbfleet:aws:MonitoringHost", "monitoring", monitoring_roles(fleet), spec.Instance(), [],
                         ctx, opts)
