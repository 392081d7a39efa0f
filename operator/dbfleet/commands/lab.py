"""`dbfleet lab up|down|status`: the local container lab."""

from __future__ import annotations

import argparse

from dbfleet.commands.common import EXIT_OK, UsageError, add_json_option, add_lab_options, emit, fleet_of, table
from dbfleet.lab import lifecycle


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("lab", help="run the spec's hosts as local containers",
                       description="The local container lab: each spec host a systemd container on one Docker "
                                   "network, with an inventory the other commands use. Without --spec, fleet.yaml "
                                   "or $DBFLEET_SPEC, the lab runs the example spec.")
    p.set_defaults(spec_example=True)
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    up = verbs.add_parser("up", help="build images and start the containers (idempotent)",
                          description="Build the images (once, cached by recipe), start a container per spec host "
                                      "and write inventories/local/<lab>/hosts.yml and the lab's secrets. "
                                      "Installs and starts Docker on Debian when no engine answers.")
    add_lab_options(up)
    up.add_argument("--engines", default=",".join(sorted(lifecycle.ALL_ENGINES)),
                    help=f"comma-separated subset of {','.join(sorted(lifecycle.ALL_ENGINES))}")
    up.set_defaults(handler=run_up)
    down = verbs.add_parser("down", help="remove only what this lab created",
                            description="Remove the containers, network and volumes labelled with this lab.")
    add_lab_options(down)
    down.add_argument("--keep-volumes", action="store_true", help="keep the backup volume")
    down.set_defaults(handler=run_down)
    st = verbs.add_parser("status", help="list the lab's containers",
                          description="One row per container of this lab: host, cluster, engine, state, address.")
    add_lab_options(st)
    add_json_option(st)
    st.set_defaults(handler=run_status)


def engines_asked(text: str) -> set[str]:
    """--engines as a set; UsageError naming what is not an engine."""
    engines = {e.strip() for e in text.split(",") if e.strip()}
    unknown = engines - lifecycle.ALL_ENGINES
    if unknown or not engines:
        raise UsageError(f"--engines: {'unknown ' + ', '.join(sorted(unknown)) if unknown else 'none given'}; "
                         f"expected some of {', '.join(sorted(lifecycle.ALL_ENGINES))}", location="--engines")
    return engines


def run_up(args: argparse.Namespace) -> int:
    engines = engines_asked(args.engines)
    fleet = fleet_of(args)
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
