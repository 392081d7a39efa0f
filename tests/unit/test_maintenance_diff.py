"""The maintenance diff, pure: window edges with an injected clock, one rewrite per cycle, the disk guard,
pg_repack's preconditions, autovacuum settings and drift, dead tuples and wraparound."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from dbfleet.reconcile.maintenance import diff_maintenance, human_bytes, setting_matches
from dbfleet.reconcile.maintenance_observation import (
    ESTIMATE,
    EXACT,
    DatabaseAge,
    Debris,
    IndexBloat,
    MaintenanceDatabase,
    ObservedMaintenance,
    TableBloat,
    TableVacuum,
)
from dbfleet.schedule import window_state
from dbfleet.spec import PostgresMaintenance

MB = 1 << 20
SATURDAY_2AM = datetime(2026, 11, 28, 2, 0)
WINDOW = {"start": "0 2 * * 6", "end": "0 5 * * 6"}


def policy(**changes: Any) -> PostgresMaintenance:
    data: dict[str, Any] = {"window": WINDOW, "index_bloat": {"action": "reindex", "max_ratio": 0.3,
                                                              "disk_margin": 2.0}}
    data.update(changes)
    return PostgresMaintenance.model_validate(data)


def index(name: str, size_mb: float, wasted_mb: float, method: str = EXACT, valid: bool = True) -> IndexBloat:
    return IndexBloat("app", "public", "orders", name, int(size_mb * MB), int(wasted_mb * MB), method, valid)


def observed(now: datetime = SATURDAY_2AM, free_mb: float | None = 10_000, **db: Any) -> ObservedMaintenance:
    database = MaintenanceDatabase("app", **db)
    obs = ObservedMaintenance("pg-main", now, "pg-1", None if free_mb is None else int(free_mb * MB),
                              "/var/lib/postgresql/15/main")
    obs.databases["app"] = database
    return obs


def kinds(actions: list[Any]) -> list[tuple[str, str]]:
    return [(a.kind, a.target) for a in actions]


# --------------------------------------------------------------------------- the window


@pytest.mark.parametrize("now,is_open", [
    (SATURDAY_2AM - timedelta(seconds=1), False),
    (SATURDAY_2AM, True),
    (SATURDAY_2AM + timedelta(hours=2, minutes=59, seconds=59), True),
    (SATURDAY_2AM + timedelta(hours=3), False),
    (SATURDAY_2AM + timedelta(days=1), False),
])
def test_the_window_opens_at_its_start_minute_and_is_closed_from_its_end_minute(now: datetime, is_open: bool):
    assert window_state(WINDOW["start"], WINDOW["end"], now).open is is_open
    actions = diff_maintenance("pg-main", policy(), observed(now, indexes=[index("orders_a", 100, 60)]))
    assert kinds(actions) == [("reindex-index" if is_open else "report-index-bloat", "app/public.orders_a")]


def test_outside_the_window_plan_says_it_waits_and_when_the_window_next_opens():
    before = SATURDAY_2AM - timedelta(minutes=30)
    (action,) = diff_maintenance("pg-main", policy(), observed(before, indexes=[index("orders_a", 100, 60)]))
    assert not action.changes
    assert "60% of 100.0 MB is waste (60.0 MB, by pgstatindex)" in action.reason
    assert "reindex waiting for the window (next start 2026-11-28 02:00 UTC)" in action.reason
    after = SATURDAY_2AM + timedelta(hours=3)
    (action,) = diff_maintenance("pg-main", policy(), observed(after, indexes=[index("orders_a", 100, 60)]))
    assert "next start 2026-12-05 02:00 UTC" in action.reason


def test_a_window_across_midnight_and_an_aware_clock():
    p = policy(window={"start": "30 23 * * *", "end": "15 1 * * *"})
    for now, kind in ((datetime(2026, 11, 30, 23, 29), "report-index-bloat"),
                      (datetime(2026, 11, 30, 23, 30), "reindex-index"),
                      (datetime(2026, 12, 1, 1, 14, 59), "reindex-index"),
                      (datetime(2026, 12, 1, 1, 15), "report-index-bloat")):
        assert kinds(diff_maintenance("pg-main", p, observed(now, indexes=[index("i", 10, 5)])))[0][0] == kind
    from datetime import timezone
    aware = datetime(2026, 12, 1, 2, 0, tzinfo=timezone(timedelta(hours=1)))  # 01:00 UTC
    assert window_state("30 23 * * *", "15 1 * * *", aware).open


# --------------------------------------------------------------------------- index rebuilds


def test_one_rebuild_at_a_time_largest_waste_first_and_the_rest_wait():
    idx = [index("small_waste", 500, 160), index("big_waste", 300, 250), index("mid", 100, 90),
           index("healthy", 1000, 100)]
    actions = diff_maintenance("pg-main", policy(), observed(indexes=idx))
    assert kinds(actions) == [("reindex-index", "app/public.big_waste"),
                              ("report-index-bloat", "app/public.small_waste"),
                              ("report-index-bloat", "app/public.mid")]
    chosen = actions[0]
    assert chosen.changes and not chosen.destructive
    assert chosen.detail["statements"] == ["SET lock_timeout = '5s'",
                                           'REINDEX INDEX CONCURRENTLY "public"."big_waste"']
    assert "one rewrite at a time per cluster, app/public.big_waste goes first" in actions[1].reason


def test_the_disk_guard_refuses_an_index_that_would_not_fit_and_lets_a_smaller_one_go():
    idx = [index("huge", 4000, 3000), index("fits", 100, 80)]
    actions = diff_maintenance("pg-main", policy(), observed(free_mb=1000, indexes=idx))
    assert kinds(actions) == [("report-index-bloat", "app/public.huge"), ("reindex-index", "app/public.fits")]
    assert "reindex refused: 1000.0 MB free on pg-1 (/var/lib/postgresql/15/main) is not more than 3.9 GB x 2 = " \
           "7.8 GB" in actions[0].reason


def test_the_margin_is_a_strict_bound_and_unknown_free_disk_refuses():
    exactly = diff_maintenance("pg-main", policy(), observed(free_mb=200, indexes=[index("i", 100, 50)]))
    assert kinds(exactly) == [("report-index-bloat", "app/public.i")]
    above = diff_maintenance("pg-main", policy(), observed(free_mb=200.01, indexes=[index("i", 100, 50)]))
    assert kinds(above) == [("reindex-index", "app/public.i")]
    unknown = diff_maintenance("pg-main", policy(), observed(free_mb=None, indexes=[index("i", 100, 50)]))
    assert "free disk on the primary pg-1 is unknown" in unknown[0].reason and not unknown[0].changes


def test_report_only_unmeasured_and_invalid_indexes():
    idx = [index("bloated", 100, 60, ESTIMATE), index("unknown", 100, 0), index("invalid", 100, 90, valid=False),
           IndexBloat("app", "public", "orders", "never_analyzed", 100 * MB, None, ESTIMATE)]
    actions = diff_maintenance("pg-main", policy(index_bloat={"action": "report"}), observed(indexes=idx))
    assert kinds(actions) == [("report-index-bloat", "app/public.bloated")]
    assert "by estimate" in actions[0].reason and "index_bloat.action is report" in actions[0].reason
    assert actions[0].detail["ratio"] == 0.6 and actions[0].detail["wasted_bytes"] == 60 * MB


def test_no_window_at_all_only_reports():
    p = PostgresMaintenance.model_validate({})
    assert kinds(diff_maintenance("pg-main", p, observed(indexes=[index("i", 10, 9)]))) == \
        [("report-index-bloat", "app/public.i")]


# --------------------------------------------------------------------------- debris


def test_debris_is_dropped_in_the_window_only_when_the_policy_allows():
    debris = [Debris("app", "public", "orders", "orders_a_ccnew", 8 * MB)]
    allowed = policy(index_bloat={"action": "reindex", "clean_debris": True})
    (drop,) = diff_maintenance("pg-main", allowed, observed(debris=debris))
    assert drop.kind == "drop-debris-index" and drop.destructive
    assert drop.detail["statements"] == ['DROP INDEX CONCURRENTLY IF EXISTS "public"."orders_a_ccnew"']
    (wait,) = diff_maintenance("pg-main", allowed, observed(SATURDAY_2AM - timedelta(hours=1), debris=debris))
    assert wait.kind == "report-debris" and "waiting for the window" in wait.reason
    assert diff_maintenance("pg-main", policy(), observed(debris=debris)) == []


# --------------------------------------------------------------------------- tables


def table(name: str, size_mb: float, wasted_mb: float, repackable: bool = True) -> TableBloat:
    return TableBloat("app", "public", name, int(size_mb * MB), int(size_mb * 1.5 * MB), int(wasted_mb * MB),
                      "pgstattuple_approx", repackable)


def test_repack_needs_the_window_the_extension_a_key_and_disk_for_table_and_indexes():
    p = policy(table_bloat={"action": "repack"})
    tables = [table("big", 1000, 800), table("nokey", 500, 400, repackable=False), table("next", 100, 50)]
    with_ext = diff_maintenance("pg-main", p, observed(tables=tables, extensions={"pg_repack"}))
    assert kinds(with_ext) == [("repack-table", "app/public.big"), ("report-table-bloat", "app/public.nokey"),
                               ("report-table-bloat", "app/public.next")]
    assert "primary key or a unique index" in with_ext[1].reason
    assert with_ext[0].detail["total_bytes"] == 1500 * MB
    without = diff_maintenance("pg-main", p, observed(tables=tables))
    assert [a.kind for a in without] == ["report-table-bloat"] * 3
    assert "pg_repack extension is not installed in database app" in without[0].reason
    small_disk = diff_maintenance("pg-main", p, observed(free_mb=2500, tables=tables[:1], extensions={"pg_repack"}))
    assert "1.5 GB x 2" in small_disk[0].reason and not small_disk[0].changes
    closed = diff_maintenance("pg-main", p, observed(SATURDAY_2AM - timedelta(minutes=1), tables=tables[:1],
                                                     extensions={"pg_repack"}))
    assert "pg_repack waiting for the window" in closed[0].reason


# --------------------------------------------------------------------------- autovacuum settings


AUTOVACUUM = [{"database": "app", "table": "orders",
               "settings": {"autovacuum_vacuum_scale_factor": 0.05, "autovacuum_enabled": True,
                            "autovacuum_vacuum_threshold": 500}}]


def test_declared_settings_not_yet_set_become_one_alter_table_any_time():
    p = policy(autovacuum=AUTOVACUUM)
    late = SATURDAY_2AM - timedelta(days=3)
    (action,) = diff_maintenance("pg-main", p, observed(late, reloptions={"public.orders": {}}))
    assert action.kind == "set-autovacuum" and action.changes and not action.detail["drift"]
    assert action.detail["statements"] == [
        "ALTER TABLE \"public\".\"orders\" SET (autovacuum_enabled = 'true', autovacuum_vacuum_threshold = '500', "
        "autovacuum_vacuum_scale_factor = '0.05')"]
    assert "declared, not set yet" in action.reason


def test_settings_equal_in_other_spellings_are_in_sync_and_a_hand_change_is_drift():
    p = policy(autovacuum=AUTOVACUUM)
    same = {"autovacuum_vacuum_scale_factor": "0.050", "autovacuum_enabled": "on", "autovacuum_vacuum_threshold": "500",
            "fillfactor": "90"}
    assert diff_maintenance("pg-main", p, observed(reloptions={"public.orders": same})) == []
    drifted = {**same, "autovacuum_vacuum_scale_factor": "0.2"}
    (action,) = diff_maintenance("pg-main", p, observed(reloptions={"public.orders": drifted}))
    assert action.detail["drift"] and action.detail["settings"] == {"autovacuum_vacuum_scale_factor": "0.05"}
    assert "drift (changed by hand?): autovacuum_vacuum_scale_factor is 0.2 on the server, the spec says 0.05" \
        in action.reason
    (missing,) = diff_maintenance("pg-main", p, observed(reloptions={}))
    assert missing.kind == "report-autovacuum-blocked" and not missing.changes


def test_setting_comparison():
    assert setting_matches("off", False) and setting_matches("true", True) and not setting_matches("0", True)
    assert setting_matches("1e-2", 0.01) and not setting_matches("abc", 1) and not setting_matches(None, 1)


# --------------------------------------------------------------------------- vacuum health and wraparound


def test_dead_tuples_are_reported_over_the_ratio_and_autovacuum_behind_when_old_or_never():
    now = SATURDAY_2AM
    vac = [TableVacuum("app", "public", "fresh", 60_000, 40_000, now - timedelta(hours=1), None, None),
           TableVacuum("app", "public", "stale", 60_000, 40_000, now - timedelta(days=3), None, None),
           TableVacuum("app", "public", "never", 60_000, 40_000, None, None, None),
           TableVacuum("app", "public", "few", 10, 5_000, None, None, None),
           TableVacuum("app", "public", "healthy", 900_000, 100_000, None, None, None)]
    actions = diff_maintenance("pg-main", policy(), observed(vacuum=vac))
    assert kinds(actions) == [("report-dead-tuples", "app/public.fresh"), ("report-dead-tuples", "app/public.never"),
                              ("report-dead-tuples", "app/public.stale")]
    by = {a.target: a for a in actions}
    assert not by["app/public.fresh"].detail["behind"] and "last vacuumed 1h ago" in by["app/public.fresh"].reason
    assert by["app/public.stale"].detail["behind"] and "not keeping up" in by["app/public.stale"].reason
    assert "never vacuumed" in by["app/public.never"].reason


def test_wraparound_is_reported_per_database_over_either_threshold():
    obs = observed()
    obs.ages = [DatabaseAge("app", 1_200_000_000, 10), DatabaseAge("postgres", 100, 1_500_000_000),
                DatabaseAge("template1", 100, 100)]
    actions = diff_maintenance("pg-main", policy(), obs)
    assert kinds(actions) == [("report-wraparound", "app"), ("report-wraparound", "postgres")]
    assert "age(datfrozenxid) 1200000000 > xid_age_max 1000000000" in actions[0].reason
    assert "mxid_age(datminmxid) 1500000000" in actions[1].reason


def test_the_diff_is_pure_and_stable():
    obs = observed(indexes=[index("a", 10, 6), index("b", 10, 6)], reloptions={"public.orders": {}})
    p = policy(autovacuum=AUTOVACUUM)
    assert diff_maintenance("pg-main", p, obs) == diff_maintenance("pg-main", p, obs)
    assert human_bytes(512) == "512 bytes" and human_bytes(1536) == "1.5 kB"
