"""bench/bench_dr.py's pure part: what a cut lost, from the writer's acknowledgements and the promoted site's rows."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from bench.bench_dr import loss_at_cut


@dataclass
class Ack:
    id: int
    at: float


def test_nothing_lost_when_every_commit_acknowledged_before_the_cut_is_stored() -> None:
    loss = loss_at_cut([Ack(0, 10.0), Ack(1, 11.0)], {0, 1, -1}, cut_at=12.0)
    assert (loss.acked, loss.lost, loss.oldest_age) == (2, [], 0.0)


def test_the_observed_rpo_is_the_age_at_the_cut_of_the_oldest_lost_commit() -> None:
    acked = [Ack(0, 10.0), Ack(1, 11.0), Ack(2, 11.5), Ack(3, 11.9)]
    loss = loss_at_cut(acked, {0, 2}, cut_at=12.0)
    assert loss.acked == 4
    assert loss.lost == [1, 3]
    assert loss.oldest_age == pytest.approx(1.0)


def test_commits_acknowledged_after_the_cut_count_neither_as_acknowledged_nor_as_lost() -> None:
    # A commit in flight at the cut may still be acknowledged a moment later; the cut cannot have promised it.
    loss = loss_at_cut([Ack(0, 10.0), Ack(1, 12.5)], {0}, cut_at=12.0)
    assert (loss.acked, loss.lost, loss.oldest_age) == (1, [], 0.0)
