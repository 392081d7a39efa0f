"""The engine-neutral cluster builder: from role plans to security groups, instance profiles and hosts."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from dbfleet import spec

from .context import FleetContext
from .groups import FLEET_GROUPS, allow_ingress
from .hosts import FleetHost
from .iam import Grant, create_instance_profile, host_grants, operator_grants

NODE_EXPORTER = 9100


@dataclass(frozen=True)
class Ingress:
    """A port a role accepts, and who may use it.

    A source is `self` (the role's own hosts), another role of the same cluster,
    a fleet group (`operator`, `monitoring`), `clients`: the fleet's app group
    plus the cluster's allowed_clients CIDRs, or a CIDR (a peered VPC of the
    other site, where no security group can be named across regions).
    """

    port: int
    sources: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class RolePlan:
    """One kind of host in a cluster: who may reach it, where its data lives, what it does with backup storage."""

    name: str
    hosts: tuple[spec.Host, ...]
    ingress: tuple[Ingress, ...] = ()
    data_dir: str | None = None
    """Mount point of the data volume; None for stateless roles, which get no volume."""
    backups: bool = False
    """Its hosts run the cluster's own backup tool against the storage (pgBackRest): they get that tool's
    repository prefix, and nothing when the cluster has none (MongoDB and Redis dumps are uploaded by the operator)."""
    operator: bool = False
    """The dbfleet operator runs here: it gets its own prefix of every cluster, and reads the tools' repositories."""
    fleet_groups: tuple[str, ...] = ()
    """Fleet-wide groups its hosts also join (the monitoring host joins `monitoring` and `operator`)."""


def scraped(*exporter_ports: int) -> tuple[Ingress, ...]:
    """Ingress for Prometheus to scrape the given exporters and the node exporter."""
    return tuple(Ingress(port, ("monitoring",), "Prometheus scrapes the exporter")
                 for port in (*exporter_ports, NODE_EXPORTER))


class ClusterComponent(pulumi.ComponentResource):
    """Builds a cluster from its role plans. A role gets a security group when anything may reach it."""

    hosts: dict[str, FleetHost]
    groups: dict[str, aws.ec2.SecurityGroup]
    """Each role's security group (roles nothing may reach have none)."""

    def __init__(self, type_: str, name: str, roles: list[RolePlan], size: spec.Instance,
                 allowed_clients: list[str], ctx: FleetContext, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(type_, name, None, opts)
        clash = {role.name for role in roles}.intersection(FLEET_GROUPS)
        if clash:
            raise ValueError(f"{name}: role names {sorted(clash)} are taken by the fleet-wide groups")
        child = pulumi.ResourceOptions(parent=self)
        groups = {
            role.name: aws.ec2.SecurityGroup(f"{name}-{role.name}", vpc_id=ctx.vpc_id,
                                             description=f"dbfleet {name}: {role.name} hosts",
                                             tags={"Name": f"{name}-{role.name}"}, opts=child)
            for role in roles if role.ingress
        }
        named = {**ctx.groups, **{role: group.id for role, group in groups.items()}}
        for role in roles:
            for rule in role.ingress:
                for source in rule.sources:
                    for label, group_id, cidr in _origins(source, role.name, named, allowed_clients):
                        allow_ingress(groups[role.name], f"{name}-{role.name}-from-{label}-{rule.port}", rule.port,
                                      rule.why, self, source_group=group_id, cidr=cidr)
        placed = _host_roles(roles)
        owners = {owner.name for _, owner, _ in placed}
        profiles = {
            role.name: create_instance_profile(f"{name}-{role.name}", _grants(role, name, ctx), ctx.region, self)
            for role in roles if role.name in owners  # a role whose hosts another role owns needs no profile
        }
        self.groups = groups
        self.hosts = {}
        for host, owner, member_of in placed:
            group_ids = [groups[r.name].id for r in member_of if r.name in groups]
            group_ids += [ctx.groups[g] for r in member_of for g in r.fleet_groups] + [ctx.groups["egress"]]
            self.hosts[host.name] = FleetHost(
                host.name, size=size, data_dir=owner.data_dir, zone=ctx.zones[host.name],
                security_group_ids=group_ids, profile=profiles[owner.name],
                tags={"dbfleet:host": host.name, "dbfleet:cluster": name,
                      "dbfleet:roles": " ".join(r.name for r in member_of)},
                ctx=ctx, opts=child,
            )
        self.register_outputs({"hosts": {n: h.private_ip for n, h in self.hosts.items()}})


def _grants(role: RolePlan, cluster: str, ctx: FleetContext) -> list[Grant]:
    """The backup storage rights of a role's hosts (see components.iam)."""
    grants = host_grants(ctx.backups.get(cluster)) + host_grants(ctx.dr_backups.get(cluster)) if role.backups else []
    if role.operator:
        grants += operator_grants([*ctx.backups.values(), *ctx.dr_backups.values()])
    return grants


def _origins(source: str, role: str, named: dict[str, pulumi.Output[str]],
             allowed_clients: list[str]) -> list[tuple[str, pulumi.Output[str] | None, str | None]]:
    """(label, group id, CIDR) for each origin a rule source stands for."""
    if source == "clients":
        return [("app", named["app"], None)] + [(_cidr_label(cidr), None, cidr) for cidr in allowed_clients]
    if "/" in source:
        return [(_cidr_label(source), None, source)]
    label = role if source == "self" else source
    return [(label, named[label], None)]


def _cidr_label(cidr: str) -> str:
    """A CIDR as part of a resource name: Pulumi's URNs use '::' as their separator, so ':' stays out."""
    return cidr.replace("/", "_").replace(":", "-")


def _host_roles(roles: list[RolePlan]) -> list[tuple[spec.Host, RolePlan, list[RolePlan]]]:
    """Each host once, with the role that owns its instance (the first listing it) and every role it plays."""
    seen: dict[str, tuple[spec.Host, RolePlan, list[RolePlan]]] = {}
    for role in roles:
        for host in role.hosts:
            if host.name not in seen:
                seen[host.name] = (host, role, [])
            seen[host.name][2].append(role)
    return list(seen.values())
