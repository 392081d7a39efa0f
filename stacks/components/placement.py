"""Availability-zone placement: spread each replica set over the zones, honouring pinned zones."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

from dbfleet import spec

from .errors import StackError

ZONES = 3
"""The VPC spans three availability zones; a host's `zone` is an index into them."""


def as_hosts(refs: Iterable[str | spec.Host]) -> list[spec.Host]:
    """Spec host references (a bare name or a Host) as Hosts."""
    return [ref if isinstance(ref, spec.Host) else spec.Host(name=ref) for ref in refs]


def spread_groups(cluster: spec.PostgresCluster | spec.MongoCluster | spec.RedisCluster) -> list[list[spec.Host]]:
    """The sets of hosts that must not share a zone: a primary with its replicas, each replica set, etcd members and
    HAProxy hosts of their own, the helpers."""
    if isinstance(cluster, spec.PostgresCluster):
        servers = cluster.all_hosts()
        names = {h.name for h in servers}
        etcd = [h for h in cluster.etcd_hosts() if h.name not in names]
        proxies = [h for h in cluster.endpoint_hosts() if h.name not in names | {e.name for e in etcd}]
        return [group for group in (servers, etcd, proxies) if group]
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

    Each group is placed on its own, starting from a zone picked by a hash of its
    first host's name. A change to one cluster therefore never moves another
    cluster's hosts, and the same spec always gives the same placement.
    """
    placed: dict[str, int] = {}
    for group in groups:
        use = [0] * zones
        for host in group:
            if host.zone is not None:
                if host.zone >= zones:
                    raise StackError(
                        f"host {host.name}: zone {host.zone} is outside the stack's {zones} "
                        f"availability zones (0 to {zones - 1})"
                    )
                use[host.zone] += 1
        start = zlib.crc32(group[0].name.encode()) % zones if group else 0
        for host in group:
            zone = host.zone
            if zone is None:
                zone = min(range(zones), key=lambda z: (use[z], (z - start) % zones))
                use[zone] += 1
            placed[host.name] = zone
    return placed
