"""What every engine adapter shares: how to reach hosts, the topology it reports, the session interface.

Addresses and roles come from the Ansible inventory (the same file for the
lab and AWS); credentials from the secrets file. An EngineSession serves one
cluster: it opens connections on demand and counts the queries it sends.
`reconcile --once` closes it after the cycle; `--watch` keeps it for the next
cycle (begin_cycle forgets the last observation) until a failure.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from dbfleet.inventory import read_inventory_hosts
from dbfleet.errors import PermanentError
from dbfleet.secrets import load_secrets

CONNECT_TIMEOUT = 5
"""Seconds to wait for a host before calling it down for this cycle."""


@dataclass(frozen=True)
class FleetAccess:
    """Host addresses from the inventory and credentials from the secrets file."""

    addresses: dict[str, str]
    secrets: dict[str, str] = field(repr=False)
    inventory: Path | None = None

    @classmethod
    def load(cls, inventory: Path, secrets: Path) -> FleetAccess:
        if not inventory.exists():
            raise PermanentError(f"{inventory}: no such inventory (run `dbfleet lab up`, or pass --inventory)")
        hosts = read_inventory_hosts(inventory)
        addresses = {name: str(v["dbfleet_address"]) for name, v in hosts.items() if "dbfleet_address" in v}
        return cls(addresses, load_secrets(secrets, require_all=False), inventory)

    def address(self, host: str) -> str:
        try:
            return self.addresses[host]
        except KeyError:
            where = f" {self.inventory}" if self.inventory else ""
            raise PermanentError(f"host {host} is not in the inventory{where}", host=host) from None

    def secret(self, key: str) -> str:
        try:
            return self.secrets[key]
        except KeyError:
            raise PermanentError(f"the secrets file has no {key}") from None


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


class EngineSession(ABC):
    """One cycle's connections to one cluster."""

    engine: str = ""

    def __init__(self, cluster: Any, access: FleetAccess):
        self.cluster = cluster
        self.access = access
        self.queries = 0
        """Statements sent to servers this session (the benchmark reads it)."""
        self.connections = 0

    @abstractmethod
    def observe_topology(self) -> Topology:
        """Which members answer, and which one is primary now (a switchover may have moved it)."""

    def begin_cycle(self) -> None:
        """Forget what the last cycle observed (the session may be kept open between cycles)."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection this session opened."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
