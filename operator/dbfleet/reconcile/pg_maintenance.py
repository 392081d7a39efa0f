"""PostgreSQL maintenance: measure bloat, vacuum health and wraparound on the primary, and act in the window.

Per database, one catalog query returns every table and index with its size, statistics, storage
parameters and vacuum counters as one JSON document. Bloat is then measured two ways:

- under the policy's `exact_below` bound, from the relation itself: `pgstatindex` (B-trees; it reads every
  page of the index) and `pgstattuple_approx` (tables; it skips the pages the visibility map says are
  all-visible), both from the pgstattuple extension;
- above it, or without pgstattuple, estimated from the catalog alone (reltuples, relpages, pg_stats average
  widths and null fractions, fillfactor): no page of the relation is read, so a cycle never scans a large
  relation. The estimate can be off by the width of what pg_stats does not see (alignment within a row,
  TOAST pointers), so it is marked `estimate` wherever it is shown.

Free disk is what `df` says of the primary's data_directory (asked of the server, so it holds however
PostgreSQL is managed), through the host executor. Rewrites go through the same session: REINDEX INDEX
CONCURRENTLY and DROP INDEX CONCURRENTLY with the policy's lock_timeout; pg_repack runs on the primary host
as postgres over the local socket, with its own lock waits bounded the same way.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import shlex
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from dbfleet.actions import Action
from dbfleet.engines.postgres import PostgresSession
from dbfleet.errors import PermanentError, ReconcileError, TemporaryError
from dbfleet.reconcile.index_defs import quote_ident
from dbfleet.reconcile.maintenance_observation import (
    ESTIMATE,
    EXACT,
    EXACT_TABLE,
    DatabaseAge,
    Debris,
    IndexBloat,
    MaintenanceDatabase,
    ObservedMaintenance,
    RewriteInFlight,
    TableBloat,
    TableVacuum,
)
from dbfleet.spec import AutovacuumSettings, PostgresCluster, PostgresMaintenance, lock_timeout_ms, size_bytes

log = logging.getLogger(__name__)

PAGE_HEADER = 24
BTREE_SPECIAL = 16
ITEM_ID = 4
INDEX_TUPLE_HEADER = 8
HEAP_TUPLE_HEADER = 23
MAXALIGN = 8
DEFAULT_INDEX_FILLFACTOR = 90

_NOT_SYSTEM = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'"

CATALOG_SQL = f"""
WITH building AS (SELECT coalesce(array_agg(index_relid), '{{}}') AS ids,
                         coalesce(array_agg(relid), '{{}}') AS tables FROM pg_stat_progress_create_index)
SELECT json_build_object(
  'extensions', (SELECT coalesce(json_agg(extname), '[]') FROM pg_extension),
  'block_size', current_setting('block_size')::int,
  'tables', (SELECT coalesce(json_agg(json_build_object(
      'oid', c.oid, 'schema', n.nspname, 'name', c.relname, 'kind', c.relkind,
      'size', pg_relation_size(c.oid), 'total', pg_total_relation_size(c.oid),
      'pages', c.relpages, 'tuples', c.reltuples, 'reloptions', coalesce(c.reloptions, '{{}}'),
      'row_width', (SELECT CASE WHEN count(*) = count(s.avg_width) THEN sum((1 - s.null_frac) * s.avg_width) END
                    FROM pg_attribute a LEFT JOIN pg_stats s ON s.schemaname = n.nspname
                         AND s.tablename = c.relname AND s.attname = a.attname AND NOT s.inherited
                    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
      'columns', (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                  AND NOT a.attisdropped),
      'has_nulls', (SELECT coalesce(bool_or(s.null_frac > 0), false) FROM pg_stats s
                    WHERE s.schemaname = n.nspname AND s.tablename = c.relname),
      'repackable', EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid AND x.indisvalid AND x.indisunique
                            AND x.indpred IS NULL AND x.indexprs IS NULL AND 0 <> ALL (x.indkey)
                            AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                                            AND a.attnum = ANY (x.indkey) AND NOT a.attnotnull)),
      'live', coalesce(s.n_live_tup, 0), 'dead', coalesce(s.n_dead_tup, 0),
      'last_vacuum', extract(epoch FROM greatest(s.last_vacuum, s.last_autovacuum)),
      'last_autovacuum', extract(epoch FROM s.last_autovacuum),
      'last_autoanalyze', extract(epoch FROM s.last_autoanalyze)
    ) ORDER BY n.nspname, c.relname), '[]')
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
    WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't' AND {_NOT_SYSTEM}),
  'indexes', (SELECT coalesce(json_agg(json_build_object(
      'oid', i.indexrelid, 'schema', n.nspname, 'table', t.relname, 'name', c.relname,
      'btree', am.amname = 'btree', 'valid', i.indisvalid AND i.indisready,
      'building', i.indexrelid = ANY ((SELECT ids FROM building)::oid[])
                  OR i.indrelid = ANY ((SELECT tables FROM building)::oid[]),
      'size', pg_relation_size(i.indexrelid), 'tuples', c.reltuples,
      'fillfactor', (SELECT option_value FROM pg_options_to_table(c.reloptions) WHERE option_name = 'fillfactor'),
      'key_width', (SELECT CASE WHEN count(*) = count(coalesce(si.avg_width, st.avg_width))
                                THEN sum(coalesce(si.avg_width, st.avg_width)) END
                    FROM pg_attribute ia
                    LEFT JOIN pg_stats si ON si.schemaname = n.nspname AND si.tablename = c.relname
                         AND si.attname = ia.attname
                    LEFT JOIN pg_stats st ON i.indkey[ia.attnum - 1] <> 0 AND st.schemaname = n.nspname
                         AND st.tablename = t.relname AND st.attname = ia.attname AND NOT st.inherited
                    WHERE ia.attrelid = i.indexrelid AND ia.attnum > 0)
    ) ORDER BY n.nspname, c.relname), '[]')
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am am ON am.oid = c.relam
    WHERE t.relpersistence <> 't' AND {_NOT_SYSTEM}),
  'repack_debris', (SELECT coalesce(json_agg(d.what ORDER BY d.what), '[]') FROM (
      SELECT format('trigger %I on %I.%I', tg.tgname, n.nspname, c.relname) AS what
      FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE tg.tgname LIKE 'repack\\_trigger%'
      UNION ALL
      SELECT format('table %I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'repack' AND c.relkind = 'r' AND c.relname ~ '^(log|table)_[0-9]+$') d)
) AS doc
"""

REWRITE_APP = "dbfleet-rewrite"
REPACK_APP = "dbfleet-repack"
"""The application_name a rewrite statement (REINDEX INDEX CONCURRENTLY) and pg_repack run under: what
pg_stat_activity shows of them, whichever operator started them and whether it still runs."""

IN_FLIGHT_SQL = """
SELECT datname, pid, left(query, 300) AS query, extract(epoch FROM now() - query_start)::float AS seconds
FROM pg_stat_activity
WHERE application_name = ANY (%s) AND state <> 'idle' AND pid <> pg_backend_pid()
ORDER BY query_start, pid
"""

AGES_SQL = """
SELECT datname, age(datfrozenxid)::bigint AS xid_age, mxid_age(datminmxid)::bigint AS mxid_age
FROM pg_database ORDER BY datname
"""

DEBRIS_NAME = r"_cc(new|old)[0-9]*$"


def maxalign(n: float) -> int:
    return int(math.ceil(n / MAXALIGN) * MAXALIGN)


def index_waste_from_stat(stat: dict[str, Any], fillfactor: int, block_size: int) -> int:
    """Wasted bytes of a B-tree from pgstatindex: its size less the pages its live entries would fill when packed
    to the fillfactor (leaf pages at their density over the fillfactor, the internal pages, the metapage)."""
    density = float(stat["avg_leaf_density"])
    leaf = int(stat["leaf_pages"])
    if math.isnan(density) or leaf == 0:
        density, leaf = 0.0, 0
    needed = 1 + int(stat["internal_pages"]) + math.ceil(leaf * density / fillfactor)
    return max(0, int(stat["index_size"]) - needed * block_size)


def estimate_index_pages(tuples: float, key_width: float, fillfactor: int, block_size: int) -> int:
    """Pages a freshly built B-tree of `tuples` entries of `key_width` bytes would take: leaf pages filled to the
    fillfactor, one internal entry per leaf page, the metapage."""
    entry = ITEM_ID + maxalign(INDEX_TUPLE_HEADER + key_width)
    usable = block_size - PAGE_HEADER - BTREE_SPECIAL
    leaf = math.ceil(max(tuples, 0) * entry / (usable * fillfactor / 100))
    internal = math.ceil(leaf * entry / usable) if leaf > 1 else 0
    return 1 + max(leaf, 1) + internal


def estimate_table_pages(tuples: float, row_width: float, columns: int, has_nulls: bool, fillfactor: int,
                         block_size: int) -> int:
    """Pages a freshly written heap of `tuples` rows would take, from pg_stats' average widths."""
    bitmap = math.ceil(columns / 8) if has_nulls else 0
    row = ITEM_ID + maxalign(maxalign(HEAP_TUPLE_HEADER + bitmap) + row_width)
    usable = (block_size - PAGE_HEADER) * fillfactor / 100
    return max(1, math.ceil(max(tuples, 0) * row / usable)) if tuples > 0 else 0


def table_waste_from_approx(stat: dict[str, Any], fillfactor: int) -> int:
    """Wasted bytes of a table from pgstattuple_approx: dead tuples and free space, less the free space the
    fillfactor keeps on purpose."""
    table_len = int(stat["table_len"])
    waste = int(stat["dead_tuple_len"]) + int(stat["approx_free_space"]) - table_len * (100 - fillfactor) / 100
    return max(0, int(waste))


def parse_reloptions(options: list[str]) -> dict[str, str]:
    return dict(option.split("=", 1) for option in options if "=" in option)


def _when(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(float(epoch), UTC).replace(tzinfo=None)


Clock = Callable[[], datetime]
DiskProbe = Callable[[PostgresSession, str], tuple[int | None, str]]


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def probe_free_disk(session: PostgresSession, host: str) -> tuple[int | None, str]:
    """Free bytes on the file system of the server's data_directory, by `df` on the host (executor)."""
    directory = str(session.run(host, "postgres", "SHOW data_directory")[0]["data_directory"])
    try:
        result = session.access.executor.run(host, ["df", "--block-size=1", "--output=avail", directory], timeout=30)
    except ReconcileError as exc:
        log.info("%s: free disk on %s unread: %s", session.cluster.name, host, exc)
        return None, directory
    lines = result.out.split()
    if not result.ok or len(lines) < 2 or not lines[-1].isdigit():
        log.info("%s: df on %s gave %r", session.cluster.name, host, result.tail())
        return None, directory
    return int(lines[-1]), directory


class PgMaintenance:
    """The maintenance reconciler's PostgreSQL half, on one cluster's session."""

    def __init__(self, session: PostgresSession, clock: Clock = utc_now, disk: DiskProbe = probe_free_disk):
        self.session = session
        self.clock = clock
        self.disk = disk

    @property
    def policy(self) -> PostgresMaintenance:
        return self.session.cluster.maintenance or PostgresMaintenance()

    def observe(self) -> ObservedMaintenance:
        cluster: PostgresCluster = self.session.cluster
        primary = self.session.primary()
        observed = ObservedMaintenance(cluster.name, self.clock(), primary)
        observed.free_bytes, observed.free_where = self.disk(self.session, primary)
        if observed.free_bytes is None:
            observed.notes.append(f"free disk on {primary} ({observed.free_where or 'data_directory'}) unread: no "
                                  "rewrite is planned")
        observed.ages = [DatabaseAge(r["datname"], int(r["xid_age"]), int(r["mxid_age"]))
                         for r in self.session.run(primary, "postgres", AGES_SQL, prepare=True)]
        observed.in_flight = [RewriteInFlight(r["datname"], int(r["pid"]), str(r["query"]), float(r["seconds"] or 0))
                              for r in self.session.run(primary, "postgres", IN_FLIGHT_SQL,
                                                        [[REWRITE_APP, REPACK_APP]], prepare=True)]
        for dbname in cluster.databases:
            try:
                observed.databases[dbname] = self._observe_database(primary, dbname, observed.notes)
            except PermanentError as exc:
                log.warning("%s: database %s not observed for maintenance: %s", cluster.name, dbname, exc)
                observed.skipped[dbname] = exc.message
                observed.notes.append(f"{dbname}: not observed: {exc.message}")
        return observed

    def _observe_database(self, primary: str, dbname: str, notes: list[str]) -> MaintenanceDatabase:
        doc = self.session.run(primary, dbname, CATALOG_SQL, prepare=True)[0]["doc"]
        block = int(doc["block_size"])
        db = MaintenanceDatabase(dbname, extensions=set(doc["extensions"]), repack_debris=list(doc["repack_debris"]))
        exact = "pgstattuple" in db.extensions
        if not exact:
            notes.append(f"{dbname}: pgstattuple is not installed; bloat is estimated from statistics only")
        index_bound = size_bytes(self.policy.index_bloat.exact_below)
        table_bound = size_bytes(self.policy.table_bloat.exact_below)
        for row in doc["indexes"]:
            if not row["valid"] and not row["building"] and _is_debris(row["name"]):
                db.debris.append(Debris(dbname, row["schema"], row["table"], row["name"], int(row["size"])))
            if row["btree"] and row["valid"]:
                db.indexes.append(self._index_bloat(primary, dbname, row, block, exact and row["size"] < index_bound))
        for row in doc["tables"]:
            scope = f"{row['schema']}.{row['name']}"
            db.reloptions[scope] = parse_reloptions(row["reloptions"])
            db.vacuum.append(TableVacuum(dbname, row["schema"], row["name"], int(row["live"]), int(row["dead"]),
                                         _when(row["last_vacuum"]), _when(row["last_autovacuum"]),
                                         _when(row["last_autoanalyze"])))
            if row["kind"] == "r":
                db.tables.append(self._table_bloat(primary, dbname, row, block,
                                                   exact and row["size"] < table_bound))
        return db

    def _index_bloat(self, primary: str, dbname: str, row: dict[str, Any], block: int, exact: bool) -> IndexBloat:
        fillfactor = int(row["fillfactor"] or DEFAULT_INDEX_FILLFACTOR)
        size = int(row["size"])
        wasted: int | None = None
        if exact:
            stat = self.session.run(primary, dbname, "SELECT * FROM pgstatindex(%s::oid::regclass)", [row["oid"]])[0]
            wasted, method = index_waste_from_stat(stat, fillfactor, block), EXACT
        else:
            method = ESTIMATE
            if row["key_width"] is not None and float(row["tuples"]) >= 0:
                pages = estimate_index_pages(float(row["tuples"]), float(row["key_width"]), fillfactor, block)
                wasted = max(0, size - pages * block)
        return IndexBloat(dbname, row["schema"], row["table"], row["name"], size, wasted, method)

    def _table_bloat(self, primary: str, dbname: str, row: dict[str, Any], block: int, exact: bool) -> TableBloat:
        fillfactor = int(parse_reloptions(row["reloptions"]).get("fillfactor", 100))
        size = int(row["size"])
        wasted: int | None = None
        if exact and size > 0:
            stat = self.session.run(primary, dbname, "SELECT * FROM pgstattuple_approx(%s::oid::regclass)",
                                    [row["oid"]])[0]
            wasted, method = table_waste_from_approx(stat, fillfactor), EXACT_TABLE
        else:
            method = ESTIMATE
            if row["row_width"] is not None and float(row["tuples"]) >= 0:
                pages = estimate_table_pages(float(row["tuples"]), float(row["row_width"]), int(row["columns"]),
                                             bool(row["has_nulls"]), fillfactor, block)
                wasted = max(0, size - pages * block)
        return TableBloat(dbname, row["schema"], row["name"], size, int(row["total"]), wasted, method,
                          bool(row["repackable"]))

    def filenode(self, database: str, schema: str, name: str) -> int | None:
        """A relation's file node now (None if it does not exist): a rewrite gives it a new one."""
        node = self.session.run(self.session.primary(), database, "SELECT pg_relation_filenode(to_regclass(%s)) AS n",
                                [f"{quote_ident(schema)}.{quote_ident(name)}"])[0]["n"]
        return None if node is None else int(node)

    # -- act ------------------------------------------------------------------

    def apply(self, action: Action) -> str:
        acts = {"reindex-index": self._reindex, "drop-debris-index": self._drop_debris,
                "set-autovacuum": self._set_autovacuum, "repack-table": self._repack}
        if action.kind not in acts:
            raise PermanentError(f"the postgres maintenance adapter cannot apply {action.kind}")
        return acts[action.kind](action)

    def _with_lock_timeout(self, dbname: str, lock_timeout: str, statement: sql.Composed, app: str = "") -> str:
        primary = self.session.primary()
        run = self.session.run
        run(primary, dbname, sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms(lock_timeout)}ms")))
        run(primary, dbname, "SET statement_timeout = 0")  # a concurrent rebuild takes as long as it takes
        if app:
            run(primary, dbname, sql.SQL("SET application_name = {}").format(sql.Literal(app)))
        try:
            run(primary, dbname, statement)
        finally:
            with contextlib.suppress(ReconcileError):  # a broken connection resets everything anyway
                run(primary, dbname, "RESET lock_timeout")
                run(primary, dbname, "RESET statement_timeout")
                if app:
                    run(primary, dbname, "RESET application_name")
        return primary

    def _reindex(self, action: Action) -> str:
        d = action.detail
        statement = sql.SQL("REINDEX INDEX CONCURRENTLY {}.{}").format(sql.Identifier(d["schema"]),
                                                                       sql.Identifier(d["name"]))
        primary = self._with_lock_timeout(d["database"], d["lock_timeout"], statement, REWRITE_APP)
        after = self.session.run(primary, d["database"], "SELECT pg_relation_size(to_regclass(%s)) AS size",
                                 [f"{quote_ident(d['schema'])}.{quote_ident(d['name'])}"])[0]["size"]
        return f"rebuilt {action.target} on {primary}: {d['size_bytes']} -> {after} bytes"

    def _drop_debris(self, action: Action) -> str:
        d = action.detail
        primary = self.session.primary()
        # Checked again right before the drop: still invalid, still debris by name, and no build running on it or
        # on its table (a REINDEX CONCURRENTLY in flight reports the index it rebuilds, not its _ccnew copy).
        rows = self.session.run(primary, d["database"],
                                "SELECT NOT i.indisvalid AS invalid, (i.indexrelid IN (SELECT index_relid FROM "
                                "pg_stat_progress_create_index) OR i.indrelid IN (SELECT relid FROM "
                                "pg_stat_progress_create_index)) AS building FROM pg_index i "
                                "WHERE i.indexrelid = to_regclass(%s)",
                                [f"{quote_ident(d['schema'])}.{quote_ident(d['name'])}"])
        if not rows:
            return f"{action.target} is gone already"
        if not rows[0]["invalid"] or rows[0]["building"] or not _is_debris(d["name"]):
            raise PermanentError(f"refusing to drop {action.target}: it is valid now or being built")
        statement = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(sql.Identifier(d["schema"]),
                                                                              sql.Identifier(d["name"]))
        self._with_lock_timeout(d["database"], d["lock_timeout"], statement)
        return f"dropped {action.target} on {primary}"

    def _set_autovacuum(self, action: Action) -> str:
        d = action.detail
        allowed = set(AutovacuumSettings.model_fields)
        if not set(d["settings"]) <= allowed:
            raise PermanentError(f"not autovacuum settings: {sorted(set(d['settings']) - allowed)}")
        assignments = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(v))
                                         for k, v in sorted(d["settings"].items()))
        statement = sql.SQL("ALTER TABLE {}.{} SET ({})").format(sql.Identifier(d["schema"]),
                                                                 sql.Identifier(d["table"]), assignments)
        primary = self._with_lock_timeout(d["database"], d["lock_timeout"], statement)
        return f"set {', '.join(sorted(d['settings']))} on {action.target} ({primary})"

    def _repack(self, action: Action) -> str:
        d = action.detail
        primary = self.session.primary()
        dbname = d["database"]
        settings = self.session.run(primary, dbname, "SELECT current_setting('unix_socket_directories') AS dirs, "
                                                     "current_setting('port') AS port, "
                                                     "EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_repack') "
                                                     "AS installed")[0]
        if not settings["installed"]:
            raise PermanentError(f"the pg_repack extension is not installed in database {dbname}")
        socket_dir = str(settings["dirs"]).split(",")[0].strip() or "/var/run/postgresql"
        wait = max(1, math.ceil(lock_timeout_ms(d["lock_timeout"]) / 1000))
        argv = ["pg_repack", "--host", socket_dir, "--port", str(settings["port"]), "--username", "postgres",
                "--dbname", dbname, "--table", f"{quote_ident(d['schema'])}.{quote_ident(d['name'])}",
                "--no-kill-backend", "--wait-timeout", str(wait), "--no-order"]
        env = {"PGOPTIONS": f"-c lock_timeout={lock_timeout_ms(d['lock_timeout'])}ms", "PGAPPNAME": REPACK_APP}
        before = int(d["total_bytes"])
        result = self.session.access.executor.run(primary, argv, user="postgres", env=env, timeout=24 * 3600)
        if not result.ok:
            message = f"`{shlex.join(argv)}` exited {result.rc}: {result.tail(5)}"
            if "lock" in result.tail().lower() or "timed out" in result.tail().lower():
                raise TemporaryError(message, host=primary)
            raise PermanentError(message, host=primary)
        after = self.session.run(primary, dbname, "SELECT pg_total_relation_size(to_regclass(%s)) AS size",
                                 [f"{quote_ident(d['schema'])}.{quote_ident(d['name'])}"])[0]["size"]
        return f"repacked {action.target} on {primary}: {before} -> {after} bytes"


def _is_debris(name: str) -> bool:
    return re.search(DEBRIS_NAME, name) is not None
