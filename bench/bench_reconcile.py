"""Reconcile with nothing to change: 1,000 declared indexes across 10 databases on the lab's PostgreSQL.

The operator observes each database in a few catalog queries (one on the
primary, one per replica), not one per index. The baseline is what a
per-index reconciler does at the least: one catalog lookup per declared index
on the primary alone (as an Ansible run of postgresql_idx per index would).

    python3 -m bench.bench_reconcile          # or: python3 -m bench.run --only reconcile

DBFLEET_BENCH_LAB names the lab (default "bench"); DBFLEET_KEEP_LAB=1 keeps it.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

import psycopg

from bench.common import SPEC, Result, converged_postgres_lab, timed
from dbfleet.engines.access import FleetAccess
from dbfleet.reconcile.index_reconciler import IndexReconciler
from dbfleet.reconcile.loop import Operator
from dbfleet.spec import Fleet, PgIndex, PostgresCluster, load_fleet

LAB = os.environ.get("DBFLEET_BENCH_LAB", "bench")
CLUSTER = "pg-main"
DATABASES = 10
TABLES = 10
INDEXES_PER_TABLE = 10
CYCLES = 3


def declared_indexes(database: str) -> list[PgIndex]:
    """100 per database: plain, composite, partial and expression indexes, none redundant with another."""
    out = []
    for t in range(TABLES):
        for k in range(INDEXES_PER_TABLE):
            shape = [{"columns": [f"c{k}"]},
                     {"columns": [f"c{k}", f"c{k - 1}"]},
                     {"columns": [f"c{k}"], "where": f"c{k} > 0"},
                     {"columns": [f"lower(s{k})"]}][k % 4]
            out.append(PgIndex(database=database, table=f"t{t}", name=f"t{t}_i{k}", **shape))
    return out


def setup_sql(indexes: list[PgIndex]) -> str:
    """Tables and indexes made directly (untagged), so the cycle matches them by definition."""
    columns = ", ".join([f"c{k} int" for k in range(INDEXES_PER_TABLE)]
                        + [f"s{k} text" for k in range(INDEXES_PER_TABLE)])
    tables = "".join(f"CREATE TABLE t{t} (id bigserial PRIMARY KEY, {columns});\n" for t in range(TABLES))
    stmts = [f"CREATE INDEX {i.name} ON {i.table} ({', '.join(i.columns)})" + (f" WHERE {i.where}" if i.where else "")
             for i in indexes]
    return tables + ";\n".join(stmts) + ";"


def cycle(operator: Operator) -> tuple[float, int, int]:
    """One applying cycle: seconds, queries and new connections."""
    with timed() as t:
        report = operator.run_cycle(apply=True)
    if [o for c in report.clusters for o in c.outcomes] or not report.ok:
        raise RuntimeError(f"a no-change cycle acted or failed: {report.render()[:3000]}")
    return t.seconds, report.queries, report.connections


def bench_fleet(fleet: Fleet, databases: list[str], declared: list[PgIndex]) -> Fleet:
    pg = fleet.cluster(CLUSTER)
    assert isinstance(pg, PostgresCluster)
    data = pg.model_dump(mode="json")
    data["databases"] = databases
    data["indexes"] = {**data["indexes"], "declared": [i.model_dump(mode="json") for i in declared]}
    return Fleet.model_validate({**fleet.model_dump(mode="json"), "clusters": [data]})


def measure(fleet: Fleet, access: FleetAccess, connect: Any) -> list[Result]:
    """Set up the databases, check a cycle has nothing to do, then time cycles against the per-index baseline."""
    databases = [f"dbfleet_bench_{n}" for n in range(DATABASES)]
    declared = [i for db in databases for i in declared_indexes(db)]
    with connect("postgres") as admin:
        for db in databases:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {db}")
    try:
        for db in databases:
            with connect(db) as conn:
                conn.execute(setup_sql([i for i in declared if i.database == db]))
        spec = bench_fleet(fleet, databases, declared)
        first = Operator(spec, access, reconcilers=[IndexReconciler()]).run_cycle(apply=False)
        pending = [a for a in first.actions() if a.changes]
        if not first.ok or pending:
            raise RuntimeError(f"expected nothing to change; got {first.render()[:3000]}")
        cold = [cycle(Operator(spec, access, reconcilers=[IndexReconciler()])) for _ in range(CYCLES)]
        watching = Operator(spec, access, reconcilers=[IndexReconciler()], keep_sessions=True)
        cycle(watching)  # opens the connections that the next cycles reuse
        warm = [cycle(watching) for _ in range(CYCLES)]
        watching.close()
        seconds, queries, connections = (statistics.median(r[i] for r in cold) for i in range(3))
        warm_seconds = statistics.median(r[0] for r in warm)

        with timed() as naive:
            for db in databases:
                with connect(db) as conn:
                    for index in declared:
                        if index.database == db:
                            conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                                         [index.name]).fetchone()
        members = len(fleet.cluster(CLUSTER).all_hosts())
        extra = {"databases": DATABASES, "declared_indexes": len(declared), "members": members,
                 "queries": queries, "queries_per_database": round(queries / DATABASES, 1),
                 "connections": connections, "cycles": CYCLES}
        print(f"reconcile, nothing to change: {len(declared)} indexes in {DATABASES} databases on {members} "
              f"members: {queries} queries ({queries / DATABASES:.1f} per database); {seconds:.2f}s with "
              f"{connections} new connections (--once), {warm_seconds:.2f}s on kept connections (--watch); "
              f"one lookup per index on the primary alone: {len(declared)} queries, {naive.seconds:.2f}s")
        return [
            Result("reconcile", f"no-change --once, {len(declared)} idx / {DATABASES} dbs", seconds, "s",
                   naive.seconds, "one catalog query per index", extra),
            Result("reconcile", f"no-change --watch cycle, {len(declared)} idx", warm_seconds, "s",
                   naive.seconds, "one catalog query per index", extra),
            Result("reconcile", "queries per no-change cycle", queries, "q", len(declared),
                   "one catalog query per index", extra),
        ]
    finally:
        with connect("postgres") as admin:
            for db in databases:
                admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def run() -> list[Result]:
    fleet = load_fleet(SPEC)
    with converged_postgres_lab(LAB) as (_, access):
        pg = fleet.cluster(CLUSTER)

        def connect(db: str) -> psycopg.Connection[Any]:
            return psycopg.connect(host=access.address(pg.primary), port=pg.port, dbname=db, user="postgres",
                                   password=access.secret("postgres_superuser_password"), sslmode="require",
                                   autocommit=True)

        return measure(fleet, access, connect)

if __name__ == "__main__":
    for result in run():
        print(result.as_dict())
