"""The maintenance policy in the spec: the example's block is read, and each bad input gets a located error."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbfleet.spec import PostgresCluster, SpecError, lock_timeout_ms, parse_fleet, size_bytes

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = (REPO / "fleet.example.yaml").read_text()
AUDIT = "    audit: {log: [ddl, role]}"


def _without_maintenance() -> str:
    start = EXAMPLE.index("    maintenance:")
    return EXAMPLE[:start] + EXAMPLE[EXAMPLE.index("    monitoring:", start):]


def _with(maintenance: str) -> str:
    """The example with pg-main's maintenance block replaced."""
    return _without_maintenance().replace(AUDIT, f"{AUDIT}\n    maintenance: {maintenance}", 1)


def _pg(maintenance: str) -> PostgresCluster:
    cluster = parse_fleet(_with(maintenance), "fleet.yaml").cluster("pg-main")
    assert isinstance(cluster, PostgresCluster)
    return cluster


def test_a_full_policy_is_read_with_its_types() -> None:
    cluster = _pg('{window: {start: "0 2 * * 6", end: "0 5 * * 6"}, lock_timeout: 250ms, '
                  'index_bloat: {max_ratio: 0.4, action: reindex, disk_margin: 3, exact_below: 512mb, '
                  'clean_debris: true}, table_bloat: {action: repack}, '
                  'vacuum: {dead_tuple_ratio_max: 0.1, autovacuum_age_max: 12h, xid_age_max: 500000000}, '
                  'autovacuum: [{database: app, table: orders, settings: {autovacuum_vacuum_scale_factor: 0.05, '
                  'autovacuum_enabled: true, autovacuum_vacuum_threshold: 500}}]}')
    m = cluster.maintenance
    assert m is not None and m.window is not None
    assert m.window.start == "0 2 * * 6" and m.index_bloat.action == "reindex" and m.index_bloat.disk_margin == 3.0
    assert lock_timeout_ms(m.lock_timeout) == 250 and size_bytes(m.index_bloat.exact_below) == 512 << 20
    assert m.autovacuum[0].settings.declared() == {"autovacuum_enabled": True, "autovacuum_vacuum_threshold": 500,
                                                   "autovacuum_vacuum_scale_factor": 0.05}


def test_the_example_has_a_report_only_policy_and_none_is_allowed() -> None:
    example = parse_fleet(EXAMPLE, "fleet.yaml").cluster("pg-main")
    assert isinstance(example, PostgresCluster) and example.maintenance is not None
    assert example.maintenance.index_bloat.action == "report" and example.maintenance.window is not None
    bare = parse_fleet(_without_maintenance(), "fleet.yaml").cluster("pg-main")
    assert isinstance(bare, PostgresCluster) and bare.maintenance is None


BAD = [
    ('{index_bloat: {action: reindex}}', "clusters.0.maintenance.index_bloat.action", "needs maintenance.window"),
    ('{table_bloat: {action: repack}}', "clusters.0.maintenance.table_bloat.action", "needs maintenance.window"),
    ('{index_bloat: {clean_debris: true}}', "clusters.0.maintenance.index_bloat.clean_debris", "needs"),
    ('{window: {start: "0 2 * * *", end: "0  2 * * *"}}', "clusters.0.maintenance.window.end", "never open"),
    ('{window: {start: "0 25 * * *", end: "0 2 * * *"}}', "clusters.0.maintenance.window.start", "outside 0-23"),
    ('{window: {start: "0 2 * * *"}}', "clusters.0.maintenance.window.end", "required"),
    ('{lock_timeout: 10m}', "clusters.0.maintenance.lock_timeout", "does not match"),
    ('{lock_timeout: 900s}', "clusters.0.maintenance.lock_timeout", "from 1ms to 600s"),
    ('{lock_timeout: 0ms}', "clusters.0.maintenance.lock_timeout", "from 1ms to 600s"),
    ('{index_bloat: {max_ratio: 1.5}}', "clusters.0.maintenance.index_bloat.max_ratio", "< 1"),
    ('{index_bloat: {disk_margin: 0.5}}', "clusters.0.maintenance.index_bloat.disk_margin", ">= 1"),
    ('{index_bloat: {exact_below: 10 GB}}', "clusters.0.maintenance.index_bloat.exact_below", "does not match"),
    ('{table_bloat: {action: vacuum}}', "clusters.0.maintenance.table_bloat.action", "got 'vacuum'"),
    ('{vacuum: {xid_age_max: 3000000000}}', "clusters.0.maintenance.vacuum.xid_age_max", "<= 2000000000"),
    ('{vacuum: {autovacuum_age_max: forever}}', "clusters.0.maintenance.vacuum.autovacuum_age_max", "does not match"),
    ('{autovacuum: [{database: app, table: t, settings: {fillfactor: 50}}]}',
     "clusters.0.maintenance.autovacuum.0.settings.fillfactor", "unknown key"),
    ('{autovacuum: [{database: app, table: t, settings: {autovacuum_vacuum_scale_factor: "0.05"}}]}',
     "clusters.0.maintenance.autovacuum.0.settings.autovacuum_vacuum_scale_factor", "expected a number"),
    ('{autovacuum: [{database: app, table: t, settings: {autovacuum_enabled: "off"}}]}',
     "clusters.0.maintenance.autovacuum.0.settings.autovacuum_enabled", "true or false"),
    ('{autovacuum: [{database: app, table: t, settings: {autovacuum_vacuum_cost_limit: 20000}}]}',
     "clusters.0.maintenance.autovacuum.0.settings.autovacuum_vacuum_cost_limit", "<= 10000"),
    ('{autovacuum: [{database: app, table: t, settings: {autovacuum_freeze_max_age: 10}}]}',
     "clusters.0.maintenance.autovacuum.0.settings.autovacuum_freeze_max_age", ">= 100000"),
    ('{autovacuum: [{database: nope, table: t, settings: {autovacuum_enabled: false}}]}',
     "clusters.0.maintenance.autovacuum.0.database", "not one of databases"),
    ('{autovacuum: [{database: app, table: "t; DROP TABLE x", settings: {autovacuum_enabled: false}}]}',
     "clusters.0.maintenance.autovacuum.0.table", "does not match"),
    ('{autovacuum: [{database: app, table: t, settings: {}}]}',
     "clusters.0.maintenance.autovacuum.0.settings", "at least one"),
    ('{autovacuum: [{database: app, table: t, settings: {autovacuum_enabled: false}}, '
     '{database: app, table: public.t, settings: {autovacuum_enabled: true}}]}',
     "clusters.0.maintenance.autovacuum", "declared twice"),
]


@pytest.mark.parametrize("maintenance,path,words", BAD, ids=[b[1].rsplit(".", 1)[-1] + ":" + b[2] for b in BAD])
def test_bad_maintenance_is_a_located_error(maintenance: str, path: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_fleet(_with(maintenance), "fleet.yaml")
    lines = str(info.value).splitlines()
    assert any(line.startswith("fleet.yaml:") and f" {path}: " in line and words in line for line in lines), lines


def test_redis_fragmentation_policy_is_checked() -> None:
    text = EXAMPLE.replace("max_ratio: 1.5, min_used", "max_ratio: 0.5, min_used", 1)
    with pytest.raises(SpecError) as info:
        parse_fleet(text, "fleet.yaml")
    assert "clusters.2.maintenance.fragmentation.max_ratio: expected a number > 1" in str(info.value)
    good = EXAMPLE.replace("activedefrag: false, max_ratio: 1.5, min_used: 100mb",
                           "activedefrag: true, max_ratio: 2, min_used: 50mb", 1)
    cache = parse_fleet(good, "fleet.yaml").cluster("cache")
    assert cache.maintenance.fragmentation.activedefrag is True  # type: ignore[union-attr]
