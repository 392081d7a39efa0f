"""A PostgreSQL cluster's standby site (dr.standby): a network, a peering with the fleet's VPC, and hosts.

The site is built in dr.standby.region with network.py's Network (its own
VPC on dr.standby.vpc_cidr over three zones, NAT gateway and S3 endpoint) and
hosts.py's FleetHost (Debian 12 looked up in that region, volumes on that
region's key, IMDSv2 only). A security group cannot name another region's
group, so each site admits the other by its VPC CIDR, over a VPC peering
connection requested from the fleet's region and accepted in the standby
region, with a route each way.

What runs on the hosts (a Patroni standby cluster fed from the primary site
and from repo2) is not built yet; the hosts carry no backup storage rights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from dbfleet import spec

from .backups import BackupLocation
from .cluster import ClusterComponent, Ingress, RolePlan
from .context import FleetContext
from .errors import StackError
from .groups import egress_group
from .hosts import FleetHost
from .images import AmiCatalog
from .network import Network
from .placement import as_hosts, assign_zones
from .postgres import DATA_DIR
from .regions import SecondRegion


@dataclass(frozen=True)
class StandbyPlan:
    """A standby site as the stack builds it, checked before anything is registered."""

    cluster: spec.PostgresCluster
    region: str
    vpc_cidr: str
    hosts: tuple[spec.Host, ...]
    zones: dict[str, int]


def plan_standby_sites(fleet: spec.Fleet) -> list[StandbyPlan]:
    """Each PostgreSQL cluster's standby site, or a StackError naming the cluster when it cannot be built."""
    plans = []
    for cluster in fleet.of_engine("postgres"):
        standby = cluster.dr.standby if cluster.dr is not None else None
        if standby is None:
            continue
        if standby.vpc_cidr is None:
            raise StackError(f"cluster {cluster.name}: dr.standby.vpc_cidr is needed to build the standby site, a "
                             f"VPC apart from fleet.vpc_cidr {fleet.fleet.vpc_cidr} (they are peered)")
        hosts = tuple(as_hosts(standby.hosts))
        plans.append(StandbyPlan(cluster, standby.region, standby.vpc_cidr, hosts, assign_zones([hosts])))
    return plans


@dataclass(frozen=True)
class PrimarySite:
    """The fleet's own network, as a standby site peers with it."""

    vpc_id: pulumi.Output[str]
    vpc_cidr: str
    route_table_id: pulumi.Output[str]
    provider: aws.Provider
    backups: dict[str, BackupLocation] = field(default_factory=dict)
    """Each cluster's first and second (dr) backup locations: a standby site's members get its cluster's rights."""
    dr_backups: dict[str, BackupLocation] = field(default_factory=dict)


def standby_roles(cluster: spec.PostgresCluster, hosts: tuple[spec.Host, ...], primary_cidr: str) -> list[RolePlan]:
    """The standby hosts: PostgreSQL open to each other and to the primary site's VPC; with Patroni, its REST API
    to each other and to the primary site's VPC (the operator's `dbfleet dr promote` asks and patches it), and an
    etcd of the standby cluster's own among themselves. The same pgBackRest rights as the primary site's members:
    the standby restores WAL and builds members from repo2, and once promoted it archives into both
    repositories."""
    ingress = [Ingress(cluster.port, ("self",), "standby members stream from each other (cascading)"),
               Ingress(cluster.port, (primary_cidr,), "the primary site (VPC peering): failback streaming and the "
                                                      "operator")]
    if cluster.ha == "patroni":
        api, etcd = cluster.patroni.rest_api_port, cluster.patroni.etcd
        ingress += [Ingress(api, ("self",), "Patroni members of the standby cluster ask each other"),
                    Ingress(api, (primary_cidr,), "the operator (dr promote, VPC peering) reads and patches it"),
                    Ingress(etcd.client_port, ("self",), "the standby cluster keeps its leader lock in its own etcd"),
                    Ingress(etcd.peer_port, ("self",), "etcd peers (Raft)")]
    return [RolePlan("postgres", hosts, ingress=tuple(ingress), data_dir=DATA_DIR, backups=True)]


class StandbySite(pulumi.ComponentResource):
    """One cluster's standby site in its region, peered with the fleet's VPC."""

    vpc_id: pulumi.Output[str]
    peering_id: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    hosts: dict[str, FleetHost]

    def __init__(self, plan: StandbyPlan, primary: PrimarySite, site: SecondRegion, ssh_public_key: str | None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        name = f"{plan.cluster.name}-standby"
        # Everything inside is the standby region's unless it names the primary's provider (the peering request,
        # the fleet's route to the standby site).
        super().__init__("dbfleet:aws:StandbySite", name, None,
                         pulumi.ResourceOptions.merge(opts, site.opts) if opts else site.opts)
        child = pulumi.ResourceOptions(parent=self)
        at_primary = pulumi.ResourceOptions(parent=self, provider=primary.provider)
        network = Network(name, plan.vpc_cidr, plan.region, child)
        egress = egress_group(name, network.vpc.id, plan.vpc_cidr, self, peer_cidrs=[primary.vpc_cidr])
        peering = aws.ec2.VpcPeeringConnection(name, vpc_id=primary.vpc_id, peer_vpc_id=network.vpc.id,
                                               peer_region=plan.region, tags={"Name": name}, opts=at_primary)
        accepted = aws.ec2.VpcPeeringConnectionAccepter(f"{name}-accept", vpc_peering_connection_id=peering.id,
                                                        auto_accept=True, tags={"Name": name}, opts=child)
        self.peering_id = accepted.vpc_peering_connection_id
        aws.ec2.Route(f"{name}-to-primary", route_table_id=network.private_route_table.id,
                      destination_cidr_block=primary.vpc_cidr, vpc_peering_connection_id=self.peering_id, opts=child)
        aws.ec2.Route(f"{name}-from-primary", route_table_id=primary.route_table_id,
                      destination_cidr_block=plan.vpc_cidr, vpc_peering_connection_id=self.peering_id,
                      opts=at_primary)
        key_pair = aws.ec2.KeyPair(name, public_key=ssh_public_key, opts=child) if ssh_public_key else None
        ctx = FleetContext(
            region=plan.region, vpc_id=network.vpc.id, zone_names=network.zone_names,
            private_subnet_ids=network.private_subnet_ids, groups={"egress": egress.id}, key_arn=site.key.arn,
            backups=_of(primary.backups, plan.cluster.name, name), zones=plan.zones,
            dr_backups=_of(primary.dr_backups, plan.cluster.name, name), amis=AmiCatalog(site.provider),
            key_name=key_pair.key_name if key_pair else None, boot_after=[network.egress_route],
        )
        roles = standby_roles(plan.cluster, plan.hosts, primary.vpc_cidr)
        hosts = ClusterComponent("dbfleet:aws:PostgresStandby", name, roles, plan.cluster.instance, [], ctx, child)
        self.vpc_id = network.vpc.id
        self.security_group_id = hosts.groups["postgres"].id
        self.hosts = hosts.hosts
        self.register_outputs({"vpc_id": self.vpc_id, "peering_id": self.peering_id,
                               "hosts": {n: h.private_ip for n, h in self.hosts.items()}})


def _of(locations: dict[str, BackupLocation], cluster: str, site: str) -> dict[str, BackupLocation]:
    """The cluster's location under its site's component name (the hosts' grants are looked up by it)."""
    return {site: locations[cluster]} if cluster in locations else {}
