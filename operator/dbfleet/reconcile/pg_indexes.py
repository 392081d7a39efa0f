"""PostgreSQL indexes: observe them in a few catalog queries per database, advise missing ones, and act.

Per database, one catalog query on the primary returns every index, table
and counter as one JSON document, and one query per replica returns that
replica's scan counters (physical replicas share the primary's OIDs). Both
are prepared once per connection; the primary's reads the counters with the
functions the pg_stat_user_* views are made of (pg_stat_get_numscans, ...)
rather than joining the views, whose planning cost as much as running it.
Missing-index advice runs on a connection of its own (ADVICE_LANE).
Index DDL is always CONCURRENTLY, with a lock timeout so it waits for no one
for long; a lock timeout is a TemporaryError and is retried. Everything goes
through the cluster's engine session.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from dbfleet.actions import Action
from dbfleet.engines.credentials import EXPLAIN_ROLE
from dbfleet.engines.postgres import ADVICE_LANE, PostgresSession, Query
from dbfleet.errors import PermanentError, ReconcileError
from dbfleet.pg_syntax import UnsafeQuery, one_select
from dbfleet.reconcile import advice as plans
from dbfleet.reconcile.index_defs import observed_pg, quote_ident, split_table
from dbfleet.reconcile.index_observation import IndexAdvice, ObservedDatabase, ObservedIndexes, TableStats
from dbfleet.spec import PostgresCluster

log = logging.getLogger(__name__)

MAX_ADVICE_QUERIES = 10

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
                'seq_scans', pg_stat_get_numscans(c.oid),
                'live_rows', CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint ELSE pg_stat_get_live_tuples(c.oid) END
             )), '[]')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
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
                'comment', d.description,
                'scans', pg_stat_get_numscans(i.indexrelid),
                'size_bytes', pg_relation_size(i.indexrelid)
             ) ORDER BY n.nspname, c.relname), '[]')
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_class t ON t.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_am am ON am.oid = c.relam
             LEFT JOIN backing b ON b.conindid = i.indexrelid
             LEFT JOIN pg_description d ON d.objoid = i.indexrelid AND d.classoid = 'pg_catalog.pg_class'::regclass
                                           AND d.objsubid = 0
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
SELECT s.query, r.rolname FROM pg_stat_statements s LEFT JOIN pg_roles r ON r.oid = s.userid
WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND s.query ~* %s
ORDER BY s.total_exec_time DESC LIMIT 20
"""


@dataclass(frozen=True)
class Candidate:
    """A query to explain for missing-index advice, and the role whose rights it is planned with."""

    query: str
    source: str
    scopes: set[str] | None
    """The tables whose scans are worth an index (None: any the query scans)."""
    role: str
    """The role that ran it (pg_stat_statements), or the read-only explain role for a query from the spec."""


class PostgresIndexes:
    """The index reconciler's PostgreSQL half, on one cluster's session."""

    def __init__(self, session: PostgresSession):
        self.session = session
        self._prepared = 0

    def observe(self) -> ObservedIndexes:
        cluster = self.session.cluster
        primary = self.session.primary()
        topology = self.session.observe_topology()
        replicas = [m.host for m in topology.members if m.role == "replica"]
        down = [m.host for m in topology.members if not m.up]
        observed = ObservedIndexes(cluster.name, self.session.engine)
        for dbname in cluster.databases:
            try:
                observed.databases[dbname] = self._observe_database(cluster, dbname, primary, replicas, down)
            except PermanentError as exc:
                log.warning("%s: database %s not observed: %s", cluster.name, dbname, exc)
                observed.skipped[dbname] = exc.message
        return observed

    def _observe_database(self, cluster: PostgresCluster, dbname: str, primary: str, replicas: list[str],
                          down: list[str]) -> ObservedDatabase:
        doc = self.session.run(primary, dbname, CATALOG_SQL, prepare=True)[0]["doc"]
        scans: dict[int, dict[str, int]] = {int(i["oid"]): {primary: int(i["scans"])} for i in doc["indexes"]}
        seq: dict[int, int] = {int(t["oid"]): int(t["seq_scans"]) for t in doc["tables"]}
        windows = [float(doc["window_days"] or 0)]
        counted, missing = [primary], list(down)
        for replica in replicas:
            try:
                rdoc = self.session.run(replica, dbname, REPLICA_SQL, prepare=True)[0]["doc"]
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

    def _advice_run(self, primary: str, dbname: str, query: Query, params: Any = None) -> list[dict[str, Any]]:
        """A statement of the advice, on its own connection (ADVICE_LANE): its transaction always rolls back."""
        return self.session.run(primary, dbname, query, params, lane=ADVICE_LANE)

    def _advise(self, cluster: PostgresCluster, primary: str, database: ObservedDatabase,
                extensions: set[str]) -> None:
        rule = cluster.indexes.missing
        if not rule.report:
            return
        hot = {t.scope: t for t in database.tables.values()
               if t.seq_scans >= rule.min_seq_scans and t.live_rows >= rule.min_rows}
        candidates = [Candidate(q, "a query named in the spec", None, EXPLAIN_ROLE) for q in rule.queries]
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
        conn = self.session.connection(primary, database.name, ADVICE_LANE)
        try:
            with conn.transaction(force_rollback=True):
                self._advice_run(primary, database.name, "SET TRANSACTION READ ONLY")
                roles = {r["rolname"] for r in self._advice_run(primary, database.name,
                                                                 "SELECT rolname FROM pg_roles")}
                for candidate in candidates[:MAX_ADVICE_QUERIES]:
                    try:
                        query = one_select(candidate.query)
                    except UnsafeQuery as exc:
                        database.notes.append(f"not explained, {exc}: {candidate.query[:80]!r}")
                        continue
                    if candidate.role not in roles:
                        database.notes.append(f"not explained, role {candidate.role!r} is missing (run `dbfleet "
                                              f"configure`): {candidate.query[:80]!r}")
                        continue
                    try:
                        with conn.transaction():  # a savepoint: one bad query does not spoil the others
                            # Planning runs IMMUTABLE functions, so never with more rights than the role
                            # the query belongs to: the one that ran it, or the read-only explain role.
                            self._advice_run(primary, database.name,
                                             sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(candidate.role)))
                            self._advise_query(primary, database, query, candidate.source, candidate.scopes)
                    except PermanentError as exc:
                        database.notes.append(f"cannot explain {candidate.query[:80]!r}: {exc.message}")
        finally:
            if not conn.closed:
                self._advice_run(primary, database.name, "SELECT hypopg_reset()")
                self._advice_run(primary, database.name, "DEALLOCATE ALL")

    def _hot_queries(self, primary: str, database: ObservedDatabase,
                     hot: dict[str, TableStats]) -> list[Candidate]:
        names = sorted({re.escape(split_table(scope)[1]) for scope in hot})
        pattern = r"\m(" + "|".join(names) + r")\M"
        try:
            rows = self.session.run(primary, database.name, STATEMENTS_SQL, [pattern])
        except PermanentError as exc:  # say, the extension exists but is not in shared_preload_libraries
            database.notes.append(f"pg_stat_statements unreadable ({exc.message}); hot tables not explained")
            return []
        found: list[Candidate] = []
        for row in rows:
            query = row["query"]
            if not plans.is_read_query(query) or row["rolname"] is None:
                continue
            for scope, table in hot.items():
                if plans.mentions_table(query, split_table(scope)[1]):
                    source = f"hot sequential scans on {scope} ({table.seq_scans} scans, {table.live_rows} rows)"
                    found.append(Candidate(query, source, set(hot), row["rolname"]))
                    break
        return found

    def _advise_query(self, primary: str, database: ObservedDatabase, query: str, source: str,
                      scopes: set[str] | None) -> None:
        before = self._explain(primary, database.name, query)
        for scan in plans.seq_scans(before):
            if scan.scope not in database.tables or (scopes is not None and scan.scope not in scopes):
                continue
            rows = self._advice_run(primary, database.name,
                            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                            "AND NOT attisdropped", [f"{quote_ident(scan.schema)}.{quote_ident(scan.table)}"])
            keys = plans.candidate_keys(scan.filter, {r["attname"] for r in rows})
            if not keys or any(i.keys[: len(keys)] == keys and i.valid for i in database.indexes
                               if i.scope == scan.scope):
                continue
            self._advice_run(primary, database.name, "SELECT hypopg_create_index(%s)",
                     [plans.hypothetical_sql(scan.schema, scan.table, keys)])
            after = self._explain(primary, database.name, query)
            self._advice_run(primary, database.name, "SELECT hypopg_reset()")
            database.advice.append(IndexAdvice(
                database.name, scan.scope, keys, plans.advice_sql(scan.schema, scan.table, keys), query, source,
                plans.plan_cost(before), plans.plan_cost(after)))

    def _explain(self, primary: str, dbname: str, query: str) -> Any:
        """EXPLAIN without running the query; a normalized query with $n is explained as a generic plan.

        `query` is one SELECT as pg_syntax.one_select printed it, so it is one statement whatever it said.
        """
        params = plans.parameter_count(query)
        if params == 0:
            explain = sql.SQL("EXPLAIN (FORMAT JSON, VERBOSE) ") + sql.SQL(query)
            return self._advice_run(primary, dbname, explain)[0]["QUERY PLAN"]
        # Prepared statements outlive a rolled-back savepoint, so each gets its own name; _advise deallocates
        # them all at the end, on the advice lane, where nothing is prepared for the cycle's catalog reads.
        self._prepared += 1
        name = f"dbfleet_advice_{self._prepared}"
        self._advice_run(primary, dbname, "SET LOCAL plan_cache_mode = force_generic_plan")
        self._advice_run(primary, dbname, sql.SQL(f"PREPARE {name} AS ") + sql.SQL(query))
        execute = f"EXPLAIN (FORMAT JSON, VERBOSE) EXECUTE {name}(" + ", ".join(["NULL"] * params) + ")"
        return self._advice_run(primary, dbname, execute)[0]["QUERY PLAN"]

    # -- indexes: act --------------------------------------------------------

    def apply(self, action: Action) -> str:
        primary = self.session.primary()
        detail = action.detail
        dbname = detail["database"]
        verbs = {"create-index": "created", "rebuild-index": "rebuilt", "drop-index": "dropped"}
        if action.kind not in verbs:
            raise PermanentError(f"the postgres adapter cannot apply {action.kind}")
        if action.kind == "drop-index":
            self._refuse_constraint_index(primary, dbname, detail)
        self.session.run(primary, dbname, "SET statement_timeout = 0")  # a concurrent build takes as long as it takes
        try:
            for statement in detail["statements"]:
                self.session.run(primary, dbname, statement)
            if detail.get("tag"):
                self.session.run(primary, dbname, sql.SQL("COMMENT ON INDEX {}.{} IS {}").format(
                    sql.Identifier(detail["schema"]), sql.Identifier(detail["name"]), sql.Literal(detail["tag"])))
        finally:
            with contextlib.suppress(ReconcileError):  # a broken connection resets everything anyway
                self.session.run(primary, dbname, "RESET statement_timeout")
        return f"{verbs[action.kind]} {action.target} on {primary}"

    def _refuse_constraint_index(self, primary: str, dbname: str, detail: dict[str, Any]) -> None:
        """Checked again right before a drop: the diff may be a cycle old, and a constraint index is never dropped."""
        rows = self.session.run(primary, dbname,
                        "SELECT string_agg(conname, ', ') AS constraints FROM pg_constraint "
                        "WHERE conindid = to_regclass(%s)",
                        [f"{quote_ident(detail['schema'])}.{quote_ident(detail['name'])}"])
        if rows and rows[0]["constraints"]:
            raise PermanentError(f"refusing to drop: the index backs {rows[0]['constraints']}")
