"""Options and output shared by the CLI commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dbfleet.spec import Fleet, LoadedSpec, read_spec

DEFAULT_LAB = "lab"

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
"""The command line's exit codes: success, the work failed, bad options or input."""


def add_lab_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", default=DEFAULT_LAB,
                        help="lab name; containers are dbfleet-<lab>-<host> (default: lab)")
    parser.add_argument("--inventories", type=Path, default=Path("inventories"),
                        help="inventories folder (default: ./inventories)")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def inventory_path(args: argparse.Namespace) -> Path:
    """--inventory if given, else the lab's written inventory."""
    explicit = getattr(args, "inventory", None)
    if explicit:
        return Path(explicit)
    return Path(args.inventories) / "local" / str(args.lab) / "hosts.yml"


def spec_of(args: argparse.Namespace) -> LoadedSpec:
    """The --spec file, validated, with the sha256 of its bytes."""
    return read_spec(args.spec)


def fleet_of(args: argparse.Namespace) -> Fleet:
    return spec_of(args).fleet


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(text)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    head = "  ".join(c.upper().ljust(widths[c]) for c in columns)
    body = ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([head, *body])
