"""`dbfleet switchover`: hand the primary of an `ha: patroni` cluster to a named replica, through Patroni.

--dry-run prints the planned action (marked `!`, destructive) and changes
nothing. Without it the leader's Patroni is asked (POST /switchover, as the
REST API user) and the command waits until the candidate leads. The switchover
and how it ended go to the operator's audit trail, as the loop's actions do
(`dbfleet audit`); a trail that cannot be written safely stops it before
Patroni is asked. An `ha: manual` cluster is refused with a pointer to
playbooks/pg_switchover.yml.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dbfleet.actions import Outcome
from dbfleet.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_inventory_option,
    add_json_option,
    add_lab_options,
    emit,
    inventory_path,
    postgres_cluster,
    spec_of,
)
from dbfleet.commands.reconcile import open_audit_trail, secrets_path
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.patroni import PatroniApi
from dbfleet.errors import ReconcileError
from dbfleet.reconcile.switchover import plan_switchover, switch_over
from dbfleet.secrets import SecretsError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("switchover", help="planned switchover of an ha: patroni cluster to a named replica",
                       description="Ask Patroni to hand the primary to HOST and wait until it leads. "
                                   "--dry-run prints the plan only.")
    p.add_argument("--cluster", required=True, help="PostgreSQL cluster (ha: patroni)")
    p.add_argument("--to", required=True, metavar="HOST", help="the replica that becomes primary")
    p.add_argument("--dry-run", action="store_true", help="print the planned switchover and change nothing")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for HOST to lead (default 60)")
    add_lab_options(p)
    add_inventory_option(p)
    p.add_argument("--secrets", type=Path,
                   help="secrets file (default: group_vars/all/secrets.yml beside the inventory)")
    p.add_argument("--state", type=Path, help="the reconcile state file; the audit trail is beside it (default: "
                                              "operator-state.json beside the inventory)")
    add_json_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    spec = spec_of(args)
    cluster = postgres_cluster(spec.fleet, args.cluster, "switchover is for PostgreSQL")
    if cluster.ha != "patroni":
        raise UsageError(f"{cluster.name} has ha: manual; switch over with "
                         f"ansible-playbook playbooks/pg_switchover.yml -e new_primary={args.to}")
    try:
        access = FleetAccess.load(inventory_path(args), secrets_path(args))
    except (ReconcileError, SecretsError) as exc:
        raise UsageError(str(exc)) from None
    api = PatroniApi(cluster, access)
    try:
        action = plan_switchover(cluster, api.cluster_state(), args.to)
    except ReconcileError as exc:
        emit(args, {"cluster": cluster.name, "ok": False, "error": exc.render()}, f"switchover refused: {exc}")
        return EXIT_FAILED
    if args.dry_run:
        emit(args, {"cluster": cluster.name, "dry_run": True, "action": action.as_dict()},
             f"{action.render()}\n(dry run: nothing changed; ! destructive change)")
        return EXIT_OK
    trail = open_audit_trail(args, spec.sha256, "switchover")
    started = time.monotonic()
    try:
        message = switch_over(api, action, timeout=args.timeout)
    except ReconcileError as exc:
        trail.record(Outcome(action, "failed", exc.render(), 1, time.monotonic() - started))
        emit(args, {"cluster": cluster.name, "ok": False, "action": action.as_dict(), "error": exc.render()},
             f"{action.render()} -> failed ({exc})")
        return EXIT_FAILED
    trail.record(Outcome(action, "done", message, 1, time.monotonic() - started))
    emit(args, {"cluster": cluster.name, "ok": True, "action": action.as_dict(), "message": message},
         f"{action.render()} -> done ({message})")
    return EXIT_OK
