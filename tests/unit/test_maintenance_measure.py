"""Bloat arithmetic (pgstatindex, pgstattuple_approx, the catalog estimates), the reconciler's status and metrics."""

from __future__ import annotations

from datetime import datetime

from dbfleet.monitoring import metrics
from dbfleet.reconcile.maintenance_observation import (
    DatabaseAge,
    IndexBloat,
    MaintenanceDatabase,
    ObservedMaintenance,
    TableVacuum,
)
from dbfleet.reconcile.pg_maintenance import (
    estimate_index_pages,
    estimate_table_pages,
    index_waste_from_stat,
    parse_reloptions,
    table_waste_from_approx,
)

BLOCK = 8192


def test_a_packed_btree_wastes_nothing_and_a_half_empty_one_wastes_about_half():
    packed = {"index_size": 102 * BLOCK, "internal_pages": 1, "leaf_pages": 100, "avg_leaf_density": 90.0}
    assert index_waste_from_stat(packed, 90, BLOCK) == 0
    half = {"index_size": 202 * BLOCK, "internal_pages": 1, "leaf_pages": 200, "avg_leaf_density": 45.0}
    assert index_waste_from_stat(half, 90, BLOCK) == 100 * BLOCK
    empty = {"index_size": 2 * BLOCK, "internal_pages": 0, "leaf_pages": 0, "avg_leaf_density": float("nan")}
    assert index_waste_from_stat(empty, 90, BLOCK) == BLOCK


def test_the_estimates_match_what_postgres_builds_for_a_bigint_key():
    # 1,000,000 bigint keys: PostgreSQL 15 builds a 21.4 MiB (2745 pages) B-tree at fillfactor 90.
    pages = estimate_index_pages(1_000_000, 8, 90, BLOCK)
    assert 2600 <= pages <= 2900
    assert estimate_index_pages(0, 8, 90, BLOCK) == 2
    # 1,000,000 rows of (bigint, int, text of 33 bytes): about 8,850 heap pages (73 rows a page).
    heap = estimate_table_pages(1_000_000, 8 + 4 + 33, 3, False, 100, BLOCK)
    assert 8000 <= heap <= 9500
    assert estimate_table_pages(0, 40, 3, False, 100, BLOCK) == 0


def test_table_waste_leaves_the_fillfactor_alone():
    stat = {"table_len": 100 * BLOCK, "dead_tuple_len": 20 * BLOCK, "approx_free_space": 30 * BLOCK}
    assert table_waste_from_approx(stat, 100) == 50 * BLOCK
    assert table_waste_from_approx(stat, 70) == 20 * BLOCK
    assert table_waste_from_approx({"table_len": BLOCK, "dead_tuple_len": 0, "approx_free_space": 0}, 50) == 0


def test_reloptions_are_read_as_text():
    assert parse_reloptions(["autovacuum_enabled=false", "fillfactor=70", "odd"]) == {
        "autovacuum_enabled": "false", "fillfactor": "70"}


def test_the_metrics_follow_the_latest_observation_only():
    obs = ObservedMaintenance("pg-x", datetime(2026, 1, 1), "pg-1")
    db = MaintenanceDatabase("app")
    db.indexes = [IndexBloat("app", "public", "t", "t_pkey", 1000, 400, "pgstatindex"),
                  IndexBloat("app", "public", "t", "t_unknown", 1000, None, "estimate")]
    db.vacuum = [TableVacuum("app", "public", "t", 75, 25, datetime(2026, 1, 1), None, None)]
    obs.databases["app"] = db
    obs.ages = [DatabaseAge("app", 1234, 56)]
    metrics.set_maintenance("pg-x", obs)
    text = metrics.render().decode()
    assert ('dbfleet_pg_index_bloat_ratio{cluster="pg-x",database="app",index="public.t_pkey",'
            'method="pgstatindex"} 0.4') in text
    assert "t_unknown" not in text
    assert 'dbfleet_pg_table_dead_tuple_ratio{cluster="pg-x",database="app",table="public.t"} 0.25' in text
    assert 'dbfleet_pg_table_dead_tuples{cluster="pg-x",database="app",table="public.t"} 25.0' in text
    assert ('dbfleet_pg_table_last_vacuum_timestamp_seconds{cluster="pg-x",database="app",table="public.t"} '
            '1.7672256e+09') in text
    metrics.set_maintenance("pg-x", ObservedMaintenance("pg-x", datetime(2026, 1, 1), "pg-1"))
    assert "t_pkey" not in metrics.render().decode()


def test_the_reconciler_applies_to_postgres_clusters_with_a_policy_and_reports_status():
    from pathlib import Path

    from dbfleet.actions import Action
    from dbfleet.reconcile.maintenance_reconciler import MaintenanceReconciler
    from dbfleet.spec import load_fleet

    fleet = load_fleet(Path(__file__).resolve().parents[2] / "fleet.example.yaml")
    rec = MaintenanceReconciler(clock=lambda: datetime(2026, 11, 28, 3, 0))
    assert rec.applies_to(fleet.cluster("pg-main"))
    assert not rec.applies_to(fleet.cluster("cache")) and not rec.applies_to(fleet.cluster("mongo-main"))
    bare = fleet.cluster("pg-main").model_copy(update={"maintenance": None})
    assert not rec.applies_to(bare)
    obs = ObservedMaintenance("pg-main", datetime(2026, 11, 28, 3, 0), "pg-1", 10**12, "/data")
    obs.ages = [DatabaseAge("app", 900, 3), DatabaseAge("postgres", 1200, 3)]
    found = Action("pg-main", "maintenance", "report-index-bloat", "app/public.i", "bloated")
    status = rec.status(fleet.cluster("pg-main"), obs, [found])
    assert status["window"] == "inside the window until 2026-11-28 05:00 UTC"
    assert status["bloated"] == "1 idx, 0 tbl" and status["xid_age"] == 1200
    assert status["maintenance"]["free_bytes"] == 10**12
