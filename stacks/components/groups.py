"""Security groups shared by the fleet (app clients, operator, monitoring, egress) and the ingress-rule helper."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pulumi
import pulumi_aws as aws

FLEET_GROUPS = ("app", "operator", "monitoring", "egress")
EGRESS_PURPOSE = "Outbound for every fleet host: the VPC, and HTTP(S) for packages, SSM and S3"


def allow_ingress(group: aws.ec2.SecurityGroup, name: str, port: int, why: str, parent: pulumi.Resource, *,
                  source_group: pulumi.Input[str] | None = None, cidr: str | None = None) -> None:
    """One TCP port into `group`, from another group or from a named IPv4 or IPv6 CIDR (never from everywhere)."""
    if (source_group is None) == (cidr is None):
        raise ValueError(f"{name}: an ingress rule needs exactly one source, a group or a CIDR")
    net = ipaddress.ip_network(cidr) if cidr is not None else None
    if net is not None and net.prefixlen == 0:
        raise ValueError(f"{name}: {cidr} would open port {port} to every address")
    aws.vpc.SecurityGroupIngressRule(
        name, security_group_id=group.id, ip_protocol="tcp", from_port=port, to_port=port,
        referenced_security_group_id=source_group, description=why,
        cidr_ipv4=str(net) if net is not None and net.version == 4 else None,
        cidr_ipv6=str(net) if net is not None and net.version == 6 else None,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def egress_group(name: str, vpc_id: pulumi.Input[str], vpc_cidr: str, parent: pulumi.Resource,
                 peer_cidrs: Sequence[str] = ()) -> aws.ec2.SecurityGroup:
    """`<name>-egress`, which every host joins: anything to its own VPC and to each peered VPC (whose groups decide
    what gets in), and ports 80 and 443 to anywhere."""
    child = pulumi.ResourceOptions(parent=parent)
    egress = aws.ec2.SecurityGroup(f"{name}-egress", vpc_id=vpc_id, description=EGRESS_PURPOSE,
                                   tags={"Name": f"{name}-egress"}, opts=child)
    aws.vpc.SecurityGroupEgressRule(f"{name}-egress-vpc", security_group_id=egress.id, ip_protocol="-1",
                                    cidr_ipv4=vpc_cidr, description="Anything inside the fleet VPC", opts=child)
    for cidr in peer_cidrs:
        aws.vpc.SecurityGroupEgressRule(f"{name}-egress-peer-{cidr.replace('/', '_')}", security_group_id=egress.id,
                                        ip_protocol="-1", cidr_ipv4=cidr,
                                        description="Anything in the peered VPC of the other site; its groups decide",
                                        opts=child)
    for port, why in ((443, "HTTPS: Debian mirrors, the SSM agent, S3"), (80, "HTTP: Debian mirrors")):
        aws.vpc.SecurityGroupEgressRule(f"{name}-egress-{port}", security_group_id=egress.id, ip_protocol="tcp",
                                        from_port=port, to_port=port, cidr_ipv4="0.0.0.0/0", description=why,
                                        opts=child)
    return egress


class FleetGroups(pulumi.ComponentResource):
    """Fleet-wide groups: `app` marks clients, `operator` the reconciler, `monitoring` Prometheus, `egress` outbound."""

    groups: dict[str, aws.ec2.SecurityGroup]

    def __init__(self, name: str, vpc_id: pulumi.Input[str], vpc_cidr: str, operator_metrics_port: int,
                 opts: pulumi.ResourceOptions | None = None, peer_cidrs: Sequence[str] = ()) -> None:
        super().__init__("dbfleet:aws:FleetGroups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        purpose = {
            "app": "Attach to application servers: the databases accept their clients from this group",
            "operator": "The dbfleet operator: reaches every database port",
            "monitoring": "Prometheus: scrapes the exporters",
        }
        self.groups = {
            role: aws.ec2.SecurityGroup(f"{name}-{role}", vpc_id=vpc_id, description=purpose[role],
                                        tags={"Name": f"{name}-{role}"}, opts=child)
            for role in FLEET_GROUPS if role != "egress"
        }
        self.groups["egress"] = egress_group(name, vpc_id, vpc_cidr, self, peer_cidrs)
        allow_ingress(self.groups["operator"], f"{name}-operator-from-monitoring-{operator_metrics_port}",
                      operator_metrics_port, "Prometheus scrapes the operator /metrics", self,
                      source_group=self.groups["monitoring"].id)
        self.register_outputs({role: group.id for role, group in self.groups.items()})
