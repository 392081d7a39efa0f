"""Checks before any reconciler acts: the cluster answers, and the spec does not shrink it.

Pure checks of the spec against the observed topology, run before any
reconciler acts: a cluster none of whose members answers is an error (even
for reconcilers that only read the backup target), and reconcile never
removes a streaming replica or squeezes Redis under the memory its data uses. The cluster's cycle then fails with
the reason (exit 1) and nothing is changed; the other clusters go on.
"""

from __future__ import annotations

from dbfleet.engines.base import AnyCluster, Topology
from dbfleet.spec import PostgresCluster, RedisCluster

UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


def size_bytes(text: str) -> int:
    """'128mb' -> bytes (Redis's units are binary)."""
    digits = text.rstrip("bkmg")
    return int(digits) * UNITS[text[len(digits):]]


def unreachable(topology: Topology) -> str | None:
    """Why no reconciler can act on this cluster because not one of its members answers; None when some do."""
    if not topology.members or topology.members_up:
        return None
    return "no member answers: " + "; ".join(f"{m.host}: {m.detail}" for m in topology.members)


def shrink_problems(cluster: AnyCluster, topology: Topology) -> list[str]:
    """Why applying this spec would take away something the running cluster holds; empty when it would not."""
    problems: list[str] = []
    if isinstance(cluster, PostgresCluster):
        kept = {h.replace("-", "_") for h in cluster.host_names()}
        dropped = [s for s in topology.facts.get("standbys", []) if s not in kept]
        if dropped:
            problems.append(
                f"replicas: {cluster.replicas} keeps {', '.join(cluster.host_names())}, but {', '.join(dropped)} "
                f"still stream(s) from {topology.primary}; dbfleet does not shrink a cluster: take the replica "
                "out of service by hand, then change the spec")
    elif isinstance(cluster, RedisCluster):
        used = topology.facts.get("used_memory")
        limit = size_bytes(cluster.maxmemory)
        if used is not None and limit and used > limit:
            problems.append(
                f"maxmemory: {cluster.maxmemory} is below the {used / 1024**2:.1f} MiB the data already uses on "
                f"{topology.primary}; Redis would evict or refuse writes: raise maxmemory or remove data first")
    return problems
