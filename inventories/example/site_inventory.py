#!/usr/bin/env python3
"""Ansible inventory for a fleet on machines of your own, from the spec and a list of machines (machines.yml).

    python3 inventories/example/site_inventory.py --spec fleet.yaml --machines inventories/mysite/machines.yml

writes inventories/mysite/hosts.yml (beside the machines file) in the groups
the lab and AWS inventories have, through the same build_inventory: each
cluster's group carries the inputs its roles declare, mapped from the spec by
dbfleet.role_inputs, so the roles see one shape wherever the hosts are.
machines.yml names every host of the spec with its private address and any
connection variables; nothing secret goes in either file. With no options it
rewrites this folder's example from fleet.example.yaml.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

import yaml

from dbfleet.inventory import HostAccess, build_inventory, inventory_roles, write_inventory
from dbfleet.spec import Fleet, SpecError, load_fleet

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


class MachinesError(Exception):
    """machines.yml does not describe the spec's hosts; the message names what to fix."""


def _address(host: str, value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise MachinesError(f"hosts.{host}.address: {value!r} is not an IP address") from None


def _connection(where: str, values: Any) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise MachinesError(f"{where}: expected a mapping of ansible_* connection variables")
    odd = sorted(k for k in values if not str(k).startswith("ansible_"))
    if odd:
        raise MachinesError(f"{where}: only ansible_* connection variables go here, not {', '.join(odd)}")
    return dict(values)


def site_inventory(fleet: Fleet, machines: dict[str, Any]) -> dict[str, Any]:
    """The inventory for `fleet` on `machines` (machines.yml, parsed)."""
    hosts = machines.get("hosts")
    if not isinstance(hosts, dict):
        raise MachinesError("hosts: expected a mapping of host name to {address: ..., ansible_*: ...}")
    wanted = set(inventory_roles(fleet))
    only_spec, only_machines = sorted(wanted - set(hosts)), sorted(set(hosts) - wanted)
    if only_spec or only_machines:
        raise MachinesError("the spec and the machines disagree (in the spec only: " + (", ".join(only_spec) or "none")
                            + "; in machines only: " + (", ".join(only_machines) or "none") + ")")
    defaults = _connection("defaults", machines.get("defaults") or {})
    access = {}
    for name, host in hosts.items():
        if not isinstance(host, dict) or "address" not in host:
            raise MachinesError(f"hosts.{name}: expected a mapping with an address")
        connection = _connection(f"hosts.{name}", {k: v for k, v in host.items() if k != "address"})
        access[name] = HostAccess(_address(name, host["address"]), {**defaults, **connection})
    extra = {}
    if machines.get("operator_address") is not None:
        extra["dbfleet_operator_address"] = _address("operator_address", machines["operator_address"])
    return build_inventory(fleet, access, extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "fleet.example.yaml", help="fleet spec")
    parser.add_argument("--machines", type=Path, default=HERE / "machines.yml",
                        help="host name -> address and connection variables (default: this folder's example)")
    parser.add_argument("--out", type=Path, help="folder for hosts.yml (default: the machines file's folder)")
    args = parser.parse_args(argv)
    try:
        machines = yaml.safe_load(args.machines.read_text(encoding="utf-8"))
        if not isinstance(machines, dict):
            raise MachinesError("expected a mapping with hosts (and defaults, operator_address)")
        inventory = site_inventory(load_fleet(args.spec), machines)
    except (MachinesError, SpecError, OSError, yaml.YAMLError) as exc:
        print(f"site_inventory: {args.machines}: {exc}" if isinstance(exc, MachinesError)
              else f"site_inventory: {exc}", file=sys.stderr)
        return 2
    print(write_inventory(inventory, args.out or args.machines.resolve().parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
