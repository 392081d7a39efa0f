"""The fleet program: builds the whole spec on AWS and returns the stack outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from dbfleet import spec
from dbfleet.inventory import host_roles

from .backups import Backups, plan_backup_targets
from .cluster import ClusterComponent
from .context import FleetContext
from .encryption import FleetKey
from .groups import FleetGroups
from .images import AmiCatalog
from .mongo import MongoShardedCluster
from .monitoring import MonitoringHost
from .network import Network
from .placement import assign_zones, fleet_spread_groups
from .postgres import PostgresCluster
from .redis import RedisCluster

COMPONENTS: dict[str, type[PostgresCluster] | type[MongoShardedCluster] | type[RedisCluster]] = {
    "postgres": PostgresCluster,
    "mongo": MongoShardedCluster,
    "redis": RedisCluster,
}


@dataclass(frozen=True)
class StackSettings:
    """What a stack's config adds to the spec."""

    ssh_public_key: str | None = None
    """Public key for the `admin` user; Ansible connects with SSH tunnelled through SSM."""


def provision_fleet(fleet: spec.Fleet, settings: StackSettings) -> dict[str, Any]:
    """Register every resource of the fleet and return the stack outputs by name."""
    meta = fleet.fleet
    stack = pulumi.get_stack()
    provider = aws.Provider("aws", region=meta.region, default_tags={"tags": {
        "dbfleet:fleet": meta.name, "dbfleet:environment": meta.environment, "dbfleet:stack": stack}})
    opts = pulumi.ResourceOptions(providers=[provider])

    zones = assign_zones(fleet_spread_groups(fleet))  # before anything is registered: a bad pin fails fast
    targets = plan_backup_targets(fleet)
    network = Network(meta.name, meta.vpc_cidr, meta.region, opts)
    groups = FleetGroups(meta.name, network.vpc.id, meta.vpc_cidr, fleet.monitoring.operator_metrics_port, opts)
    key = FleetKey(meta.name, f"dbfleet-{meta.name}-{stack}", opts)
    backups = Backups(f"{meta.name}-backups", targets, key.arn, opts)
    key_pair = (aws.ec2.KeyPair(meta.name, public_key=settings.ssh_public_key, opts=opts)
                if settings.ssh_public_key else None)
    ctx = FleetContext(
        region=meta.region,
        vpc_id=network.vpc.id,
        zone_names=network.zone_names,
        private_subnet_ids=network.private_subnet_ids,
        groups={role: group.id for role, group in groups.groups.items()},
        key_arn=key.arn,
        backups=backups.locations,
        zones=zones,
        amis=AmiCatalog(provider),
        key_name=key_pair.key_name if key_pair else None,
        boot_after=[network.egress_route],
    )
    components: list[ClusterComponent] = [COMPONENTS[c.engine](c, ctx, opts) for c in fleet.clusters]
    components.append(MonitoringHost(fleet, ctx, opts))
    return {
        "region": meta.region,
        "vpc_id": network.vpc.id,
        "kms_key_arn": key.arn,
        "security_groups": ctx.groups,
        "hosts": _host_outputs(fleet, components),
        "backups": {c: {"bucket": loc.bucket, "prefix": loc.prefix} for c, loc in backups.locations.items()},
    }


def _host_outputs(fleet: spec.Fleet, components: list[ClusterComponent]) -> dict[str, Any]:
    """Each host's address, instance, zone, cluster and inventory groups (the lab's group names)."""
    roles = host_roles(fleet)
    out: dict[str, Any] = {}
    for component in components:
        for name, host in component.hosts.items():
            cluster, groups = roles[name]
            out[name] = {"address": host.private_ip, "instance_id": host.instance.id, "zone": host.zone,
                         "cluster": cluster, "roles": groups}
    return out
