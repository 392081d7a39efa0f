"""The fleet's VPC: private subnets for the hosts in three zones, a NAT gateway for egress, an S3 gateway endpoint."""

from __future__ import annotations

import ipaddress

import pulumi
import pulumi_aws as aws

from .errors import StackError
from .placement import ZONES


def subnet_cidrs(vpc_cidr: str, zones: int = ZONES) -> tuple[list[str], list[str]]:
    """(private, public) subnet CIDRs, one of each per zone, carved as sixteenths of the VPC."""
    blocks = list(ipaddress.ip_network(vpc_cidr).subnets(prefixlen_diff=4))
    return [str(b) for b in blocks[:zones]], [str(b) for b in blocks[zones : 2 * zones]]


def _pick_zones(names: list[str], region: str) -> list[str]:
    if len(names) < ZONES:
        raise StackError(f"fleet.region: {region} offers {len(names)} availability zones; the stack needs {ZONES}")
    return names[:ZONES]


class Network(pulumi.ComponentResource):
    """A VPC over three zones. Hosts live in private subnets and reach out only through the NAT gateway."""

    vpc: aws.ec2.Vpc
    zone_names: list[pulumi.Output[str]]
    private_subnet_ids: list[pulumi.Output[str]]
    private_route_table: aws.ec2.RouteTable
    """The hosts' routes: a peering with the other site adds its route here."""
    egress_route: aws.ec2.Route

    def __init__(self, name: str, vpc_cidr: str, region: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dbfleet:aws:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        available = aws.get_availability_zones_output(
            state="available",
            filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        picked = available.names.apply(lambda names: _pick_zones(list(names), region))
        self.zone_names = [picked[i] for i in range(ZONES)]

        self.vpc = aws.ec2.Vpc(name, cidr_block=vpc_cidr, enable_dns_support=True, enable_dns_hostnames=True,
                               tags={"Name": name}, opts=child)
        # The default group lets members talk freely; strip its rules so only the role groups apply.
        aws.ec2.DefaultSecurityGroup(f"{name}-default", vpc_id=self.vpc.id, tags={"Name": f"{name}-default (unused)"},
                                     opts=child)
        private_cidrs, public_cidrs = subnet_cidrs(vpc_cidr)

        igw = aws.ec2.InternetGateway(name, vpc_id=self.vpc.id, tags={"Name": name}, opts=child)
        public_rt, public_ids = self._tier(name, "public", public_cidrs)
        aws.ec2.Route(f"{name}-public-internet", route_table_id=public_rt.id, destination_cidr_block="0.0.0.0/0",
                      gateway_id=igw.id, opts=child)
        # One NAT gateway: hosts need egress only for packages and the SSM agent, so
        # losing it for a zone outage stops installs, never the databases.
        nat_ip = aws.ec2.Eip(f"{name}-nat", domain="vpc", tags={"Name": f"{name}-nat"}, opts=child)
        nat = aws.ec2.NatGateway(f"{name}-nat", allocation_id=nat_ip.id, subnet_id=public_ids[0],
                                 tags={"Name": f"{name}-nat"},
                                 opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]))
        private_rt, self.private_subnet_ids = self._tier(name, "private", private_cidrs)
        self.private_route_table = private_rt
        self.egress_route = aws.ec2.Route(f"{name}-private-nat", route_table_id=private_rt.id,
                                          destination_cidr_block="0.0.0.0/0", nat_gateway_id=nat.id, opts=child)
        # Backups go to S3 through a gateway endpoint: free, and off the NAT gateway's bill.
        aws.ec2.VpcEndpoint(f"{name}-s3", vpc_id=self.vpc.id, service_name=f"com.amazonaws.{region}.s3",
                            vpc_endpoint_type="Gateway", route_table_ids=[private_rt.id],
                            tags={"Name": f"{name}-s3"}, opts=child)
        self.register_outputs({"vpc_id": self.vpc.id, "private_subnet_ids": self.private_subnet_ids})

    def _tier(self, name: str, tier: str, cidrs: list[str]) -> tuple[aws.ec2.RouteTable, list[pulumi.Output[str]]]:
        """A route table and one subnet per zone sharing it; returns the table and the subnet ids."""
        child = pulumi.ResourceOptions(parent=self)
        table = aws.ec2.RouteTable(f"{name}-{tier}", vpc_id=self.vpc.id, tags={"Name": f"{name}-{tier}"}, opts=child)
        ids = []
        for i, cidr in enumerate(cidrs):
            subnet = aws.ec2.Subnet(f"{name}-{tier}-{i}", vpc_id=self.vpc.id, cidr_block=cidr,
                                    availability_zone=self.zone_names[i], map_public_ip_on_launch=False,
                                    tags={"Name": f"{name}-{tier}-{i}", "dbfleet:tier": tier}, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-{tier}-{i}", subnet_id=subnet.id, route_table_id=table.id,
                                          opts=child)
            ids.append(subnet.id)
        return table, ids
