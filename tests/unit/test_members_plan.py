"""The members reconciler's pure diff: which stopped servers it would start, and which it must leave alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbfleet.engines.base import Member, Topology
from dbfleet.engines.postgres import pg_paths
from dbfleet.reconcile.members import MemberReconciler, mark_done_command, planned_starts, postgres_start_command
from dbfleet.spec import PostgresCluster, load_fleet

FLEET = load_fleet(Path(__file__).resolve().parents[2] / "fleet.example.yaml")
PATRONI = FLEET.cluster("pg-main")
PG = PATRONI.model_copy(update={"ha": "manual"})
CACHE = FLEET.of_engine("redis")[0]


def pg(primary: str | None, *down: str) -> Topology:
    return Topology("pg-main", "postgres", primary,
                    tuple(Member(h, "unknown" if h in down else ("primary" if h == primary else "replica"),
                                 h not in down, "connection refused" if h in down else "")
                          for h in PG.host_names()))


def test_a_stopped_replica_is_started_with_the_standby_guard() -> None:
    [start] = planned_starts(PG, pg("pg-1", "pg-3"))
    assert (start.kind, start.target, start.destructive, start.changes) == ("start", "pg-3", False, True)
    assert "pg-3 does not answer (connection refused) while primary pg-1 does" in start.reason
    assert start.detail["command"] == postgres_start_command(pg_paths(PG))
    assert "test -f /var/lib/postgresql/15/main/standby.signal ||" in start.detail["command"]
    assert start.detail["command"].endswith("systemctl start postgresql@15-main")


def test_nothing_is_started_without_a_primary_or_when_all_answer() -> None:
    assert planned_starts(PG, pg(None, "pg-1")) == []
    assert planned_starts(PG, pg("pg-1")) == []


def test_redis_nodes_and_sentinels_get_their_own_units() -> None:
    members = [Member(h.name, "primary" if h.name == "redis-1" else "replica", h.name != "redis-2")
               for h in CACHE.data_hosts()]
    members += [Member(h.name, "sentinel", h.name != "sentinel-3") for h in CACHE.sentinel_hosts()]
    starts = planned_starts(CACHE, Topology(CACHE.name, "redis", "redis-1", tuple(members)))
    assert [(a.target, a.detail["unit"]) for a in starts] == [("redis-2", "redis-server"),
                                                             ("sentinel-3", "redis-sentinel")]


def test_with_patroni_a_stopped_member_is_reported_and_nothing_is_started() -> None:
    actions = planned_starts(PATRONI, pg("pg-1", "pg-3"))
    assert [(a.kind, a.target, a.changes) for a in actions] == [("report-member-down", "pg-3", False)]
    assert "Patroni owns it" in actions[0].reason


def test_with_patroni_a_cluster_without_a_leader_is_reported() -> None:
    actions = planned_starts(PATRONI, pg(None, "pg-1"))
    assert [(a.kind, a.target) for a in actions] == [("report-no-leader", "pg-main"), ("report-member-down", "pg-1")]
    assert not any(a.changes for a in actions)
    assert planned_starts(PATRONI, pg("pg-2")) == []


def patroni_facts(**members: dict[str, object]) -> dict[str, object]:
    return {"patroni": {"leader": "pg-2", "timeline": 2, "members": members}}


def test_with_patroni_a_replica_past_the_fork_is_rewound_only_under_the_policy() -> None:
    facts = patroni_facts(**{"pg-2": {"role": "leader", "timeline": 2},
                             "pg-3": {"role": "replica", "timeline": 1, "replayed": "0/29000000",
                                      "diverged_at": "0/28021EA0"}})
    topology = Topology("pg-main", "postgres", "pg-2", pg("pg-2").members, facts)
    rewind_policy = PATRONI.model_copy(update={"patroni": PATRONI.patroni.model_copy(update={"on_diverged": "rewind"})})
    [rewind] = planned_starts(rewind_policy, topology)
    assert (rewind.kind, rewind.target, rewind.destructive, rewind.changes) == ("rewind", "pg-3", True, True)
    assert "past the fork at 0/28021EA0" in rewind.reason and rewind.detail["command"] == "systemctl restart patroni"
    report_policy = PATRONI.model_copy(update={"patroni": PATRONI.patroni.model_copy(update={"on_diverged": "report"})})
    [report] = planned_starts(report_policy, topology)
    assert (report.kind, report.changes) == ("report-diverged", False) and "patronictl reinit" in report.reason


def test_a_replica_behind_the_fork_is_left_to_follow() -> None:
    facts = patroni_facts(**{"pg-3": {"role": "replica", "timeline": 1, "replayed": "0/28000000"}})
    assert planned_starts(PATRONI, Topology("pg-main", "postgres", "pg-2", pg("pg-2").members, facts)) == []


def test_the_spec_default_only_reports_a_diverged_replica() -> None:
    from dbfleet.spec import Patroni

    assert Patroni().on_diverged == "report"


def stuck(failing: str, off_history: list[str]) -> Topology:
    facts = {"patroni": {"leader": "pg-2", "timeline": 5, "members": {},
                         "archiver": {"failing_wal": failing, "queued": 4, "off_history": off_history}}}
    return Topology("pg-main", "postgres", "pg-2", pg("pg-2").members, facts)


def with_policy(on_diverged: str) -> PostgresCluster:
    return PATRONI.model_copy(update={"patroni": PATRONI.patroni.model_copy(update={"on_diverged": on_diverged})})


def test_archiving_stuck_on_an_off_history_segment_is_marked_done_only_under_the_policy() -> None:
    stale = ["000000040000000000000024", "000000050000000000000025"]
    [skip] = planned_starts(with_policy("rewind"), stuck(stale[0], stale))
    assert (skip.kind, skip.target, skip.destructive, skip.changes) == ("skip-stale-wal", "pg-2", True, True)
    assert "WAL archiving on pg-2 fails at 000000040000000000000024 (4 segments queued)" in skip.reason
    assert skip.detail["command"] == (
        "cd /var/lib/postgresql/15/main/pg_wal/archive_status && for wal in 000000040000000000000024 "
        '000000050000000000000025; do if [ -e "$wal.ready" ]; then mv "$wal.ready" "$wal.done" && echo "$wal"; '
        "fi; done")
    assert MemberReconciler().status(PATRONI, stuck(stale[0], stale), [skip])["archiving_stuck_at"] == stale[0]
    [report] = planned_starts(with_policy("report"), stuck(stale[0], stale))
    assert (report.kind, report.changes) == ("report-stale-wal", False)
    assert "`patroni.on_diverged: rewind` lets dbfleet mark them archived" in report.reason


def test_any_other_archiving_failure_is_only_reported() -> None:
    # The failing segment is on the leader's history: marking anything done would lose WAL a restore needs.
    [report] = planned_starts(with_policy("rewind"), stuck("000000050000000000000031", ["000000040000000000000024"]))
    assert (report.kind, report.target, report.changes) == ("report-archive-failing", "pg-2", False)
    assert "pgbackrest check" in report.reason
    assert MemberReconciler().status(PATRONI, stuck("x", []), [report])["archiving_stuck_at"] == \
        "000000050000000000000031"


def test_the_mark_done_command_takes_only_segment_names() -> None:
    for bad in (["000000040000000000000024; rm -rf /"], ["00000004.history"], ["../../x"], [],
                ["000000040000000000000024.partial"], ["00000004000000000000002a"]):
        with pytest.raises(ValueError):
            mark_done_command("/var/lib/postgresql/15/main", bad)


def etcd_on(leader: str, primary: str = "pg-1", *down: str) -> Topology:
    ids = {"pg-1": "101", "pg-2": "102", "pg-3": "103"}
    facts = {"patroni": {"leader": primary, "timeline": 3, "members": {},
                         "etcd": {"leader": leader, "ids": ids, "urls": [f"https://{leader}:2379"]}}}
    return Topology("pg-main", "postgres", primary, pg(primary, *down).members, facts)


def test_etcd_s_leader_is_moved_off_the_postgresql_leader_s_host() -> None:
    [move] = planned_starts(PATRONI, etcd_on("pg-1"))
    assert (move.kind, move.target, move.destructive, move.changes) == ("move-etcd-leader", "pg-2", False, True)
    assert move.detail["target_id"] == "102" and move.detail["leader_urls"] == ["https://pg-1:2379"]
    assert "another ttl (6s)" in move.reason
    # Not to a member whose PostgreSQL is down (its host may be the one in trouble).
    assert [(a.kind, a.target) for a in planned_starts(PATRONI, etcd_on("pg-1", "pg-1", "pg-2"))] == [
        ("report-member-down", "pg-2"), ("move-etcd-leader", "pg-3")]


def test_etcd_s_leader_elsewhere_or_unknown_is_left_alone() -> None:
    assert planned_starts(PATRONI, etcd_on("pg-3")) == []
    assert planned_starts(PATRONI, etcd_on("")) == []  # etcd did not answer this cycle
    no_primary = etcd_on("pg-1", "pg-1")
    no_primary = Topology("pg-main", "postgres", None, no_primary.members, no_primary.facts)
    assert "move-etcd-leader" not in [a.kind for a in planned_starts(PATRONI, no_primary)]


def test_a_member_patroni_could_not_start_is_rebuilt_only_under_the_policy() -> None:
    """After a region loss and the fence, the old site's former leader could not start on the promoted site's
    timeline ('start failed'); Patroni does not rewind it and waits. Under on_diverged: rewind it is rebuilt from
    the site's running (standby) leader; otherwise reported, never as a plain member down."""
    facts = patroni_facts(**{"pg-1": {"role": "standby_leader", "state": "running", "timeline": 8},
                             "pg-2": {"role": "replica", "state": "start failed", "timeline": 7},
                             "pg-3": {"role": "replica", "state": "streaming", "timeline": 8}})
    topology = Topology("pg-main", "postgres", None, pg(None, "pg-2").members, facts)
    actions = planned_starts(with_policy("rewind"), topology)
    [reinit] = [a for a in actions if a.target == "pg-2"]
    assert (reinit.kind, reinit.destructive, reinit.changes) == ("reinit", True, True)
    assert "while pg-1 leads" in reinit.reason and reinit.detail["leader"] == "pg-1"
    [report] = [a for a in planned_starts(with_policy("report"), topology) if a.target == "pg-2"]
    assert (report.kind, report.changes) == ("report-start-failed", False)
    assert "patronictl reinit pg-main pg-2" in report.reason


def test_nothing_is_rebuilt_without_a_running_leader_to_clone_from() -> None:
    facts = patroni_facts(**{"pg-1": {"role": "replica", "state": "stopped", "timeline": 8},
                             "pg-2": {"role": "replica", "state": "start failed", "timeline": 7}})
    topology = Topology("pg-main", "postgres", None, pg(None, "pg-1", "pg-2").members, facts)
    assert "reinit" not in [a.kind for a in planned_starts(with_policy("rewind"), topology)]
