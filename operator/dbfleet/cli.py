"""The dbfleet command line: `dbfleet --help` lists the commands; each lives in dbfleet.commands.

Global options (--project, --spec, -v) go before or after the command. Every
expected error is one line on stderr, `dbfleet <command>: <what>` (a spec with
several problems: a line for each), with exit 2
for bad options or input and 1 when the work failed; with --json, stdout also
gets one JSON object, {"ok": false, "error": ..., "location": ...}. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import import_module
from typing import NoReturn

from dbfleet import __version__
from dbfleet.commands import COMMAND_MODULES
from dbfleet.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    WorkFailed,
    add_project_options,
    settle_paths,
)
from dbfleet.reconcile.audit import AuditError
from dbfleet.shipped import ShippedFilesError
from dbfleet.spec import SpecError


class ArgumentsError(UsageError):
    """argparse refused the command line; `prog` is the (sub)command it was parsing."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line raises ArgumentsError (one line, reported by main) instead of printing
    the usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentsError(f"{message} (see `{self.prog} --help`)", location=self.prog)


def subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command's and verb's parser below `parser`, depth first."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += [child, *subparsers(child)]
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dbfleet",
        description="Provision, configure and operate a PostgreSQL, MongoDB and Redis fleet from one spec.",
    )
    parser.add_argument("--version", action="version", version=f"dbfleet {__version__}")
    add_project_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        import_module(f"dbfleet.commands.{name}").register(sub)
    for child in subparsers(parser):
        add_project_options(child, suppress=True)
    return parser


def command_of(args: argparse.Namespace) -> str:
    """`dbfleet backup run`: the command and its verb, for messages."""
    return " ".join(["dbfleet", *(str(w) for w in (args.command, getattr(args, "verb", None)) if w)])


def wants_json(argv: list[str]) -> bool:
    """--json among the options (before any `--`), even when the command line did not parse."""
    return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)


def fail(where: str, message: str, location: str | None, as_json: bool, code: int) -> int:
    """Report an expected error: one line per problem on stderr, and with --json one object on stdout."""
    lines = [" ".join(line.split()) for line in message.splitlines() if line.strip()] or ["failed"]
    for line in lines:
        print(f"{where}: {line}", file=sys.stderr)
    if as_json:
        json.dump({"ok": False, "error": "; ".join(lines), "location": location}, sys.stdout)
        sys.stdout.write("\n")
    return code


def spec_location(exc: SpecError) -> str:
    first = exc.problems[0] if exc.problems else None
    if first is None:
        return exc.file
    return f"{exc.file}:{first.line}: {first.path}" if first.line else f"{exc.file}: {first.path}"


def run(args: argparse.Namespace, as_json: bool) -> int:
    where = command_of(args)
    try:
        settle_paths(args, create_project=args.command == "init")
        return int(args.handler(args) or EXIT_OK)
    except SpecError as exc:
        return fail(where, str(exc), spec_location(exc), as_json, EXIT_USAGE)
    except UsageError as exc:
        return fail(where, str(exc), exc.location or where, as_json, EXIT_USAGE)
    except WorkFailed as exc:
        return fail(where, str(exc), exc.location or where, as_json, EXIT_FAILED)
    except ShippedFilesError as exc:
        return fail(where, str(exc), where, as_json, EXIT_FAILED)
    except AuditError as exc:  # a command a person ran acted, but its audit line could not be written
        return fail(where, str(exc), where, as_json, EXIT_FAILED)
    except OSError as exc:  # a file or folder the user named: unreadable, unwritable, a folder where a file goes
        what = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
        return fail(where, what, str(exc.filename) if exc.filename else where, as_json, EXIT_FAILED)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = wants_json(argv)
    try:
        args, unknown = build_parser().parse_known_args(argv)
        if unknown:  # named for the command they were given to, not for dbfleet as a whole
            where = command_of(args)
            raise ArgumentsError(f"unrecognized arguments: {' '.join(unknown)} (see `{where} --help`)", where)
    except ArgumentsError as exc:
        return fail(str(exc.location), str(exc), exc.location, as_json, EXIT_USAGE)
    except SystemExit as exc:  # --help and --version print and exit 0
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return run(args, as_json)
    except KeyboardInterrupt:
        print("dbfleet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
