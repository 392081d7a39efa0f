"""Pure parts of the engine adapters: Redis master agreement, MongoDB counter windows, inventory access."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from dbfleet.engines.access import FleetAccess
from dbfleet.engines.base import Member, Topology
from dbfleet.engines.redis import _agreed_primary
from dbfleet.errors import PermanentError
from dbfleet.reconcile.mongo_indexes import stats_window_days


def test_redis_primary_is_what_a_quorum_of_sentinels_names():
    assert _agreed_primary(Counter({"redis-2": 2, "redis-1": 1}), ["redis-2"], 2) == "redis-2"


def test_redis_without_quorum_falls_back_to_the_only_self_declared_master():
    assert _agreed_primary(Counter({"redis-2": 1}), ["redis-1"], 2) == "redis-1"
    assert _agreed_primary(Counter(), ["redis-1", "redis-2"], 2) is None


def test_redis_sentinels_naming_a_node_that_is_not_master_are_not_believed():
    assert _agreed_primary(Counter({"redis-1": 3}), ["redis-2"], 2) == "redis-2"


def test_mongo_counter_window_starts_at_the_newest_since():
    now = datetime(2026, 1, 10, tzinfo=UTC).timestamp()
    stats = [{"accesses": {"ops": 1, "since": datetime(2026, 1, 1, tzinfo=UTC)}},
             {"accesses": {"ops": 0, "since": datetime(2026, 1, 8, tzinfo=UTC)}}]
    assert stats_window_days(stats, now) == pytest.approx(2.0)
    assert stats_window_days([], now) is None


def test_fleet_access_reads_the_inventory_and_names_what_is_missing(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    pg-1: {dbfleet_address: 10.0.0.5, ansible_host: x}\n")
    secrets = tmp_path / "secrets.yml"
    secrets.write_text("dbfleet_secrets: {postgres_superuser_password: s3cret}\n")
    access = FleetAccess.load(inventory, secrets)
    assert access.address("pg-1") == "10.0.0.5"
    assert access.secret("postgres_superuser_password") == "s3cret"
    assert "s3cret" not in repr(access)
    with pytest.raises(PermanentError, match="host pg-9 is not in the inventory"):
        access.address("pg-9")
    with pytest.raises(PermanentError, match="no mongo_admin_password"):
        access.secret("mongo_admin_password")


def test_topology_summary():
    topo = Topology("pg-main", "postgres", "pg-2", (Member("pg-1", "unknown", False), Member("pg-2", "primary", True)))
    assert topo.summary() == "primary pg-2, 1/2 members up"
    assert topo.as_dict()["members_up"] == 1
