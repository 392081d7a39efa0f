"""Manifests and drill records: round trip, state transitions, storage layout and file checks on a local target."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dbfleet.backups.manifest import (
    Check,
    DrillRecord,
    FileEntry,
    Manifest,
    ManifestError,
    iso,
    new_backup_id,
    newest_first,
)
from dbfleet.backups.storage import InvalidRecord, LocalStorage, storage_for
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


def test_an_unreadable_manifest_is_reported_with_its_key_and_left_out(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.put_bytes("dbfleet/cache/bad/manifest.json", b"{not json")
    assert store.manifests("cache") == []
    (invalid,) = store.invalid_records("cache")
    assert invalid.key == "dbfleet/cache/bad/manifest.json" and "not JSON" in invalid.reason
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


# --------------------------------------------------------------------------- what a target holds is data


def _raw(m: Manifest, **changes: Any) -> bytes:
    data = json.loads(m.to_json())
    data.update(changes)
    return json.dumps(data).encode()


def _complete(id_: str, *keys: str) -> Manifest:
    return pending(id_).completed(T0, [FileEntry(k, 1, "0" * 64) for k in keys or (f"dbfleet/cache/{id_}/dump.rdb",)])


def test_a_manifest_with_a_bad_date_is_reported_invalid_and_the_other_backups_are_listed(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    good = _complete("20261125T020000Z-snapshot")
    store.save_manifest(good)
    bad = _complete("20261125T030000Z-snapshot")
    store.put_bytes(bad.key, _raw(bad, started_at="last tuesday"))
    assert newest_first(store.manifests("cache")) == [good]
    assert store.invalid_records("cache") == [InvalidRecord(bad.key, "started_at: 'last tuesday' is not an ISO time")]


@pytest.mark.parametrize(("change", "words"), [
    ({"size_bytes": -1}, "size_bytes"), ({"size_bytes": True}, "size_bytes"), ({"status": "great"}, "status"),
    ({"finished_at": 7}, "finished_at"), ({"parent": "../x"}, "parent"), ({"detail": []}, "detail"),
    ({"detail": {"label": "--set=x"}}, "label"), ({"detail": {"recoverable_to": "soon"}}, "recoverable_to"),
    ({"verification": {"at": "x", "ok": "yes", "message": ""}}, "verification"), ({"colour": "blue"}, "colour"),
    ({"files": [{"key": "dbfleet/cache/i/f", "size": 1, "sha256": "nothex"}]}, "sha256"),
    ({"files": "dump.rdb"}, "files"),
])
def test_a_manifest_field_of_the_wrong_shape_makes_it_invalid(tmp_path: Path, change: dict[str, Any],
                                                                words: str) -> None:
    store = LocalStorage(tmp_path)
    bad = _complete("20261125T030000Z-snapshot")
    store.put_bytes(bad.key, _raw(bad, **change))
    assert store.manifests("cache") == []
    (invalid,) = store.invalid_records("cache")
    assert invalid.key == bad.key and words in invalid.reason, invalid.reason


@pytest.mark.parametrize("key", ["../../etc/passwd", "/etc/passwd", "dbfleet/other/x/dump.rdb",
                                 "dbfleet/cache/x/../../other/y", "dbfleet/cache/x//y", "dbfleet/cache/./x",
                                 "pgbackrest/other/backup/x", "dbfleet/cache", "dbfleet/cache/x\n"])
def test_manifest_file_keys_must_stay_inside_the_clusters_prefixes(tmp_path: Path, key: str) -> None:
    store = LocalStorage(tmp_path)
    bad = _complete("20261125T030000Z-snapshot", key)
    store.put_bytes(bad.key, bad.to_json().encode())
    assert store.manifests("cache") == []
    (invalid,) = store.invalid_records("cache")
    assert invalid.key == bad.key and "files" in invalid.reason, invalid.reason


def test_file_keys_under_the_clusters_pgbackrest_repository_are_valid(tmp_path: Path) -> None:
    from dbfleet.backups.manifest import cluster_roots
    from dbfleet.backups.postgres import repo_prefix

    assert cluster_roots("cache")[1] == repo_prefix("cache"), "one fact: where a cluster's repository sits"
    store = LocalStorage(tmp_path)
    good = _complete("20261125T030000Z-snapshot", "pgbackrest/cache/backup/cache/20261125-030000F/pg_data/x.gz")
    store.save_manifest(good)
    assert store.manifests("cache") == [good] and store.invalid_records("cache") == []


def test_a_manifest_that_names_another_cluster_or_backup_is_invalid(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    other = _complete("20261125T030000Z-snapshot")
    store.put_bytes("dbfleet/cache/20261125T040000Z-snapshot/manifest.json", other.to_json().encode())
    elsewhere = Manifest(**{**other.__dict__, "cluster": "pg-main", "files": ()})
    store.put_bytes(other.key, elsewhere.to_json().encode())
    assert store.manifests("cache") == []
    reasons = [r.reason for r in store.invalid_records("cache")]
    assert any("says cluster pg-main" in r for r in reasons)
    assert any("backup 20261125T030000Z-snapshot, but is stored as cluster cache's 20261125T040000Z-snapshot" in r
               for r in reasons)


def test_a_manifest_without_files_is_never_verified(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    empty = pending().completed(T0, [])
    assert store.verify_files(empty) == ["the manifest lists no files, so there is nothing to verify"]


def test_a_local_delete_never_follows_a_symbolic_link(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.put_bytes("dbfleet/keep/precious", b"keep me")
    (tmp_path / "dbfleet/cache/x").mkdir(parents=True)
    (tmp_path / "dbfleet/cache/x/dump.rdb").symlink_to(tmp_path / "dbfleet/keep/precious")
    store.delete("dbfleet/cache/x/dump.rdb")
    assert (tmp_path / "dbfleet/keep/precious").read_bytes() == b"keep me"
    assert not (tmp_path / "dbfleet/cache/x/dump.rdb").is_symlink(), "the link itself goes"
    (tmp_path / "dbfleet/cache").mkdir(parents=True, exist_ok=True)
    (tmp_path / "dbfleet/cache/y").symlink_to(tmp_path / "dbfleet/keep")
    with pytest.raises(PermanentError, match="symbolic link"):
        store.delete("dbfleet/cache/y/precious")
    assert store.delete_prefix("dbfleet/cache/y/") == 0
    assert (tmp_path / "dbfleet/keep/precious").read_bytes() == b"keep me"
    for key in ("../outside", "dbfleet/../../outside", "/etc/passwd"):
        with pytest.raises(PermanentError):
            store.delete(key)


def test_a_local_write_never_follows_a_link_planted_in_the_target(tmp_path: Path) -> None:
    """A target another party can write (a DR copy's place, say): a link waiting where the operator used to
    write its temporary file (`<key>.tmp`), or at the key itself, is never written through."""
    root, outside = tmp_path / "target", tmp_path / "outside"
    root.mkdir()
    outside.write_bytes(b"precious")
    store = LocalStorage(root)
    jobs = root / "dbfleet/cache/jobs"
    jobs.mkdir(parents=True)
    (jobs / "dr-drill.json.tmp").symlink_to(outside)
    store.put_bytes("dbfleet/cache/jobs/dr-drill.json", b"{}")
    (jobs / "backup.json").symlink_to(outside)
    with pytest.raises(PermanentError, match="leaves the backup root"):
        store.put_bytes("dbfleet/cache/jobs/backup.json", b"{}")
    source = tmp_path / "dump.rdb"
    source.write_bytes(b"dump")
    (jobs / "dump.rdb.tmp").symlink_to(outside)
    store.put_file("dbfleet/cache/jobs/dump.rdb", source)
    assert outside.read_bytes() == b"precious"
    assert store.get_bytes("dbfleet/cache/jobs/dr-drill.json") == b"{}"
    assert (jobs / "dump.rdb").read_bytes() == b"dump"
    assert not [p for p in jobs.iterdir() if p.name.startswith(".")], "no temporary file is left behind"


def test_a_drill_record_with_a_bad_time_is_reported_and_the_last_good_one_is_used(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    good = DrillRecord(id="d1", cluster="cache", backup_id="b", started_at=iso(T0) or "",
                       finished_at=iso(T0) or "", ok=True, message="m")
    store.save_drill(good)
    raw = json.loads(good.to_json())
    store.put_bytes("dbfleet/cache/drills/d2.json", json.dumps({**raw, "id": "d2", "finished_at": "~"}).encode())
    assert store.last_drill("cache") == good
    (invalid,) = store.invalid_records("cache")
    assert invalid.key == "dbfleet/cache/drills/d2.json" and "finished_at" in invalid.reason
