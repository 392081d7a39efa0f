"""Fleet status: one row per cluster, assembled from providers, and the last reconcile's result.

A row is a plain dict. Each provider adds its columns; the providers `status`
shows, and their order, are listed in one place (dbfleet.wiring), beside the
reconcilers whose findings they show.
The last reconcile result of each cluster is kept in a small JSON state file
written after every `reconcile` cycle.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbfleet.engines.base import AnyCluster
from dbfleet.reconcile.loop import ClusterReport, CycleReport
from dbfleet.units import age


@dataclass(frozen=True)
class StatusContext:
    """What a provider gets for one cluster: the spec, this observation, and the last reconcile's record."""

    cluster: AnyCluster
    report: ClusterReport
    last: dict[str, Any]


StatusProvider = Callable[[StatusContext], dict[str, Any]]


def topology_columns(ctx: StatusContext) -> dict[str, Any]:
    topo = ctx.report.topology
    row: dict[str, Any] = {"cluster": ctx.cluster.name, "engine": ctx.cluster.engine}
    if ctx.report.skipped:
        return {**row, "primary": "-", "members_up": "-", "observed": f"skipped: {ctx.report.skipped}"}
    if topo is None:
        return {**row, "primary": "?", "members_up": "?", "observed": f"FAILED: {ctx.report.error}"}
    return {**row, "primary": topo.primary or "NONE", "members_up": f"{topo.members_up}/{len(topo.members)}",
            "observed": "ok" if ctx.report.ok else f"FAILED: {ctx.report.error}"}


def pending_columns(ctx: StatusContext) -> dict[str, Any]:
    changes = sum(a.changes for a in ctx.report.actions)
    return {"pending": changes, "findings": len(ctx.report.actions) - changes}


def last_reconcile_columns(ctx: StatusContext) -> dict[str, Any]:
    if not ctx.last:
        return {"last_reconcile": "never"}
    seconds = time.time() - float(ctx.last.get("at", 0))
    result = "ok" if ctx.last.get("ok") else "FAILED"
    return {"last_reconcile": f"{result} {age(seconds)} ago ({ctx.last.get('done', 0)} changes)"}


def maintenance_columns(ctx: StatusContext) -> dict[str, Any]:
    """The maintenance window, bloat and the oldest xid age; per index and table figures only in --json."""
    keys = ("window", "bloated", "xid_age", "maintenance")
    return {k: ctx.report.status[k] for k in keys if k in ctx.report.status}


def index_columns(ctx: StatusContext) -> dict[str, Any]:
    keys = ("indexes", "declared", "invalid", "unused", "duplicate")
    return {k: ctx.report.status[k] for k in keys if k in ctx.report.status}


def status_rows(fleet: Any, report: CycleReport, state: dict[str, Any],
                providers: list[StatusProvider]) -> list[dict[str, Any]]:
    """One row per cluster observed; each provider adds its columns, in the order given."""
    reports = {c.cluster: c for c in report.clusters}
    rows = []
    for cluster in fleet.clusters:
        if cluster.name not in reports:
            continue
        ctx = StatusContext(cluster, reports[cluster.name], state.get(cluster.name, {}))
        row: dict[str, Any] = {}
        for provider in providers:
            row.update(provider(ctx))
        rows.append(row)
    return rows


def status_columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and not isinstance(row[k], (dict, list))]
    return columns


# --------------------------------------------------------------------------- state file


def load_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def record_cycle(path: Path, report: CycleReport) -> None:
    """Keep each cluster's latest reconcile result (atomically replaced, so readers never see half a file)."""
    state = load_state(path)
    for c in report.clusters:
        if c.skipped:
            continue
        state[c.cluster] = {
            "at": report.started, "ok": c.ok, "applied": report.applied, "sentence": c.sentence(),
            "done": sum(o.status == "done" for o in c.outcomes),
            "failed": sum(o.status == "failed" for o in c.outcomes),
            "error": c.error,
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(path)
