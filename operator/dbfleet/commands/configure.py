"""`dbfleet configure`: run the site playbook against the lab (or any) inventory."""

from __future__ import annotations

import argparse

from dbfleet.commands.common import EXIT_FAILED, EXIT_OK, add_lab_options, inventory_path
from dbfleet.playbook import run_playbook


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("configure", help="configure the hosts with Ansible (playbooks/site.yml)")
    add_lab_options(p)
    p.add_argument("--inventory", help="an inventory file instead of the lab's")
    p.add_argument("--playbook", default="site.yml", help="playbook under playbooks/ (default: site.yml)")
    p.add_argument("--check", action="store_true", help="dry run: report what would change")
    p.add_argument("--limit", help="only these hosts or groups")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    extra = ["--diff"] if args.check else []
    if args.check:
        extra.append("--check")
    if args.limit:
        extra += ["--limit", args.limit]
    result = run_playbook(args.playbook, inventory_path(args), extra)
    changed = sum(s.changed for s in result.stats.values())
    print(f"configure: {'ok' if result.ok else 'FAILED'}; {len(result.stats)} hosts, {changed} changes")
    return EXIT_OK if result.ok else EXIT_FAILED
