"""The one way to reach the fleet: host addresses and connection settings from the inventory, credentials from
the secrets file, and an executor for commands on the hosts.

Reconcilers, backups, `status` and the leader lock all get their connections
through a FleetAccess and the engine sessions built on it
(dbfleet.engines.open_session), so a user name, a TLS option or an address
is decided in one place. The inventory is the one dbfleet writes, for the lab
or from the AWS stack: the same shape either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from dbfleet.addresses import check_address
from dbfleet.engines.credentials import Login
from dbfleet.engines.executor import InventoryExecutor
from dbfleet.engines.tls import fleet_ca
from dbfleet.errors import PermanentError
from dbfleet.inventory_format import load_inventory
from dbfleet.secrets import load_secrets
from dbfleet.spec import MongoCluster, PostgresCluster, RedisCluster

CONNECT_TIMEOUT = 5
"""Seconds to wait for a host before calling it down for this cycle."""


def read_inventory(path: Path) -> dict[str, Any]:
    """The whole hosts.yml written by dbfleet, or a PermanentError naming the file."""
    if not path.exists():
        raise PermanentError(f"{path}: no such inventory (run `dbfleet lab up`, or pass --inventory)")
    try:
        data = load_inventory(path)  # spec strings in it are tagged !unsafe
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PermanentError(f"{path}: not a YAML inventory{where}: {getattr(exc, 'problem', None) or exc}") from None
    except UnicodeDecodeError:
        raise PermanentError(f"{path}: not a YAML inventory: not UTF-8 text") from None
    except IsADirectoryError:
        raise PermanentError(f"{path}: not an inventory file but a folder") from None
    if not isinstance(data, dict) or not isinstance(data.get("all"), dict):
        raise PermanentError(f"{path}: not an inventory written by dbfleet (no `all` group)")
    return data


def read_inventory_hosts(path: Path) -> dict[str, dict[str, Any]]:
    """Host vars by host name from a hosts.yml written by dbfleet."""
    return dict(read_inventory(path)["all"].get("hosts") or {})


@dataclass
class FleetAccess:
    """Host addresses and connection vars from the inventory, credentials from the secrets file."""

    addresses: dict[str, str]
    secrets: dict[str, str] = field(repr=False)
    inventory: Path | None = None
    hostvars: dict[str, dict[str, Any]] = field(default_factory=dict)
    lab: str | None = None
    """The lab's name when the hosts are lab containers (restores and drills then use scratch containers)."""
    docker_client: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, inventory: Path, secrets: Path | None = None, docker_client: Any = None) -> FleetAccess:
        """From an inventory written by dbfleet; secrets default to group_vars/all/secrets.yml beside it."""
        data = read_inventory(inventory)
        hosts = dict(data["all"].get("hosts") or {})
        addresses = {name: check_address(v["dbfleet_address"], f"{inventory}: host {name}: dbfleet_address")
                     for name, v in hosts.items() if isinstance(v, dict) and "dbfleet_address" in v}
        lab = (data["all"].get("vars") or {}).get("dbfleet_lab")
        values = load_secrets(secrets or default_secrets_path(inventory), require_all=False)
        return cls(addresses, values, inventory, hosts, str(lab) if lab else None, docker_client)

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

    def password(self, login: Login) -> str:
        return self.secret(login.secret)

    def ca_file(self, cluster: PostgresCluster | MongoCluster | RedisCluster) -> Path | None:
        """The CA this cluster's server certificates are checked against (engines.tls.fleet_ca)."""
        return fleet_ca(cluster, self.inventory)

    @cached_property
    def executor(self) -> InventoryExecutor:
        """Runs commands on the inventory's hosts: docker exec for lab containers, ssh for the rest."""
        return InventoryExecutor(self.hostvars, self.docker_client)


def default_secrets_path(inventory: Path) -> Path:
    return inventory.parent / "group_vars" / "all" / "secrets.yml"
