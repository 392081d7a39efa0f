#!/usr/bin/env python3
"""Ansible inventory for the fleet on AWS, built from the Pulumi stack's outputs in the lab inventory's groups.

Write a static inventory, inventories/aws/<stack>/hosts.yml:

    python3 inventories/aws/stack_inventory.py --stack dev

or let Ansible call it as a dynamic inventory:

    DBFLEET_STACK=dev ansible-playbook -i inventories/aws/stack_inventory.py playbooks/site.yml

Ansible reaches each host with SSH tunnelled through SSM Session Manager: no
inbound port and no bastion. ansible_host is the instance id and the
ProxyCommand runs `aws ssm start-session`. With --bastion USER@HOST, SSH jumps
through that bastion to the private address instead.

A PostgreSQL standby site's hosts (dr.standby, output `standby_hosts`) are
in the same groups the lab gives them (`patroni_standby`, and their site's
`cluster_<name>_dr` with its inputs: a Patroni standby cluster following the
fleet region's servers), reached through SSM in their own region.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from dbfleet.inventory import HostAccess, build_inventory, host_roles, standby_roles, write_inventory
from dbfleet.inventory_format import inventory_json_value
from dbfleet.spec import Fleet, SpecError, load_fleet

REPO = Path(__file__).resolve().parents[2]
STACKS = REPO / "stacks"
DEFAULT_SPEC = "../fleet.example.yaml"
"""The program's own default, relative to stacks/."""
LOGIN_USER = "admin"
"""The login user of Debian's official AMIs."""


class InventoryError(Exception):
    """The stack outputs cannot be turned into an inventory; the message says what to run."""


def _pulumi(args: list[str], stack: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["pulumi", *args, "--stack", stack, "--cwd", str(STACKS)],
                              capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise InventoryError("the pulumi CLI is not installed; pass --outputs with saved "
                             "`pulumi stack output --json`") from None


def stack_outputs(stack: str) -> dict[str, Any]:
    """The stack's outputs, from `pulumi stack output --json`."""
    done = _pulumi(["stack", "output", "--json"], stack)
    if done.returncode != 0:
        raise InventoryError(f"pulumi stack output failed for stack {stack}: {done.stderr.strip()}")
    return json.loads(done.stdout)


def stack_spec(stack: str) -> Path:
    """The spec file the stack was built from: its `dbfleet:spec` config, else the program's default."""
    done = _pulumi(["config", "get", "spec"], stack)
    relative = done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else DEFAULT_SPEC
    return (STACKS / relative).resolve()


def ssm_connection(instance_id: str, region: str) -> dict[str, Any]:
    """SSH to the instance id through an SSM session: needs the AWS CLI and its session-manager-plugin."""
    proxy = (f"aws ssm start-session --region {region} --target %h "
             f"--document-name AWS-StartSSHSession --parameters portNumber=%p")
    return {"ansible_host": instance_id, "ansible_ssh_common_args": f'-o ProxyCommand="{proxy}"'}


def bastion_connection(address: str, bastion: str) -> dict[str, Any]:
    """SSH to the private address, jumping through a bastion."""
    return {"ansible_host": address, "ansible_ssh_common_args": f"-o ProxyJump={bastion}"}


def aws_inventory(fleet: Fleet, outputs: dict[str, Any], bastion: str | None = None) -> dict[str, Any]:
    """The inventory for `fleet` from stack outputs, in the groups build_inventory gives the lab, the standby
    sites' hosts included (reached in their own region)."""
    hosts: dict[str, Any] = outputs.get("hosts") or {}
    standby: dict[str, Any] = outputs.get("standby_hosts") or {}
    wanted, built = set(host_roles(fleet)) | set(standby_roles(fleet)), set(hosts) | set(standby)
    only_spec, only_stack = sorted(wanted - built), sorted(built - wanted)
    if only_spec or only_stack:
        raise InventoryError(
            "the spec and the stack disagree (in the spec only: " + (", ".join(only_spec) or "none")
            + "; in the stack only: " + (", ".join(only_stack) or "none") + "); run `pulumi up` with this spec"
        )
    region = outputs["region"]
    access = {name: HostAccess(host["address"], _login(host, region, bastion)) for name, host in hosts.items()}
    # A standby host's own region: its instance registers with SSM there.
    access |= {name: HostAccess(host["address"], {**_login(host, host["region"], bastion),
                                                  "dbfleet_region": host["region"]})
               for name, host in standby.items()}
    extra = {
        # The operator runs on the monitoring host (its group may reach every database port).
        "dbfleet_operator_address": hosts[fleet.monitoring.host]["address"],
        "dbfleet_aws": {"region": region, "vpc_id": outputs.get("vpc_id"),
                        "security_groups": outputs.get("security_groups", {}),
                        "backups": outputs.get("backups", {})},
    }
    return build_inventory(fleet, access, extra)


def _login(host: dict[str, Any], region: str, bastion: str | None) -> dict[str, Any]:
    """How Ansible logs in to a host: SSH through SSM in its region, or through the bastion."""
    connection = (bastion_connection(host["address"], bastion) if bastion
                  else ssm_connection(host["instance_id"], region))
    return {**connection, "ansible_user": LOGIN_USER, "ansible_become": True,
            "ansible_python_interpreter": "/usr/bin/python3"}


def script_inventory(inventory: dict[str, Any]) -> dict[str, Any]:
    """The same inventory in the JSON shape Ansible expects from an inventory script's --list."""
    top = inventory["all"]
    groups = {name: {"hosts": sorted(group["hosts"]), "vars": group.get("vars", {})}
              for name, group in top["children"].items()}
    return {"_meta": {"hostvars": top["hosts"]}, "all": {"vars": top["vars"], "children": sorted(groups)}, **groups}


def main(argv: list[str] | None = None) -> int:
    """Write inventories/aws/<stack>/hosts.yml, or answer Ansible's --list / --host."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default=os.environ.get("DBFLEET_STACK"), help="Pulumi stack (env DBFLEET_STACK)")
    parser.add_argument("--spec", type=Path, default=os.environ.get("DBFLEET_SPEC"),
                        help="fleet spec (env DBFLEET_SPEC; default: the stack's dbfleet:spec config)")
    parser.add_argument("--outputs", type=Path, default=os.environ.get("DBFLEET_STACK_OUTPUTS"),
                        help="saved `pulumi stack output --json`, instead of asking pulumi (env DBFLEET_STACK_OUTPUTS)")
    parser.add_argument("--bastion", default=os.environ.get("DBFLEET_BASTION"),
                        help="USER@HOST to jump through instead of SSM (env DBFLEET_BASTION)")
    parser.add_argument("--out", type=Path, help="directory for hosts.yml (default inventories/aws/<stack>)")
    parser.add_argument("--list", action="store_true", help="print the inventory as Ansible's script JSON")
    parser.add_argument("--host", help="Ansible's per-host query; host vars come with --list")
    args = parser.parse_args(argv)
    if args.host:
        print("{}")
        return 0
    try:
        if not args.stack and not (args.outputs and args.spec):
            raise InventoryError("name the stack with --stack or DBFLEET_STACK")
        outputs = json.loads(args.outputs.read_text()) if args.outputs else stack_outputs(args.stack)
        fleet = load_fleet(args.spec or stack_spec(args.stack))
        inventory = aws_inventory(fleet, outputs, args.bastion)
    except (InventoryError, SpecError) as exc:
        print(f"stack_inventory: {exc}", file=sys.stderr)
        return 2
    if args.list:
        # Spec strings go out as {"__ansible_unsafe": ...}: data to Ansible, as `!unsafe` is in hosts.yml.
        print(json.dumps(inventory_json_value(script_inventory(inventory)), indent=1))
        return 0
    path = write_inventory(inventory, args.out or REPO / "inventories" / "aws" / (args.stack or "default"))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
