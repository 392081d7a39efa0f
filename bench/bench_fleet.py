"""Fleet scale: the no-change cycle of N PostgreSQL clusters (N = 1, 4, 8), the operator's memory per cluster, and
drift fixed on one cluster while another runs a long backup job.

The N clusters are N views of the lab's one PostgreSQL cluster: each its own
spec cluster (ha: manual) with host names of its own that the access layer
maps to pg-1..pg-3's addresses, its own engine session and connections, and
ten declared indexes in a database of its own. What the operator does per
cluster (topology, members, indexes, maintenance observations) is real; the
server they all read is one, so the figures are an upper bound of a fleet of
separate servers. pg_stat_replication names the real replicas (pg_2, pg_3):
the bench's session translates those two names to the view's own, so the
shrink check holds as it does for a real cluster.

Cycles are timed as `reconcile --watch` runs them (kept connections), with
`--parallel` at its default, over ROUNDS rounds; medians are printed with
the ratio to N = 1 (target: at most 2 at N = 8). Memory is the process's
resident set after the cycles, per cluster added. Drift-to-fixed: a watching
operator (interval 1 s) over pg-main and three views; while pg-main's full
backup runs as a job, one view's declared index is dropped and timed until
valid again.

    python3 -m bench.bench_fleet          # or: python3 -m bench.run --only fleet

DBFLEET_BENCH_LAB names the lab (default "bench"); DBFLEET_KEEP_LAB=1 keeps it.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.common import SPEC, Result, converged_postgres_lab, timed
from dbfleet.backups.job_runner import JobRunner
from dbfleet.backups.jobs import RUNNING
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.base import Topology
from dbfleet.engines.postgres import PostgresSession
from dbfleet.reconcile.leader import FileLeaderLock
from dbfleet.reconcile.loop import DEFAULT_PARALLEL, Operator, watch
from dbfleet.spec import Fleet, PostgresCluster, load_fleet
from dbfleet.wiring import open_access, reconcilers

LAB = os.environ.get("DBFLEET_BENCH_LAB", "bench")
SIZES = (1, 4, 8)
ROUNDS = 5
INDEXES = 10
BULK_ROWS = 1_000_000
"""Rows of pg-main's bulk table in the drift run: what makes its full backup take a while."""


def view_name(k: int) -> str:
    return f"fleet-{k}"


def view_host(k: int, i: int) -> str:
    return f"f{k}-{i}"


def view_database(k: int) -> str:
    return f"dbfleet_fleet_{k}"


def view_cluster(base: PostgresCluster, k: int) -> dict[str, Any]:
    """A spec cluster of its own over pg-main's servers: ha manual, ten indexes in its own database."""
    db = view_database(k)
    return {"name": view_name(k), "engine": "postgres", "version": base.version, "ha": "manual",
            "hosts": [view_host(k, i + 1) for i in range(len(base.host_names()))], "replicas": base.replicas,
            "databases": [db], "backup": {"enabled": False},
            "indexes": {"declared": [{"database": db, "table": "t", "name": f"t_c{c}_idx", "columns": [f"c{c}"]}
                                     for c in range(INDEXES)]}}


def fleet_of(base: Fleet, views: int, main_full_cron: str | None = None) -> Fleet:
    """`views` views; with `main_full_cron`, pg-main itself first, its full backup on that schedule."""
    main = base.cluster("pg-main")
    assert isinstance(main, PostgresCluster)
    clusters = [view_cluster(main, k) for k in range(1, views + 1)]
    if main_full_cron:
        data = main.model_dump(mode="json", exclude_unset=True)
        data["backup"] = {**data.get("backup", {}), "schedule": {"full": main_full_cron}}
        clusters.insert(0, data)
    data = {**base.model_dump(mode="json", exclude_unset=True), "clusters": clusters,
            "operator": {"leader": "file"}}
    return Fleet.model_validate(data)


REAL_HOSTS = tuple(load_fleet(SPEC).cluster("pg-main").host_names())


class ViewSession(PostgresSession):
    """A view's session: pg_stat_replication's real replica names (pg-2 or pg_2) read as the view's own."""

    def read_topology(self) -> Topology:
        topology = super().read_topology()
        if self.cluster.name.startswith("fleet-"):
            k = int(self.cluster.name.split("-")[1])
            names = {}
            for i, real in enumerate(REAL_HOSTS, start=1):  # Patroni names its standbys pg-2, the manual roles pg_2
                names[real] = names[real.replace("-", "_")] = view_host(k, i).replace("-", "_")
            topology.facts["standbys"] = [names.get(s, s) for s in topology.facts.get("standbys", [])]
        return topology


def with_views(access: FleetAccess, base: Fleet, views: int) -> FleetAccess:
    main = base.cluster("pg-main")
    aliases = {view_host(k, i + 1): access.address(h) for k in range(1, views + 1)
               for i, h in enumerate(main.host_names())}
    return FleetAccess({**access.addresses, **aliases}, access.secrets, access.inventory, access.hostvars,
                       access.lab, access.docker_client)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def no_change_cycles(fleet: Fleet, access: FleetAccess) -> tuple[list[float], int]:
    """ROUNDS no-change cycles on kept connections; their seconds, and the resident set after them."""
    operator = Operator(fleet, access, reconcilers=reconcilers()[:3], session_factory=ViewSession,
                        keep_sessions=True)
    try:
        first = operator.run_cycle(apply=True)  # opens the connections; creates nothing if set up right
        if not first.ok or [o for c in first.clusters for o in c.outcomes]:
            raise RuntimeError(f"a no-change cycle acted or failed: {first.render()[:3000]}")
        seconds = []
        for _ in range(ROUNDS):
            with timed() as t:
                report = operator.run_cycle(apply=True)
            if not report.ok:
                raise RuntimeError(report.render()[:3000])
            seconds.append(t.seconds)
        return seconds, rss_bytes()
    finally:
        operator.close()


def drift_while_backing_up(base: Fleet, access: FleetAccess, connect: Any, workdir: Path) -> dict[str, float]:
    """A watching operator over pg-main and three views; while pg-main's full backup job runs, drop a view's
    index and time it back."""
    main = base.cluster("pg-main")
    storage = open_access(main, access.inventory or Path()).storage
    starts = [m.started for m in storage.manifests("pg-main")]
    now = datetime.now(UTC)
    if starts and now.replace(second=0, microsecond=0) <= max(starts):
        time.sleep(61 - now.second)  # a daily cron at this minute makes the full due now, and only once
        now = datetime.now(UTC)
    fleet = fleet_of(base, 3, main_full_cron=f"{now.minute} {now.hour} * * *")
    with connect("postgres") as admin:
        admin.execute("DROP DATABASE IF EXISTS dbfleet_fleet_bulk WITH (FORCE)")
        admin.execute("CREATE DATABASE dbfleet_fleet_bulk")
    with connect("dbfleet_fleet_bulk") as conn:
        conn.execute(f"CREATE TABLE bulk AS SELECT g, md5(g::text) || md5((-g)::text) AS pad "
                     f"FROM generate_series(1, {BULK_ROWS}) g")
    jobs = JobRunner(fleet.operator.jobs)
    stop = threading.Event()
    operator = Operator(fleet, access, reconcilers=reconcilers(jobs), session_factory=ViewSession,
                        keep_sessions=True, stop=stop, jobs=jobs)
    thread = threading.Thread(target=watch, args=(operator, FileLeaderLock(workdir / "bench-leader.lock"), 1.0),
                              kwargs={"job_grace": 900}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not any(r.kind == "backup" and r.state == RUNNING for r in storage.jobs("pg-main")):
            if time.monotonic() > deadline:
                raise RuntimeError("pg-main's backup job never started")
            time.sleep(0.2)
        with connect(view_database(2)) as conn:
            conn.execute("DROP INDEX t_c0_idx")
            dropped = time.monotonic()
            while not conn.execute("SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('t_c0_idx') "
                                   "AND indisvalid").fetchone():
                if time.monotonic() - dropped > 300:
                    raise RuntimeError("the dropped index never came back")
                time.sleep(0.05)
            fixed = time.monotonic() - dropped
        still = any(r.kind == "backup" and r.state == RUNNING for r in storage.jobs("pg-main"))
        stop.set()
        thread.join(900)
        record = next(r for r in storage.jobs("pg-main") if r.kind == "backup")
        backup_s = (record.heartbeat - record.started).total_seconds()
        return {"fixed_s": fixed, "backup_s": backup_s, "backup_running_when_fixed": float(still)}
    finally:
        stop.set()
        with connect("postgres") as admin:
            admin.execute("DROP DATABASE IF EXISTS dbfleet_fleet_bulk WITH (FORCE)")


def set_up(connect: Any, views: int) -> None:
    columns = ", ".join(f"c{c} int" for c in range(INDEXES))
    with connect("postgres") as admin:
        for k in range(1, views + 1):
            admin.execute(f"DROP DATABASE IF EXISTS {view_database(k)} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {view_database(k)}")
    for k in range(1, views + 1):
        with connect(view_database(k)) as conn:
            conn.execute(f"CREATE TABLE t (id bigserial PRIMARY KEY, {columns})")
            for c in range(INDEXES):
                conn.execute(f"CREATE INDEX t_c{c}_idx ON t (c{c})")


def tear_down(connect: Any, views: int) -> None:
    with connect("postgres") as admin:
        for k in range(1, views + 1):
            admin.execute(f"DROP DATABASE IF EXISTS {view_database(k)} WITH (FORCE)")


def run() -> list[Result]:
    base = load_fleet(SPEC)
    with converged_postgres_lab(LAB) as (state, lab_access):
        main = base.cluster("pg-main")
        access = with_views(lab_access, base, max(SIZES))

        def connect(db: str) -> psycopg.Connection[Any]:
            primary = next(h for h in main.host_names() if _is_primary(access, main, h))
            return psycopg.connect(host=access.address(primary), port=main.port, dbname=db, user="postgres",
                                   password=access.secret("postgres_superuser_password"), sslmode="require",
                                   autocommit=True)

        set_up(connect, max(SIZES))
        try:
            medians: dict[int, float] = {}
            memory: dict[int, int] = {}
            for n in SIZES:
                seconds, memory[n] = no_change_cycles(fleet_of(base, n), access)
                medians[n] = statistics.median(seconds)
                print(f"fleet: N={n}: no-change cycle median {medians[n]:.3f}s of {[round(s, 3) for s in seconds]}, "
                      f"ratio to N=1 {medians[n] / medians[1]:.2f}, resident {memory[n] / 2**20:.1f} MiB")
            per_cluster = (memory[max(SIZES)] - memory[min(SIZES)]) / (max(SIZES) - min(SIZES))
            drift = drift_while_backing_up(base, access, connect, state.inventory.parent)
        finally:
            tear_down(connect, max(SIZES))
    running = bool(drift["backup_running_when_fixed"])
    print(f"fleet: memory per cluster ~{per_cluster / 2**20:.2f} MiB; drift fixed in {drift['fixed_s']:.2f}s while "
          f"a {drift['backup_s']:.0f}s backup job ran (still running when fixed: {running})")
    extra = {"rounds": ROUNDS, "parallel": DEFAULT_PARALLEL, "indexes_per_cluster": INDEXES,
             "medians_s": medians, "resident_bytes": memory}
    results = [Result("fleet", f"no-change cycle, N={n} clusters", medians[n], "s", medians[1],
                      "the same cycle at N=1", extra) for n in SIZES]
    results.append(Result("fleet", "memory per cluster", per_cluster / 2**20, "MiB", None, "", extra))
    results.append(Result("fleet", "drift fixed while a backup job runs", drift["fixed_s"], "s", 1.0 + 2.0,
                          "interval + 2 s", {**extra, **drift}))
    return results


def _is_primary(access: FleetAccess, cluster: PostgresCluster, host: str) -> bool:
    try:
        with psycopg.connect(host=access.address(host), port=cluster.port, dbname="postgres", user="postgres",
                             password=access.secret("postgres_superuser_password"), sslmode="require",
                             connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return bool(row is not None and not row[0])
    except psycopg.Error:
        return False


if __name__ == "__main__":
    run()
