"""Dumps are encrypted on their host before they leave it, in a directory nobody else can enter.

Issue: MongoDB dumps and Redis snapshots were stored in clear, spooled under
/var/tmp/dbfleet-spool made by `mkdir -p` with the default umask (0755, files
0644), which a local user could create first and fill with symlinks; the
mongodump credentials file had a guessable /tmp name. The scripts here run
for real in a local shell with the real `age`; the "host" and the "scratch
host" are this machine.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from dbfleet.age_keys import new_identity, recipient_of
from dbfleet.backups import spool
from dbfleet.backups.access import BackupAccess
from dbfleet.backups.storage import LocalStorage
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.executor import CommandFailed, ExecResult, Executor
from dbfleet.secrets import BACKUP_AGE_IDENTITY, BACKUP_AGE_IDENTITY_OLD
from dbfleet.spec import LocalTarget, S3Target, load_fleet

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("age") is None, reason="age is not installed (scripts/bootstrap.sh)")


class LocalShell(Executor):
    def run(self, host: str, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = 3600) -> ExecResult:
        done = subprocess.run(list(argv), capture_output=True, text=True, env={**os.environ, **(env or {})},
                              timeout=timeout)
        return ExecResult(done.returncode, done.stdout, done.stderr)

    def fetch(self, host: str, remote: str, local: Path) -> None:
        shutil.copyfile(remote, local)


class LocalScratch:
    name = "local-scratch"
    address = "127.0.0.1"
    executor = LocalShell()

    def put_file(self, source: Path, dest: str, owner: str | None = None, mode: int = 0o600) -> None:
        shutil.copyfile(source, dest)
        os.chmod(dest, mode)

    def remove(self) -> None:
        pass


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(spool, "WORK_ROOT", str(tmp_path / "host" / "spool"))
    monkeypatch.setattr(spool, "SCRATCH_IDENTITIES", str(tmp_path / "scratch-identities"))
    (tmp_path / "host").mkdir()
    return tmp_path


def access_for(root: Path, s3: bool = False) -> BackupAccess:
    cluster = load_fleet(REPO / "fleet.example.yaml").cluster("cache")
    target = S3Target(kind="s3", bucket="backups", region="eu-west-1") if s3 else \
        LocalTarget(kind="local", path=str(root / "target"))
    cluster = cluster.model_copy(update={"backup": cluster.backup.model_copy(update={"target": target})})
    storage = LocalStorage(root / ("bucket" if s3 else "target"))
    return BackupAccess(cluster, LocalShell(), storage, FleetAccess({}, {BACKUP_AGE_IDENTITY: new_identity()}))


SECRET = f"canary-{uuid.uuid4().hex}"


@pytest.mark.parametrize("s3", [False, True], ids=["local target", "uploaded (S3)"])
def test_a_dump_reaches_the_target_only_encrypted_and_decrypts_in_scratch(root: Path, s3: bool) -> None:
    access = access_for(root, s3)
    with spool.encrypted_dump(access, "host", "full-1", "dump.rdb") as dump:
        workdir = Path(dump.workdir)
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
        assert stat.S_IMODE(Path(spool.WORK_ROOT).stat().st_mode) == 0o700
        Path(dump.plain_path).write_text(SECRET * 100)
    assert dump.key.endswith("/dump.rdb.age")
    assert not workdir.exists()  # plaintext and work dir gone
    stored = access.storage.get_bytes(dump.key)
    assert SECRET.encode() not in stored and stored.startswith(b"age-encryption.org/v1")
    if not s3:
        assert stat.S_IMODE((root / "target" / dump.key).stat().st_mode) == 0o600
    out = root / "restored.rdb"
    spool.decrypt_into_scratch(access, LocalScratch(), dump.key, str(out))  # type: ignore[arg-type]
    assert out.read_text() == SECRET * 100
    assert not Path(spool.SCRATCH_IDENTITIES).exists()  # the identity does not stay behind


def test_after_a_key_rotation_older_dumps_still_decrypt_with_the_old_identity(root: Path) -> None:
    """README "Rotating the backup keys": the current identity moves to backup_age_identity_old and a new one
    takes its place. A dump encrypted to the old recipient decrypts with both identities given; without the old
    one it does not, and a dump taken after the rotation is encrypted to the new recipient."""
    before = access_for(root)
    old = before.fleet.secrets[BACKUP_AGE_IDENTITY]
    with spool.encrypted_dump(before, "host", "full-1", "dump.rdb") as dump:
        Path(dump.plain_path).write_text(SECRET)
    new = new_identity()
    rotated = BackupAccess(before.cluster, before.executor, before.storage,
                           FleetAccess({}, {BACKUP_AGE_IDENTITY: new, BACKUP_AGE_IDENTITY_OLD: old}))
    out = root / "restored.rdb"
    spool.decrypt_into_scratch(rotated, LocalScratch(), dump.key, str(out))  # type: ignore[arg-type]
    assert out.read_text() == SECRET
    assert spool.recipient(rotated) == recipient_of(new) != recipient_of(old)
    with spool.encrypted_dump(rotated, "host", "full-2", "dump.rdb") as newer:
        Path(newer.plain_path).write_text(SECRET * 2)
    only_new = BackupAccess(before.cluster, before.executor, before.storage,
                            FleetAccess({}, {BACKUP_AGE_IDENTITY: new}))
    spool.decrypt_into_scratch(only_new, LocalScratch(), newer.key, str(out))  # type: ignore[arg-type]
    assert out.read_text() == SECRET * 2
    with pytest.raises(CommandFailed, match="age -d"):
        spool.decrypt_into_scratch(only_new, LocalScratch(), dump.key, str(root / "not.rdb"))  # type: ignore[arg-type]
    assert not Path(spool.SCRATCH_IDENTITIES).exists()


def test_a_failing_tool_leaves_nothing_behind(root: Path) -> None:
    access = access_for(root)
    with pytest.raises(RuntimeError), spool.encrypted_dump(access, "host", "full-1", "dump.rdb") as dump:
        Path(dump.plain_path).write_text(SECRET)
        raise RuntimeError("redis-cli --rdb failed")
    assert not Path(dump.workdir).exists()
    assert not (root / "target" / dump.key).exists()


@pytest.mark.parametrize("plant", ["symlink", "open directory"])
def test_a_work_root_someone_else_prepared_is_refused(root: Path, plant: str) -> None:
    work_root = Path(spool.WORK_ROOT)
    if plant == "symlink":
        (root / "elsewhere").mkdir(mode=0o700)
        work_root.symlink_to(root / "elsewhere")
    else:
        work_root.mkdir()
        work_root.chmod(0o777)
    with pytest.raises(CommandFailed, match="dbfleet-refused"), \
            spool.encrypted_dump(access_for(root), "host", "full-1", "dump.rdb"):
        pytest.fail("the dump must not start")


class MongodumpHosts(LocalShell):
    """This machine as every MongoDB host; `mongodump` writes a canary into its --archive and notes how its
    --config (the password file) was kept."""

    def __init__(self) -> None:
        self.configs: list[tuple[int, int, str]] = []

    def run(self, host: str, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = 3600) -> ExecResult:
        if argv[0] != "mongodump":
            return super().run(host, argv, user=user, env=env, timeout=timeout)
        options = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
        config = Path(options["config"])
        self.configs.append((stat.S_IMODE(config.stat().st_mode), stat.S_IMODE(config.parent.stat().st_mode),
                             config.read_text()))
        Path(options["archive"]).write_text(f"{SECRET} {host}\n" * 100)
        return ExecResult(0, "", "")


@pytest.mark.parametrize("s3", [False, True], ids=["local target", "uploaded (S3)"])
def test_a_mongodb_backup_stores_only_ciphertext_and_records_its_cipher(root: Path, s3: bool) -> None:
    """Issue 17 for MongoDB (no mongod here): MongoBackups.take with a stand-in mongodump on this machine. Each
    replica set's archive reaches the target age-encrypted, the manifest names the cipher and recipient, the
    password file sat 0600 in a 0700 work directory and is gone with it, and the scratch host decrypts."""
    from datetime import UTC, datetime

    from dbfleet.backups.mongo import MongoBackups

    class Mongos:  # the balancer stand-in, and no user collections to count
        class admin:
            @staticmethod
            def command(name: str, **kwargs: object) -> dict[str, object]:
                return {"mode": "off", "inBalancerRound": False, "ok": 1}

        list_database_names = staticmethod(lambda: [])

    cluster = load_fleet(REPO / "fleet.example.yaml").cluster("mongo-main")
    target = S3Target(kind="s3", bucket="backups", region="eu-west-1") if s3 else \
        LocalTarget(kind="local", path=str(root / "target"))
    cluster = cluster.model_copy(update={"backup": cluster.backup.model_copy(update={"target": target})})
    hosts, identity, password = MongodumpHosts(), new_identity(), f"pw-{uuid.uuid4().hex}"
    access = BackupAccess(cluster, hosts, LocalStorage(root / ("bucket" if s3 else "target")),
                          FleetAccess({}, {BACKUP_AGE_IDENTITY: identity, "mongo_admin_password": password}))
    adapter = MongoBackups()
    adapter.client_factory = lambda a: Mongos()  # type: ignore[method-assign,assignment,return-value]
    pending = adapter.new_manifest(access, "full", datetime(2026, 11, 25, tzinfo=UTC), "100.9")
    done = adapter.take(access, pending)

    assert (done.detail["cipher"], done.detail["recipient"]) == (spool.CIPHER, recipient_of(identity))
    assert len(done.files) == len(hosts.configs) == 1 + len(cluster.shards)
    assert all(c == (0o600, 0o700, f"password: {password}\n") for c in hosts.configs)
    assert list(Path(spool.WORK_ROOT).iterdir()) == []  # work dirs, plaintext and password files all gone
    for entry in done.files:
        stored = access.storage.get_bytes(entry.key)
        assert entry.key.endswith(".archive.gz.age") and stored.startswith(b"age-encryption.org/v1")
        assert SECRET.encode() not in stored and password.encode() not in stored
    out = root / "restored.archive"
    spool.decrypt_into_scratch(access, LocalScratch(), done.files[0].key, str(out))  # type: ignore[arg-type]
    assert out.read_text().startswith(SECRET)


def test_write_text_creates_a_new_file_only(tmp_path: Path) -> None:
    """The mongodump password file is written with an exclusive create: a file or a link already at its path (say,
    planted to catch the password elsewhere) fails the write, and nothing is written through it."""
    shell = LocalShell()
    fresh = tmp_path / "fresh.yaml"
    shell.write_text("h", str(fresh), "password: s3cret\n", exclusive=True)
    assert fresh.read_text() == "password: s3cret\n" and stat.S_IMODE(fresh.stat().st_mode) == 0o600
    with pytest.raises(CommandFailed):
        shell.write_text("h", str(fresh), "password: other\n", exclusive=True)
    assert fresh.read_text() == "password: s3cret\n"
    elsewhere = tmp_path / "elsewhere"
    planted = tmp_path / "planted.yaml"
    planted.symlink_to(elsewhere)
    with pytest.raises(CommandFailed):
        shell.write_text("h", str(planted), "password: s3cret\n", exclusive=True)
    assert not elsewhere.exists()
    # Without `exclusive` a config file is replaced (the restore rewrites the restored postgresql.conf).
    shell.write_text("h", str(fresh), "port = 5432\n")
    assert fresh.read_text() == "port = 5432\n"
