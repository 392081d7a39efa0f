"""Index policy against the lab's real PostgreSQL primary and streaming replicas.

Each test drives the real CLI (`plan`, `reconcile --once`, in-process, --json)
on a spec derived from fleet.example.yaml whose pg-main cluster also holds a
scratch database, `idxtest`, created here and dropped at the end; the spec
names only that database, so nothing else in the cluster is touched.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from dbfleet.cli import main

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
DB = "idxtest"
CLUSTER = "pg-main"
DECLARED = [
    {"database": DB, "table": "users", "name": "users_email_lower_idx", "columns": ["lower(email)"], "unique": True},
    {"database": DB, "table": "orders", "name": "orders_customer_created_idx",
     "columns": ["customer_id", "created_at"]},
    {"database": DB, "table": "orders", "name": "orders_open_idx", "columns": ["created_at"],
     "where": "status = 'open'"},
    {"database": DB, "table": "orders", "name": "orders_ref_desc_idx", "columns": ["ref DESC"]},
]
ADVISED_QUERY = "SELECT * FROM hot WHERE code = 42"
POLICY = {
    "declared": DECLARED,
    "unused": {"report": True, "drop": False, "min_stats_age_days": 0},
    "duplicate": {"report": True, "drop": False},
    "invalid": {"report": True, "rebuild": True},
    "missing": {"report": True, "min_seq_scans": 50, "min_rows": 10000, "min_cost_reduction": 0.5,
                "queries": [ADVISED_QUERY]},
}
SCHEMA = """
CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int, created_at timestamptz DEFAULT now(),
                     status text, ref int);
CREATE TABLE events (id bigserial PRIMARY KEY, ref int, payload text);
CREATE TABLE hot (id bigserial PRIMARY KEY, code int, kind int, pad text);
INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 1000) g;
INSERT INTO orders (customer_id, status, ref)
  SELECT g % 100, CASE WHEN g % 10 = 0 THEN 'open' ELSE 'done' END, g FROM generate_series(1, 5000) g;
INSERT INTO events (ref, payload) SELECT g % 5000, md5(g::text) FROM generate_series(1, 20000) g;
INSERT INTO hot (code, kind, pad) SELECT g % 3000, g % 7000, repeat('x', 40) FROM generate_series(1, 30000) g;
ANALYZE;
"""


@dataclass
class PgEnv:
    """Where the operator and the tests reach the cluster, and a spec file to drive the CLI with."""

    lab: Any
    workdir: Path
    operator: dict[str, Any] = field(default_factory=dict)
    """The spec's operator section in the specs written here; empty: the example's defaults."""

    @property
    def cluster(self) -> Any:
        return self.lab.fleet.cluster(CLUSTER)

    @property
    def primary(self) -> str:
        """The host not in recovery now (a failover test may have moved it from the spec's first host)."""
        for host in self.cluster.host_names():
            try:
                with self.connect(host, "postgres") as conn:
                    if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False:
                        return str(host)
            except psycopg.OperationalError:
                continue
        return str(self.cluster.primary)

    @property
    def replicas(self) -> list[str]:
        primary = self.primary
        return [h for h in self.cluster.host_names() if h != primary]

    def connect(self, host: str, dbname: str = DB) -> psycopg.Connection[Any]:
        return psycopg.connect(host=self.lab.address(host), port=self.cluster.port, dbname=dbname, user="postgres",
                               password=self.lab.secrets["postgres_superuser_password"], sslmode="require",
                               connect_timeout=5, autocommit=True)

    def sql(self, statement: str, host: str | None = None, dbname: str = DB) -> list[tuple[Any, ...]]:
        with self.connect(host or self.primary, dbname) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def write_spec(self, **policy_changes: Any) -> Path:
        """fleet.example.yaml with pg-main's policy replaced by this module's, on idxtest only.

        Other databases are left out so that a policy allowing drops never touches anyone else's indexes.
        """
        data = yaml.safe_load((REPO / "fleet.example.yaml").read_text())
        pg = next(c for c in data["clusters"] if c["name"] == CLUSTER)
        pg["databases"] = [DB]
        pg["indexes"] = {**POLICY, **policy_changes}
        if self.operator:
            data["operator"] = self.operator
        path = self.workdir / f"spec-{len(list(self.workdir.glob('spec-*')))}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def dbfleet(self, *args: str, spec: Path | None = None, expect: int = 0) -> dict[str, Any]:
        """Run a dbfleet command in-process with --json, check its exit code, return its output."""
        argv = ["--spec", str(spec or self.write_spec()), *args, "--json", "--cluster", CLUSTER,
                "--reconciler", "indexes",
                "--inventory", str(self.lab.inventory_path), "--secrets", str(self.lab.state.secrets)]
        if args[0] in ("reconcile", "status"):
            argv += ["--state", str(self.workdir / "state.json")]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(argv)
        data = json.loads(out.getvalue())
        assert code == expect, f"dbfleet {' '.join(args)} exited {code}, not {expect}: {data}"
        return data

    def index_valid(self, name: str, host: str | None = None) -> bool | None:
        rows = self.sql(f"SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('public.{name}')", host)
        return rows[0][0] if rows else None

    def wait_replicated(self, name: str, present: bool = True, timeout: float = 30) -> None:
        """Until every replica has replayed the creation (or the drop) of an index."""
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            while (self.index_valid(name, replica) is not None) != present:
                assert time.monotonic() < deadline, f"{replica} did not replay {name} within {timeout}s"
                time.sleep(0.2)


def changes(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["kind"], a["target"]) for a in data["actions"] if a["changes"]]


def findings(data: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {a["target"]: a for a in data["actions"] if a["kind"] == kind}


def outcomes(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["target"]: o for c in data["clusters"] for o in c["outcomes"]}


def target(name: str) -> str:
    return f"{DB}/public.{name}"


def scratch_database(lab: Any, workdir: Path) -> Iterator[PgEnv]:
    """idxtest with its tables, fresh; dropped afterwards. Shared with test_operator.py."""
    if not lab.has("postgres"):
        pytest.skip("no PostgreSQL hosts in this lab (DBFLEET_TEST_ENGINES)")
    env = PgEnv(lab, workdir)
    env.sql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", dbname="postgres")
    env.sql(f"CREATE DATABASE {DB}", dbname="postgres")
    env.sql("CREATE EXTENSION IF NOT EXISTS hypopg")
    env.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    with env.connect(env.primary) as conn:
        conn.execute(SCHEMA)
    yield env
    env.sql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", dbname="postgres")


@pytest.fixture(scope="module")
def pgenv(configured: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgEnv]:
    yield from scratch_database(configured, tmp_path_factory.mktemp("indexes"))


@pytest.fixture(scope="module")
def reconciled(pgenv: PgEnv) -> dict[str, Any]:
    """The first reconcile of the module: it creates every declared index."""
    return pgenv.dbfleet("reconcile", "--once")


def test_declared_indexes_appear_and_a_second_reconcile_does_nothing(pgenv: PgEnv, reconciled: dict[str, Any]):
    created = {t for k, t in changes(reconciled) if k == "create-index"}
    assert created == {target(d["name"]) for d in DECLARED}
    assert all(outcomes(reconciled)[t]["status"] == "done" for t in created)
    for d in DECLARED:
        assert pgenv.index_valid(d["name"]) is True
        pgenv.wait_replicated(d["name"])
    definition = pgenv.sql("SELECT indexdef FROM pg_indexes WHERE indexname = 'orders_open_idx'")[0][0]
    assert "WHERE (status = 'open'::text)" in definition
    assert "lower(email)" in pgenv.sql("SELECT indexdef FROM pg_indexes WHERE indexname = "
                                       "'users_email_lower_idx'")[0][0]
    again = pgenv.dbfleet("reconcile", "--once")
    assert changes(again) == [] and outcomes(again) == {}


def test_an_index_dropped_by_hand_comes_back_and_plan_shows_exactly_what_once_does(pgenv: PgEnv, reconciled):
    pgenv.sql("DROP INDEX orders_open_idx")
    pgenv.sql("DROP INDEX orders_ref_desc_idx")
    plan = pgenv.dbfleet("plan")
    assert changes(plan) == [("create-index", target("orders_open_idx")),
                             ("create-index", target("orders_ref_desc_idx"))]
    once = pgenv.dbfleet("reconcile", "--once")
    assert [(a["kind"], a["target"]) for a in once["actions"]] == [(a["kind"], a["target"]) for a in plan["actions"]]
    assert [a["reason"] for a in once["actions"] if a["changes"]] == [a["reason"] for a in plan["actions"]
                                                                      if a["changes"]]
    assert {t: o["status"] for t, o in outcomes(once).items()} == {t: "done" for _, t in changes(plan)}
    assert pgenv.index_valid("orders_open_idx") and pgenv.index_valid("orders_ref_desc_idx")


def test_a_same_named_index_of_another_definition_is_a_conflict(pgenv: PgEnv, reconciled):
    pgenv.sql("DROP INDEX orders_ref_desc_idx")
    pgenv.sql("CREATE INDEX orders_ref_desc_idx ON orders (ref)")  # ascending: not what the spec says
    try:
        plan = pgenv.dbfleet("plan")
        conflict = findings(plan, "report-conflict")[target("orders_ref_desc_idx")]
        assert "another definition" in conflict["reason"] and changes(plan) == []
    finally:
        pgenv.sql("DROP INDEX orders_ref_desc_idx")
    pgenv.dbfleet("reconcile", "--once")


def test_an_invalid_index_is_rebuilt_once_the_data_allows(pgenv: PgEnv, reconciled):
    pgenv.sql("DROP INDEX users_email_lower_idx")
    pgenv.sql("INSERT INTO users (email) VALUES ('Twin@example.com'), ('twin@example.com')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        pgenv.sql("CREATE UNIQUE INDEX CONCURRENTLY users_email_lower_idx ON users (lower(email))")
    assert pgenv.index_valid("users_email_lower_idx") is False  # left INVALID by the failed build

    plan = pgenv.dbfleet("plan")
    assert changes(plan) == [("rebuild-index", target("users_email_lower_idx"))]
    blocked = pgenv.dbfleet("reconcile", "--once", expect=1)
    failed = outcomes(blocked)[target("users_email_lower_idx")]
    assert failed["status"] == "failed" and failed["attempts"] == 1  # permanent: not retried
    assert "could not create unique index" in failed["message"]

    pgenv.sql("DELETE FROM users WHERE email = 'Twin@example.com'")
    fixed = pgenv.dbfleet("reconcile", "--once")
    assert outcomes(fixed)[target("users_email_lower_idx")]["status"] == "done"
    assert pgenv.index_valid("users_email_lower_idx") is True
    assert changes(pgenv.dbfleet("plan")) == []


def test_a_duplicate_index_is_reported_and_dropped_only_when_allowed(pgenv: PgEnv, reconciled):
    pgenv.sql("CREATE INDEX orders_copy_idx ON orders (customer_id, created_at)")  # the declared one, again
    pgenv.sql("CREATE INDEX orders_customer_idx ON orders (customer_id)")  # a prefix of it
    pgenv.sql("ALTER TABLE users ADD CONSTRAINT users_id_key UNIQUE (id)")  # a copy of the primary key
    plan = pgenv.dbfleet("plan")
    dups = findings(plan, "report-duplicate")
    assert "a duplicate of orders_customer_created_idx" in dups[target("orders_copy_idx")]["reason"]
    assert "prefix" in dups[target("orders_customer_idx")]["reason"]
    assert target("users_id_key") in dups or target("users_pkey") in dups
    pgenv.dbfleet("reconcile", "--once")
    assert pgenv.index_valid("orders_copy_idx") and pgenv.index_valid("orders_customer_idx")

    allow = pgenv.write_spec(duplicate={"report": True, "drop": True})
    plan = pgenv.dbfleet("plan", spec=allow)
    drops = {t: a for t, a in findings(plan, "drop-index").items()}
    assert set(drops) == {target("orders_copy_idx"), target("orders_customer_idx")}
    assert all(a["destructive"] for a in drops.values())
    once = pgenv.dbfleet("reconcile", "--once", spec=allow)
    assert {t for t, o in outcomes(once).items() if o["status"] == "done"} == set(drops)
    assert pgenv.index_valid("orders_copy_idx") is None and pgenv.index_valid("orders_customer_idx") is None
    assert pgenv.index_valid("orders_customer_created_idx") is True
    assert pgenv.index_valid("users_pkey") and pgenv.index_valid("users_id_key")  # constraints are never dropped
    pgenv.sql("ALTER TABLE users DROP CONSTRAINT users_id_key")


def test_an_index_used_only_on_a_replica_is_not_called_unused(pgenv: PgEnv, reconciled):
    pgenv.sql("CREATE INDEX events_ref_idx ON events (ref)")
    pgenv.sql("CREATE INDEX events_payload_idx ON events (payload)")  # used nowhere: the control
    pgenv.wait_replicated("events_ref_idx")
    replica = pgenv.replicas[0]
    with pgenv.connect(replica) as conn:
        conn.execute("SET enable_seqscan = off")
        for ref in range(5):
            plan = conn.execute(f"EXPLAIN SELECT count(*) FROM events WHERE ref = {ref}").fetchall()
            assert "events_ref_idx" in str(plan)
            conn.execute(f"SELECT count(*) FROM events WHERE ref = {ref}").fetchall()
    deadline = time.monotonic() + 20
    count_sql = "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'events_ref_idx'"
    while pgenv.sql(count_sql, replica)[0][0] == 0:
        assert time.monotonic() < deadline, "the replica never counted its index scans"
        time.sleep(0.5)
    assert pgenv.sql(count_sql)[0][0] == 0  # the primary never used it

    plan = pgenv.dbfleet("plan")
    unused = findings(plan, "report-unused")
    assert target("events_payload_idx") in unused
    assert target("events_ref_idx") not in unused
    assert replica in unused[target("events_payload_idx")]["reason"]


def test_hypopg_advice_for_a_seeded_slow_query(pgenv: PgEnv, reconciled):
    with pgenv.connect(pgenv.primary) as conn:
        for kind in range(60):  # a hot sequential scan on a large table, named by pg_stat_statements
            conn.execute("SELECT count(*) FROM hot WHERE kind = %s", [kind]).fetchall()
    plan = pgenv.dbfleet("plan")
    advice = findings(plan, "advise-index")
    named = advice[f"{DB}/public.hot(code)"]
    assert "a query named in the spec" in named["reason"]
    assert named["detail"]["statements"] == ['CREATE INDEX CONCURRENTLY ON "public"."hot" (code)']
    hot = advice[f"{DB}/public.hot(kind)"]
    assert "hot sequential scans on public.hot" in hot["reason"]
    for item in (named, hot):
        before, after = (float(x) for x in item["reason"].split("planner cost ")[1].split(" (")[0].split(" -> "))
        assert after <= before / 2
    assert not any(a["changes"] for a in advice.values())
    assert pgenv.sql("SELECT count(*) FROM pg_indexes WHERE tablename = 'hot'")[0][0] == 1  # only its pkey


MALLORY = "SELECT 1; COMMIT; CREATE ROLE mallory SUPERUSER LOGIN PASSWORD 'x'"


def test_a_spec_query_of_several_statements_is_refused_never_run(pgenv: PgEnv, reconciled):
    """Issue: the spec's missing-index query was pasted into EXPLAIN, so a second statement left the
    read-only transaction and created a superuser. Now the spec is refused at load, with the place named,
    and nothing reaches the server (the advisor also refuses such text at plan time: test_advisor_queries)."""
    pgenv.sql("DROP ROLE IF EXISTS mallory", dbname="postgres")
    missing = {**POLICY["missing"], "queries": [ADVISED_QUERY, MALLORY]}
    spec = pgenv.write_spec(missing=missing)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--spec", str(spec), "plan", "--json", "--cluster", CLUSTER, "--reconciler", "indexes",
                     "--inventory", str(pgenv.lab.inventory_path), "--secrets", str(pgenv.lab.state.secrets)])
    assert code == 2
    assert "indexes.missing.queries.1: 3 statements" in err.getvalue(), err.getvalue()
    assert pgenv.sql("SELECT count(*) FROM pg_roles WHERE rolname = 'mallory'", dbname="postgres")[0][0] == 0


LEAK = """
CREATE FUNCTION appfn.leak() RETURNS text LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    PERFORM lo_export({lob}, '{path}');
  END IF;
  RETURN 'no such pad';
END $f$
"""


def test_a_captured_query_is_planned_with_the_rights_of_the_role_that_ran_it(pgenv: PgEnv, reconciled):
    """Issue: queries from pg_stat_statements were EXPLAINed by the superuser, and planning runs IMMUTABLE
    functions, so a function owned by an unprivileged role wrote a file as the postgres OS user."""
    path, lob = "/tmp/dbfleet-advisor-leak", 4242420  # the large object the function writes out
    host = pgenv.lab.host(pgenv.primary)
    setup = ["DROP SCHEMA IF EXISTS appfn CASCADE", "DROP ROLE IF EXISTS dbf_app", "CREATE ROLE dbf_app NOLOGIN",
             "CREATE SCHEMA appfn AUTHORIZATION dbf_app", "GRANT USAGE ON SCHEMA public TO dbf_app",
             "GRANT SELECT ON hot TO dbf_app",
             f"SELECT lo_unlink({lob}) FROM pg_largeobject_metadata WHERE oid = {lob}",
             f"SELECT lo_from_bytea({lob}, 'pwned')"]
    try:
        with pgenv.connect(pgenv.primary) as conn:
            for statement in setup:
                conn.execute(statement)
            conn.execute("SET ROLE dbf_app")
            conn.execute(LEAK.format(path=path, lob=lob))  # owned by the unprivileged role
            for _ in range(60):  # as dbf_app the function writes nothing, so the query runs and is captured
                conn.execute("SELECT count(*) FROM hot WHERE pad = appfn.leak()").fetchall()
            conn.execute("RESET ROLE")
            # The exploit is real: planned by a superuser, the function writes the file.
            conn.execute("EXPLAIN SELECT count(*) FROM hot WHERE pad = appfn.leak()")
            assert host.file(path).exists
            host.run(f"rm -f {path}")
        pgenv.dbfleet("plan")
        # The advisor did explain the captured query, and pg_stat_statements says as whom: dbf_app.
        explained = pgenv.sql("SELECT userid::regrole::text, calls FROM pg_stat_statements "
                              "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                              "AND query LIKE 'EXPLAIN (FORMAT JSON, VERBOSE) SELECT count(*) FROM hot "
                              "WHERE pad = appfn.leak()%'")
        assert explained and {role for role, _ in explained} == {"dbf_app"}, explained
        assert not host.file(path).exists
    finally:
        host.run(f"rm -f {path}")
        with pgenv.connect(pgenv.primary) as conn:
            conn.execute("DROP SCHEMA IF EXISTS appfn CASCADE")
            conn.execute("REVOKE ALL ON hot FROM dbf_app")
            conn.execute("REVOKE ALL ON SCHEMA public FROM dbf_app")
            conn.execute("DROP ROLE IF EXISTS dbf_app")
            conn.execute(f"SELECT lo_unlink({lob}) FROM pg_largeobject_metadata WHERE oid = {lob}")


def test_the_catalog_query_reads_what_the_statistics_views_show(pgenv: PgEnv, reconciled):
    """The observation reads counters with the functions the pg_stat_user_* views are made of, and comments from
    pg_description (it joined the views once; planning them cost as much as running the query): every index's
    scans, every table's sequential scans and live rows, and comments are the views' and obj_description's."""
    from dbfleet.reconcile.pg_indexes import CATALOG_SQL

    pgenv.sql("COMMENT ON INDEX orders_open_idx IS 'a note'; SELECT count(*) FROM orders WHERE status = 'open'")
    with pgenv.connect(pgenv.primary) as conn, conn.transaction():
        conn.execute("SET LOCAL stats_fetch_consistency = snapshot")  # both reads see one snapshot of counters
        doc = conn.execute(CATALOG_SQL, prepare=True).fetchone()[0]  # type: ignore[index]
        views = {f"index {r[0]}.{r[1]}": (r[2], r[3]) for r in conn.execute(
            "SELECT schemaname, indexrelname, idx_scan, obj_description(indexrelid, 'pg_class') "
            "FROM pg_stat_user_indexes")}
        views |= {f"table {r[0]}.{r[1]}": (r[2], r[3]) for r in conn.execute(
            "SELECT schemaname, s.relname, seq_scan, "
            "CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint ELSE n_live_tup END "
            "FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid")}
    observed = {f"index {i['schema']}.{i['name']}": (i["scans"], i["comment"]) for i in doc["indexes"]}
    observed |= {f"table {t['schema']}.{t['table']}": (t["seq_scans"], t["live_rows"]) for t in doc["tables"]}
    assert observed == views
    assert observed["index public.orders_open_idx"][1] == "a note" and views["table public.orders"][0] > 0


def test_the_cycle_s_prepared_reads_outlive_the_index_advice(pgenv: PgEnv, reconciled):
    """The catalog reads are prepared once per kept connection; the advice's rolled-back transaction and its
    DEALLOCATE ALL run on a connection of their own, so a second cycle prepares nothing again."""
    from dbfleet.engines.access import FleetAccess
    from dbfleet.engines.postgres import PostgresSession
    from dbfleet.reconcile.index_reconciler import IndexReconciler
    from dbfleet.reconcile.loop import Operator
    from dbfleet.spec import load_fleet

    with pgenv.connect(pgenv.primary) as conn:
        for kind in range(60):  # hot sequential scans, so that the advice runs each cycle
            conn.execute("SELECT count(*) FROM hot WHERE kind = %s", [kind]).fetchall()
    sessions: list[PostgresSession] = []

    def session(cluster: Any, access: FleetAccess) -> PostgresSession:
        sessions.append(PostgresSession(cluster, access))
        return sessions[-1]

    fleet = load_fleet(pgenv.write_spec())
    access = FleetAccess.load(pgenv.lab.inventory_path, pgenv.lab.state.secrets)
    operator = Operator(fleet, access, reconcilers=[IndexReconciler()], session_factory=session, keep_sessions=True,
                        clusters={CLUSTER})
    try:
        prepared = []
        for _ in range(2):
            report = operator.run_cycle(apply=False)
            assert report.ok, report.render()
            assert any(a.kind == "advise-index" for a in report.clusters[0].actions), report.render()
            rows = sessions[0].run(pgenv.primary, DB, "SELECT name, statement FROM pg_prepared_statements "
                                                      "WHERE name LIKE '\\_pg3\\_%' ORDER BY name")
            prepared.append([(r["name"], r["statement"]) for r in rows])
        assert len(sessions) == 1
        assert prepared[0] and prepared[1] == prepared[0]
        assert any("pg_stat_get_numscans" in statement for _, statement in prepared[0])
    finally:
        operator.close()
