"""Detect-to-fixed latency of the running operator: a dropped index, and a stopped replica.

`dbfleet reconcile --watch --interval 5` runs against the lab's PostgreSQL.
Then, a few times each:
- a declared index is dropped by hand: time until it is back and valid;
- a replica's PostgreSQL is stopped: time until it streams from the primary again (with `ha: patroni` its
  postmaster is killed instead and Patroni, not the operator, restarts it: the baseline is then loop_wait).
The baseline is the watch interval: a ratio near 0.5 means the fix lands in
the cycle after the fault, plus the time the fix itself takes.

    python3 -m bench.bench_latency          # or: python3 -m bench.run --only latency

DBFLEET_BENCH_LAB names the lab (default "bench"); DBFLEET_KEEP_LAB=1 keeps it.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import yaml

from bench.common import REPO, SPEC, Result, converged_postgres_lab
from dbfleet.engines.access import FleetAccess
from dbfleet.spec import load_fleet

LAB = os.environ.get("DBFLEET_BENCH_LAB", "bench")
CLUSTER = "pg-main"
DB = "latbench"
INDEX = "lat_v_idx"
INTERVAL = 5.0
ROUNDS = 3
LIMIT = 180.0
"""Seconds one fault may take to be fixed before the benchmark fails."""


def wait_for(what: str, check: Callable[[], bool], limit: float = LIMIT) -> float:
    """Seconds until check() is true, polling every 0.1 s; fails after `limit`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            raise RuntimeError(f"{what}: not fixed within {limit:.0f}s")
        time.sleep(0.1)
    return time.monotonic() - start


def bench_spec(workdir: Path) -> Path:
    data = yaml.safe_load(SPEC.read_text())
    pg = next(c for c in data["clusters"] if c["name"] == CLUSTER)
    pg["databases"] = [DB]
    pg["indexes"] = {"declared": [{"database": DB, "table": "t", "name": INDEX, "columns": ["v"]}]}
    path = workdir / "latency.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def measure(state: Any, access: FleetAccess, workdir: Path) -> list[Result]:
    fleet = load_fleet(SPEC)
    pg = fleet.cluster(CLUSTER)
    replica = pg.host_names()[-1]
    password = access.secret("postgres_superuser_password")

    patroni = pg.ha == "patroni"
    # With Patroni the primary is wherever the read-write endpoint leads (a failover test may have moved it).
    host, port = (pg.endpoint_hosts()[0].name, pg.endpoints.rw_port) if patroni else (pg.primary, pg.port)

    def sql(query: str, db: str = DB) -> list[tuple[Any, ...]]:
        with psycopg.connect(host=access.address(host), port=port, dbname=db, user="postgres",
                             password=password, sslmode="require", autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []

    def index_valid() -> bool:
        rows = sql(f"SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                   f"WHERE c.relname = '{INDEX}'")
        return bool(rows and rows[0][0])

    standby = replica if patroni else replica.replace("-", "_")

    def replica_streaming() -> bool:
        rows = sql(f"SELECT 1 FROM pg_stat_replication WHERE application_name = '{standby}' "
                   "AND state = 'streaming'", db="postgres")
        return bool(rows)

    sql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", db="postgres")
    sql(f"CREATE DATABASE {DB}", db="postgres")
    sql("CREATE TABLE t AS SELECT g AS v FROM generate_series(1, 100000) g")
    container = f"dbfleet-{LAB}-{replica}"
    log = (workdir / "operator.log").open("w")
    operator = subprocess.Popen(
        [sys.executable, "-m", "dbfleet", "--spec", str(bench_spec(workdir)), "reconcile", "--watch",
         "--interval", str(INTERVAL), "--cluster", CLUSTER, "--reconciler", "members", "--reconciler", "indexes",
         "--no-metrics", "--inventory", str(state.inventory), "--secrets", str(state.secrets),
         "--state", str(workdir / "state.json")], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for("first creation of the declared index", index_valid)
        dropped, stopped = [], []
        for n in range(ROUNDS):
            print(f"[bench] latency round {n + 1}/{ROUNDS}: drop {INDEX}", file=sys.stderr, flush=True)
            sql(f"DROP INDEX {INDEX}")
            dropped.append(wait_for("dropped index", index_valid))
            print(f"[bench] latency round {n + 1}/{ROUNDS}: stop PostgreSQL on {replica}", file=sys.stderr, flush=True)
            if patroni:  # Patroni owns the server: kill its postmaster; Patroni, not the operator, restarts it
                subprocess.run(["docker", "exec", container, "sh", "-c",
                                f"kill -KILL $(head -1 /var/lib/postgresql/{pg.version}/main/postmaster.pid)"],
                               check=True, timeout=60)
            else:
                subprocess.run(["docker", "exec", container, "systemctl", "stop", f"postgresql@{pg.version}-main"],
                               check=True, timeout=60)
            wait_for("replica leaving pg_stat_replication", lambda: not replica_streaming(), 30)
            stopped.append(wait_for("stopped replica", replica_streaming))
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(timeout=60)
        except subprocess.TimeoutExpired:
            operator.kill()
        log.close()
        if not patroni:
            subprocess.run(["docker", "exec", container, "systemctl", "start", f"postgresql@{pg.version}-main"],
                           timeout=60, check=False)
        sql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", db="postgres")
    extra = {"rounds": ROUNDS, "interval_s": INTERVAL, "replica": replica}
    return [
        Result("latency", "dropped index: detect to valid again", statistics.median(dropped), "s", INTERVAL,
               "watch interval", {**extra, "all_s": [round(s, 2) for s in dropped]}),
        Result("latency", "killed replica: Patroni restarts it" if patroni else "stopped replica: detect to streaming",
               statistics.median(stopped), "s", float(pg.patroni.loop_wait) if patroni else INTERVAL,
               "loop_wait" if patroni else "watch interval", {**extra, "all_s": [round(s, 2) for s in stopped]}),
    ]


def run() -> list[Result]:
    with converged_postgres_lab(LAB) as (state, access), \
            tempfile.TemporaryDirectory(prefix="dbfleet-latency-") as workdir:
        return measure(state, access, Path(workdir))

if __name__ == "__main__":
    for result in run():
        print(result.as_dict())
