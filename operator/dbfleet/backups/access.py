"""What backing up or restoring one cluster needs: its hosts, its target, its session, a scratch provider.

A BackupAccess is built from the fleet's one FleetAccess (hosts, credentials,
executor) and the cluster's engine session (topology, connections), so a
backup finds the primary the same way the reconcilers do. The storage and the
scratch provider are chosen by the caller (dbfleet.wiring): in the lab, the
shared volume's mountpoint and scratch containers; on AWS, usually S3.
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dbfleet.backups.scratch import ScratchProvider
from dbfleet.backups.storage import Storage
from dbfleet.engines import AnySession
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.base import AnyCluster
from dbfleet.engines.credentials import Login
from dbfleet.engines.executor import Executor
from dbfleet.engines.pgbackrest import DR_REPO
from dbfleet.errors import PermanentError, TemporaryError
from dbfleet.progress import Progress
from dbfleet.spec import S3Target

LOCK_DIR_ENV = "DBFLEET_LOCK_DIR"


@dataclass
class BackupAccess:
    """One cluster's hosts, target and credentials."""

    cluster: AnyCluster
    executor: Executor
    storage: Storage
    fleet: FleetAccess = field(default_factory=lambda: FleetAccess({}, {}))
    session: AnySession | None = None
    """The cluster's engine session: its topology names the primary, its clients reach the servers."""
    scratch: ScratchProvider | None = None
    """Where restores and drills run; None when this fleet has no scratch hosts to offer."""
    progress: Progress = field(default_factory=lambda: Progress("backup"))
    dr: BackupAccess | None = None
    """The same cluster's second target (the spec's dr.target) when it has one: its own storage and scratch
    hosts, and a cluster whose backup.target is dr.target (dbfleet.backups.dr.dr_cluster)."""
    second: bool = False
    """This access reaches the second target: restores read it, and pgBackRest writes it as repo2."""

    @property
    def name(self) -> str:
        return self.cluster.name

    @property
    def repo(self) -> int:
        """The pgBackRest repository this target is on the cluster's hosts: repo1, or repo2 for the second."""
        return DR_REPO if self.second else 1

    @property
    def label(self) -> str:
        """Which target, in messages and `backup list`: 'primary' or 'dr'."""
        return "dr" if self.second else "primary"

    @property
    def target_path(self) -> str | None:
        """The local target's path as the hosts see it (None for S3)."""
        target = self.cluster.backup.target
        return None if isinstance(target, S3Target) else target.path

    def secret(self, key: str) -> str:
        try:
            return self.fleet.secrets[key]
        except KeyError:
            raise PermanentError(f"the secrets file has no {key}", cluster=self.name) from None

    def password(self, login: Login) -> str:
        return self.secret(login.secret)

    def address(self, host: str) -> str:
        return self.fleet.addresses.get(host, host)

    def engine_session(self) -> AnySession:
        if self.session is None:
            raise PermanentError("no engine session to reach the cluster with", cluster=self.name)
        return self.session

    def primary(self, fresh: bool = False) -> str:
        """The member that takes writes, from the session's topology (read again when `fresh`)."""
        session = self.engine_session()
        if fresh:
            session.begin_cycle()
        return session.primary()

    def tool_s3_env(self, prefix: str) -> dict[str, str]:
        """S3 credentials for a tool run in a scratch host, from the operator's own AWS environment."""
        pairs = {"AWS_ACCESS_KEY_ID": "KEY", "AWS_SECRET_ACCESS_KEY": "KEY_SECRET", "AWS_SESSION_TOKEN": "TOKEN"}
        return {f"{prefix}{suffix}": os.environ[var] for var, suffix in pairs.items() if os.environ.get(var)}


def lock_dir() -> Path:
    """Where backup locks live: $DBFLEET_LOCK_DIR, else /run/dbfleet for root, else a per-user temp folder.

    It must be a real directory that only this user can enter: anyone able to
    create the lock file first could hold every backup off, or point it elsewhere.
    """
    configured = os.environ.get(LOCK_DIR_ENV)
    uid = os.geteuid()
    path = Path(configured) if configured else Path("/run/dbfleet") if uid == 0 else \
        Path(tempfile.gettempdir()) / f"dbfleet-{uid}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        raise PermanentError(f"{path}: the lock directory must be a directory of this user's that no one else can "
                             f"enter (mode 0700); found mode {stat.S_IMODE(info.st_mode):o}, owner {info.st_uid}")
    return path


def _open_lock(cluster: str, what: str = "backup") -> int:
    path = lock_dir() / f"dbfleet-{what}-{cluster}.lock"
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise PermanentError(f"{path}: cannot open the backup lock ({exc.strerror}); is it a link?",
                             cluster=cluster) from None


@contextmanager
def backup_lock(cluster: str) -> Iterator[None]:
    """Held while a backup of `cluster` runs from this machine; a second one is a TemporaryError."""
    fd = _open_lock(cluster)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TemporaryError("another backup of this cluster is running", cluster=cluster,
                                 action="backup") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def backup_running(cluster: str) -> bool:
    """True while some process on this machine holds the cluster's backup lock."""
    return lock_busy(cluster, "backup")


def lock_busy(cluster: str, what: str) -> bool:
    """True while some process on this machine (or another thread of this one) holds the cluster's `what` lock."""
    fd = take_lock(cluster, what)
    if fd is None:
        return True
    drop_lock(fd)
    return False


def take_lock(cluster: str, what: str) -> int | None:
    """The cluster's `what` lock taken now (its descriptor: drop_lock releases it), or None if it is held."""
    fd = _open_lock(cluster, what)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def drop_lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
