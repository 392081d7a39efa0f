"""PostgreSQL backups with pgBackRest against the lab: PITR into scratch, drills, retention, corruption.

Tests share one module's backups and run in file order (each builds on the last):
PITR from a full backup, a passing drill, retention through `pgbackrest expire`,
then a corrupted file that fails the drill.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest
from backup_support import converged_lab, fresh_access, require_pgbackrest

from dbfleet.backups.drills import run_drill, scratch_for
from dbfleet.backups.engine import RestoreTarget
from dbfleet.backups.plan import planned_backup_actions
from dbfleet.backups.postgres import SCRATCH_SOCKET, PostgresBackups, find_primary, psql, stanza_info
from dbfleet.backups.runner import observe, prune, take_backup
from dbfleet.backups.scratch import SCRATCH_HOST
from dbfleet.lab.scratch import leftover_scratch
from dbfleet.monitoring import metrics
from dbfleet.spec import Retention

pytestmark = pytest.mark.lab
CLUSTER = "pg-main"
CANARY = "public.canary"


@pytest.fixture(scope="module")
def pg(request: pytest.FixtureRequest) -> dict:
    lab = converged_lab(request)
    if not lab.has("postgres"):
        pytest.skip("postgres not started in this lab (DBFLEET_TEST_ENGINES)")
    access = fresh_access(lab, CLUSTER)
    primary = find_primary(access)
    require_pgbackrest(access, primary)
    # The canary may already exist (the spec names it); the test only needs a column to tell its rows apart.
    for statement in (f"create table if not exists {CANARY} (id bigserial primary key)",
                      f"alter table {CANARY} add column if not exists batch text"):
        result = psql(access, primary, statement, "app")
        assert result.ok, result.err
    return {"lab": lab, "access": access, "primary": primary}


def sql(pg: dict, text: str) -> str:
    result = psql(pg["access"], pg["primary"], text, "app")
    assert result.ok, result.err
    return result.out.strip()


def wait_archived(pg: dict) -> None:
    """Switch WAL and wait (bounded) until the segment holding the last commit is archived."""
    segment = sql(pg, "select pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sql(pg, "select coalesce(last_archived_wal, '') from pg_stat_archiver") >= segment:
            return
        time.sleep(0.5)
    raise AssertionError(f"WAL segment {segment} not archived within 60s")


def test_pitr_restores_exactly_the_rows_before_the_time(pg: dict) -> None:
    first, second = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    sql(pg, f"insert into {CANARY}(batch) select '{first}' from generate_series(1, 5)")
    backup = take_backup(pg["access"], "full")
    assert backup.status == "complete" and backup.files and backup.detail["label"].endswith("F")
    assert backup.tool_version.startswith("pgBackRest") and backup.finished_at and backup.size_bytes > 0
    # Encrypted at rest: no stored file of the set (bundles, manifests, the WAL it needs) holds the rows' text.
    assert backup.detail["cipher"] == "aes-256-cbc"
    leaked = [f.key for f in backup.files if first.encode() in pg["access"].storage.get_bytes(f.key)]
    assert not leaked, f"plaintext of the canary rows in {leaked}"
    time.sleep(1.1)
    between = sql(pg, "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    time.sleep(1.1)
    sql(pg, f"insert into {CANARY}(batch) select '{second}' from generate_series(1, 7)")
    wait_archived(pg)

    adapter = PostgresBackups()
    access = pg["access"]
    target = RestoreTarget("time", between)
    chosen = adapter.choose_backup(access.storage.manifests(CLUSTER), target)
    assert chosen.id == backup.id
    with scratch_for(access, "test-pitr") as scratch:
        restored = adapter.restore(access, chosen, scratch, target)
        counts = scratch.executor.check(SCRATCH_HOST, [
            "psql", "-XAtq", "-h", SCRATCH_SOCKET, "-d", "app", "-c",
            f"select count(*) filter (where batch = '{first}'), count(*) filter (where batch = '{second}') "
            f"from {CANARY}"], user="postgres").out.strip()
        assert restored.recovered_to is not None
    assert counts == "5|0", f"restored to {between}: expected exactly the 5 first rows, got {counts}"
    live = sql(pg, f"select count(*) from {CANARY} where batch in ('{first}', '{second}')")
    assert live == "12", "the live cluster is untouched"
    assert leftover_scratch(pg["lab"].name) == []


def test_drill_verifies_the_newest_backup_and_records_rto_rpo(pg: dict) -> None:
    record = run_drill(pg["access"])
    assert record.ok, record.message
    names = {c.name for c in record.checks}
    assert {"checksums", "restore", "pgbackrest verify", "pg_amcheck", "canary app.public.canary"} <= names
    assert record.rto_seconds is not None and record.rto_seconds > 0
    assert record.rpo_seconds is not None and record.rpo_seconds >= 0
    manifests = pg["access"].storage.manifests(CLUSTER)
    assert [m.status for m in manifests] == ["verified"]
    assert metrics.DRILL_OK.labels(CLUSTER)._value.get() == 1
    assert metrics.DRILL_RTO.labels(CLUSTER)._value.get() == record.rto_seconds
    assert leftover_scratch(pg["lab"].name) == [], "the scratch container is always removed"


def test_retention_expires_only_what_a_newer_verified_full_supersedes(pg: dict) -> None:
    access = pg["access"]
    one_full = access.cluster.backup.model_copy(update={"retention": Retention(full_count=1, diff_count=1)})
    access = replace(access, cluster=access.cluster.model_copy(update={"backup": one_full}))
    old = access.storage.manifests(CLUSTER)[0]
    newer = take_backup(access, "full")
    assert prune(access) == [], "the newer full is not verified yet, so nothing may go"
    assert run_drill(access).ok
    plan = planned_backup_actions(access_fleet(pg, access), {CLUSTER: observe(access)})
    assert [(a.kind, a.target) for a in plan if a.kind == "prune"] == [("prune", old.id)], "plan shows it first"
    deleted = prune(access)
    assert len(deleted) == 1 and old.id in deleted[0]
    labels = [b["label"] for b in stanza_info(access, pg["primary"])["backup"]]
    assert old.detail["label"] not in labels and newer.detail["label"] in labels
    assert [m.id for m in access.storage.manifests(CLUSTER)] == [newer.id]


def access_fleet(pg: dict, access):  # the spec with this test's retention
    fleet = pg["lab"].fleet
    clusters = [access.cluster if c.name == CLUSTER else c for c in fleet.clusters]
    return fleet.model_copy(update={"clusters": clusters})


def test_corrupted_backup_file_fails_the_drill_and_names_it(pg: dict) -> None:
    access = pg["access"]
    sql(pg, f"insert into {CANARY}(batch) values ('c')")
    backup = take_backup(access, "incr")
    assert backup.kind == "incr" and backup.parent is not None
    victim = next(f for f in backup.files if "/pg_data/" in f.key)
    path = access.storage.root / victim.key  # type: ignore[attr-defined]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    record = run_drill(access)
    assert not record.ok
    assert victim.key in record.message, record.message
    failed = next(m for m in access.storage.manifests(CLUSTER) if m.id == backup.id)
    assert failed.status == "failed"
    assert metrics.DRILL_OK.labels(CLUSTER)._value.get() == 0
    # Never retried into green: the next drill reports the failed backup again instead of restoring it.
    again = run_drill(access)
    assert not again.ok and again.backup_id == backup.id and "already failed" in again.message


def test_a_missing_canary_table_is_created_with_one_row_before_the_backup(pg: dict) -> None:
    """A fresh cluster whose application has not made the canary yet still gets a backup a drill can prove."""
    name = f"public.canary_{uuid.uuid4().hex[:8]}"
    drill = pg["access"].cluster.backup.drill.model_copy(update={"canary": name})
    policy = pg["access"].cluster.backup.model_copy(update={"drill": drill})
    access = replace(pg["access"], cluster=pg["access"].cluster.model_copy(update={"backup": policy}))
    try:
        backup = take_backup(access, "full")
        assert backup.detail["canary_rows_before"] == 1
        assert sql(pg, f"select note from {name}") == "dbfleet restore-drill canary"
    finally:
        sql(pg, f"drop table if exists {name}")
