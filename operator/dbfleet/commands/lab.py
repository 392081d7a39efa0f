"""`dbfleet lab up|down|status`: the local container lab."""

from __future__ import annotations

import argparse

from dbfleet.commands.common import EXIT_OK, add_json_option, add_lab_options, emit, fleet_of, table
from dbfleet.lab import lifecycle


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("lab", help="run the spec's hosts as local containers")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    up = verbs.add_parser("up", help="build images and start the containers (idempotent)")
    add_lab_options(up)
    up.add_argument("--engines", default="postgres,redis,mongo,monitor",
                    help="comma-separated subset of postgres,redis,mongo,monitor")
    up.set_defaults(handler=run_up)
    down = verbs.add_parser("down", help="remove only what this lab created")
    add_lab_options(down)
    down.add_argument("--keep-volumes", action="store_true", help="keep the backup volume")
    down.set_defaults(handler=run_down)
    st = verbs.add_parser("status", help="list the lab's containers")
    add_lab_options(st)
    add_json_option(st)
    st.set_defaults(handler=run_status)


def run_up(args: argparse.Namespace) -> int:
    fleet = fleet_of(args)
    engines = {e.strip() for e in args.engines.split(",") if e.strip()}
    unknown = engines - lifecycle.ALL_ENGINES
    if unknown:
        raise SystemExit(f"dbfleet lab up: unknown engines {sorted(unknown)}; expected some of "
                         f"{sorted(lifecycle.ALL_ENGINES)}")
    state = lifecycle.up(fleet, args.lab, args.inventories, engines)
    print(f"lab {state.name}: {len(state.hosts)} hosts on {state.network}; inventory {state.inventory}")
    return EXIT_OK


def run_down(args: argparse.Namespace) -> int:
    removed = lifecycle.down(args.lab, args.inventories, keep_volumes=args.keep_volumes)
    print(f"lab {args.lab}: removed {removed} objects")
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    rows = lifecycle.status(args.lab)
    emit(args, rows, table(rows, ["host", "cluster", "engine", "state", "address"]))
    return EXIT_OK
