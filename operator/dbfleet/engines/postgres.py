"""PostgreSQL adapter: find the primary, observe indexes in a few catalog queries per database, act.

The operator connects as the `postgres` superuser over TLS (sslmode=require
when the cluster has TLS) to each host's private address. The current primary
is whichever member is not in recovery, so a switchover is followed. Per
database, one catalog query on the primary returns every index, table and
counter as one JSON document, and one query per replica returns that
replica's scan counters (physical replicas share the primary's OIDs).
Index DDL is always CONCURRENTLY, with a lock timeout so it waits for no one
for long; a lock timeout is a TemporaryError and is retried.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import psycopg
from dbfleet.engines.base import CONNECT_TIMEOUT, EngineSession, FleetAccess, Member, Topology
from dbfleet.reconcile import advice as plans
from dbfleet.actions import Action
from dbfleet.errors import PermanentError, ReconcileError, TemporaryError
from dbfleet.reconcile.index_defs import observed_pg, quote_ident, split_table
from dbfleet.reconcile.indexes import IndexAdvice, ObservedDatabase, ObservedIndexes, TableStats
from dbfleet.spec import PostgresCluster
from psycopg import sql
from psycopg.rows import dict_row

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
SUPERUSER_SECRET = "postgres_superuser_password"
APPLICATION_NAME = "dbfleet-operator"
SESSION_OPTIONS = "-c lock_timeout=10s -c statement_timeout=120s"
MAX_ADVICE_QUERIES = 10
TEMPORARY_SQLSTATES = {
    "25006",  # read_only_sql_transaction: the primary moved under us
    "55P03",  # lock_not_available: lock_timeout
    "57014",  # query_canceled: statement_timeout
    "40001", "40P01",  # serialization failure, deadlock
}

PERMANENT_CONNECT_SQLSTATES = {"3D000", "28P01", "28000"}  # no such database, bad password, rejected by pg_hba
PERMANENT_CONNECT_MESSAGES = ("does not exist", "password authentication failed", "no pg_hba.conf entry")

_NOT_SYSTEM = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'"

CATALOG_SQL = f"""
WITH building AS (SELECT coalesce(array_agg(index_relid), '{{}}') AS ids FROM pg_stat_progress_create_index),
backing AS (SELECT conindid, string_agg(format('constraint %s', conname), ', ' ORDER BY conname) AS names
            FROM pg_constraint WHERE conindid <> 0 GROUP BY conindid)
SELECT json_build_object(
  'window_days', (SELECT extract(epoch FROM now() - coalesce(stats_reset, pg_postmaster_start_time())) / 86400
                  FROM pg_stat_database WHERE datname = current_database()),
  'extensions', (SELECT coalesce(json_agg(extname), '[]') FROM pg_extension),
  'tables', (SELECT coalesce(json_agg(json_build_object(
                'oid', c.oid, 'schema', n.nspname, 'table', c.relname,
                'seq_scans', coalesce(s.seq_scan, 0),
                'live_rows', CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint ELSE coalesce(s.n_live_tup, 0) END
             )), '[]')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
             WHERE c.relkind IN ('r', 'p', 'm') AND {_NOT_SYSTEM}),
  'indexes', (SELECT coalesce(json_agg(json_build_object(
                'oid', i.indexrelid, 'schema', n.nspname, 'table', t.relname, 'name', c.relname,
                'method', am.amname, 'unique', i.indisunique, 'valid', i.indisvalid AND i.indisready,
                'building', i.indexrelid = ANY ((SELECT ids FROM building)::oid[]),
                'definition', pg_get_indexdef(i.indexrelid),
                'keys', ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true)
                                     || CASE i.indoption[k - 1] & 3 WHEN 1 THEN ' DESC NULLS LAST'
                                        WHEN 2 THEN ' NULLS FIRST' WHEN 3 THEN ' DESC' ELSE '' END
                              FROM generate_series(1, i.indnkeyatts) AS k ORDER BY k),
                'include', ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true)
                                 FROM generate_series(i.indnkeyatts + 1, i.indnatts) AS k ORDER BY k),
                'predicate', pg_get_expr(i.indpred, i.indrelid, true),
                'constraint', b.names,
                'comment', obj_description(i.indexrelid, 'pg_class'),
                'scans', coalesce(s.idx_scan, 0),
                'size_bytes', pg_relation_size(i.indexrelid)
             ) ORDER BY n.nspname, c.relname), '[]')
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_class t ON t.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_am am ON am.oid = c.relam
             LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = i.indexrelid
             LEFT JOIN backing b ON b.conindid = i.indexrelid
             WHERE {_NOT_SYSTEM})
) AS doc
"""

REPLICA_SQL = """
SELECT json_build_object(
  'window_days', (SELECT extract(epoch FROM now() - coalesce(stats_reset, pg_postmaster_start_time())) / 86400
                  FROM pg_stat_database WHERE datname = current_database()),
  'scans', (SELECT coalesce(json_object_agg(indexrelid, idx_scan), '{}') FROM pg_stat_user_indexes),
  'seq_scans', (SELECT coalesce(json_object_agg(relid, seq_scan), '{}') FROM pg_stat_user_tables)
) AS doc
"""

STATEMENTS_SQL = """
SELECT query FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND query ~* %s
ORDER BY total_exec_time DESC LIMIT 20
"""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def classify(exc: psycopg.Error, host: str, what: str) -> ReconcileError:
    """A driver error as a TemporaryError (retry later) or a PermanentError (report)."""
    state = getattr(exc, "sqlstate", None) or ""
    message = f"{what}: {_first_line(exc)}"
    if state in PERMANENT_CONNECT_SQLSTATES or any(p in message for p in PERMANENT_CONNECT_MESSAGES):
        return PermanentError(message, host=host)  # retrying will not create the database or fix the password
    if isinstance(exc, psycopg.OperationalError) or state in TEMPORARY_SQLSTATES:
        return TemporaryError(message, host=host)
    return PermanentError(message, host=host)


def connect(cluster: PostgresCluster, access: FleetAccess, host: str, dbname: str,
            application_name: str = APPLICATION_NAME) -> psycopg.Connection[Any]:
    """An autocommit superuser connection to one member; the password never appears in errors or logs."""
    try:
        return psycopg.connect(
            host=access.address(host), port=cluster.port, dbname=dbname, user=SUPERUSER,
            password=access.secret(SUPERUSER_SECRET), sslmode="require" if cluster.tls.enabled else "prefer",
            connect_timeout=CONNECT_TIMEOUT, application_name=application_name, options=SESSION_OPTIONS,
            autocommit=True, prepare_threshold=None,
        )
    except psycopg.Error as exc:
        raise classify(exc, host, f"connect to database {dbname}") from None


def find_primary(cluster: PostgresCluster, access: FleetAccess, dbname: str = "postgres",
                 application_name: str = APPLICATION_NAME) -> tuple[str, psycopg.Connection[Any]]:
    """The member not in recovery, with an open connection to it."""
    failures = []
    for host in [h.name for h in cluster.all_hosts()]:
        try:
            conn = connect(cluster, access, host, dbname, application_name)
        except ReconcileError as exc:
            failures.append(f"{host}: {exc.message}")
            continue
        if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:  # type: ignore[index]
            return host, conn
        conn.close()
    raise TemporaryError("no primary found (" + "; ".join(failures or ["every member is in recovery"]) + ")",
                         cluster=cluster.name)


class PostgresSession(EngineSession):
    engine = "postgres"

    def __init__(self, cluster: PostgresCluster, access: FleetAccess):
        super().__init__(cluster, access)
        self._conns: dict[tuple[str, str], psycopg.Connection[Any]] = {}
        self._topology: Topology | None = None
        self._prepared = 0

    # -- connections ---------------------------------------------------------

    def connection(self, host: str, dbname: str) -> psycopg.Connection[Any]:
        conn = self._conns.get((host, dbname))
        if conn is None or conn.closed:
            conn = connect(self.cluster, self.access, host, dbname)
            self.connections += 1
            self._conns[(host, dbname)] = conn
        return conn

    def run(self, host: str, dbname: str, query: Any, params: Any = None) -> list[dict[str, Any]]:
        """One statement on one member; driver errors become Temporary or Permanent errors naming the host."""
        conn = self.connection(host, dbname)
        self.queries += 1
        try:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                self._conns.pop((host, dbname), None)
            raise classify(exc, host, f"database {dbname}") from None

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def begin_cycle(self) -> None:
        self._topology = None  # the primary may have moved since the last cycle

    # -- topology ------------------------------------------------------------

    def observe_topology(self) -> Topology:
        if self._topology is None:
            members = []
            for host in [h.name for h in self.cluster.all_hosts()]:
                try:
                    row = self.run(host, "postgres", "SELECT pg_is_in_recovery() AS recovery")[0]
                    members.append(Member(host, "replica" if row["recovery"] else "primary", True))
                except ReconcileError as exc:
                    members.append(Member(host, "unknown", False, exc.message))
            primaries = [m.host for m in members if m.role == "primary"]
            facts: dict[str, Any] = {}
            if len(primaries) == 1:
                rows = self.run(primaries[0], "postgres", "SELECT application_name FROM pg_stat_replication")
                facts["standbys"] = sorted(r["application_name"] for r in rows)
            self._topology = Topology(self.cluster.name, self.engine,
                                      primaries[0] if len(primaries) == 1 else None, tuple(members), facts)
        return self._topology

    def primary(self) -> str:
        topology = self.observe_topology()
        if topology.primary is None:
            primaries = [m.host for m in topology.members if m.role == "primary"]
            why = f"several members claim primary: {', '.join(primaries)}" if primaries else "no primary answers"
            raise TemporaryError(why, cluster=self.cluster.name)
        return topology.primary

    # -- indexes: observe ----------------------------------------------------

    def observe_indexes(self, cluster: PostgresCluster) -> ObservedIndexes:
        primary = self.primary()
        topology = self.observe_topology()
        replicas = [m.host for m in topology.members if m.role == "replica"]
        down = [m.host for m in topology.members if not m.up]
        observed = ObservedIndexes(cluster.name, self.engine)
        for dbname in cluster.databases:
            try:
                observed.databases[dbname] = self._observe_database(cluster, dbname, primary, replicas, down)
            except PermanentError as exc:
                log.warning("%s: database %s not observed: %s", cluster.name, dbname, exc)
                observed.skipped[dbname] = exc.message
        return observed

    def _observe_database(self, cluster: PostgresCluster, dbname: str, primary: str, replicas: list[str],
                          down: list[str]) -> ObservedDatabase:
        doc = self.run(primary, dbname, CATALOG_SQL)[0]["doc"]
        scans: dict[int, dict[str, int]] = {int(i["oid"]): {primary: int(i["scans"])} for i in doc["indexes"]}
        seq: dict[int, int] = {int(t["oid"]): int(t["seq_scans"]) for t in doc["tables"]}
        windows = [float(doc["window_days"] or 0)]
        counted, missing = [primary], list(down)
        for replica in replicas:
            try:
                rdoc = self.run(replica, dbname, REPLICA_SQL)[0]["doc"]
            except ReconcileError as exc:
                log.info("%s: replica %s counters unread: %s", cluster.name, replica, exc)
                missing.append(replica)
                continue
            counted.append(replica)
            windows.append(float(rdoc["window_days"] or 0))
            for oid, count in rdoc["scans"].items():
                if int(oid) in scans:
                    scans[int(oid)][replica] = int(count)
            for oid, count in rdoc["seq_scans"].items():
                if int(oid) in seq:
                    seq[int(oid)] += int(count)
        database = ObservedDatabase(
            dbname,
            indexes=[observed_pg(dbname, row, scans[int(row["oid"])]) for row in doc["indexes"]],
            tables={f"{t['schema']}.{t['table']}": TableStats(f"{t['schema']}.{t['table']}", seq[int(t["oid"])],
                                                                int(t["live_rows"])) for t in doc["tables"]},
            stats_window_days=min(windows),
            members_counted=tuple(counted),
            members_missing=tuple(missing),
        )
        if missing:
            database.notes.append(f"usage counters of {', '.join(missing)} unread; no index is called unused")
        self._advise(cluster, primary, database, set(doc["extensions"]))
        return database

    # -- indexes: missing-index advice with hypopg ---------------------------

    def _advise(self, cluster: PostgresCluster, primary: str, database: ObservedDatabase,
                extensions: set[str]) -> None:
        rule = cluster.indexes.missing
        if not rule.report:
            return
        hot = {t.scope: t for t in database.tables.values()
               if t.seq_scans >= rule.min_seq_scans and t.live_rows >= rule.min_rows}
        candidates: list[tuple[str, str, set[str] | None]] = [(q, "a query named in the spec", None)
                                                              for q in rule.queries]
        if not hot and not candidates:
            return
        if "hypopg" not in extensions:
            database.notes.append("hypopg is not installed here; missing-index advice skipped")
            return
        if hot and "pg_stat_statements" in extensions:
            candidates += self._hot_queries(primary, database, hot)
        elif hot:
            database.notes.append(f"hot sequential scans on {', '.join(sorted(hot))}, but pg_stat_statements "
                                  "is not installed to name their queries")
        conn = self.connection(primary, database.name)
        try:
            with conn.transaction(force_rollback=True):
                self.run(primary, database.name, "SET TRANSACTION READ ONLY")
                for query, source, scopes in candidates[:MAX_ADVICE_QUERIES]:
                    try:
                        with conn.transaction():  # a savepoint: one bad query does not spoil the others
                            self._advise_query(primary, database, query, source, scopes)
                    except PermanentError as exc:
                        database.notes.append(f"cannot explain {query[:80]!r}: {exc.message}")
        finally:
            if not conn.closed:
                self.run(primary, database.name, "SELECT hypopg_reset()")
                self.run(primary, database.name, "DEALLOCATE ALL")

    def _hot_queries(self, primary: str, database: ObservedDatabase,
                     hot: dict[str, TableStats]) -> list[tuple[str, str, set[str] | None]]:
        names = sorted({split_table(scope)[1] for scope in hot})
        pattern = r"\m(" + "|".join(names) + r")\M"
        try:
            rows = self.run(primary, database.name, STATEMENTS_SQL, [pattern])
        except PermanentError as exc:  # say, the extension exists but is not in shared_preload_libraries
            database.notes.append(f"pg_stat_statements unreadable ({exc.message}); hot tables not explained")
            return []
        found: list[tuple[str, str, set[str] | None]] = []
        for row in rows:
            query = row["query"]
            if not plans.is_read_query(query):
                continue
            for scope, table in hot.items():
                if plans.mentions_table(query, split_table(scope)[1]):
                    source = f"hot sequential scans on {scope} ({table.seq_scans} scans, {table.live_rows} rows)"
                    found.append((query, source, set(hot)))
                    break
        return found

    def _advise_query(self, primary: str, database: ObservedDatabase, query: str, source: str,
                      scopes: set[str] | None) -> None:
        before = self._explain(primary, database.name, query)
        for scan in plans.seq_scans(before):
            if scan.scope not in database.tables or (scopes is not None and scan.scope not in scopes):
                continue
            rows = self.run(primary, database.name,
                            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                            "AND NOT attisdropped", [f"{quote_ident(scan.schema)}.{quote_ident(scan.table)}"])
            keys = plans.candidate_keys(scan.filter, {r["attname"] for r in rows})
            if not keys or any(i.keys[: len(keys)] == keys and i.valid for i in database.indexes
                               if i.scope == scan.scope):
                continue
            self.run(primary, database.name, "SELECT hypopg_create_index(%s)",
                     [plans.hypothetical_sql(scan.schema, scan.table, keys)])
            after = self._explain(primary, database.name, query)
            self.run(primary, database.name, "SELECT hypopg_reset()")
            database.advice.append(IndexAdvice(
                database.name, scan.scope, keys, plans.advice_sql(scan.schema, scan.table, keys), query, source,
                plans.plan_cost(before), plans.plan_cost(after)))

    def _explain(self, primary: str, dbname: str, query: str) -> Any:
        """EXPLAIN without running the query; a normalized query with $n is explained as a generic plan."""
        params = plans.parameter_count(query)
        if params == 0:
            return self.run(primary, dbname, sql.SQL("EXPLAIN (FORMAT JSON, VERBOSE) ") + sql.SQL(query))[0]["QUERY PLAN"]
        # Prepared statements outlive a rolled-back savepoint, so each gets its own name;
        # _advise deallocates them all at the end (psycopg's own auto-prepare is off).
        self._prepared += 1
        name = f"dbfleet_advice_{self._prepared}"
        self.run(primary, dbname, "SET LOCAL plan_cache_mode = force_generic_plan")
        self.run(primary, dbname, sql.SQL(f"PREPARE {name} AS ") + sql.SQL(query))
        execute = f"EXPLAIN (FORMAT JSON, VERBOSE) EXECUTE {name}(" + ", ".join(["NULL"] * params) + ")"
        return self.run(primary, dbname, execute)[0]["QUERY PLAN"]

    # -- indexes: act --------------------------------------------------------

    def apply_index_action(self, action: Action) -> str:
        primary = self.primary()
        detail = action.detail
        dbname = detail["database"]
        verbs = {"create-index": "created", "rebuild-index": "rebuilt", "drop-index": "dropped"}
        if action.kind not in verbs:
            raise PermanentError(f"the postgres adapter cannot apply {action.kind}")
        if action.kind == "drop-index":
            self._refuse_constraint_index(primary, dbname, detail)
        self.run(primary, dbname, "SET statement_timeout = 0")  # a concurrent build takes as long as it takes
        try:
            for statement in detail["statements"]:
                self.run(primary, dbname, statement)
            if detail.get("tag"):
                self.run(primary, dbname, sql.SQL("COMMENT ON INDEX {}.{} IS {}").format(
                    sql.Identifier(detail["schema"]), sql.Identifier(detail["name"]), sql.Literal(detail["tag"])))
        finally:
            with contextlib.suppress(ReconcileError):  # a broken connection resets everything anyway
                self.run(primary, dbname, "RESET statement_timeout")
        return f"{verbs[action.kind]} {action.target} on {primary}"

    def _refuse_constraint_index(self, primary: str, dbname: str, detail: dict[str, Any]) -> None:
        """Checked again right before a drop: the diff may be a cycle old, and a constraint index is never dropped."""
        rows = self.run(primary, dbname,
                        "SELECT string_agg(conname, ', ') AS constraints FROM pg_constraint "
                        "WHERE conindid = to_regclass(%s)",
                        [f"{quote_ident(detail['schema'])}.{quote_ident(detail['name'])}"])
        if rows and rows[0]["constraints"]:
            raise PermanentError(f"refusing to drop: the index backs {rows[0]['constraints']}")
