"""The operator's audit trail: one JSON line per action it takes, appended to a file beside the state file.

A line says when, which operator process (and OS user), which cluster, what
action on what target and why, how it came out (done, failed or skipped, with
the message) and the sha256 of the spec the operator was running. The loop
never opens the file: it calls the recorder it was given (dbfleet.wiring
builds this one). The file is created 0600 and only ever appended to; a
symbolic link, a file readable or writable by others, owned by another user
or with a second hard link is refused rather than written through, since
whoever controls it could forge or hide what the operator did.
`read_audit` reads it back for `dbfleet audit`; a damaged line is reported
with its number, and the lines around it are still read.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import socket
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dbfleet.actions import Outcome

AUDIT_FILE_NAME = "operator-audit.jsonl"
"""The audit trail's name, in the directory of the state file (operator-state.json)."""

FIELDS = ("time", "operator", "user", "cluster", "reconciler", "action", "reason", "outcome", "message",
          "spec_sha256")
"""What every line carries (and what read_audit requires of a line)."""


class AuditError(Exception):
    """The audit trail cannot be written safely (a link, wrong mode or owner, not a file, an I/O error)."""


def _os_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def command_identity(command: str) -> str:
    """How a command a person runs (`switchover`, `backup prune`) names its process in the trail; the loop goes by
    its leader identity."""
    return f"dbfleet {command} (by hand) {socket.gethostname()}:{os.getpid()}"


def audit_line(outcome: Outcome, operator: str, user: str, spec_sha256: str, at: float) -> dict[str, Any]:
    """One action's record, as written: plain JSON values only."""
    action = outcome.action
    return {
        "time": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
        "operator": operator,
        "user": user,
        "cluster": action.cluster,
        "reconciler": action.reconciler,
        "action": {"kind": action.kind, "target": action.target, "destructive": action.destructive,
                   "detail": action.detail},
        "reason": action.reason,
        "outcome": outcome.status,
        "message": outcome.message,
        "attempts": outcome.attempts,
        "seconds": round(outcome.seconds, 3),
        "spec_sha256": spec_sha256,
    }


def _check(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise AuditError(f"{path}: not a regular file; the audit trail is only written to one")
    if info.st_uid != os.geteuid():
        raise AuditError(f"{path}: owned by uid {info.st_uid}, not by this operator's uid {os.geteuid()}; "
                         "move it away and let the operator create it")
    if info.st_mode & 0o077:
        raise AuditError(f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets other users read or change it; "
                         "expected 0600 (chmod 600 it after checking its content)")
    if info.st_nlink != 1:
        raise AuditError(f"{path}: has {info.st_nlink} hard links; the audit trail must be a file of its own")


@dataclass
class AuditTrail:
    """Appends audit lines to `path`. Each record opens, checks, writes one line, syncs and closes the file,
    so a rotated or replaced file is noticed at the next action, not written through."""

    path: Path
    operator: str
    spec_sha256: str
    user: str = field(default_factory=_os_user)
    clock: Callable[[], float] = time.time

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise AuditError(f"{self.path}: is a symbolic link; the audit trail is never written through "
                                 "one") from None
            raise AuditError(f"{self.path}: cannot open the audit trail: {exc.strerror}") from None
        try:
            _check(fd, self.path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check(self) -> None:
        """Create the file if need be and check it, so an operator that cannot record refuses before acting."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"{self.path.parent}: cannot create the audit trail's directory: {exc.strerror}") from None
        os.close(self._open())

    def record(self, outcome: Outcome) -> None:
        """Append one line for an action's outcome; raises AuditError if it cannot."""
        line = json.dumps(audit_line(outcome, self.operator, self.user, self.spec_sha256, self.clock()),
                          sort_keys=True, default=str, ensure_ascii=True)
        data = (line + "\n").encode()
        fd = self._open()
        try:
            written = os.write(fd, data)  # one write with O_APPEND: lines from two processes never interleave
            if written != len(data):
                raise AuditError(f"{self.path}: wrote {written} of {len(data)} bytes of an audit line")
            os.fsync(fd)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot append to the audit trail: {exc.strerror}") from None
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class AuditProblem:
    """A line that is not an audit record: where it is and what is wrong."""

    line: int
    message: str

    def render(self, path: Path) -> str:
        return f"{path}:{self.line}: {self.message}"


@dataclass
class AuditRead:
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[AuditProblem] = field(default_factory=list)


def record_time(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(record["time"]))


def _parse(text: str) -> tuple[dict[str, Any] | None, str]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    missing = [k for k in FIELDS if k not in record]
    if missing:
        return None, f"not an audit record: missing {', '.join(missing)}"
    action = record["action"]
    if not isinstance(action, dict) or not {"kind", "target"} <= set(action):
        return None, "not an audit record: action is not an object with kind and target"
    try:
        when = record_time(record)
    except ValueError:
        return None, f"time {record['time']!r} is not an ISO 8601 time"
    if when.tzinfo is None:
        return None, f"time {record['time']!r} has no time zone"
    return record, ""


def parse_audit_lines(lines: Iterable[bytes], clusters: set[str] | None = None,
                      since: datetime | None = None) -> AuditRead:
    """Records of the given clusters at or after `since`, oldest first, and every line that is not a record."""
    found = AuditRead()
    for number, raw in enumerate(lines, 1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            found.problems.append(AuditProblem(number, "not UTF-8 text"))
            continue
        if not text:
            continue
        record, problem = _parse(text)
        if record is None:
            found.problems.append(AuditProblem(number, problem))
            continue
        if clusters is not None and record["cluster"] not in clusters:
            continue
        if since is not None and record_time(record) < since:
            continue
        found.records.append(record)
    return found


def read_audit(path: Path, clusters: set[str] | None = None, since: datetime | None = None) -> AuditRead:
    """Read the audit trail at `path` (FileNotFoundError if there is none)."""
    with path.open("rb") as handle:
        return parse_audit_lines(handle, clusters, since)


def render_record(record: dict[str, Any]) -> str:
    """One line of text: when, where, what, how it came out and why; then who, under which spec."""
    action = record["action"]
    message = f" ({record['message']})" if record.get("message") else ""
    return (f"{record['time']} {record['cluster']} {record['reconciler']} {action.get('kind')} "
            f"{action.get('target')} -> {record['outcome']}{message}; reason: {record['reason']}; "
            f"by {record['operator']} as {record['user']}, spec sha256 {str(record['spec_sha256'])[:12]}")
