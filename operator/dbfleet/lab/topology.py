"""Which containers the lab runs for a spec: pure planning, no Docker calls."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from dbfleet.inventory import inventory_roles
from dbfleet.spec import Fleet

IMAGE_FOR_GROUP = {"postgres": "postgres", "etcd": "postgres", "haproxy": "postgres", "redis": "redis",
                   "redis_sentinel": "redis", "mongo": "mongo", "monitoring": "monitor"}
"""The image a host runs, by its first group found here; etcd and HAProxy hosts of their own use the PostgreSQL
image, which carries both."""


@dataclass(frozen=True)
class LabHost:
    name: str
    cluster: str
    engine: str
    """The clusters' engine ('postgres', 'redis', 'mongo') or 'monitor'."""
    image: str
    """Key into the built image tags."""
    address: str


def container_name(lab: str, host: str) -> str:
    return f"dbfleet-{lab}-{host}"


def network_name(lab: str) -> str:
    return f"dbfleet-{lab}"


def backup_volume_name(lab: str) -> str:
    return f"dbfleet-{lab}-backups"


def dr_volume_name(lab: str) -> str:
    """The lab's second backup target (the spec's dr.target), a volume of its own: the "second region"."""
    return f"dbfleet-{lab}-dr-backups"


def subnet_candidates(lab: str) -> list[ipaddress.IPv4Network]:
    """Stable /24 choices for a lab inside 172.28.0.0/14, starting from a hash of its name."""
    start = int(hashlib.sha256(lab.encode()).hexdigest(), 16) % 1024
    return [ipaddress.IPv4Network(f"172.{28 + (i // 256)}.{i % 256}.0/24") for i in
            ((start + k) % 1024 for k in range(1024))]


def plan_hosts(fleet: Fleet, subnet: ipaddress.IPv4Network, engines: set[str] | None = None) -> list[LabHost]:
    """One LabHost per spec host whose engine is wanted, with a fixed address in `subnet`."""
    hosts: list[LabHost] = []
    base = int(subnet.network_address)
    for i, (name, (cluster, groups)) in enumerate(inventory_roles(fleet).items()):
        image = next(IMAGE_FOR_GROUP[g] for g in groups if g in IMAGE_FOR_GROUP)
        engine = fleet.cluster(cluster).engine if cluster else "monitor"
        if engines is not None and engine not in engines:
            continue
        if i + 10 >= subnet.num_addresses - 1:
            raise ValueError(f"the lab subnet {subnet} has no room for {name}")
        hosts.append(LabHost(name, cluster, engine, image, str(ipaddress.IPv4Address(base + 10 + i))))
    return hosts
