"""The fleet program: builds the whole spec on AWS and returns the stack outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from dbfleet import spec
from dbfleet.inventory import host_roles

from .backups import BackupLocation, Backups, BackupTarget, plan_backup_targets, plan_dr_targets
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
from .regions import SecondRegion, region_provider, second_regions
from .standby import PrimarySite, StandbySite, plan_standby_sites

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
    provider = region_provider("aws", meta.region, fleet, stack)
    opts = pulumi.ResourceOptions(providers=[provider])

    # Planned before anything is registered: a bad pin, bucket or standby site fails fast.
    zones = assign_zones(fleet_spread_groups(fleet))
    targets = plan_backup_targets(fleet)
    dr_targets = plan_dr_targets(fleet)
    standbys = plan_standby_sites(fleet)
    network = Network(meta.name, meta.vpc_cidr, meta.region, opts)
    groups = FleetGroups(meta.name, network.vpc.id, meta.vpc_cidr, fleet.monitoring.operator_metrics_port, opts,
                         peer_cidrs=[plan.vpc_cidr for plan in standbys])
    key = FleetKey(meta.name, f"dbfleet-{meta.name}-{stack}", opts)
    backups = Backups(f"{meta.name}-backups", targets, key.arn, meta.region, opts)
    regions = second_regions(fleet, [t.region for t in dr_targets.values() if t.region] +
                             [plan.region for plan in standbys], stack)
    dr_backups = _dr_backups(f"{meta.name}-dr", dr_targets, regions)
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
        dr_backups=dr_backups,
    )
    components: list[ClusterComponent] = [COMPONENTS[c.engine](c, ctx, opts) for c in fleet.clusters]
    components.append(MonitoringHost(fleet, ctx, opts))
    primary = PrimarySite(network.vpc.id, meta.vpc_cidr, network.private_route_table.id, provider,
                          backups.locations, dr_backups)
    sites = [(plan, StandbySite(plan, primary, regions[plan.region], settings.ssh_public_key)) for plan in standbys]
    outputs: dict[str, Any] = {
        "region": meta.region,
        "vpc_id": network.vpc.id,
        "kms_key_arn": key.arn,
        "security_groups": ctx.groups,
        "hosts": _host_outputs(fleet, components),
        "backups": {c: {"bucket": loc.bucket, "prefix": loc.prefix} for c, loc in backups.locations.items()},
    }
    # Only a spec with an S3 dr.target or a standby site adds outputs: a stack without them keeps its outputs.
    if dr_backups:
        outputs["dr_backups"] = {c: {"bucket": loc.bucket, "prefix": loc.prefix, "region": loc.region,
                                     "kms_key_arn": loc.key_arn} for c, loc in dr_backups.items()}
    if sites:
        outputs["standby_sites"] = {
            plan.cluster.name: {"region": plan.region, "vpc_id": site.vpc_id, "vpc_cidr": plan.vpc_cidr,
                                "peering_connection_id": site.peering_id, "security_group": site.security_group_id,
                                "kms_key_arn": regions[plan.region].key.arn}
            for plan, site in sites}
        outputs["standby_hosts"] = {
            name: {"address": host.private_ip, "instance_id": host.instance.id, "zone": host.zone,
                   "cluster": plan.cluster.name, "region": plan.region}
            for plan, site in sites for name, host in site.hosts.items()}
    return outputs


def _dr_backups(name: str, targets: dict[str, BackupTarget], regions: dict[str, SecondRegion]
                ) -> dict[str, BackupLocation]:
    """The dr.target buckets, built in their own regions with each region's key, by cluster name."""
    locations: dict[str, BackupLocation] = {}
    for region, site in regions.items():
        here = {c: t for c, t in targets.items() if t.region == region}
        if here:
            locations.update(Backups(f"{name}-{region}", here, site.key.arn, region, site.opts).locations)
    return locations


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
