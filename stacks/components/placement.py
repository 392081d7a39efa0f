"""Availability-zone placement: spread each replica set over the zones, honouring pinned zones."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dbfleet import spec

from .errors import StackError

ZONES = 3
"""The VPC spans three availability zones; a host's `zone` is an index into them."""


def as_hosts(refs: Iterable[str | spec.Host]) -> list[spec.Host]:
    """Spec host references (a bare name or a Host) as Hosts."""
    return [ref if isinstance(ref, spec.Host) else spec.Host(name=ref) for ref in refs]


def spread_groups(cluster: spec.PostgresCluster | spec.MongoCluster | spec.RedisCluster) -> list[list[spec.Host]]:
    """The sets of hosts that must not share a zone: a primary with its replicas, each replica set, the helpers."""
    if isinstance(cluster, spec.PostgresCluster):
        return [cluster.all_hosts()]
    if isinstance(cluster, spec.RedisCluster):
        data = cluster.data_hosts()
        names = {h.name for h in data}
        return [data, [h for h in cluster.sentinel_hosts() if h.name not in names]]
    return [cluster.config_servers.hosts(), *(s.hosts() for s in cluster.shards), as_hosts(cluster.mongos)]


def fleet_spread_groups(fleet: spec.Fleet) -> list[list[spec.Host]]:
    """Every cluster's spread groups, then the monitoring host on its own."""
    groups = [group for cluster in fleet.clusters for group in spread_groups(cluster)]
    return groups + [[spec.Host(name=fleet.monitoring.host)]]


def assign_zones(groups: Iterable[Sequence[spec.Host]], zones: int = ZONES) -> dict[str, int]:
    """Zone index per host: pinned hosts keep their zone; the others go where their group is thinnest.

    Ties go to the zone the whole fleet uses least, then the lowest index, so
    single-member replica sets spread over the zones too. The result depends
    only on the spec, so a second run places every host where the first did.
    """
    placed: dict[str, int] = {}
    fleet_use = [0] * zones
    for group in groups:
        group_use = [0] * zones
        for host in group:
            if host.zone is not None:
                if host.zone >= zones:
                    raise StackError(
                        f"host {host.name}: zone {host.zone} is outside the stack's {zones} "
                        f"availability zones (0 to {zones - 1})"
                    )
                group_use[host.zone] += 1
        for host in group:
            if host.name in placed:
                continue
            zone = host.zone
            if zone is None:
                zone = min(range(zones), key=lambda z: (group_use[z], fleet_use[z], z))
                group_use[zone] += 1
            placed[host.name] = zone
            fleet_use[zone] += 1
    return placed
