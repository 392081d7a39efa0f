"""What backing up or restoring one cluster needs: its hosts (an executor), its target (a storage), secrets.

Built once per command or reconcile cycle from the inventory, the secrets file
and the spec. In the lab, a local target is seen by the operator at the shared
volume's mountpoint and scratch containers come from the lab; on AWS a local
target is the share mounted at the same path, and the target is usually S3.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

from dbfleet.backups.storage import Storage, storage_for
from dbfleet.engines.executor import Executor, executor_for
from dbfleet.inventory import load_inventory, read_inventory_hosts
from dbfleet.progress import Progress
from dbfleet.errors import PermanentError, TemporaryError
from dbfleet.secrets import load_secrets
from dbfleet.spec import MongoCluster, PostgresCluster, RedisCluster, S3Target

AnyCluster = Union[PostgresCluster, MongoCluster, RedisCluster]
LOCK_DIR_ENV = "DBFLEET_LOCK_DIR"


@dataclass
class BackupAccess:
    """One cluster's hosts, target and credentials."""

    cluster: AnyCluster
    executor: Executor
    storage: Storage
    secrets: dict[str, str] = field(repr=False, default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    lab: str | None = None
    """The lab name when the hosts are lab containers: restores and drills then use scratch containers."""
    progress: Progress = field(default_factory=lambda: Progress("backup"))

    @property
    def name(self) -> str:
        return self.cluster.name

    @property
    def target_path(self) -> str | None:
        """The local target's path as the hosts see it (None for S3)."""
        target = self.cluster.backup.target
        return None if isinstance(target, S3Target) else target.path

    def secret(self, key: str) -> str:
        try:
            return self.secrets[key]
        except KeyError:
            raise PermanentError(f"the secrets file has no {key}", cluster=self.name) from None

    def address(self, host: str) -> str:
        return self.addresses.get(host, host)

    def tool_s3_env(self, prefix: str) -> dict[str, str]:
        """S3 credentials for a tool run in a scratch container, from the operator's own AWS environment."""
        pairs = {"AWS_ACCESS_KEY_ID": "KEY", "AWS_SECRET_ACCESS_KEY": "KEY_SECRET", "AWS_SESSION_TOKEN": "TOKEN"}
        return {f"{prefix}{suffix}": os.environ[var] for var, suffix in pairs.items() if os.environ.get(var)}


def open_access(cluster: AnyCluster, inventory: Path, secrets: Path | None = None,
                progress: Progress | None = None, docker_client: Any = None, s3_client: Any = None) -> BackupAccess:
    """Access for one cluster from an inventory written by dbfleet (the lab's or the AWS one)."""
    hostvars = read_inventory_hosts(inventory)
    lab = next((str(v["dbfleet_lab"]) for v in _all_vars(inventory).values() if "dbfleet_lab" in v), None)
    secrets_path = secrets or inventory.parent / "group_vars" / "all" / "secrets.yml"
    local_root = None
    if lab and not isinstance(cluster.backup.target, S3Target):
        from dbfleet.lab.scratch import backup_volume_mountpoint

        local_root = backup_volume_mountpoint(lab, docker_client)
    return BackupAccess(
        cluster=cluster,
        executor=executor_for(inventory, docker_client),
        storage=storage_for(cluster.backup.target, local_root, s3_client),
        secrets=load_secrets(secrets_path, require_all=False) if secrets_path.exists() else {},
        addresses={h: str(v.get("dbfleet_address", h)) for h, v in hostvars.items()},
        lab=lab,
        progress=progress or Progress("backup"),
    )


def _all_vars(inventory: Path) -> dict[str, dict[str, Any]]:
    data = load_inventory(inventory)  # spec strings in it are tagged !unsafe
    return {"all": dict((data.get("all") or {}).get("vars") or {})}


def _lock_path(cluster: str) -> Path:
    base = Path(os.environ.get(LOCK_DIR_ENV, "/tmp"))
    return base / f"dbfleet-backup-{cluster}.lock"


@contextmanager
def backup_lock(cluster: str) -> Iterator[None]:
    """Held while a backup of `cluster` runs from this machine; a second one is a TemporaryError."""
    path = _lock_path(cluster)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TemporaryError("another backup of this cluster is running", cluster=cluster,
                                 action="backup") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def backup_running(cluster: str) -> bool:
    """True while some process on this machine holds the cluster's backup lock."""
    path = _lock_path(cluster)
    if not path.exists():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False
