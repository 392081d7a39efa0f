"""Redis backups against the lab: an RDB from a replica round-trips through a scratch redis-server."""

from __future__ import annotations

import uuid

import pytest
from backup_support import converged_lab, fresh_access

from dbfleet.backups.drills import run_drill, scratch_for
from dbfleet.backups.engine import RestoreTarget
from dbfleet.backups.redis import RedisBackups, cli, current_primary
from dbfleet.backups.runner import take_backup
from dbfleet.backups.scratch import SCRATCH_HOST
from dbfleet.lab.scratch import leftover_scratch

pytestmark = pytest.mark.lab
CLUSTER = "cache"


@pytest.fixture(scope="module")
def redis_access(request: pytest.FixtureRequest):
    lab = converged_lab(request)
    if not lab.has("redis"):
        pytest.skip("redis not started in this lab (DBFLEET_TEST_ENGINES)")
    return lab, fresh_access(lab, CLUSTER)


def test_redis_round_trips(redis_access) -> None:
    lab, access = redis_access
    primary = current_primary(access)  # a Sentinel failover (tests/faults) may have moved it from the spec's
    assert primary, "no Redis data node answers as master"
    canary = access.cluster.backup.drill.canary
    marker = uuid.uuid4().hex
    values = {f"dbfleet:test:{marker}:{i}": f"value-{i}-{marker}" for i in range(50)}
    pairs = [item for kv in [*values.items(), (canary, marker)] for item in kv]
    assert cli(access, primary, "MSET", *pairs).out.strip() == "OK"
    # The backup reads a replica: wait until one has every write (bounded by WAIT's own timeout).
    assert int(cli(access, primary, "WAIT", "1", "5000").out.strip()) >= 1

    backup = take_backup(access, "snapshot")
    assert backup.kind == "snapshot" and backup.status == "complete"
    assert backup.detail["replica"] != primary, "the RDB comes from a replica"
    assert backup.detail["canary_value"] == marker and backup.files[0].key.endswith("/dump.rdb.age")
    # Encrypted on the replica's host before it left: the stored snapshot holds none of the values.
    assert backup.detail["cipher"] == "age-x25519"
    assert marker.encode() not in access.storage.get_bytes(backup.files[0].key)

    adapter = RedisBackups()
    with scratch_for(access, "test-redis") as scratch:
        adapter.restore(access, backup, scratch, RestoreTarget("latest"))
        got = scratch.executor.check(SCRATCH_HOST, ["redis-cli", "--raw", "MGET", *values]).out.splitlines()
        assert got == list(values.values())

    record = run_drill(access)
    assert record.ok, record.message
    assert {c.name for c in record.checks} >= {"checksums", "DBSIZE", f"canary {canary}"}
    assert record.rpo_seconds is not None and record.rto_seconds is not None
    assert [m.status for m in access.storage.manifests(CLUSTER)] == ["verified"]
    assert leftover_scratch(lab.name) == []
    cli(access, primary, "DEL", *values)


def test_a_missing_canary_key_is_set_before_the_snapshot_and_proven(redis_access) -> None:
    """SET NX on the primary, seen by the replica before its snapshot; the drill then finds it restored."""
    lab, access = redis_access
    canary = access.cluster.backup.drill.canary
    primary = current_primary(access)
    assert primary, "no Redis data node answers as master"
    cli(access, primary, "DEL", canary)
    assert int(cli(access, primary, "WAIT", "2", "5000").out.strip()) >= 1
    backup = take_backup(access, "snapshot")
    assert str(backup.detail["canary_value"]).startswith("dbfleet restore-drill canary")
    record = run_drill(access)
    assert record.ok, record.message
    check = next(c for c in record.checks if c.name == f"canary {canary}")
    assert check.ok and "dbfleet restore-drill canary" in check.detail
