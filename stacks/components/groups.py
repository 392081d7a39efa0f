"""Security groups shared by the fleet (app clients, operator, monitoring, egress) and the ingress-rule helper."""

from __future__ import annotations

import ipaddress

import pulumi
import pulumi_aws as aws

FLEET_GROUPS = ("app", "operator", "monitoring", "egress")


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


class FleetGroups(pulumi.ComponentResource):
    """Fleet-wide groups: `app` marks clients, `operator` the reconciler, `monitoring` Prometheus, `egress` outbound."""

    groups: dict[str, aws.ec2.SecurityGroup]

    def __init__(self, name: str, vpc_id: pulumi.Input[str], vpc_cidr: str, operator_metrics_port: int,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dbfleet:aws:FleetGroups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        purpose = {
            "app": "Attach to application servers: the databases accept their clients from this group",
            "operator": "The dbfleet operator: reaches every database port",
            "monitoring": "Prometheus: scrapes the exporters",
            "egress": "Outbound for every fleet host: the VPC, and HTTP(S) for packages, SSM and S3",
        }
        self.groups = {
            role: aws.ec2.SecurityGroup(f"{name}-{role}", vpc_id=vpc_id, description=purpose[role],
                                        tags={"Name": f"{name}-{role}"}, opts=child)
            for role in FLEET_GROUPS
        }
        allow_ingress(self.groups["operator"], f"{name}-operator-from-monitoring-{operator_metrics_port}",
                      operator_metrics_port, "Prometheus scrapes the operator /metrics", self,
                      source_group=self.groups["monitoring"].id)
        egress = self.groups["egress"]
        aws.vpc.SecurityGroupEgressRule(f"{name}-egress-vpc", security_group_id=egress.id, ip_protocol="-1",
                                        cidr_ipv4=vpc_cidr, description="Anything inside the fleet VPC", opts=child)
        for port, why in ((443, "HTTPS: Debian mirrors, the SSM agent, S3"), (80, "HTTP: Debian mirrors")):
            aws.vpc.SecurityGroupEgressRule(f"{name}-egress-{port}", security_group_id=egress.id, ip_protocol="tcp",
                                            from_port=port, to_port=port, cidr_ipv4="0.0.0.0/0", description=why,
                                            opts=child)
        self.register_outputs({role: group.id for role, group in self.groups.items()})
