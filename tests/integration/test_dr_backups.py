"""Disaster recovery against the lab: every backup lands in both targets, `plan` reports a copy the second target
lacks, the DR drill restores from the second target and passes, and a corrupted file there fails it by name.

The lab's second target is a second Docker volume (dbfleet-<lab>-dr-backups) mounted on every host at the spec's
dr.target path; the operator reads it at the volume's mountpoint, and a DR drill's scratch container mounts it,
read-only, instead of the first. Tests in each module section run in file order and build on each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from backup_support import REPO, converged_lab, fresh_access, require_pgbackrest

from dbfleet.backups.access import BackupAccess
from dbfleet.backups.drills import run_drill
from dbfleet.backups.manifest import ROOT, Manifest, backup_prefix
from dbfleet.backups.plan import planned_backup_actions
from dbfleet.backups.postgres import find_primary, pgbackrest, psql, stanza_info
from dbfleet.backups.redis import cli, current_primary
from dbfleet.backups.runner import observe, take_backup
from dbfleet.lab.scratch import leftover_scratch
from dbfleet.lab.topology import dr_volume_name
from dbfleet.monitoring import metrics

pytestmark = pytest.mark.lab


def both_targets(lab: Any, cluster: str) -> BackupAccess:
    """The cluster's backup access with its dbfleet records cleared in both targets."""
    access = fresh_access(lab, cluster)
    assert access.dr is not None, f"the example spec gives {cluster} a dr section"
    access.dr.storage.delete_prefix(f"{ROOT}/{cluster}/")
    return access


def findings(lab: Any, access: BackupAccess, kind: str) -> list[Any]:
    plan = planned_backup_actions(lab.fleet, {access.name: observe(access)})
    return [a for a in plan if a.kind == kind]


def copy_of(access: BackupAccess, backup: Manifest) -> Manifest:
    assert access.dr is not None
    held = {m.id: m for m in access.dr.storage.manifests(access.name)}
    assert backup.id in held, f"no manifest of {backup.id} in the second target"
    return held[backup.id]


def backup_list(lab: Any, cluster: str) -> list[dict[str, Any]]:
    """`dbfleet backup list --json` as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    done = subprocess.run([sys.executable, "-m", "dbfleet", "backup", "list", "--lab", lab.name, "--spec",
                           str(REPO / "fleet.example.yaml"), "--cluster", cluster, "--json"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def flip_a_byte(access: BackupAccess, key: str) -> None:
    path = Path(access.storage.root) / key  # type: ignore[attr-defined]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pg(request: pytest.FixtureRequest) -> Any:
    lab = converged_lab(request)
    if not lab.has("postgres"):
        pytest.skip("postgres not started in this lab (DBFLEET_TEST_ENGINES)")
    access = both_targets(lab, "pg-main")
    primary = find_primary(access)
    require_pgbackrest(access, primary)
    damaged: list[str] = []
    yield {"lab": lab, "access": access, "primary": primary, "damaged": damaged}
    # Sets this module damaged in repo2 go, so a later `pgbackrest verify` of the repository (every drill runs
    # one) is not failed by them.
    for label in damaged:
        pgbackrest(access, find_primary(access, fresh=True), "--repo=2", f"--set={label}",
                   "--repo2-retention-full=9999999", "expire")


def test_a_postgres_backup_lands_in_both_repositories(pg: Any) -> None:
    access, lab = pg["access"], pg["lab"]
    marker = uuid.uuid4().hex
    for statement in ("create table if not exists public.canary (id bigserial primary key)",
                      "alter table public.canary add column if not exists note text",
                      f"insert into public.canary(note) values ('{marker}')"):
        assert psql(access, pg["primary"], statement, "app").ok
    backup = take_backup(access, "full")
    assert backup.status == "complete" and backup.detail["repo"] == 1
    copy = copy_of(access, backup)
    assert copy.status == "complete" and copy.detail["repo"] == 2 and copy.kind == "full"
    assert copy.detail["label"] != backup.detail["label"], "repo2 holds a backup of its own"
    assert all(f.key.startswith("pgbackrest/pg-main/") for f in copy.files) and copy.files
    assert access.dr is not None and [f.size for f in access.dr.storage.measure_many([copy.files[0].key])] == \
        [copy.files[0].size]
    info = stanza_info(access, pg["primary"])
    in_repos = {(b["database"]["repo-key"], b["label"]) for b in info["backup"]}
    assert {(1, backup.detail["label"]), (2, copy.detail["label"])} <= in_repos
    rows = {r["id"]: r for r in backup_list(lab, "pg-main")}
    assert rows[backup.id]["held_by"] == {"primary": "complete", "dr": "complete"}
    assert rows[backup.id]["targets"] == "primary+dr"
    assert findings(lab, access, "report-dr-copy-missing") == []
    # WAL reaches both repositories: the segment after this commit is archived to repo1 and repo2.
    segment = psql(access, pg["primary"], "select pg_walfile_name(pg_switch_wal())").out.strip()
    pgbackrest(access, pg["primary"], "--archive-timeout=60", "check")
    for root in (access.storage, access.dr.storage):
        assert any(o.key.rsplit("/", 1)[-1].startswith(segment) for o in root.list("pgbackrest/pg-main/archive/")), \
            f"{segment} not in {root.description}"


def test_the_dr_drill_restores_postgres_from_the_second_target(pg: Any) -> None:
    access = pg["access"]
    assert access.dr is not None
    copy = access.dr.storage.manifests("pg-main")[0]
    record = run_drill(access.dr)
    assert record.ok, record.message
    names = {c.name for c in record.checks}
    assert {"checksums", "restore", "pgbackrest verify", "pg_amcheck", "canary app.public.canary"} <= names
    restore = next(c for c in record.checks if c.name == "restore")
    assert copy.detail["label"] in restore.detail, "the set restored is repo2's"
    assert record.rto_seconds is not None and record.rpo_seconds is not None
    print(f"\nDR drill pg-main: RTO {record.rto_seconds:.1f}s, RPO {record.rpo_seconds:.1f}s "
          f"(dr.rpo_seconds {access.cluster.dr.rpo_seconds if access.cluster.dr else '-'})")
    assert [r.id for r in access.dr.storage.drills("pg-main")] == [record.id], "recorded in the second target"
    assert access.storage.drills("pg-main") == [], "not in the first"
    assert [m.status for m in access.dr.storage.manifests("pg-main")] == ["verified"]
    assert metrics.DR_OK.labels("pg-main")._value.get() == 1
    assert metrics.DR_RPO.labels("pg-main")._value.get() == record.rpo_seconds
    assert leftover_scratch(pg["lab"].name) == []


def test_a_corrupted_file_in_the_second_target_fails_the_dr_drill_and_is_named(pg: Any) -> None:
    access = pg["access"]
    assert access.dr is not None
    backup = take_backup(access, "full")
    copy = copy_of(access, backup)
    pg["damaged"].append(copy.detail["label"])
    victim = next(f for f in copy.files if "/pg_data/" in f.key)
    flip_a_byte(access.dr, victim.key)
    record = run_drill(access.dr)
    assert not record.ok and record.backup_id == backup.id
    assert victim.key in record.message, record.message
    assert metrics.DR_OK.labels("pg-main")._value.get() == 0
    failed = findings(pg["lab"], access, "report-dr-drill-failed")
    assert failed and victim.key in failed[0].reason
    # The first target's copy is untouched.
    assert access.storage.verify_files(backup) == []


def test_a_copy_deleted_from_the_second_target_is_a_plan_finding(pg: Any) -> None:
    access = pg["access"]
    assert access.dr is not None
    backup = take_backup(access, "full")
    copy = copy_of(access, backup)
    pg["damaged"].append(copy.detail["label"])
    def missing() -> list[Any]:
        return [a for a in findings(pg["lab"], access, "report-dr-copy-missing") if a.target == backup.id]

    assert missing() == [], "both copies are there"
    gone = copy.files[0].key
    access.dr.storage.delete(gone)
    found = missing()
    assert len(found) == 1 and gone in found[0].reason, found
    # Its manifest gone too: still reported, and `backup list` shows the second target lacks it.
    access.dr.storage.delete_prefix(backup_prefix("pg-main", backup.id))
    assert len(missing()) == 1 and "holds no manifest" in missing()[0].reason
    rows = {r["id"]: r for r in backup_list(pg["lab"], "pg-main")}
    assert rows[backup.id]["held_by"]["dr"] is None and rows[backup.id]["targets"] == "primary (dr: missing)"


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def cache(request: pytest.FixtureRequest) -> Any:
    lab = converged_lab(request)
    if not lab.has("redis"):
        pytest.skip("redis not started in this lab (DBFLEET_TEST_ENGINES)")
    return {"lab": lab, "access": both_targets(lab, "cache")}


def test_a_redis_snapshot_lands_in_both_targets_encrypted_with_a_manifest_in_each(cache: Any) -> None:
    access, lab = cache["access"], cache["lab"]
    assert access.dr is not None
    primary = current_primary(access)
    assert primary
    marker = uuid.uuid4().hex
    canary = access.cluster.backup.drill.canary
    assert canary
    assert cli(access, primary, "MSET", f"dbfleet:dr:{marker}", marker, canary, marker).out.strip() == "OK"
    assert int(cli(access, primary, "WAIT", "1", "5000").out.strip()) >= 1
    backup = take_backup(access, "snapshot")
    copy = copy_of(access, backup)
    assert copy.status == "complete"
    assert [(f.key, f.size, f.sha256) for f in copy.files] == [(f.key, f.size, f.sha256) for f in backup.files]
    assert marker.encode() not in access.dr.storage.get_bytes(copy.files[0].key), "only encrypted bytes travel"
    assert Path(access.dr.storage.description).name == "_data" and dr_volume_name(lab.name) in \
        access.dr.storage.description, "the second target is the lab's second volume"
    rows = {r["id"]: r for r in backup_list(lab, "cache")}
    assert rows[backup.id]["held_by"] == {"primary": "complete", "dr": "complete"}
    assert findings(lab, access, "report-dr-copy-missing") == []
    cli(access, primary, "DEL", f"dbfleet:dr:{marker}")


def test_the_dr_drill_restores_redis_from_the_second_target(cache: Any) -> None:
    access = cache["access"]
    assert access.dr is not None
    record = run_drill(access.dr)
    assert record.ok, record.message
    canary = access.cluster.backup.drill.canary
    assert {"checksums", "restore", "DBSIZE", f"canary {canary}"} <= {c.name for c in record.checks}
    assert record.rpo_seconds is not None and record.rto_seconds is not None
    assert [r.id for r in access.dr.storage.drills("cache")] == [record.id]
    assert metrics.DR_OK.labels("cache")._value.get() == 1
    # The first target's manifest is not judged by a drill of the second.
    assert [m.status for m in access.storage.manifests("cache")] == ["complete"]


def test_a_corrupted_redis_copy_fails_the_dr_drill_and_a_deleted_one_is_a_plan_finding(cache: Any) -> None:
    access = cache["access"]
    assert access.dr is not None
    backup = take_backup(access, "snapshot")
    key = copy_of(access, backup).files[0].key
    flip_a_byte(access.dr, key)
    record = run_drill(access.dr)
    assert not record.ok and key in record.message, record.message
    assert metrics.DR_OK.labels("cache")._value.get() == 0
    access.dr.storage.delete(key)
    missing = findings(cache["lab"], access, "report-dr-copy-missing")
    assert backup.id in [a.target for a in missing]
    # The drill made the copy failed, so the reason names its verdict; the file itself is gone too.
    assert any(backup.id == a.target and key in a.reason for a in missing), missing
