"""The dbfleet command line: `dbfleet --help` lists the commands; each lives in dbfleet.commands."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

from dbfleet import __version__
from dbfleet.commands import COMMAND_MODULES
from dbfleet.commands.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, add_project_options, settle_paths
from dbfleet.shipped import ShippedFilesError
from dbfleet.spec import SpecError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbfleet",
        description="Provision, configure and operate a PostgreSQL, MongoDB and Redis fleet from one spec.",
    )
    parser.add_argument("--version", action="version", version=f"dbfleet {__version__}")
    add_project_options(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        import_module(f"dbfleet.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settle_paths(args, create_project=args.command == "init")
        return int(args.handler(args) or EXIT_OK)
    except SpecError as exc:
        print(f"dbfleet: invalid spec\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"dbfleet {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ShippedFilesError as exc:
        print(f"dbfleet {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("dbfleet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
