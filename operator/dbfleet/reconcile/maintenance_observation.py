"""What one cycle observed for the maintenance policy: bloat, vacuum health, wraparound ages, autovacuum settings.

Plain values, engine-free, so the diff (reconcile.maintenance) is a pure function of them and the spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

EXACT = "pgstatindex"
EXACT_TABLE = "pgstattuple_approx"
ESTIMATE = "estimate"
"""How a bloat figure was found: read from the relation (under the size bound) or estimated from statistics."""


@dataclass(frozen=True)
class IndexBloat:
    """One B-tree index: its size and how much of it is waste."""

    database: str
    schema: str
    table: str
    name: str
    size_bytes: int
    wasted_bytes: int | None
    """None when neither pgstatindex nor the statistics could say (no pgstattuple, never analyzed)."""
    method: str
    valid: bool = True

    @property
    def scope(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def target(self) -> str:
        return f"{self.database}/{self.schema}.{self.name}"

    @property
    def ratio(self) -> float | None:
        if self.wasted_bytes is None or self.size_bytes <= 0:
            return None
        return max(0.0, self.wasted_bytes / self.size_bytes)


@dataclass(frozen=True)
class TableBloat:
    """One table: its heap size, waste, total size with indexes and TOAST (what pg_repack rewrites), and whether
    pg_repack can take it (it needs a primary key or a unique index on NOT NULL columns)."""

    database: str
    schema: str
    name: str
    size_bytes: int
    total_bytes: int
    wasted_bytes: int | None
    method: str
    repackable: bool = True

    @property
    def target(self) -> str:
        return f"{self.database}/{self.schema}.{self.name}"

    @property
    def ratio(self) -> float | None:
        if self.wasted_bytes is None or self.size_bytes <= 0:
            return None
        return max(0.0, self.wasted_bytes / self.size_bytes)


@dataclass(frozen=True)
class TableVacuum:
    """One table's dead tuples and when (auto)vacuum and (auto)analyze last ran."""

    database: str
    schema: str
    name: str
    live_tuples: int
    dead_tuples: int
    last_vacuum: datetime | None
    """The later of last_vacuum and last_autovacuum."""
    last_autovacuum: datetime | None
    last_autoanalyze: datetime | None

    @property
    def target(self) -> str:
        return f"{self.database}/{self.schema}.{self.name}"

    @property
    def dead_ratio(self) -> float:
        total = self.live_tuples + self.dead_tuples
        return self.dead_tuples / total if total else 0.0


@dataclass(frozen=True)
class DatabaseAge:
    """Transaction and multixact ID ages of one database (what wraparound is measured by)."""

    name: str
    xid_age: int
    mxid_age: int


@dataclass(frozen=True)
class Debris:
    """An invalid copy left by an interrupted REINDEX CONCURRENTLY (`..._ccnew`, `..._ccold`)."""

    database: str
    schema: str
    table: str
    name: str
    size_bytes: int

    @property
    def target(self) -> str:
        return f"{self.database}/{self.schema}.{self.name}"


@dataclass(frozen=True)
class RewriteJob:
    """The cluster's rewrite job (REINDEX INDEX CONCURRENTLY or pg_repack, run outside the cycle) as its record says
    (dbfleet.backups.jobs, read for this reconciler by dbfleet.wiring): the running one, or the last to end."""

    id: str
    action: str
    """reindex-index or repack-table: the planned action that started it."""
    target: str
    state: str
    """running, done, failed or interrupted."""
    alive: bool
    """Its operator still runs it: its job lock on this machine, or a fresh heartbeat from another."""
    owner: str
    heartbeat_at: str
    before: str
    """Its relation's file node when it began: a different one now says the rewrite happened."""
    line: str
    """One line for notes and status: kind, target, state, age, step or outcome."""
    relation: tuple[str, str, str] | None = None
    """(database, schema, name) as its record keeps them apart; None in a record older than that."""

    @property
    def stopped_unsettled(self) -> bool:
        return self.state == "running" and not self.alive

    @property
    def place(self) -> tuple[str, str, str] | None:
        """(database, schema, name) of the relation it rewrites: as its record keeps them, else from an older
        record's target (database/schema.name); None when that cannot be split without guessing (a '.' or '/' in
        a name), and the job is not judged from the catalog."""
        if self.relation is not None:
            return self.relation
        database, slash, rest = self.target.partition("/")
        if not slash or "/" in rest or rest.count(".") != 1:
            return None
        schema, _, name = rest.partition(".")
        return (database, schema, name) if database and schema and name else None


@dataclass(frozen=True)
class RewriteInFlight:
    """A rewrite statement of dbfleet's running in the database now (pg_stat_activity, by application_name), whoever
    started it: an operator that was killed leaves its statement running until it ends."""

    database: str
    pid: int
    query: str
    seconds: float


@dataclass
class MaintenanceDatabase:
    name: str
    extensions: set[str] = field(default_factory=set)
    indexes: list[IndexBloat] = field(default_factory=list)
    tables: list[TableBloat] = field(default_factory=list)
    vacuum: list[TableVacuum] = field(default_factory=list)
    debris: list[Debris] = field(default_factory=list)
    reloptions: dict[str, dict[str, str]] = field(default_factory=dict)
    """Storage parameters of every user table, by 'schema.table' (a table without any maps to {})."""
    repack_debris: list[str] = field(default_factory=list)
    """What an interrupted pg_repack left: its trigger on a table, its log and copy tables in schema repack."""


@dataclass
class ObservedMaintenance:
    cluster: str
    now: datetime
    """The clock's reading for this cycle (UTC): what the window is judged by."""
    primary: str
    free_bytes: int | None = None
    """Free disk where the primary keeps its data; None when it could not be read."""
    free_where: str = ""
    databases: dict[str, MaintenanceDatabase] = field(default_factory=dict)
    ages: list[DatabaseAge] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    job: RewriteJob | None = None
    """The cluster's rewrite job record, if it has one; None also when rewrites run inline (no job runner)."""
    job_unread: str | None = None
    """Why the rewrite job record could not be read: no rewrite is started blind."""
    in_flight: list[RewriteInFlight] = field(default_factory=list)
    job_filenode: int | None = None
    """The file node of a stopped, unsettled job's relation now (None: it no longer exists, or not looked up)."""

    def filenode_text(self) -> str:
        return "" if self.job_filenode is None else str(self.job_filenode)

    def all_indexes(self) -> list[IndexBloat]:
        return [i for db in self.databases.values() for i in db.indexes]

    def all_tables(self) -> list[TableBloat]:
        return [t for db in self.databases.values() for t in db.tables]

    def all_vacuum(self) -> list[TableVacuum]:
        return [t for db in self.databases.values() for t in db.vacuum]

    def summary(self) -> dict[str, Any]:
        """Per index and table bloat, for `status --json`."""
        return {
            "indexes": [{"target": i.target, "size_bytes": i.size_bytes, "wasted_bytes": i.wasted_bytes,
                         "ratio": None if i.ratio is None else round(i.ratio, 4), "method": i.method}
                        for i in self.all_indexes()],
            "tables": [{"target": t.target, "size_bytes": t.size_bytes, "wasted_bytes": t.wasted_bytes,
                        "ratio": None if t.ratio is None else round(t.ratio, 4), "method": t.method}
                       for t in self.all_tables()],
            "databases": [{"name": a.name, "xid_age": a.xid_age, "mxid_age": a.mxid_age} for a in self.ages],
            "free_bytes": self.free_bytes,
        }
