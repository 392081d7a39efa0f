"""A spec that shrinks a cluster below what its data needs is refused before anything acts."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbfleet.engines.base import Member, Topology
from dbfleet.reconcile.capacity import shrink_problems, size_bytes, unreachable
from dbfleet.spec import load_fleet, parse_fleet

REPO = Path(__file__).resolve().parents[2]


def spec_with(old: str, new: str):
    text = (REPO / "fleet.example.yaml").read_text()
    assert old in text
    return parse_fleet(text.replace(old, new, 1), "fleet.yaml")


def test_sizes_use_redis_binary_units() -> None:
    assert [size_bytes(s) for s in ("0b", "512b", "1kb", "128mb", "2gb")] == [0, 512, 1024, 128 << 20, 2 << 30]


def test_dropping_a_streaming_replica_is_refused() -> None:
    cluster = spec_with("    replicas: 2\n", "    replicas: 1\n").cluster("pg-main")
    topology = Topology("pg-main", "postgres", "pg-1", (), {"standbys": ["pg_2", "pg_3"]})
    [problem] = shrink_problems(cluster, topology)
    assert "replicas: 1 keeps pg-1, pg-2, but pg_3 still stream(s) from pg-1" in problem


def test_the_same_replicas_or_more_are_fine() -> None:
    cluster = load_fleet(REPO / "fleet.example.yaml").cluster("pg-main")
    assert shrink_problems(cluster, Topology("pg-main", "postgres", "pg-1", (), {"standbys": ["pg_2", "pg_3"]})) == []
    assert shrink_problems(cluster, Topology("pg-main", "postgres", "pg-1", (), {"standbys": ["pg_2"]})) == []


@pytest.mark.parametrize(("maxmemory", "refused"), [("1mb", True), ("128mb", False), ("0b", False)])
def test_maxmemory_below_the_data_is_refused(maxmemory: str, refused: bool) -> None:
    cluster = spec_with("maxmemory: 128mb", f"maxmemory: {maxmemory}").cluster("cache")
    problems = shrink_problems(cluster, Topology("cache", "redis", "redis-1", (), {"used_memory": 3 * 1024**2}))
    assert bool(problems) == refused
    if refused:
        assert "maxmemory: 1mb is below the 3.0 MiB the data already uses on redis-1" in problems[0]


def test_a_cluster_with_no_member_answering_is_unreachable() -> None:
    down = Topology("cache", "redis", None, (Member("redis-1", "unknown", False, "INFO: Timeout reading"),
                                             Member("sentinel-1", "sentinel", False, "SENTINEL: Timeout")))
    assert unreachable(down) == "no member answers: redis-1: INFO: Timeout reading; sentinel-1: SENTINEL: Timeout"
    one_up = Topology("cache", "redis", None, (down.members[0], Member("sentinel-1", "sentinel", True)))
    assert unreachable(one_up) is None
