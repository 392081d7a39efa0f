"""Retention keeps the right set: deletes only what the policy allows and a newer verified backup supersedes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dbfleet.backups.manifest import Manifest, iso
from dbfleet.backups.retention import expired_backups
from dbfleet.spec import Retention

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def backup(id_: str, kind: str, days_ago: float, status: str = "verified", parent: str | None = None) -> Manifest:
    start = NOW - timedelta(days=days_ago)
    return Manifest(cluster="pg-main", engine="postgres", id=id_, kind=kind, status=status, tool="pgbackrest",
                    tool_version="2.45", started_at=iso(start) or "", finished_at=iso(start + timedelta(minutes=5)),
                    parent=parent)


def deleted(manifests: list[Manifest], policy: Retention) -> list[str]:
    return [e.backup.id for e in expired_backups(manifests, policy, NOW)]


def test_full_count_keeps_the_newest_fulls_and_takes_dependents_along() -> None:
    chain = [
        backup("F1", "full", 21), backup("D1", "diff", 20, parent="F1"), backup("I1", "incr", 19.5, parent="D1"),
        backup("F2", "full", 14), backup("D2", "diff", 13, parent="F2"),
        backup("F3", "full", 7), backup("I3", "incr", 6, parent="F3"),
    ]
    assert deleted(chain, Retention(full_count=2, diff_count=7)) == ["F1", "D1", "I1"]
    assert deleted(chain, Retention(full_count=3, diff_count=7)) == []


def test_nothing_goes_without_a_newer_verified_full() -> None:
    chain = [backup("F1", "full", 21), backup("F2", "full", 14, status="complete"),
             backup("F3", "full", 7, status="complete")]
    assert deleted(chain, Retention(full_count=1)) == []
    chain[2] = backup("F3", "full", 7, status="verified")
    assert deleted(chain, Retention(full_count=1)) == ["F1", "F2"]


def test_a_failed_newest_full_protects_the_older_verified_one() -> None:
    chain = [backup("F1", "full", 14), backup("F2", "full", 7, status="failed")]
    assert deleted(chain, Retention(full_count=1)) == []


def test_failed_and_orphaned_go_once_superseded_pending_never() -> None:
    chain = [backup("F1", "full", 10, status="failed"), backup("F2", "full", 9, status="orphaned"),
             backup("F3", "full", 8, status="pending"), backup("F4", "full", 1)]
    result = expired_backups(chain, Retention(full_count=5), NOW)
    assert [e.backup.id for e in result] == ["F1", "F2"]
    assert "failed" in result[0].reason and result[0].superseded_by == "F4"
    assert "orphaned" in result[1].reason


def test_diff_count_needs_a_newer_verified_diff_or_full() -> None:
    chain = [backup("F1", "full", 7), backup("D1", "diff", 6, parent="F1"),
             backup("I1", "incr", 5.5, parent="D1"), backup("D2", "diff", 5, parent="F1"),
             backup("D3", "diff", 4, parent="F1", status="complete")]
    assert deleted(chain, Retention(full_count=2, diff_count=1)) == ["D1", "I1"]
    # D2 is beyond diff_count=1 too, but only an unverified diff is newer: kept.
    assert "D2" not in deleted(chain, Retention(full_count=2, diff_count=1))


def test_good_incrementals_are_never_deleted_alone() -> None:
    chain = [backup("F1", "full", 3)] + [backup(f"I{i}", "incr", 3 - i * 0.1, parent="F1") for i in range(1, 6)]
    assert deleted(chain, Retention(full_count=1, diff_count=0)) == []


def test_max_age_deletes_old_fulls_but_never_the_newest_verified() -> None:
    chain = [backup("F1", "full", 40), backup("F2", "full", 30), backup("F3", "full", 20, status="complete")]
    assert deleted(chain, Retention(full_count=5, max_age_days=14)) == ["F1"]
    # F3 is unverified, so F2 (the newest verified full) stays although it is past max_age.


def test_snapshots_count_as_fulls() -> None:
    snaps = [backup(f"S{i}", "snapshot", 10 - i) for i in range(6)]
    assert deleted(snaps, Retention(full_count=4)) == ["S0", "S1"]
