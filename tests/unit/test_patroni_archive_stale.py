"""Which queued WAL segments lie off the leader's timeline history (the archiving stall of README, Patroni, known
issues): figures from the lab's incident of 2026-11-30, where pg-1 was rewound at 0/24000000 on timeline 4."""

from __future__ import annotations

from dbfleet.engines.patroni import off_history_segment, parse_history, stale_ready

# Timeline 8's history as GET /history gives it: each parent timeline and where the next began.
HISTORY = parse_history([[1, "0/A000000", "no recovery target specified"], [2, "0/16000000", ""],
                         [3, "0/1D0000A0", ""], [4, "0/24000000", ""], [5, "0/25800000", ""],
                         [6, "0/3C000000", ""], [7, "0/51000000", ""]])


def test_a_segment_at_or_after_its_timeline_s_switch_point_is_off_history() -> None:
    assert off_history_segment("000000040000000000000024", HISTORY)  # starts exactly at 0/24000000
    assert off_history_segment("000000040000000000000025", HISTORY)


def test_the_segment_holding_the_switch_point_is_off_history_too() -> None:
    # Timeline 5 ended at 0/25800000, inside segment 25: timeline 6 has its own copy of that segment.
    assert off_history_segment("000000050000000000000025", HISTORY)


def test_segments_before_the_switch_point_and_on_the_current_timeline_stay() -> None:
    assert not off_history_segment("000000040000000000000023", HISTORY)
    assert not off_history_segment("000000050000000000000024", HISTORY)
    assert not off_history_segment("000000080000000000000051", HISTORY)  # the current timeline
    assert not off_history_segment("000000090000000000000051", HISTORY)  # not in this history at all


def test_names_that_are_not_segments_are_never_off_history() -> None:
    for name in ("00000004.history", "000000040000000000000024.partial", "zz0000040000000000000024", "",
                 "0000000400000000000000024"):
        assert not off_history_segment(name, HISTORY)


def test_stale_ready_keeps_only_the_off_history_segments_in_order() -> None:
    queued = ["000000080000000000000052", "000000050000000000000025", "000000040000000000000024",
              "00000008.history", "000000040000000000000023"]
    assert stale_ready(queued, HISTORY) == ["000000040000000000000024", "000000050000000000000025"]
    assert stale_ready(queued, ()) == []  # no history read: nothing is judged stale


def test_lower_case_names_are_not_postgresql_s_and_never_judged() -> None:
    assert off_history_segment("00000004000000000000002A", HISTORY)
    assert not off_history_segment("00000004000000000000002a", HISTORY)
