"""Per-cluster figures for `dbfleet status`, read from the fleet's Prometheus.

The exporters and the rules already compute them; status only asks Prometheus
one instant query per figure, grouped by the `cluster` label, so the table
shows what the alerts see. Prometheus unreachable means no figures, not a
failed status.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

# column -> (engines it applies to, PromQL grouped by cluster, how to show the value)
FIGURES: dict[str, tuple[tuple[str, ...], str, Callable[[float], str]]] = {
    "conn_used": (("postgres",), "max by (cluster) (dbfleet_pg_connections_used / dbfleet_pg_connections_max)",
                  lambda v: f"{v:.0%}"),
    "lag_max": (("postgres",), "max by (cluster) (dbfleet_pg_recovery_lag_seconds)", lambda v: f"{v:.1f}s"),
    "hit_ratio": (("postgres",), "min by (cluster) (dbfleet_pg_cache_hit_ratio)", lambda v: f"{v:.3f}"),
    "p95_query": (("postgres",), "max by (cluster) (dbfleet_pg_statements_p95_seconds)", lambda v: f"{v * 1000:.1f}ms"),
    "memory_used": (("redis",), "max by (cluster) (redis_memory_used_bytes / redis_memory_max_bytes)",
                    lambda v: f"{v:.0%}"),
    "evictions": (("redis",), "sum by (cluster) (redis_evicted_keys_total)", lambda v: f"{v:.0f}"),
    "disk_used": (("postgres", "redis", "mongo"), "max by (cluster) (dbfleet:data_dir_used_ratio)",
                  lambda v: f"{v:.0%}"),
}


def query(base_url: str, expr: str, timeout: float = 3.0) -> dict[str, float]:
    """One instant query; value by cluster label."""
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise ValueError(body.get("error", "query failed"))
    return {r["metric"].get("cluster", ""): float(r["value"][1]) for r in body["data"]["result"]}


def fetch_figures(base_url: str, fetch: Callable[[str, str], dict[str, float]] = query) -> dict[str, dict[str, float]]:
    """{column: {cluster: value}} for every figure; raises OSError when Prometheus does not answer."""
    return {column: fetch(base_url, expr) for column, (_, expr, _) in FIGURES.items()}


def merge_figures(rows: list[dict[str, Any]], engines: dict[str, str],
                  figures: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Status rows with each applicable figure added, formatted; '-' where Prometheus has no value yet."""
    merged = []
    for row in rows:
        row = dict(row)
        engine = engines.get(row.get("cluster", ""), "")
        for column, (wanted, _, show) in FIGURES.items():
            if engine in wanted:
                value = figures.get(column, {}).get(row["cluster"])
                row[column] = "-" if value is None else show(value)
        merged.append(row)
    return merged


def prometheus_url(addresses: dict[str, str], monitor_host: str, port: int) -> str | None:
    address = addresses.get(monitor_host)
    return f"http://{address}:{port}" if address else None


def add_figures(rows: list[dict[str, Any]], fleet: Any, addresses: dict[str, str],
                warn: Callable[[str], None]) -> list[dict[str, Any]]:
    """Rows with Prometheus's figures when the inventory has the monitoring host; a warning when it does not answer."""
    url = prometheus_url(addresses, fleet.monitoring.host, fleet.monitoring.prometheus_port)
    if url is None:
        return rows
    try:
        figures = fetch_figures(url)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        warn(f"status: no figures from Prometheus at {url}: {exc}")
        return rows
    return merge_figures(rows, {c.name: c.engine for c in fleet.clusters}, figures)
