"""Observation cost of the maintenance policy on a large table and its indexes, against one pgstattuple.

A table of DBFLEET_BENCH_MAINT_MB megabytes (default 1024) with a primary key and one more B-tree index is
made in a scratch database on the lab's primary, a tenth of its rows updated and the table vacuumed. Then,
for several rounds each, the seconds and the bytes read (shared buffers hit plus read, from
pg_stat_statements' top-level statements, times the block size) of:

- the maintenance observation with the default size bound (exact_below 100mb): the table and its indexes
  are over it, so they are estimated from the catalog;
- the observation with every relation under the bound: pgstattuple_approx for the table (it skips pages the
  visibility map marks all-visible) and pgstatindex for each index (it reads the whole index);
- the baseline: one `SELECT * FROM pgstattuple('big')`, which reads the whole table (and asks for each page
  twice, once for its tuples and once for its free space, so its buffer figure is about twice the table).

The table is vacuumed until no dead tuple is left first (hot_standby_feedback holds them back for a while):
pgstattuple_approx reads every page the visibility map does not mark all-visible, and asks the free space map
about each page it skips: one buffer access per heap page, all of them hits on the few FSM pages, so its buffer
figure counts the table's pages although it reads none of them (the from_disk figure and the seconds show it).

    python3 -m bench.bench_maintenance          # or: python3 -m bench.run --only maintenance

DBFLEET_BENCH_LAB names the lab (default "bench"); DBFLEET_KEEP_LAB=1 keeps it (and the database), and
DBFLEET_BENCH_MAINT_REUSE=1 measures the table such a kept lab holds.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench.common import SPEC, Result, converged_postgres_lab, timed
from dbfleet.engines.postgres import PostgresSession
from dbfleet.reconcile.pg_maintenance import PgMaintenance
from dbfleet.spec import PostgresCluster, PostgresMaintenance, load_fleet

LAB = os.environ.get("DBFLEET_BENCH_LAB", "bench")
MEGABYTES = int(os.environ.get("DBFLEET_BENCH_MAINT_MB", "1024"))
ROUNDS = int(os.environ.get("DBFLEET_BENCH_ROUNDS", "3"))
REUSE = os.environ.get("DBFLEET_BENCH_MAINT_REUSE") == "1"
"""Keep the table a kept lab (DBFLEET_KEEP_LAB=1) already holds instead of making it again."""
DB = "maintbench"
ROW_BYTES = 80
"""About what one row of (bigint, int, md5 text) takes in the heap, line pointer included."""

READ_SQL = """
SELECT coalesce(sum(shared_blks_hit + shared_blks_read), 0)::bigint * current_setting('block_size')::int AS bytes,
       coalesce(sum(shared_blks_read), 0)::bigint * current_setting('block_size')::int AS from_disk
FROM pg_stat_statements
WHERE toplevel AND dbid IN (SELECT oid FROM pg_database WHERE datname IN (%s, 'postgres'))
  AND query !~* 'pg_stat_statements'
"""


def _connect(cluster: PostgresCluster, state: Any, dbname: str) -> psycopg.Connection[Any]:
    from dbfleet.secrets import load_secrets

    address = next(h.address for h in state.hosts if h.name == cluster.primary)
    password = load_secrets(state.secrets)["postgres_superuser_password"]
    return psycopg.connect(host=address, port=cluster.port, dbname=dbname, user="postgres", password=password,
                           sslmode="require", autocommit=True)


def _vacuum_clean(conn: psycopg.Connection[Any], timeout: float = 600) -> None:
    """VACUUM until no dead tuple is left (the replicas' hot_standby_feedback holds them back for a while), so
    the visibility map is what a maintained table's would be."""
    deadline = time.monotonic() + timeout
    while True:
        conn.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(1.2)
        conn.execute("VACUUM ANALYZE big")
        conn.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(1.2)
        row = conn.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'big'").fetchone()
        if row is None or row[0] == 0 or time.monotonic() > deadline:
            return
        time.sleep(5)


def _prepare(cluster: PostgresCluster, state: Any) -> dict[str, int]:
    rows = MEGABYTES * (1 << 20) // ROW_BYTES
    if REUSE:
        with _connect(cluster, state, DB) as conn:
            conn.execute("SET statement_timeout = 0")
            _vacuum_clean(conn)
            return _sizes(conn, rows)
    with _connect(cluster, state, "postgres") as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
    with _connect(cluster, state, DB) as conn:
        conn.execute("SET statement_timeout = 0")
        conn.execute("CREATE EXTENSION pgstattuple")
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute("CREATE TABLE big (id bigint, v int, pad text)")
        conn.execute("INSERT INTO big SELECT g, g % 100000, md5(g::text) FROM generate_series(1, "
                     f"{int(rows)}) g")
        conn.execute("ALTER TABLE big ADD PRIMARY KEY (id)")
        conn.execute("CREATE INDEX big_v_idx ON big (v)")
        conn.execute("UPDATE big SET v = v + 1 WHERE id % 10 = 0")
        _vacuum_clean(conn)
        return _sizes(conn, rows)


def _sizes(conn: psycopg.Connection[Any], rows: int) -> dict[str, int]:
    sizes = conn.execute("SELECT pg_relation_size('big'), pg_relation_size('big_pkey'), "
                         "pg_relation_size('big_v_idx'), (SELECT n_dead_tup FROM pg_stat_user_tables "
                         "WHERE relname = 'big')").fetchone()
    assert sizes is not None
    return {"rows": rows, "table": int(sizes[0]), "pkey": int(sizes[1]), "v_idx": int(sizes[2]),
            "dead_tuples": int(sizes[3])}


def _measure(conn: psycopg.Connection[Any], work: Callable[[], Any]) -> tuple[float, int, int]:
    """Seconds, bytes read and bytes from disk (not in shared buffers) of `work`'s statements."""
    conn.execute("SELECT pg_stat_statements_reset()")
    with timed() as t:
        work()
    conn.execute("SELECT pg_stat_force_next_flush()")
    row = conn.execute(READ_SQL, [DB]).fetchone()
    assert row is not None
    return t.seconds, int(row[0]), int(row[1])


def _median(samples: list[tuple[float, int, int]]) -> tuple[float, int, int]:
    return (statistics.median(s[0] for s in samples), int(statistics.median(s[1] for s in samples)),
            int(statistics.median(s[2] for s in samples)))


def run() -> list[Result]:
    fleet = load_fleet(SPEC)
    base = fleet.cluster("pg-main")
    assert isinstance(base, PostgresCluster)
    results: list[Result] = []
    with converged_postgres_lab(LAB) as (state, access):
        sizes = _prepare(base, state)
        policies = {"default bound (estimate)": PostgresMaintenance(),
                    "all exact (pgstatindex, pgstattuple_approx)": PostgresMaintenance.model_validate(
                        {"index_bloat": {"exact_below": "100gb"}, "table_bloat": {"exact_below": "100gb"}})}
        measured: dict[str, tuple[float, int, int]] = {}
        with _connect(base, state, DB) as conn:
            conn.execute("SET statement_timeout = 0")
            for name, policy in policies.items():
                cluster = base.model_copy(update={"databases": [DB], "maintenance": policy})
                session = PostgresSession(cluster, access)
                try:
                    observer = PgMaintenance(session, disk=lambda s, h: (None, "not measured"))
                    observer.observe()  # connections opened and the catalog cached once
                    measured[name] = _median([_measure(conn, observer.observe) for _ in range(ROUNDS)])
                finally:
                    session.close()
            measured["baseline"] = _median([_measure(conn, lambda: conn.execute(
                "SELECT * FROM pgstattuple('big')").fetchall()) for _ in range(ROUNDS)])
        base_s, base_b, _ = measured.pop("baseline")
        extra = {**sizes, "rounds": ROUNDS, "megabytes": MEGABYTES}
        for name, (seconds, read, disk) in measured.items():
            results.append(Result("maintenance", f"observe, {name}: seconds", seconds, "s", base_s,
                                  "one pgstattuple of the table", extra))
            results.append(Result("maintenance", f"observe, {name}: MB of buffer accesses", read / (1 << 20), "MB",
                                  base_b / (1 << 20), "one pgstattuple of the table",
                                  {**extra, "from_disk_bytes": disk}))
        if os.environ.get("DBFLEET_KEEP_LAB") != "1":
            with _connect(base, state, "postgres") as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    return results


if __name__ == "__main__":
    from bench.run import render

    print(render(run()))
