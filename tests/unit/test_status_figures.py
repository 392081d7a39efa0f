"""Status figures from Prometheus: which figure goes to which engine's row, formatted; missing values shown as '-'."""

from __future__ import annotations

from dbfleet.monitoring.figures import FIGURES, fetch_figures, merge_figures, prometheus_url


def test_figures_land_on_the_rows_of_their_engines() -> None:
    asked: list[str] = []

    def fetch(url: str, expr: str) -> dict[str, float]:
        asked.append(expr)
        return {"pg-main": 0.25, "cache": 0.5}

    figures = fetch_figures("http://10.0.0.9:9090", fetch)
    assert len(asked) == len(FIGURES)
    rows = merge_figures([{"cluster": "pg-main"}, {"cluster": "cache"}, {"cluster": "gone"}],
                         {"pg-main": "postgres", "cache": "redis"}, figures)
    pg, cache, gone = rows
    assert pg["conn_used"] == "25%" and pg["p95_query"] == "250.0ms" and "memory_used" not in pg
    assert cache["memory_used"] == "50%" and cache["disk_used"] == "50%" and "conn_used" not in cache
    assert gone == {"cluster": "gone"}


def test_a_figure_prometheus_lacks_shows_as_a_dash() -> None:
    rows = merge_figures([{"cluster": "cache"}], {"cache": "redis"}, {"memory_used": {}})
    assert rows[0]["memory_used"] == "-" and rows[0]["evictions"] == "-"


def test_no_monitoring_host_in_the_inventory_means_no_url() -> None:
    assert prometheus_url({"monitor-1": "10.0.0.9"}, "monitor-1", 9090) == "http://10.0.0.9:9090"
    assert prometheus_url({}, "monitor-1", 9090) is None
