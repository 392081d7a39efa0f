"""Manifests and drill records: round trip, state transitions, storage layout and file checks on a local target."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from dbfleet.backups.manifest import (
    Check,
    DrillRecord,
    FileEntry,
    Manifest,
    ManifestError,
    iso,
    new_backup_id,
)
from dbfleet.backups.storage import LocalStorage, storage_for
from dbfleet.errors import PermanentError
from dbfleet.spec import LocalTarget

T0 = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)


def pending(id_: str = "20261125T020000Z-snapshot") -> Manifest:
    return Manifest(cluster="cache", engine="redis", id=id_, kind="snapshot", status="pending", tool="redis-cli",
                    tool_version="7.0.15", started_at=iso(T0) or "", host="redis-2")


def test_round_trip_and_transitions(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    m = pending()
    store.save_manifest(m)
    assert store.manifests("cache") == [m] and not m.good
    store.put_bytes("dbfleet/cache/" + m.id + "/dump.rdb", b"REDIS0011 data")
    files = store.measure_prefix("dbfleet/cache/" + m.id + "/", exclude=("manifest.json",))
    done = m.completed(T0, files, replica="redis-2")
    assert done.status == "complete" and done.good and done.size_bytes == 14 and done.detail["replica"] == "redis-2"
    store.save_manifest(done)
    again = store.manifests("cache")[0]
    assert again == done
    verified = again.judged(True, "DBSIZE 3", T0)
    assert verified.verified
    failed = again.judged(False, "dump.rdb: sha256 differs", T0)
    assert failed.status == "failed"
    assert failed.judged(True, "later", T0).status == "failed", "a failed backup is never turned green"


def test_verify_files_names_the_changed_file(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    key = "dbfleet/cache/x/dump.rdb"
    store.put_bytes(key, b"original")
    entry = store.measure(key)
    m = pending("x").completed(T0, [entry, FileEntry("dbfleet/cache/x/gone", 1, "0" * 64)])
    assert store.verify_files(m) == ["dbfleet/cache/x/gone: missing"]
    store.put_bytes(key, b"origina!")
    problems = store.verify_files(m)
    assert problems[0].startswith(key + ": sha256") and len(problems) == 2


def test_unreadable_manifest_is_a_located_error(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.put_bytes("dbfleet/cache/bad/manifest.json", b"{not json")
    with pytest.raises(PermanentError, match="dbfleet/cache/bad/manifest.json"):
        store.manifests("cache")
    with pytest.raises(ManifestError, match="format"):
        Manifest.from_json('{"format": 99}')


def test_keys_cannot_leave_the_root(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "root")
    for key in ("../escape", "a/../../escape", "a/../.."):
        with pytest.raises(PermanentError):
            store.put_bytes(key, b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (tmp_path / "root" / "dir").mkdir(parents=True)
    (tmp_path / "root" / "dir" / "file-link").symlink_to(outside / "secret")
    (tmp_path / "root" / "dir-link").symlink_to(outside)
    for key in ("dir/file-link", "dir-link/secret"):  # a link, as the file or as a directory on the way
        with pytest.raises(PermanentError, match="leaves the backup root"):
            store.measure(key)
    store.put_bytes("dir/inside", b"ok")
    assert store.measure("dir/inside").size == 2
    with pytest.raises(PermanentError, match="leaves the backup root"):  # directories resolved once per batch
        store.measure_many(["dir/inside", "dir/file-link", "dir-link/secret"])
    assert [e.size for e in store.measure_many(["dir/inside", "dir/inside"])] == [2, 2]


def test_delete_prefix_removes_empty_dirs(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.put_bytes("dbfleet/cache/a/one", b"1")
    store.put_bytes("dbfleet/cache/a/sub/two", b"2")
    store.put_bytes("dbfleet/cache/ab/three", b"3")
    assert [o.key for o in store.list("dbfleet/cache/a/")] == ["dbfleet/cache/a/one", "dbfleet/cache/a/sub/two"]
    assert store.delete_prefix("dbfleet/cache/a/") == 2
    assert not (tmp_path / "dbfleet/cache/a").exists() and store.exists("dbfleet/cache/ab/three")


def test_drill_records_are_listed_oldest_first(tmp_path: Path) -> None:
    store = storage_for(LocalTarget(kind="local", path="/nowhere"), local_root=tmp_path)
    for i, ok in enumerate([True, False]):
        store.save_drill(DrillRecord(id=f"d{i}", cluster="cache", backup_id="b", started_at=iso(T0) or "",
                                     finished_at=f"2026-11-25T02:0{i}:00Z", ok=ok, message="m",
                                     checks=(Check("DBSIZE", ok, "3 keys"),)))
    last = store.last_drill("cache")
    assert last is not None and last.id == "d1" and not last.ok and last.checks[0].name == "DBSIZE"
    assert store.manifests("cache") == []


def test_backup_ids_sort_by_time() -> None:
    assert new_backup_id("full", T0) < new_backup_id("full", T0.replace(minute=1))
