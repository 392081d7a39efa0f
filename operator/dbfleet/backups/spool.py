"""Where a tool on a database host writes a backup file, and how that file reaches the target.

For a local target the tool writes straight into the shared backup directory
(the lab's volume, an NFS/EFS share on AWS), so nothing is copied. For S3 it
writes to a spool file on the host; the operator fetches it and uploads it,
then removes the spool file. Either way the caller ends with the target key.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dbfleet.backups.access import BackupAccess
from dbfleet.backups.manifest import backup_prefix

SPOOL_DIR = "/var/tmp/dbfleet-spool"


@dataclass(frozen=True)
class SpoolFile:
    host: str
    remote_path: str
    """Where the tool writes on the host."""
    key: str
    """Where the file lives in the target afterwards."""
    direct: bool
    """True when remote_path already is the target (a local target)."""


@contextmanager
def spool_file(access: BackupAccess, host: str, backup_id: str, name: str) -> Iterator[SpoolFile]:
    """A path for the tool on `host`; on leaving without error the file is in the target."""
    key = backup_prefix(access.name, backup_id) + name
    base = access.target_path
    if base is not None:
        remote = f"{base.rstrip('/')}/{key}"
        spool = SpoolFile(host, remote, key, True)
    else:
        spool = SpoolFile(host, f"{SPOOL_DIR}/{access.name}-{backup_id}-{name}", key, False)
    access.executor.check(host, ["mkdir", "-p", spool.remote_path.rsplit("/", 1)[0]], action="spool")
    try:
        yield spool
        if not spool.direct:
            with tempfile.TemporaryDirectory(prefix="dbfleet-spool-") as tmp:
                local = Path(tmp) / name
                access.executor.fetch(host, spool.remote_path, local)
                access.storage.put_file(key, local)
    finally:
        if not spool.direct:
            access.executor.run(host, ["rm", "-f", spool.remote_path])


@contextmanager
def staged_locally(access: BackupAccess, key: str) -> Iterator[Path]:
    """A stored file as a local path on the operator's machine (a temporary copy for S3)."""
    with tempfile.TemporaryDirectory(prefix="dbfleet-stage-") as tmp:
        local = Path(tmp) / key.rsplit("/", 1)[-1]
        access.storage.get_file(key, local)
        yield local
