"""The dbfleet manifest written next to every backup: what was taken, by which tool, when, and its checksums.

A manifest starts `pending` before the tool runs and becomes `complete` when
the tool succeeded and every file was measured. A restore drill then makes it
`verified` or `failed`. A backup interrupted half-way stays `pending` until
the next run marks it `orphaned`; neither state ever counts as a good backup.
Manifests live at `dbfleet/<cluster>/<backup id>/manifest.json` in the target.
"""

from __future__ import annotations

import json
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


class ManifestError(ValueError):
    """A manifest file that cannot be read as one."""


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


def cluster_prefix(cluster: str) -> str:
    return f"{ROOT}/{cluster}/"


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
        when = parse_time(self.started_at)
        assert when is not None
        return when

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
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ManifestError(f"{where}: format {data.get('format')!r}, expected {FORMAT}")
            if data.get("status") not in STATUSES or data.get("kind") not in KINDS:
                raise ManifestError(f"{where}: status {data.get('status')!r} or kind {data.get('kind')!r} unknown")
            files = tuple(FileEntry(**f) for f in data.pop("files", []))
            ver = data.pop("verification", None)
            return cls(**data, files=files, verification=Verification(**ver) if ver else None)
        except (ValueError, TypeError, AttributeError) as exc:
            if isinstance(exc, ManifestError):
                raise
            raise ManifestError(f"{where}: not a dbfleet manifest: {exc}") from None

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
        when = parse_time(self.finished_at)
        assert when is not None
        return when

    def to_json(self) -> str:
        data = asdict(self)
        data["checks"] = [asdict(c) for c in self.checks]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "<drill>") -> DrillRecord:
        try:
            data = json.loads(text)
            checks = tuple(Check(**c) for c in data.pop("checks", []))
            return cls(**data, checks=checks)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ManifestError(f"{where}: not a dbfleet drill record: {exc}") from None

    def summary(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "drill": self.id, "backup": self.backup_id,
                "result": "ok" if self.ok else "FAILED", "rto_s": self.rto_seconds, "rpo_s": self.rpo_seconds,
                "finished": self.finished_at, "message": self.message}
