"""Fleet scale: the no-change cycle of N PostgreSQL clusters (N = 1, 4, 8), the operator's memory per cluster, and
drift fixed on one cluster while another runs a long backup job.

The bench brings up a lab of its own (DBFLEET_BENCH_LAB, default "benchfleet") from a spec it builds: eight small
one-host PostgreSQL clusters fleet-1..fleet-8 (ha manual, tiny buffers, backups off, ten declared indexes on
app.t) and fleet-big, one more such host whose full backup is the long job. postgres.yml converges them all; the
operator then reads eight real servers in eight containers, each with its own catalog, connections and
pg_stat_replication.

Cycles are timed as `reconcile --watch` runs them (kept connections, every reconciler but backups, which are off
on these clusters) at `--parallel` DEFAULT_PARALLEL, over ROUNDS rounds; medians are printed with the ratio to
N = 1 (target: at most 2 at N = 8). Memory is the process's resident set after the cycles, per cluster added.
Drift-to-fixed: a watching operator (interval 1 s) over all nine clusters; while fleet-big's full backup of a
BULK_ROWS-row table runs as a job, fleet-1's declared index is dropped and timed until valid again.

    python3 -m bench.bench_fleet          # or: python3 -m bench.run --only fleet

DBFLEET_KEEP_LAB=1 keeps the lab; DBFLEET_BENCH_NO_CONVERGE=1 skips the converge of a kept lab.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.common import Result, converged_postgres_lab, timed
from dbfleet.backups.job_runner import JobRunner
from dbfleet.backups.jobs import RUNNING
from dbfleet.engines.access import FleetAccess
from dbfleet.reconcile.leader import FileLeaderLock
from dbfleet.reconcile.loop import DEFAULT_PARALLEL, Operator, Reconciler, watch
from dbfleet.spec import Fleet
from dbfleet.wiring import open_access, reconcilers

LAB = os.environ.get("DBFLEET_BENCH_LAB", "benchfleet")
SIZES = (1, 4, 8)
ROUNDS = int(os.environ.get("DBFLEET_BENCH_ROUNDS", "7"))
CPU_CYCLES = 200
"""No-change cycles over which the machine's and the operator's CPU are counted."""
INDEXES = 10
BULK_ROWS = 5_000_000
"""Rows of fleet-big's bulk table: what makes its full backup take a while."""
BIG = "fleet-big"
DB = "app"


def name_of(k: int) -> str:
    return f"fleet-{k}"


def small_cluster(name: str, host: str, backup: bool = False) -> dict[str, Any]:
    """A one-host cluster with tiny buffers and ten declared indexes on app.t."""
    return {"name": name, "engine": "postgres", "version": "15", "ha": "manual", "hosts": [host], "replicas": 0,
            "databases": [DB], "parameters": {"max_connections": 40, "shared_buffers": "16MB"},
            "backup": ({"target": {"kind": "local", "path": "/var/lib/dbfleet/backups"},
                        "schedule": {"full": "0 2 * * 0"}, "drill": {"schedule": "30 4 * * *"}}
                       if backup else {"enabled": False}),
            "indexes": {"declared": [{"database": DB, "table": "t", "name": f"t_c{c}_idx", "columns": [f"c{c}"]}
                                     for c in range(INDEXES)]},
            "monitoring": {"enabled": False}}


def fleet_data(big_full_cron: str | None = None) -> dict[str, Any]:
    clusters = [small_cluster(name_of(k), f"fl-{k}") for k in range(1, max(SIZES) + 1)]
    big = small_cluster(BIG, "fl-big", backup=True)
    if big_full_cron:
        big["backup"]["schedule"]["full"] = big_full_cron
    return {"apiVersion": "dbfleet/v1",
            "fleet": {"name": "benchfleet", "environment": "lab", "region": "us-east-1", "vpc_cidr": "10.40.0.0/16"},
            "operator": {"leader": "file"}, "clusters": [*clusters, big]}


@contextmanager
def fleet_lab() -> Iterator[tuple[Fleet, FleetAccess, Path]]:
    """The bench's lab up and converged: (fleet, access, a work directory for the leader lock)."""
    fleet = Fleet.model_validate(fleet_data())
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, converged_postgres_lab(LAB, fleet) as (_, access):
        yield fleet, access, Path(tmp)


def connect(fleet: Fleet, access: FleetAccess, cluster: str, db: str = DB) -> psycopg.Connection[Any]:
    spec = fleet.cluster(cluster)
    return psycopg.connect(host=access.address(spec.host_names()[0]), port=spec.port, dbname=db, user="postgres",
                           password=access.secret("postgres_superuser_password"), sslmode="require",
                           autocommit=True, connect_timeout=10)


def set_up(fleet: Fleet, access: FleetAccess) -> None:
    """Table t and its ten declared indexes on every small cluster, as the operator would build them."""
    columns = ", ".join(f"c{c} int" for c in range(INDEXES))
    for k in range(1, max(SIZES) + 1):
        with connect(fleet, access, name_of(k)) as conn:
            conn.execute(f"DROP TABLE IF EXISTS t; CREATE TABLE t (id bigserial PRIMARY KEY, {columns})")
            for c in range(INDEXES):
                conn.execute(f"CREATE INDEX t_c{c}_idx ON t (c{c})")


def cycle_reconcilers() -> list[Reconciler[Any]]:
    """What `--watch` runs each cycle, without the backup reconciler (backups are off on the small clusters)."""
    return [r for r in reconcilers() if r.name != "backups"]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def machine_cpu() -> tuple[int, int, int]:
    """(all ticks, idle and iowait ticks) of every core together from /proc/stat, and the ticks every PostgreSQL
    process on the machine has used (the lab's servers run in containers here, so /proc sees them)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    servers = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended
            continue
        if text[text.index("(") + 1:text.rindex(")")] == "postgres":
            fields = text[text.rindex(")") + 2:].split()
            servers += int(fields[11]) + int(fields[12])  # utime, stime
    return sum(ticks), ticks[3] + ticks[4], servers


def no_change_cycles(fleet: Fleet, access: FleetAccess, n: int) -> tuple[list[float], int, dict[str, float]]:
    """ROUNDS no-change cycles of the first n small clusters on kept connections; their seconds, the resident
    set after them, and where the CPU went: the machine's busy share of all its cores, the operator's own CPU
    seconds and the PostgreSQL servers' (all on this machine), per cycle."""
    operator = Operator(fleet, access, reconcilers=cycle_reconcilers(), keep_sessions=True,
                        clusters={name_of(k) for k in range(1, n + 1)})
    try:
        first = operator.run_cycle(apply=True)  # opens the connections; creates nothing if set up right
        if not first.ok or [o for c in first.clusters for o in c.outcomes]:
            raise RuntimeError(f"a no-change cycle acted or failed: {first.render()[:3000]}")
        seconds = []
        for _ in range(ROUNDS):
            with timed() as t:
                report = operator.run_cycle(apply=True)
            if not report.ok or [o for c in report.clusters for o in c.outcomes]:
                raise RuntimeError(report.render()[:3000])
            seconds.append(t.seconds)
        total0, idle0, servers0 = machine_cpu()  # counted in ticks of 10 ms: over CPU_CYCLES more cycles
        cpu0 = time.process_time()
        for _ in range(CPU_CYCLES):
            operator.run_cycle(apply=True)
        total1, idle1, servers1 = machine_cpu()
        tick = 1 / os.sysconf("SC_CLK_TCK")
        cpu = {"cores": float(os.cpu_count() or 1),
               "machine_busy": 1 - (idle1 - idle0) / max(1, total1 - total0),
               "operator_cpu_s": (time.process_time() - cpu0) / CPU_CYCLES,
               "servers_cpu_s": (servers1 - servers0) * tick / CPU_CYCLES}
        return seconds, rss_bytes(), cpu
    finally:
        operator.close()


def drift_while_backing_up(access: FleetAccess, workdir: Path) -> dict[str, float]:
    """A watching operator over every cluster; while fleet-big's full backup job runs, drop fleet-1's index and
    time it back."""
    now = datetime.now(UTC)
    fleet = Fleet.model_validate(fleet_data(big_full_cron=f"{(now.minute + 1) % 60} * * * *"))
    big = fleet.cluster(BIG)
    storage = open_access(big, access.inventory or Path()).storage
    with connect(fleet, access, BIG) as conn:
        conn.execute("DROP TABLE IF EXISTS bulk")
        conn.execute(f"CREATE TABLE bulk AS SELECT g, md5(g::text) || md5((-g)::text) AS pad "
                     f"FROM generate_series(1, {BULK_ROWS}) g")
        conn.execute("CHECKPOINT")
    jobs = JobRunner(fleet.operator.jobs)
    stop = threading.Event()
    operator = Operator(fleet, access, reconcilers=reconcilers(jobs), keep_sessions=True, stop=stop, jobs=jobs)
    thread = threading.Thread(target=watch, args=(operator, FileLeaderLock(workdir / "bench-leader.lock"), 1.0),
                              kwargs={"job_grace": 900}, daemon=True)
    started = len([r for r in storage.jobs(BIG) if r.kind == "backup"])
    thread.start()
    try:
        deadline = time.monotonic() + 180  # the full is due at the start of the next minute
        while not any(r.kind == "backup" and r.state == RUNNING for r in storage.jobs(BIG)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{BIG}'s backup job never started (records before: {started})")
            time.sleep(0.2)
        with connect(fleet, access, name_of(1)) as conn:
            conn.execute("DROP INDEX t_c0_idx")
            dropped = time.monotonic()
            while not conn.execute("SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('t_c0_idx') "
                                   "AND indisvalid").fetchone():
                if time.monotonic() - dropped > 300:
                    raise RuntimeError("the dropped index never came back")
                time.sleep(0.05)
            fixed = time.monotonic() - dropped
        still = any(r.kind == "backup" and r.state == RUNNING for r in storage.jobs(BIG))
        stop.set()
        thread.join(900)
        record = next(r for r in storage.jobs(BIG) if r.kind == "backup")
        backup_s = (record.heartbeat - record.started).total_seconds()
        return {"fixed_s": fixed, "backup_s": backup_s, "backup_running_when_fixed": float(still)}
    finally:
        stop.set()
        thread.join(900)


def run() -> list[Result]:
    with fleet_lab() as (fleet, access, workdir):
        set_up(fleet, access)
        medians: dict[int, float] = {}
        memory: dict[int, int] = {}
        cpu: dict[int, dict[str, float]] = {}
        for n in SIZES:
            seconds, memory[n], cpu[n] = no_change_cycles(fleet, access, n)
            medians[n] = statistics.median(seconds)
            print(f"fleet: N={n}: no-change cycle median {medians[n]:.3f}s of {[round(s, 3) for s in seconds]}, "
                  f"ratio to N=1 {medians[n] / medians[1]:.2f}, resident {memory[n] / 2**20:.1f} MiB; machine "
                  f"busy {cpu[n]['machine_busy']:.0%} of {cpu[n]['cores']:.0f} cores, CPU a cycle: operator "
                  f"{cpu[n]['operator_cpu_s'] * 1000:.1f} ms, servers {cpu[n]['servers_cpu_s'] * 1000:.1f} ms",
                  flush=True)
        per_cluster = (memory[max(SIZES)] - memory[min(SIZES)]) / (max(SIZES) - min(SIZES))
        drift = drift_while_backing_up(access, workdir)
    running = bool(drift["backup_running_when_fixed"])
    print(f"fleet: memory per cluster ~{per_cluster / 2**20:.2f} MiB; drift fixed in {drift['fixed_s']:.2f}s while "
          f"a {drift['backup_s']:.0f}s backup job ran (still running when fixed: {running})")
    extra = {"rounds": ROUNDS, "parallel": DEFAULT_PARALLEL, "indexes_per_cluster": INDEXES,
             "medians_s": medians, "resident_bytes": memory, "cpu": cpu}
    results = [Result("fleet", f"no-change cycle, N={n} clusters", medians[n], "s", medians[1],
                      "the same cycle at N=1", extra) for n in SIZES]
    results.append(Result("fleet", "memory per cluster", per_cluster / 2**20, "MiB", None, "", extra))
    results.append(Result("fleet", "drift fixed while a backup job runs", drift["fixed_s"], "s", 1.0 + 2.0,
                          "interval + 2 s", {**extra, **drift}))
    return results


if __name__ == "__main__":
    run()
