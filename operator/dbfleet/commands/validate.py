"""`dbfleet validate`: load the spec and report located errors, or a summary."""

from __future__ import annotations

import argparse

from dbfleet.commands.common import EXIT_OK, add_json_option, emit, fleet_of


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("validate", help="check a fleet spec and summarise it",
                       description="Load the spec and validate it: print a line per cluster, or each problem "
                                   "with its file, line and key path (exit 2).")
    add_json_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    fleet = fleet_of(args)
    rows = [{"cluster": c.name, "engine": c.engine, "version": c.version, "hosts": c.host_names()}
            for c in fleet.clusters]
    text = "\n".join(f"{r['cluster']}: {r['engine']} {r['version']} on {', '.join(r['hosts'])}" for r in rows)
    emit(args, {"spec": args.spec, "valid": True, "clusters": rows}, f"{args.spec}: valid\n{text}")
    return EXIT_OK
