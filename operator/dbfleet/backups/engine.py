"""The one small interface each engine's backup adapter fills: take, delete, restore into scratch, verify.

`postgres.py` drives pgBackRest, `mongo.py` mongodump/mongorestore, `redis.py`
`redis-cli --rdb`. The flows that are the same for all three (manifests,
locks, orphans, drills, metrics) live in runner.py and drills.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dbfleet.backups.access import BackupAccess
from dbfleet.backups.dr import copy_files
from dbfleet.backups.manifest import Check, Manifest, backup_prefix, new_backup_id
from dbfleet.backups.retention import Expiry
from dbfleet.backups.scratch import ScratchHost


@dataclass(frozen=True)
class RestoreTarget:
    """How far to recover: the end of the backup's own WAL/oplog ('latest'), a time, or a named point."""

    kind: str = "latest"
    """'latest', 'time' or 'name'."""
    value: str | None = None

    def describe(self) -> str:
        return self.kind if self.value is None else f"{self.kind} {self.value}"


@dataclass(frozen=True)
class Restored:
    """A server running in a scratch container from a backup."""

    backup_id: str
    recovered_to: datetime | None
    """The newest point the restored server holds: its last replayed commit, or the snapshot time."""
    detail: str = ""


@dataclass(frozen=True)
class Prepared:
    """What is found before the pending manifest is written: the tool's version, and facts take() reuses.

    PostgreSQL hands on the host to start from (the last good backup's, so a
    backup is one round trip), instead of asking for it again in take().
    """

    tool_version: str
    facts: Mapping[str, Any] = field(default_factory=dict)
    history: tuple[Manifest, ...] = ()
    """The cluster's manifests as read once before the backup (on S3 each one is a GET)."""


class EngineBackups(ABC):
    """Backup adapter of one engine."""

    engine: str = ""
    tool: str = ""

    @abstractmethod
    def tool_version(self, access: BackupAccess) -> str:
        """The version string of the tool that takes the backup, from the host that runs it."""

    def prepare(self, access: BackupAccess, history: Sequence[Manifest] | None = None) -> Prepared:
        """Everything the backup needs to know before it starts; by default the tool's version.

        `history` is the cluster's manifests when the caller has just read them.
        """
        return Prepared(self.tool_version(access), history=tuple(history or ()))

    def new_manifest(self, access: BackupAccess, kind: str, now: datetime, version: str) -> Manifest:
        """The pending manifest written before the tool starts."""
        from dbfleet.backups.manifest import PENDING, iso

        return Manifest(cluster=access.name, engine=self.engine, id=new_backup_id(kind, now), kind=kind,
                        status=PENDING, tool=self.tool, tool_version=version, started_at=iso(now) or "")

    @abstractmethod
    def take(self, access: BackupAccess, pending: Manifest, prepared: Prepared | None = None) -> Manifest:
        """Run the tool and return the completed manifest (files measured). Raise on failure.

        `prepared` is what prepare() found just before, when the caller ran it.
        """

    def copy_to_dr(self, access: BackupAccess, dr: BackupAccess, pending: Manifest, done: Manifest,
                   prepared: Prepared) -> Manifest:
        """Put the backup `done` (in access's target) into the second target `dr` too, and return the second
        target's complete manifest (same id); raise when it could not. By default the stored files are copied
        (MongoDB's and Redis's dumps, encrypted on their host); PostgreSQL backs up into its second repository."""
        return copy_files(access, dr, done)

    def delete(self, access: BackupAccess, expiries: list[Expiry]) -> list[str]:
        """Delete the chosen backups' files and manifests; return what was deleted, one line each."""
        done = []
        for expiry in expiries:
            count = access.storage.delete_prefix(backup_prefix(access.name, expiry.backup.id))
            done.append(f"{expiry.backup.id}: {count} files")
        return done

    @abstractmethod
    def restore(self, access: BackupAccess, backup: Manifest, scratch: ScratchHost, target: RestoreTarget) -> Restored:
        """Restore `backup` into the scratch host and start a server there, ready for queries."""

    @abstractmethod
    def verify(self, access: BackupAccess, backup: Manifest, scratch: ScratchHost, restored: Restored) -> list[Check]:
        """The engine's own checks of the restored server (and repository)."""

