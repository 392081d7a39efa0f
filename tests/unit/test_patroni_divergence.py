"""Patroni's diverged-replica rule (engines.patroni.fork_point) and the REST answers it is read from."""

from __future__ import annotations

from typing import Any

import pytest

from dbfleet.engines.patroni import (
    PatroniApi,
    PatroniMember,
    PatroniState,
    fork_point,
    format_lsn,
    parse_history,
    parse_lsn,
)

FORK = parse_lsn("0/28021EA0")
HISTORY = ((1, FORK),)


def test_lsn_text_round_trips() -> None:
    assert parse_lsn("0/28021EA0") == 0x28021EA0 and parse_lsn("1/0") == 1 << 32
    assert format_lsn(parse_lsn("A/28021EA0")) == "A/28021EA0"


@pytest.mark.parametrize(("timeline", "replayed", "expected"), [
    (1, parse_lsn("0/29000000"), FORK),   # replayed the old timeline's archived segment past the fork
    (1, FORK, None),                      # exactly at the fork: it can switch to timeline 2
    (1, parse_lsn("0/28000000"), None),   # behind the fork: it follows
    (2, parse_lsn("0/30000000"), None),   # already on the leader's timeline
    (1, None, None),                      # the member did not say where it replayed to
])
def test_fork_point_follows_patronis_rule_for_a_replica(timeline: int, replayed: int | None,
                                                        expected: int | None) -> None:
    assert fork_point(timeline, replayed, HISTORY) == expected


def test_a_member_on_a_timeline_the_leader_never_passed_through_is_diverged() -> None:
    # The leader went 1 -> 3 (timeline 2 was a promoted replica that lost); a member still on 2 must be rewound.
    history = ((1, parse_lsn("0/20000000")), (3, parse_lsn("0/30000000")))
    assert fork_point(2, parse_lsn("0/21000000"), history) == parse_lsn("0/30000000")


def test_history_lines_as_patroni_serves_them() -> None:
    raw = [[1, 671227552, "no recovery target specified", "2026-11-30T09:05:00+00:00", "pg-2"], ["bad"], "x"]
    assert parse_history(raw) == ((1, 671227552),)
    assert parse_history([[1, "0/28021EA0", "reason"]]) == HISTORY
    assert parse_history({"not": "a list"}) == ()


class Answers(PatroniApi):
    """The REST answers of a cluster after a failover, without a network: only `request` is replaced."""

    def __init__(self, answers: dict[tuple[str, str], tuple[int, Any]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str]] = []

    def request(self, host: str, path: str, method: str = "GET", body: dict[str, Any] | None = None,
                timeout: float | None = None) -> tuple[int, Any]:
        self.asked.append((host, path))
        return self.answers[(host, path)]


def state(*members: PatroniMember) -> PatroniState:
    return PatroniState(members, "pg-2")


def test_only_members_behind_the_leaders_timeline_are_asked_and_checked() -> None:
    api = Answers({("pg-2", "history"): (200, [[1, FORK, "no recovery target specified"]]),
                   ("pg-3", "patroni"): (200, {"xlog": {"replayed_location": parse_lsn("0/29000000")}})})
    checked = api.with_divergence(state(PatroniMember("pg-2", "leader", "running", 2),
                                        PatroniMember("pg-1", "replica", "streaming", 2),
                                        PatroniMember("pg-3", "replica", "running", 1)))
    assert api.asked == [("pg-2", "history"), ("pg-3", "patroni")]
    pg3 = {m.name: m for m in checked.members}["pg-3"]
    assert (pg3.replayed, pg3.diverged_at) == (parse_lsn("0/29000000"), FORK) and checked.history == HISTORY


def test_a_healthy_cluster_costs_no_extra_call() -> None:
    api = Answers({})
    healthy = state(PatroniMember("pg-2", "leader", "running", 2), PatroniMember("pg-3", "replica", "streaming", 2))
    assert api.with_divergence(healthy) == healthy and api.asked == []
