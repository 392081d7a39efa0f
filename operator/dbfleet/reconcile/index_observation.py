"""What one cycle observed of a cluster's indexes, in shapes shared by PostgreSQL and MongoDB."""

from __future__ import annotations

from dataclasses import dataclass, field

from dbfleet.reconcile.index_defs import ObservedIndex


@dataclass(frozen=True)
class TableStats:
    scope: str
    seq_scans: int = 0
    live_rows: int = 0


@dataclass(frozen=True)
class IndexAdvice:
    """A candidate index checked with a hypothetical index (hypopg): planner cost before and after."""

    database: str
    scope: str
    keys: tuple[str, ...]
    sql: str
    query: str
    source: str
    cost_before: float
    cost_after: float

    @property
    def reduction(self) -> float:
        return 1.0 - self.cost_after / self.cost_before if self.cost_before > 0 else 0.0


@dataclass
class ObservedDatabase:
    """One database (PostgreSQL) or one MongoDB database as observed in one cycle."""

    name: str
    indexes: list[ObservedIndex] = field(default_factory=list)
    tables: dict[str, TableStats] = field(default_factory=dict)
    stats_window_days: float | None = None
    """Days the usage counters cover on every member counted (the shortest); None if unknown."""
    members_counted: tuple[str, ...] = ()
    members_missing: tuple[str, ...] = ()
    """Members whose counters could not be read: no index is called unused while any is missing."""
    advice: list[IndexAdvice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    every_member_counted: bool = True
    """False when some members' usage cannot be read at all (MongoDB secondaries): unused is then only reported."""


@dataclass
class ObservedIndexes:
    cluster: str
    engine: str
    databases: dict[str, ObservedDatabase] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """Databases that could not be observed, with why."""

    def all_indexes(self) -> list[ObservedIndex]:
        return [i for db in self.databases.values() for i in db.indexes]

    def notes(self) -> list[str]:
        notes = [f"{name}: not observed: {why}" for name, why in self.skipped.items()]
        return notes + [f"{db.name}: {n}" for db in self.databases.values() for n in db.notes]
