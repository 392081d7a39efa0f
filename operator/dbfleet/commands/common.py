"""Options and output shared by the CLI commands, and the project folder every relative path is taken from.

The project folder holds the user's state: the spec, inventories (with the
secrets, PKI and operator state beside each), the alert rules. It is the
current directory, or --project DIR / $DBFLEET_PROJECT. A relative path in an
option is taken from the project folder, as `git -C DIR` does, and every path
is made absolute before a command uses it, so Ansible never resolves one in a
folder of its own. A source checkout is a project folder too (its spec is
fleet.example.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from dbfleet.spec import Fleet, LoadedSpec, read_spec

DEFAULT_LAB = "lab"
PROJECT_ENV = "DBFLEET_PROJECT"
SPEC_ENV = "DBFLEET_SPEC"
SPEC_NAMES = ("fleet.yaml", "fleet.example.yaml")
"""The spec a project folder is read from when no --spec is given: the first that exists."""
PATH_OPTIONS = ("spec", "inventories", "inventory", "secrets", "state", "output", "directory")
"""Options holding a path, made absolute against the project folder."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
"""The command line's exit codes: success, the work failed, bad options or input."""


class UsageError(Exception):
    """Bad options or missing files: the command line prints the message and exits 2."""


def add_project_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", metavar="DIR", default=os.environ.get(PROJECT_ENV),
                        help=f"project folder: the spec, inventories, secrets, PKI and operator state; relative "
                             f"paths in options are taken from it (default: ${PROJECT_ENV} or the current directory)")
    parser.add_argument("--spec", default=os.environ.get(SPEC_ENV),
                        help=f"fleet spec file (default: ${SPEC_ENV}, else {' or '.join(SPEC_NAMES)} in the project)")


def _absolute(project: Path, path: str | Path) -> Path:
    return Path(os.path.normpath(project / Path(path).expanduser()))


def settle_paths(args: argparse.Namespace, create_project: bool = False) -> None:
    """Make args.project and every path option absolute, and choose the spec when none was given."""
    project = Path(os.path.abspath(Path(args.project or ".").expanduser()))
    if not project.is_dir() and not (create_project and not project.exists()):
        what = "is not a folder" if project.exists() else "does not exist"
        raise UsageError(f"project folder {project} {what} (`dbfleet init {project}` makes one)")
    args.project = project
    for name in PATH_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            setattr(args, name, _absolute(project, value))
    args.spec_defaulted = getattr(args, "spec", None) is None
    if args.spec_defaulted:
        found = [project / n for n in SPEC_NAMES if (project / n).is_file()]
        args.spec = found[0] if found else project / SPEC_NAMES[0]


def add_lab_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", default=DEFAULT_LAB,
                        help="lab name; containers are dbfleet-<lab>-<host> (default: lab)")
    parser.add_argument("--inventories", type=Path, default=Path("inventories"),
                        help="inventories folder (default: inventories in the project)")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def inventory_path(args: argparse.Namespace) -> Path:
    """--inventory if given, else the lab's written inventory (absolute once settle_paths ran)."""
    explicit = getattr(args, "inventory", None)
    if explicit:
        return Path(explicit)
    return Path(args.inventories) / "local" / str(args.lab) / "hosts.yml"


def inventory_source(args: argparse.Namespace) -> str:
    """What picked the inventory, for an error: `lab NAME` or `--inventory`."""
    return "--inventory" if getattr(args, "inventory", None) else f"lab {args.lab}"


def inventory_asked(args: argparse.Namespace) -> str:
    """The inventory and what picked it, for an error: `<path> (lab NAME)`."""
    return f"{inventory_path(args)} ({inventory_source(args)})"


def one_line(text: str) -> str:
    """A message on one line, however many its source (a YAML parser's, say) used."""
    return " ".join(text.split())


def spec_of(args: argparse.Namespace) -> LoadedSpec:
    """The --spec file (or the project's), validated, with the sha256 of its bytes."""
    spec = Path(args.spec)
    if getattr(args, "spec_defaulted", False) and not spec.exists():
        raise UsageError(f"no fleet spec in {spec.parent} (looked for {', '.join(SPEC_NAMES)}); "
                         f"`dbfleet init` writes a starter fleet.yaml there, or pass --spec")
    return read_spec(spec)


def fleet_of(args: argparse.Namespace) -> Fleet:
    return spec_of(args).fleet


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(text)


def table(rows: list[dict[str, Any]], columns: list[str], width: int | None = None,
          shrink: list[str] | None = None) -> str:
    """Rows under upper-case headers. With `width`, the `shrink` columns give up characters in that order (a
    cut cell ends in `~`), each down to its header, until every line fits."""
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    if width is not None:
        excess = sum(widths.values()) + 2 * (len(columns) - 1) - width
        for column in [c for c in shrink or columns if c in widths]:
            cut = min(max(excess, 0), widths[column] - len(column))
            widths[column] -= cut
            excess -= cut

    def cell(value: Any, size: int) -> str:
        text = str(value)
        return (text if len(text) <= size else text[: size - 1] + "~").ljust(size)

    head = "  ".join(c.upper().ljust(widths[c]) for c in columns)
    body = ["  ".join(cell(r.get(c, ""), widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in [head, *body])
