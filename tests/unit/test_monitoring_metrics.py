"""The operator's own metrics: record helpers, scrape-time ages, and the /metrics server on loopback."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbfleet.monitoring import endpoint, metrics


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(name: str, **labels: str) -> float:
    return _samples(metrics.render().decode())[(name, tuple(sorted(labels.items())))]


def test_reconcile_duration_and_errors_per_cluster_and_reconciler() -> None:
    metrics.record_reconcile("t-rec", "indexes", 0.3)
    metrics.record_reconcile("t-rec", "indexes", 2.0, error=True)
    metrics.record_reconcile("t-rec", "backups", 0.1)
    assert _value("dbfleet_reconcile_duration_seconds_count", cluster="t-rec", reconciler="indexes") == 2
    assert _value("dbfleet_reconcile_duration_seconds_sum", cluster="t-rec", reconciler="indexes") == pytest.approx(2.3)
    assert _value("dbfleet_reconcile_errors_total", cluster="t-rec", reconciler="indexes") == 1
    assert _value("dbfleet_reconcile_errors_total", cluster="t-rec", reconciler="backups") == 0
    assert time.time() - _value("dbfleet_reconcile_last_run_timestamp_seconds", cluster="t-rec",
                                reconciler="backups") < 60


def test_actions_by_kind() -> None:
    metrics.record_action("t-act", "create_index")
    metrics.record_action("t-act", "create_index", 2)
    assert _value("dbfleet_actions_total", cluster="t-act", kind="create_index") == 3


def test_backup_age_is_computed_at_scrape_time_from_the_newest_backup() -> None:
    now = time.time()
    metrics.record_backup("t-bak", "full", now - 7200, 5e9, 600)
    metrics.record_backup("t-bak", "incr", now - 100, 1e6, 3)
    age = _value(metrics.BACKUP_AGE, cluster="t-bak")
    assert 100 <= age < 130
    assert _value("dbfleet_backup_size_bytes", cluster="t-bak", kind="full") == 5e9
    assert _value("dbfleet_backup_duration_seconds", cluster="t-bak", kind="incr") == 3
    time.sleep(1.1)
    assert _value(metrics.BACKUP_AGE, cluster="t-bak") > age     # older with every scrape, no new record needed


def test_drill_result_rto_rpo() -> None:
    metrics.record_drill("t-drill", True, rto_seconds=42.5, rpo_seconds=3.0, finished_at=1000.0)
    assert _value(metrics.DRILL_SUCCESS, cluster="t-drill") == 1
    assert _value("dbfleet_restore_drill_rto_seconds", cluster="t-drill") == 42.5
    assert _value("dbfleet_restore_drill_rpo_seconds", cluster="t-drill") == 3.0
    assert _value(metrics.DRILL_LAST, cluster="t-drill") == 1000.0
    metrics.record_drill("t-drill", False, None, None)
    assert _value(metrics.DRILL_SUCCESS, cluster="t-drill") == 0
    assert _value("dbfleet_restore_drill_rto_seconds", cluster="t-drill") == 42.5   # the last measured one stays


def test_index_counts_cover_every_state() -> None:
    metrics.set_index_counts("t-idx", {"declared": 3, "missing": 1})
    values = {s: _value("dbfleet_indexes", cluster="t-idx", state=s) for s in metrics.INDEX_STATES}
    assert values == {"declared": 3, "missing": 1, "unused": 0, "duplicate": 0, "invalid": 0}
    with pytest.raises(ValueError, match="unknown index states"):
        metrics.set_index_counts("t-idx", {"bogus": 1})


def test_serve_answers_on_loopback_and_stops() -> None:
    metrics.record_action("t-srv", "noop")
    server = endpoint.serve(0, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert 'dbfleet_actions_total{cluster="t-srv",kind="noop"} 1.0' in body
        assert "process_cpu_seconds_total" in body
    finally:
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2)
