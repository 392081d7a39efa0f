"""`dbfleet status`: who holds the leader lock, then one row per cluster (engine, primary, members up, indexes, last
reconcile, Prometheus figures).

Like `kubectl get` and `patronictl list`, the table shows the columns that
matter in 100 characters; `--wide` shows every column, and `--json` every value.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dbfleet import wiring
from dbfleet.commands.common import EXIT_FAILED, EXIT_OK, emit, table
from dbfleet.commands.reconcile import add_leader_option, add_operator_options, build_operator, leader_lock, state_path
from dbfleet.monitoring.figures import add_figures
from dbfleet.reconcile.status import load_state, status_columns, status_rows

NARROW_COLUMNS = ["cluster", "engine", "primary", "members_up", "observed", "pending", "last_reconcile",
                  "last_backup", "jobs"]
"""What `status` shows without --wide: who leads, what is up, whether it is as the spec says, backed up, and the
backups and drills running now (with their age and step)."""
NARROW_WIDTH = 100
NARROW_CUT = ["jobs", "observed", "last_reconcile", "last_backup", "primary", "cluster"]
"""Which columns are cut first when a row is too long: an error message is whole under --wide and --json."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="a row per cluster: primary, members up, indexes, last reconcile",
                       description="Observe every cluster (read only) and print its status: the main columns "
                                   f"in {NARROW_WIDTH} characters, every column with --wide, every value with "
                                   "--json. Exit 1 if a cluster could not be observed.")
    p.add_argument("--state", type=Path, help="reconcile state file (default: operator-state.json beside "
                                              "the inventory)")
    p.add_argument("--wide", action="store_true",
                   help="every column: indexes, findings, drills with RTO and RPO, Prometheus figures")
    add_leader_option(p)
    add_operator_options(p)
    p.set_defaults(handler=run)


def render_status(rows: list[dict[str, Any]], wide: bool) -> str:
    """The status table: every column with `wide`, else the narrow ones fitted into NARROW_WIDTH."""
    if wide:
        return table(rows, status_columns(rows))
    present = status_columns(rows)
    return table(rows, [c for c in NARROW_COLUMNS if c in present], width=NARROW_WIDTH, shrink=NARROW_CUT)


def leader_line(leader: dict[str, str]) -> str:
    """The line above the table: which lock makes one operator the leader, and who holds it now."""
    return f"leader lock: {leader['backend']} ({leader['where']}), held by {leader['holder']}"


def run(args: argparse.Namespace) -> int:
    operator = build_operator(args)
    lock = leader_lock(operator, args)
    leader = {"backend": lock.backend, "where": lock.where, "holder": lock.current_holder()}
    report = operator.run_cycle(apply=False)
    rows = status_rows(operator.fleet, report, load_state(state_path(args)), wiring.status_providers())
    rows = add_figures(rows, operator.fleet, operator.access.addresses,
                       lambda message: print(message, file=sys.stderr))
    emit(args, {"leader": leader, "clusters": rows}, leader_line(leader) + "\n" + render_status(rows, args.wide))
    return EXIT_OK if report.ok else EXIT_FAILED
