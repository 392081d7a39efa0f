"""The dbfleet manifest written next to every backup: what was taken, by which tool, when, and its checksums.

A manifest starts `pending` before the tool runs and becomes `complete` when
the tool succeeded and every file was measured. A restore drill then makes it
`verified` or `failed`. A backup interrupted half-way stays `pending` until
the next run marks it `orphaned`; neither state ever counts as a good backup.
Manifests live at `dbfleet/<cluster>/<backup id>/manifest.json` in the target.

A manifest or drill record read back from a target is data someone else could
have written: from_json checks every field (types, times, statuses, pgBackRest
labels) and every file key (relative, normalised, under the cluster's own
prefixes) and raises ManifestError with the reason otherwise.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

FORMAT = 1
ROOT = "dbfleet"

PENDING, COMPLETE, VERIFIED, FAILED, ORPHANED = "pending", "complete", "verified", "failed", "orphaned"
STATUSES = (PENDING, COMPLETE, VERIFIED, FAILED, ORPHANED)
GOOD = (COMPLETE, VERIFIED)
"""Statuses of a backup that can be restored as far as anyone knows."""

KINDS = ("full", "diff", "incr", "snapshot")
RANK = {"full": 3, "snapshot": 3, "diff": 2, "incr": 1}
"""A bigger rank covers the smaller: a full backup also serves as the day's diff and the hour's incr."""


ENGINES = ("postgres", "mongo", "redis")
RECORD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}")
"""A backup or drill id: one path segment, as new_backup_id and the drills make them."""
PGBACKREST_LABEL = re.compile(r"[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?")
SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A manifest or drill record that cannot be read as one: where it is and why."""

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def checked_time(text: str) -> datetime:
    """A time every valid record holds (its fields were checked when read)."""
    when = parse_time(text)
    assert when is not None
    return when


def cluster_prefix(cluster: str) -> str:
    return f"{ROOT}/{cluster}/"


def cluster_roots(cluster: str) -> tuple[str, str]:
    """Where a cluster's stored files may be: its dbfleet prefix, and its pgBackRest repository (the same
    place backups/postgres.py's repo_prefix names; a test keeps the two equal)."""
    return cluster_prefix(cluster), f"pgbackrest/{cluster}/"


def file_key_problem(key: Any, cluster: str) -> str | None:
    """Why `key` cannot be a file of `cluster`'s backup, or None: relative, normalised, under cluster_roots."""
    if not isinstance(key, str) or not key:
        return f"{key!r} is not a key"
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return f"{key!r} holds a control character"
    if key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        return f"{key!r} is not a normalised relative key"
    if not key.startswith(cluster_roots(cluster)):
        return f"{key!r} is outside the cluster's {' and '.join(cluster_roots(cluster))}"
    return None


def backup_prefix(cluster: str, backup_id: str) -> str:
    return f"{ROOT}/{cluster}/{backup_id}/"


def manifest_key(cluster: str, backup_id: str) -> str:
    return backup_prefix(cluster, backup_id) + "manifest.json"


def new_backup_id(kind: str, when: datetime) -> str:
    """Sortable id for a backup dbfleet names itself (Redis, MongoDB): 20261125T020000Z-snapshot."""
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{kind}"


@dataclass(frozen=True)
class FileEntry:
    """One stored file: its key relative to the target root, its size and its sha256."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Verification:
    """The drill that last judged this backup."""

    at: str
    ok: bool
    message: str
    drill_id: str = ""


@dataclass(frozen=True)
class Manifest:
    cluster: str
    engine: str
    id: str
    kind: str
    status: str
    tool: str
    tool_version: str
    started_at: str
    finished_at: str | None = None
    host: str = ""
    parent: str | None = None
    """For a diff or incr: the id of the backup it builds on."""
    size_bytes: int = 0
    files: tuple[FileEntry, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)
    """Engine facts: pgBackRest label, LSNs and WAL range; the oplog flag; the replica the RDB came from."""
    error: str = ""
    verification: Verification | None = None
    format: int = FORMAT

    # -- derived ---------------------------------------------------------------

    @property
    def key(self) -> str:
        return manifest_key(self.cluster, self.id)

    @property
    def started(self) -> datetime:
        return checked_time(self.started_at)

    @property
    def finished(self) -> datetime | None:
        return parse_time(self.finished_at)

    @property
    def good(self) -> bool:
        return self.status in GOOD

    @property
    def verified(self) -> bool:
        return self.status == VERIFIED

    @property
    def is_full(self) -> bool:
        return self.kind in ("full", "snapshot")

    # -- transitions -------------------------------------------------------------

    def completed(self, finished: datetime, files: Iterable[FileEntry], size_bytes: int | None = None,
                  **detail: Any) -> Manifest:
        entries = tuple(files)
        size = size_bytes if size_bytes is not None else sum(f.size for f in entries)
        return replace(self, status=COMPLETE, finished_at=iso(finished), files=entries, size_bytes=size,
                       detail={**self.detail, **detail})

    def judged(self, ok: bool, message: str, at: datetime, drill_id: str = "") -> Manifest:
        """The drill's verdict. A failed backup stays failed: a later success never turns it green."""
        if self.status == FAILED:
            return self
        return replace(self, status=VERIFIED if ok else FAILED,
                       verification=Verification(iso(at) or "", ok, message, drill_id))

    def orphaned(self, why: str) -> Manifest:
        return replace(self, status=ORPHANED, error=why)

    def aborted(self, error: str, finished: datetime) -> Manifest:
        """The tool itself failed: recorded as failed so it never counts as a restorable backup."""
        return replace(self, status=FAILED, error=error, finished_at=iso(finished))

    # -- serialisation -----------------------------------------------------------

    def to_json(self) -> str:
        data = asdict(replace(self, files=()))  # asdict deep-copies: thousands of file entries twice otherwise
        names = [f.name for f in fields(FileEntry)]
        data["files"] = [{name: getattr(f, name) for name in names} for f in self.files]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "<manifest>") -> Manifest:
        """A manifest read from a target, every field checked; ManifestError naming `where` and the reason."""
        data = json_object(text, where, "manifest")
        try:
            _check_manifest(data)
        except ValueError as exc:
            raise ManifestError(where, str(exc)) from None
        files = tuple(FileEntry(**f) for f in data.pop("files", []))
        ver = data.pop("verification", None)
        return cls(**data, files=files, verification=Verification(**ver) if ver else None)

    def summary(self) -> dict[str, Any]:
        """The row `backup list` prints."""
        return {"cluster": self.cluster, "id": self.id, "kind": self.kind, "status": self.status,
                "started": self.started_at, "finished": self.finished_at or "", "size": self.size_bytes,
                "files": len(self.files), "tool": f"{self.tool} {self.tool_version}".strip(),
                "parent": self.parent or "", "error": self.error,
                "verified": self.verification.at if self.verification and self.verification.ok else ""}


def newest_first(manifests: Iterable[Manifest]) -> list[Manifest]:
    return sorted(manifests, key=lambda m: (m.started, m.id), reverse=True)


def newest_good(manifests: Iterable[Manifest]) -> Manifest | None:
    return next((m for m in newest_first(manifests) if m.good), None)


# --------------------------------------------------------------------------- drills


def drill_key(cluster: str, drill_id: str) -> str:
    return f"{ROOT}/{cluster}/drills/{drill_id}.json"


@dataclass(frozen=True)
class Check:
    """One verification step of a drill: `pgbackrest verify`, `pg_amcheck`, a canary count, a dbHash."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class DrillRecord:
    """One restore drill: which backup, what was checked, how long the restore took and what it could recover."""

    id: str
    cluster: str
    backup_id: str
    started_at: str
    finished_at: str
    ok: bool
    message: str
    rto_seconds: float | None = None
    """Restore start to a verified, usable server."""
    rpo_seconds: float | None = None
    """Age, when the drill finished, of the newest point the restored server holds."""
    recovered_to: str | None = None
    checks: tuple[Check, ...] = ()
    format: int = FORMAT

    @property
    def key(self) -> str:
        return drill_key(self.cluster, self.id)

    @property
    def finished(self) -> datetime:
        return checked_time(self.finished_at)

    def to_json(self) -> str:
        data = asdict(self)
        data["checks"] = [asdict(c) for c in self.checks]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "<drill>") -> DrillRecord:
        """A drill record read from a target, every field checked; ManifestError naming `where` and the reason."""
        data = json_object(text, where, "drill record")
        try:
            _check_drill(data)
        except ValueError as exc:
            raise ManifestError(where, str(exc)) from None
        checks = tuple(Check(**c) for c in data.pop("checks", []))
        return cls(**data, checks=checks)

    def summary(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "drill": self.id, "backup": self.backup_id,
                "result": "ok" if self.ok else "FAILED", "rto_s": self.rto_seconds, "rpo_s": self.rpo_seconds,
                "finished": self.finished_at, "message": self.message}


# --------------------------------------------------------------------------- reading what a target holds


def json_object(text: str | bytes, where: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(where, f"not JSON: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ManifestError(where, f"not a dbfleet {what}: a JSON {type(data).__name__}, not an object")
    return data


class Fields:
    """Checks on one JSON object's fields; each failure a ValueError naming the field."""

    def __init__(self, data: dict[str, Any], known: Iterable[str], prefix: str = ""):
        self.data = data
        self.prefix = prefix
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{prefix}{unknown[0]}: unknown key")

    def fail(self, key: str, why: str) -> ValueError:
        return ValueError(f"{self.prefix}{key}: {why}")

    def present(self, key: str, required: bool) -> bool:
        if key in self.data and self.data[key] is not None:
            return True
        if required:
            raise self.fail(key, "missing")
        return False

    def text(self, key: str, required: bool = True, pattern: re.Pattern[str] | None = None,
             choices: tuple[str, ...] | None = None) -> None:
        if not self.present(key, required):
            return
        value = self.data[key]
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {type(value).__name__}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(key, f"{value[:80]!r} does not match {pattern.pattern}")
        if choices is not None and value not in choices:
            raise self.fail(key, f"{value[:80]!r} is not one of {', '.join(choices)}")

    def time(self, key: str, required: bool = True) -> None:
        self.text(key, required)
        if self.present(key, False):
            try:
                parse_time(self.data[key])
            except ValueError:
                raise self.fail(key, f"{self.data[key][:80]!r} is not an ISO time") from None

    def number(self, key: str, required: bool = True, whole: bool = True, least: float | None = 0) -> None:
        if not self.present(key, required):
            return
        value = self.data[key]
        kinds = (int,) if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or \
                least is not None and value < least:
            bound = "" if least is None else f" >= {least}"
            raise self.fail(key, f"expected a finite {'whole ' if whole else ''}number{bound}, got {value!r}"[:200])

    def flag(self, key: str) -> None:
        if not isinstance(self.data.get(key), bool):
            raise self.fail(key, "expected true or false")

    def items(self, key: str) -> list[Any]:
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list, got {type(value).__name__}")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__}")
        return value


def _check_manifest(data: dict[str, Any]) -> None:
    fields_ = Fields(data, [f.name for f in fields(Manifest)])
    if data.get("format") != FORMAT:
        raise fields_.fail("format", f"{data.get('format')!r}, expected {FORMAT}")
    fields_.text("cluster", pattern=re.compile(r"[a-z][a-z0-9-]{0,30}[a-z0-9]"))
    fields_.text("engine", choices=ENGINES)
    fields_.text("id", pattern=RECORD_ID)
    fields_.text("kind", choices=KINDS)
    fields_.text("status", choices=STATUSES)
    for key in ("tool", "tool_version", "host", "error"):
        fields_.text(key, required=key.startswith("tool"))
    fields_.time("started_at")
    fields_.time("finished_at", required=False)
    fields_.text("parent", required=False, pattern=RECORD_ID)
    fields_.number("size_bytes", required=False)
    for i, entry in enumerate(fields_.items("files")):
        if not isinstance(entry, dict):
            raise fields_.fail(f"files.{i}", "expected a mapping with key, size and sha256")
        file = Fields(entry, ("key", "size", "sha256"), f"files.{i}.")
        file.text("sha256", pattern=SHA256)
        file.number("size")
        why = file_key_problem(entry.get("key"), data["cluster"])
        if why:
            raise file.fail("key", why)
    _check_detail(fields_.mapping("detail"))
    verification = data.get("verification")
    if verification is not None:
        if not isinstance(verification, dict):
            raise fields_.fail("verification", "expected a mapping")
        verdict = Fields(verification, [f.name for f in fields(Verification)], "verification.")
        verdict.time("at")
        verdict.flag("ok")
        verdict.text("message")
        verdict.text("drill_id", required=False)


def _check_detail(detail: dict[str, Any]) -> None:
    """The engine facts a restore or expiry acts on: a pgBackRest label goes into --set, a time into recovery."""
    facts = Fields(detail, detail, "detail.")
    facts.text("label", required=False, pattern=PGBACKREST_LABEL)
    facts.text("prior", required=False, pattern=PGBACKREST_LABEL)
    facts.time("recoverable_to", required=False)


def _check_drill(data: dict[str, Any]) -> None:
    fields_ = Fields(data, [f.name for f in fields(DrillRecord)])
    if data.get("format", FORMAT) != FORMAT:
        raise fields_.fail("format", f"{data.get('format')!r}, expected {FORMAT}")
    fields_.text("id", pattern=RECORD_ID)
    fields_.text("cluster")
    fields_.text("backup_id")
    fields_.time("started_at")
    fields_.time("finished_at")
    fields_.flag("ok")
    fields_.text("message")
    fields_.number("rto_seconds", required=False, whole=False, least=None)
    fields_.number("rpo_seconds", required=False, whole=False, least=None)
    fields_.time("recovered_to", required=False)
    for i, check in enumerate(fields_.items("checks")):
        if not isinstance(check, dict):
            raise fields_.fail(f"checks.{i}", "expected a mapping with name, ok and detail")
        step = Fields(check, [f.name for f in fields(Check)], f"checks.{i}.")
        step.text("name")
        step.flag("ok")
        step.text("detail", required=False)
