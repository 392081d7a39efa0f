"""Options and output shared by the CLI commands, and the project folder every relative path is taken from.

The project folder holds the user's state: the spec, inventories (with the
secrets, PKI and operator state beside each), the alert rules. It is the
current directory, or --project DIR / $DBFLEET_PROJECT. A relative path in an
option is taken from the project folder, as `git -C DIR` does, and every path
is made absolute before a command uses it, so Ansible never resolves one in a
folder of its own. A source checkout is a project folder too.

The spec, when --spec names none: the project's fleet.yaml, then $DBFLEET_SPEC;
the lab commands fall back to the example spec (the lab topology).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from dbfleet import shipped
from dbfleet.spec import Fleet, LoadedSpec, PostgresCluster, read_spec

DEFAULT_LAB = "lab"
PROJECT_ENV = "DBFLEET_PROJECT"
SPEC_ENV = "DBFLEET_SPEC"
SPEC_NAME = "fleet.yaml"
"""The spec a project folder is read from when no --spec is given (then $DBFLEET_SPEC)."""
EXAMPLE_SPEC_NAME = "fleet.example.yaml"
"""The lab commands' last resort: the project's example spec (a checkout's), else the one dbfleet ships."""
PATH_OPTIONS = ("spec", "inventories", "inventory", "secrets", "state", "output", "directory")
"""Options holding a path, made absolute against the project folder."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
"""The command line's exit codes: success, the work failed, bad options or input."""


class UsageError(Exception):
    """Bad options or missing files: the command line prints the message and exits 2.

    `location` says where the problem is, for --json: an option, a file, or the command when nothing narrower.
    """

    def __init__(self, message: str, location: str | None = None):
        super().__init__(message)
        self.location = location


class WorkFailed(Exception):
    """The work itself failed, located (cluster, host, action): the command line prints the message, exits 1."""

    def __init__(self, message: str, location: str | None = None):
        super().__init__(message)
        self.location = location


def add_project_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """--project, --spec and -v. With `suppress` (on each command's parser, so they may follow the command) an
    option not given leaves the value parsed before the command alone."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--project", metavar="DIR", default=default(os.environ.get(PROJECT_ENV)),
                        help=f"project folder: the spec, inventories, secrets, PKI and operator state; relative "
                             f"paths in options are taken from it (default: ${PROJECT_ENV} or the current directory)")
    parser.add_argument("--spec", metavar="FILE", default=default(None),
                        help=f"fleet spec file (default: {SPEC_NAME} in the project, else ${SPEC_ENV}; the lab "
                             f"commands then use the example spec)")
    parser.add_argument("-v", "--verbose", action="count", default=default(0),
                        help="more log output (-vv for debug)")


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
        args.spec = default_spec(project, os.environ.get(SPEC_ENV) or None, getattr(args, "spec_example", False))


def default_spec(project: Path, from_env: str | None, example: bool) -> Path | None:
    """The spec when --spec names none: the project's fleet.yaml, then $DBFLEET_SPEC (taken from the project
    folder when relative); with `example` (the lab commands), then the example spec. None when there is none."""
    if (project / SPEC_NAME).is_file():
        return project / SPEC_NAME
    if from_env:
        return _absolute(project, from_env)
    if example:
        return project / EXAMPLE_SPEC_NAME if (project / EXAMPLE_SPEC_NAME).is_file() else shipped.example_spec()
    return None


def add_lab_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", default=DEFAULT_LAB,
                        help="lab name; containers are dbfleet-<lab>-<host> (default: lab)")
    parser.add_argument("--inventories", type=Path, default=Path("inventories"),
                        help="inventories folder (default: inventories in the project)")


def add_inventory_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inventory", type=Path, help="an inventory file instead of the lab's")


def postgres_cluster(fleet: Fleet, name: str, refusal: str) -> PostgresCluster:
    """The spec's PostgreSQL cluster `name`; a UsageError for an unknown name, or naming the engine and
    `refusal` (what the command does) for a cluster of another engine."""
    try:
        cluster = fleet.cluster(name)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    if not isinstance(cluster, PostgresCluster):
        raise UsageError(f"{cluster.name} is a {cluster.engine} cluster; {refusal}")
    return cluster


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
    """The --spec file (or the default one), validated, with the sha256 of its bytes."""
    if args.spec is None:
        raise UsageError(f"no fleet spec: {args.project / SPEC_NAME} does not exist and ${SPEC_ENV} is not set; "
                         "`dbfleet init` writes a starter fleet.yaml there, or pass --spec FILE",
                         location=str(args.project / SPEC_NAME))
    spec = Path(args.spec)
    if getattr(args, "spec_defaulted", False) and not spec.exists():
        raise UsageError(f"no fleet spec: {args.project / SPEC_NAME} does not exist, nor ${SPEC_ENV}'s {spec}; "
                         "`dbfleet init` writes a starter fleet.yaml, or pass --spec FILE", location=str(spec))
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
