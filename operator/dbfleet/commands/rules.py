"""`dbfleet rules`: generate the Prometheus alert rules from the spec's monitoring thresholds.

Prints them, writes them (--write) to the file the prometheus role installs,
or checks (--check) that the committed file still matches the spec.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dbfleet.commands.common import EXIT_FAILED, EXIT_OK, fleet_of
from dbfleet.monitoring.rules import render_rules

DEFAULT_OUTPUT = Path("monitoring/rules/fleet.rules.yml")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("rules", help="generate Prometheus alert rules from the spec (print, --write or --check)",
                       description="Render the Prometheus alert rules from the spec's monitoring thresholds: print "
                                   "them, write them (--write), or exit 1 if the file differs (--check).")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help=f"rules file for --write and --check (default: {DEFAULT_OUTPUT})")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the rules file (only when its content changes)")
    mode.add_argument("--check", action="store_true",
                      help="exit 1 if the rules file differs from what the spec generates")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    text = render_rules(fleet_of(args))
    path: Path = args.output
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            print(f"rules: {path} is up to date with {args.spec}")
            return EXIT_OK
        why = "is missing" if current is None else "is stale"
        print(f"rules: {path} {why}; run `dbfleet --spec {args.spec} rules --write`", file=sys.stderr)
        return EXIT_FAILED
    if args.write:
        if path.exists() and path.read_text(encoding="utf-8") == text:
            print(f"rules: {path} unchanged")
            return EXIT_OK
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"rules: wrote {path}")
        return EXIT_OK
    sys.stdout.write(text)
    return EXIT_OK
