"""`dbfleet plan`: a dry run; observe every cluster and print each action reconcile would take, and why."""

from __future__ import annotations

import argparse

from dbfleet.commands.common import EXIT_FAILED, EXIT_OK, emit
from dbfleet.commands.reconcile import add_operator_options, build_operator


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plan", help="dry run: print each action reconcile would take, with its reason",
                       description="Observe and diff every cluster without changing anything. Needs no leader "
                                   "lock. Exit 1 if a cluster could not be observed.")
    add_operator_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    report = build_operator(args).run_cycle(apply=False)
    emit(args, report.as_dict(), report.render())
    return EXIT_OK if report.ok else EXIT_FAILED
