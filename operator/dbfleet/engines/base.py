"""What every engine adapter shares: the topology it reports and the session interface.

An EngineSession serves one cluster: it opens connections on demand through
the FleetAccess, counts the queries it sends, and reads the topology once
per cycle. `reconcile --once` closes it after the cycle; `--watch` keeps it
for the next cycle (begin_cycle forgets the last observation) until a failure.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar

from dbfleet.engines.access import FleetAccess
from dbfleet.errors import TemporaryError
from dbfleet.spec import MongoCluster, PostgresCluster, RedisCluster


@dataclass(frozen=True)
class Member:
    """One server of a cluster as seen this cycle."""

    host: str
    role: str
    """'primary', 'replica', 'sentinel', 'mongos', 'config', 'shard', or 'unknown' when down."""
    up: bool
    detail: str = ""


@dataclass(frozen=True)
class Topology:
    cluster: str
    engine: str
    primary: str | None
    members: tuple[Member, ...]
    facts: dict[str, Any] = field(default_factory=dict, compare=False)
    """What the capacity check needs: PostgreSQL `standbys` streaming, Redis `used_memory` on the primary."""

    @property
    def members_up(self) -> int:
        return sum(m.up for m in self.members)

    def summary(self) -> str:
        return f"primary {self.primary or 'NONE'}, {self.members_up}/{len(self.members)} members up"

    def as_dict(self) -> dict[str, Any]:
        return {"primary": self.primary, "members_up": self.members_up,
                "members": [m.__dict__ for m in self.members]}


AnyCluster = PostgresCluster | MongoCluster | RedisCluster
ClusterT = TypeVar("ClusterT", PostgresCluster, MongoCluster, RedisCluster)


class EngineSession(ABC, Generic[ClusterT]):
    """One cluster's connections, kept for a cycle (or across cycles under --watch)."""

    engine: str = ""

    def __init__(self, cluster: ClusterT, access: FleetAccess):
        self.cluster: ClusterT = cluster
        self.access = access
        self.queries = 0
        """Statements sent to servers this session (the benchmark reads it)."""
        self.connections = 0
        self._topology: Topology | None = None

    def observe_topology(self) -> Topology:
        """Which members answer, and which one is primary now (a switchover may have moved it).

        Read once per cycle: the loop, the reconcilers and the backups share it.
        """
        if self._topology is None:
            self._topology = self.read_topology()
        return self._topology

    @abstractmethod
    def read_topology(self) -> Topology:
        """Ask the servers (observe_topology caches the answer for the cycle)."""

    def begin_cycle(self) -> None:
        """Forget what the last cycle observed (the session may be kept open between cycles)."""
        self._topology = None

    def primary(self) -> str:
        """The member that takes writes now, or a TemporaryError saying why there is none."""
        topology = self.observe_topology()
        if topology.primary is None:
            claims = [m.host for m in topology.members if m.role == "primary"]
            down = [f"{m.host}: {m.detail}" for m in topology.members if not m.up]
            why = (f"several members claim primary: {', '.join(claims)}" if claims else
                   "no primary answers" + (f" ({'; '.join(down)})" if down else ""))
            raise TemporaryError(why, cluster=self.cluster.name, action="find primary")
        return topology.primary

    @abstractmethod
    def close(self) -> None:
        """Close every connection this session opened."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
