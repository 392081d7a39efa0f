"""`dbfleet configure`: run the site playbook (or another shipped one) against the lab's or any inventory.

Before Ansible runs, the inventory must give the playbook at least one host:
Ansible alone warns about a missing or unparsable inventory and then reports
success on no host at all. The alert rules Prometheus gets are rendered from the
spec for this run, so they always match the spec being configured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from dbfleet import shipped
from dbfleet.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_inventory_option,
    add_lab_options,
    fleet_of,
    inventory_path,
    inventory_source,
)
from dbfleet.converge_inputs import InputsError, inputs_digest, site_vars
from dbfleet.monitoring.rules import render_rules
from dbfleet.playbook import NoHostsError, list_hosts, run_playbook


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("configure", help="configure the hosts with Ansible (playbooks/site.yml)",
                       description="Run one of the playbooks dbfleet ships (default site.yml) with dbfleet's "
                                   "ansible.cfg against the lab's or another inventory, with alert rules rendered "
                                   "from the spec. Exit 2 when the inventory gives the play no host, 1 when "
                                   "Ansible fails.")
    add_lab_options(p)
    add_inventory_option(p)
    p.add_argument("--playbook", default="site.yml",
                   help="one of the playbooks dbfleet ships, say postgres.yml (default: site.yml)")
    p.add_argument("--check", action="store_true", help="dry run: report what would change")
    p.add_argument("--limit", help="only these hosts or groups")
    p.add_argument("--tags", metavar="TAGS",
                   help="only these parts, comma-separated: postgres, redis, mongo, monitoring, backups")
    p.add_argument("--fast", action="store_true",
                   help="site.yml only: skip the roles on each cluster whose hosts all still hold what the last full "
                        "converge of the same spec, secrets and playbooks left (files, units, packages, and what "
                        "PostgreSQL, Patroni, Redis and Sentinel report; README, Converge speed)")
    p.set_defaults(handler=run)


def _asked(args: argparse.Namespace) -> str:
    parts = [inventory_source(args), f"playbook {args.playbook}"] + ([f"limit {args.limit}"] if args.limit else [])
    return ", ".join(parts)


def write_extra_vars(folder: Path, rules: Path, inputs: str, fast: bool) -> Path:
    """A vars file for `-e @file`: the rules file's path marked unsafe, so Ansible never templates it; the digest
    of this converge's inputs (hex), which site.yml records on each host after a full run; and whether to take the
    fast path (skip the clusters whose hosts still match their record)."""
    path = folder / "dbfleet-vars.yml"
    lines = [f"prometheus_rules_source: !unsafe {json.dumps(str(rules))}"]
    lines += [f"{name}: {json.dumps(value)}" for name, value in site_vars(inputs, fast).items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(args: argparse.Namespace) -> int:
    inventory = inventory_path(args)
    try:
        shipped.playbook(args.playbook)
    except shipped.ShippedFilesError as exc:
        raise UsageError(f"--playbook: {exc}") from None
    if args.fast and args.playbook != "site.yml":
        raise UsageError(f"--fast works with site.yml only, not --playbook {args.playbook}")
    try:
        hosts = list_hosts(args.playbook, inventory, args.limit)
    except NoHostsError as exc:
        hint = f"; `dbfleet lab up --lab {args.lab}` writes it" if not inventory.exists() and not args.inventory else ""
        raise UsageError(f"{exc} ({_asked(args)}){hint}") from None
    fleet = fleet_of(args)
    extra = ["--diff", "--check"] if args.check else []
    if args.limit:
        extra += ["--limit", args.limit]
    if args.tags:
        extra += ["--tags", args.tags]
    with tempfile.TemporaryDirectory(prefix="dbfleet-configure-") as tmp:
        rules = Path(tmp) / "fleet.rules.yml"
        rules.write_text(render_rules(fleet), encoding="utf-8")
        try:
            inputs = inputs_digest(inventory, {"fleet.rules.yml": rules.read_text(encoding="utf-8")})
        except InputsError as exc:
            print(f"dbfleet configure: {exc}", file=sys.stderr)
            return EXIT_FAILED
        extra += ["-e", f"@{write_extra_vars(Path(tmp), rules, inputs, args.fast)}"]
        result = run_playbook(args.playbook, inventory, extra)
    changed = sum(s.changed for s in result.stats.values())
    print(f"configure: {'ok' if result.ok else 'FAILED'}; {len(result.stats)} hosts, {changed} changes")
    if result.ok and not result.stats:
        print(f"dbfleet configure: Ansible ran on none of the {len(hosts)} hosts listed ({_asked(args)})",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if result.ok else EXIT_FAILED
