"""`dbfleet status`: one row per cluster (engine, primary, members up, indexes, last reconcile, Prometheus figures)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dbfleet import wiring
from dbfleet.commands.common import EXIT_FAILED, EXIT_OK, emit, table
from dbfleet.commands.reconcile import add_operator_options, build_operator, state_path
from dbfleet.monitoring.figures import add_figures
from dbfleet.reconcile.status import load_state, status_columns, status_rows


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="a row per cluster: primary, members up, indexes, last reconcile",
                       description="Observe every cluster (read only) and print its status. Exit 1 if a "
                                   "cluster could not be observed.")
    p.add_argument("--state", type=Path, help="reconcile state file (default: operator-state.json beside "
                                              "the inventory)")
    add_operator_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    operator = build_operator(args)
    report = operator.run_cycle(apply=False)
    rows = status_rows(operator.fleet, report, load_state(state_path(args)), wiring.status_providers())
    rows = add_figures(rows, operator.fleet, operator.access.addresses,
                       lambda message: print(message, file=sys.stderr))
    emit(args, {"clusters": rows}, table(rows, status_columns(rows)))
    return EXIT_OK if report.ok else EXIT_FAILED
