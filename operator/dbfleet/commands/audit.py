"""`dbfleet audit`: what the operator did, from its audit trail, filtered by cluster and time.

Exit codes: 0 ok, 1 the trail has damaged lines (each named by its number; the
others are still printed), 2 bad options or no trail to read.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dbfleet.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_inventory_option,
    add_json_option,
    add_lab_options,
    emit,
)
from dbfleet.commands.reconcile import audit_path
from dbfleet.reconcile.audit import read_audit, render_record
from dbfleet.spec import DURATION, duration_seconds


def parse_since(text: str, now: datetime) -> datetime:
    """--since: an ISO 8601 time (UTC when it names no zone) or a duration back from `now` such as 2h."""
    value = text.strip()
    if re.fullmatch(DURATION, value):
        return now - timedelta(seconds=duration_seconds(value))
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--since: {text!r} is neither an ISO 8601 time such as 2024-05-01T12:00Z nor a "
                         "duration such as 30m, 2h or 7d") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="what the operator did: one line per action, from its audit trail",
                       description="Print the operator's audit trail (operator-audit.jsonl beside the state file), "
                                   "oldest first: per applied action when, which operator, the cluster, the action "
                                   "and its reason, the outcome and the sha256 of the spec it ran. Exit 1 if a line "
                                   "is damaged, 2 for bad options or when there is no trail.")
    add_lab_options(p)
    add_inventory_option(p)
    p.add_argument("--state", type=Path, help="the reconcile state file; the trail is beside it (default: "
                                              "operator-state.json beside the inventory)")
    p.add_argument("--cluster", action="append", metavar="NAME", help="only this cluster (repeatable)")
    p.add_argument("--since", metavar="T", help="only actions at or after T: an ISO 8601 time "
                                                "(2024-05-01T12:00Z; UTC without a zone) or a duration back "
                                                "from now (30m, 2h, 7d)")
    add_json_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    since = parse_since(args.since, datetime.now(UTC)) if args.since is not None else None
    path = audit_path(args)
    try:
        found = read_audit(path, set(args.cluster) if args.cluster else None, since)
    except FileNotFoundError:
        raise UsageError(f"no audit trail at {path}: `dbfleet reconcile` has not run with this inventory "
                         "(or name its --state)") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the audit trail: {exc.strerror}") from None
    for problem in found.problems:
        print(f"dbfleet audit: {problem.render(path)}", file=sys.stderr)
    data = {"file": str(path), "records": found.records,
            "problems": [{"line": p.line, "message": p.message} for p in found.problems]}
    text = "\n".join(render_record(r) for r in found.records) or "(no actions recorded)"
    emit(args, data, text)
    return EXIT_FAILED if found.problems else EXIT_OK
