"""Where one cluster's no-change cycle spends its CPU: cProfile over a cluster's part of a `--watch` cycle.

The cluster is fleet-1 of bench_fleet's lab (one host, ha manual, ten declared indexes, kept connections; run
`DBFLEET_KEEP_LAB=1 python3 -m bench.bench_fleet` first), and its part of the cycle (every reconciler but
backups, as bench_fleet times it) runs on this thread, so the profile sees all of it, timed by this thread's
CPU clock (waiting on the server costs none). Each round's CPU time (thread_time) and wall time are printed
with their medians, then a summary by area (TLS, psycopg, pydantic, logging, the reconcilers' own code) as
shares of the profiled CPU, and the functions with the most own CPU time. The profiler's own overhead inflates
the profiled total over the unprofiled median. It drops and creates table t on the lab's small clusters
first (bench_fleet's set_up).

    python3 -m bench.profile_cycle            # DBFLEET_BENCH_LAB names the lab (default "benchfleet")

Figures, not assertions: the README's "Scale" quotes them.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import statistics
import time
from pathlib import Path
from typing import Any

from bench.bench_fleet import INDEXES, LAB, cycle_reconcilers, fleet_data, name_of, set_up
from dbfleet.engines.access import FleetAccess
from dbfleet.reconcile.loop import Operator
from dbfleet.spec import Fleet

ROUNDS = int(os.environ.get("DBFLEET_PROFILE_ROUNDS", "30"))
AREAS = (
    ("TLS and sockets", ("ssl.py", "socket.py", "<method 'read' of '_ssl", "<method 'write' of '_ssl",
                         "<method 'do_handshake'", "selectors.py", "<built-in method select", "<method 'poll'")),
    ("psycopg (protocol, adaptation, rows)", ("psycopg/",)),
    ("logging", ("logging/",)),
    ("pydantic (spec objects)", ("pydantic",)),
    ("dbfleet: engines (sessions, topology)", ("dbfleet/engines/",)),
    ("dbfleet: reconcilers (observe, diff)", ("dbfleet/reconcile/", "dbfleet/actions.py")),
    ("dbfleet: monitoring (metrics)", ("dbfleet/monitoring/", "prometheus_client")),
)


def area_of(filename: str, name: str) -> str:
    where = f"{filename}:{name}"
    for area, marks in AREAS:
        if any(mark in where for mark in marks):
            return area
    return "other (interpreter, stdlib)"


def profile(inventory: Path, secrets: Path | None) -> None:
    access = FleetAccess.load(inventory, secrets)
    fleet = Fleet.model_validate(fleet_data())
    set_up(fleet, access)
    cluster = fleet.cluster(name_of(1))
    operator = Operator(fleet, access, reconcilers=cycle_reconcilers(), keep_sessions=True)
    try:
        first = operator._cluster_cycle(cluster, apply=True)  # opens the connections
        if first.error or first.outcomes:
            raise RuntimeError(f"a no-change cycle acted or failed: {first.sentence()}")
        cpu, wall, queries = [], [], []
        profiler = cProfile.Profile(time.thread_time)  # CPU of this thread, not the wait on the server
        for _ in range(ROUNDS):
            c0, w0 = time.thread_time(), time.perf_counter()
            profiler.enable()
            report = operator._cluster_cycle(cluster, apply=True)
            profiler.disable()
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - w0)
            queries.append(report.queries)
            if report.error or report.outcomes:
                raise RuntimeError(report.sentence())
    finally:
        operator.close()
    print(f"profile: one cluster ({INDEXES} declared indexes), {ROUNDS} no-change rounds on kept connections: "
          f"CPU median {statistics.median(cpu) * 1000:.1f} ms, wall median {statistics.median(wall) * 1000:.1f} ms, "
          f"{statistics.median(queries):.0f} statements a round")
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    by_area: dict[str, float] = {}
    for (filename, _, name), (_, _, own, _, _) in raw.items():
        area = area_of(filename, name)
        by_area[area] = by_area.get(area, 0.0) + own
    print(f"profile: own time by area (of {total / ROUNDS * 1000:.1f} ms profiled per round):")
    for area, own in sorted(by_area.items(), key=lambda kv: -kv[1]):
        print(f"  {own / total:6.1%}  {own / ROUNDS * 1000:6.2f} ms  {area}")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue())
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats("dbfleet", 30)
    print(out.getvalue())


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    inventory = root / "inventories" / "local" / LAB / "hosts.yml"
    profile(inventory, inventory.parent / "group_vars" / "all" / "secrets.yml")
