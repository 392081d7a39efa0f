"""The manifest life cycle around any tool: pending, complete, failed, and orphaned after an interruption."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbfleet.backups.access import BackupAccess, backup_lock, backup_running
from dbfleet.backups.engine import EngineBackups, Prepared
from dbfleet.backups.manifest import Manifest, utcnow
from dbfleet.backups.runner import take_backup
from dbfleet.backups.storage import LocalStorage
from dbfleet.errors import TemporaryError
from dbfleet.progress import Progress
from dbfleet.spec import load_fleet

FLEET = load_fleet(Path(__file__).resolve().parents[2] / "fleet.example.yaml")


class FileTool(EngineBackups):
    """A stand-in tool that writes one file into the target, or fails, or is interrupted."""

    engine, tool = "redis", "cp"

    def __init__(self, fail: BaseException | None = None):
        self.fail = fail

    def tool_version(self, access: BackupAccess) -> str:
        return "1.0"

    def take(self, access: BackupAccess, pending: Manifest, prepared: Prepared | None = None) -> Manifest:
        if self.fail is not None:
            raise self.fail
        key = f"dbfleet/cache/{pending.id}/dump.rdb"
        access.storage.put_bytes(key, b"REDIS0011")
        return pending.completed(utcnow(), [access.storage.measure(key)])

    def restore(self, *a):  # type: ignore[override]
        raise NotImplementedError

    def verify(self, *a):  # type: ignore[override]
        raise NotImplementedError


@pytest.fixture()
def access(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BackupAccess:
    monkeypatch.setenv("DBFLEET_LOCK_DIR", str(tmp_path))
    return BackupAccess(FLEET.cluster("cache"), None, LocalStorage(tmp_path / "target"),  # type: ignore[arg-type]
                        progress=Progress("test", quiet=True))


def test_complete_backup_has_checksums(access: BackupAccess) -> None:
    done = take_backup(access, "snapshot", FileTool())
    assert done.status == "complete" and done.files[0].size == 9 and done.tool_version == "1.0"
    assert access.storage.manifests("cache") == [done]


def test_tool_failure_is_saved_failed(access: BackupAccess) -> None:
    with pytest.raises(RuntimeError):
        take_backup(access, "snapshot", FileTool(RuntimeError("disk full")))
    [m] = access.storage.manifests("cache")
    assert m.status == "failed" and "disk full" in m.error and not m.good


def test_interrupted_backup_stays_pending_then_is_orphaned(access: BackupAccess) -> None:
    with pytest.raises(KeyboardInterrupt):
        take_backup(access, "snapshot", FileTool(KeyboardInterrupt()))
    [m] = access.storage.manifests("cache")
    assert m.status == "pending"
    done = take_backup(access, "snapshot", FileTool(), now=utcnow().replace(year=2099))
    statuses = {x.id: x.status for x in access.storage.manifests("cache")}
    assert statuses == {m.id: "orphaned", done.id: "complete"}


def test_one_backup_at_a_time(access: BackupAccess) -> None:
    with backup_lock("cache"):
        assert backup_running("cache")
        with pytest.raises(TemporaryError, match="another backup"):
            take_backup(access, "snapshot", FileTool())
    assert not backup_running("cache")


def test_a_lock_directory_others_can_enter_is_refused(tmp_path, monkeypatch) -> None:
    """Issue: the backup lock was /tmp/dbfleet-backup-<cluster>.lock, which anyone could take first."""
    import os

    from dbfleet.errors import PermanentError

    open_dir = tmp_path / "locks"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    monkeypatch.setenv("DBFLEET_LOCK_DIR", str(open_dir))
    with pytest.raises(PermanentError, match="mode 0700"), backup_lock("cache"):
        pass
    open_dir.chmod(0o700)
    os.symlink("/etc/passwd", open_dir / "dbfleet-backup-cache.lock")
    with pytest.raises(PermanentError, match="is it a link"), backup_lock("cache"):
        pass


def test_the_default_lock_directory_is_root_only(monkeypatch) -> None:
    import os
    import stat

    from dbfleet.backups.access import lock_dir

    monkeypatch.delenv("DBFLEET_LOCK_DIR", raising=False)
    path = lock_dir()
    assert not str(path).startswith("/tmp/dbfleet-backup")
    info = path.lstat()
    assert info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) == 0o700
