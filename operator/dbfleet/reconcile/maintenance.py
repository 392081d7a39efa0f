"""The maintenance diff: a pure function from the spec's maintenance policy and one observation to actions.

Rewrites (REINDEX INDEX CONCURRENTLY, pg_repack, dropping a rebuild's debris) are planned only inside the
window, one relation per cluster at a time (indexes before tables, largest waste first), and only while the
primary's free disk exceeds the relation's size times the policy's margin; everything else bloated is reported
with why it waits. A reindex or repack runs as a job outside the cycle: while the cluster's rewrite job runs,
or a rewrite statement of dbfleet's still runs in the database, nothing more is rewritten nor any debris dropped;
a job whose operator stopped is settled (settle_rewrite) from what the catalog shows. Autovacuum storage
parameters are set whenever they differ (they rewrite nothing). Vacuum health and wraparound are findings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from dbfleet.actions import Action
from dbfleet.reconcile.index_defs import quote_ident, split_table
from dbfleet.reconcile.maintenance_observation import (
    Debris,
    IndexBloat,
    ObservedMaintenance,
    RewriteJob,
    TableBloat,
)
from dbfleet.schedule import WindowState, window_state
from dbfleet.spec import PostgresMaintenance, TableAutovacuum, duration_seconds
from dbfleet.units import age

RECONCILER = "maintenance"
REWRITES = ("reindex-index", "repack-table")
"""The actions that run as the cluster's rewrite job."""
DONE, FAILED, INTERRUPTED = "done", "failed", "interrupted"
"""A rewrite job's end states, as dbfleet.backups.jobs names them."""
TRUE_WORDS = {"true", "on", "yes", "1", "t", "y"}


def human_bytes(size: float) -> str:
    """'812 kB', '1.4 GB': bytes as pg_size_pretty would round them, to one decimal above a kilobyte."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if abs(size) >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} bytes"


def _bloat_text(ratio: float, wasted: int, size: int, method: str) -> str:
    return f"{ratio:.0%} of {human_bytes(size)} is waste ({human_bytes(wasted)}, by {method})"


class _Plan:
    def __init__(self, cluster: str, busy: str | None = None):
        self.cluster = cluster
        self.actions: list[Action] = []
        self.busy = busy
        """Why no rewrite starts this cycle whatever is bloated (a rewrite runs), or None."""
        self.rewrite: Any = None
        """The relation chosen for this cycle's one rewrite."""

    def add(self, kind: str, target: str, reason: str, destructive: bool = False, **detail: Any) -> None:
        self.actions.append(Action(self.cluster, RECONCILER, kind, target, reason, destructive, detail))


def diff_maintenance(cluster: str, policy: PostgresMaintenance, observed: ObservedMaintenance) -> list[Action]:
    """Every action and finding for one cluster, in a stable order: indexes, debris, tables, autovacuum,
    dead tuples, wraparound."""
    plan = _Plan(cluster, rewrite_busy(observed))
    window = window_state(policy.window.start, policy.window.end, observed.now) if policy.window else None
    _job(plan, observed)
    _indexes(plan, policy, observed, window)
    _debris(plan, policy, observed, window)
    _tables(plan, policy, observed, window)
    _repack_debris(plan, observed)
    _autovacuum(plan, policy, observed)
    _dead_tuples(plan, policy, observed)
    _wraparound(plan, policy, observed)
    return plan.actions


def _disk_refusal(size: int, margin: float, observed: ObservedMaintenance) -> str | None:
    """Why a rewrite of `size` bytes may not run now for lack of disk, or None when it fits."""
    need = int(size * margin)
    if observed.free_bytes is None:
        return f"free disk on the primary {observed.primary} is unknown"
    if observed.free_bytes <= need:
        return (f"{human_bytes(observed.free_bytes)} free on {observed.primary} ({observed.free_where}) is not more "
                f"than {human_bytes(size)} x {margin:g} = {human_bytes(need)}")
    return None


def _rewrites(plan: _Plan, candidates: list[Any], verb: str, kind: str, finding: str, margin: float,
              observed: ObservedMaintenance, window: WindowState | None, why_not: Callable[[Any], str | None],
              detail: Callable[[Any], dict[str, Any]]) -> None:
    """Plan one rewrite of the candidates (already sorted, largest waste first) and report the rest with why."""
    for item in candidates:
        text = _bloat_text(item.ratio, item.wasted_bytes, item.size_bytes, item.method)
        if window is None or not window.open:
            wait = window.describe() if window else "no maintenance.window"
            plan.add(finding, item.target, f"{text}; {verb} {wait}", **_figures(item))
            continue
        refusal = why_not(item) or _disk_refusal(getattr(item, "total_bytes", item.size_bytes), margin, observed)
        if refusal:
            plan.add(finding, item.target, f"{text}; {verb} refused: {refusal}", **_figures(item))
        elif plan.busy:
            plan.add(finding, item.target, f"{text}; {verb} waits: {plan.busy}", **_figures(item))
        elif plan.rewrite is not None:
            plan.add(finding, item.target, f"{text}; {verb} waits: one rewrite at a time per cluster, "
                     f"{plan.rewrite.target} goes first", **_figures(item))
        else:
            plan.rewrite = item
            plan.add(kind, item.target, f"{text}; {window.describe()}; runs as the cluster's rewrite job",
                     **_figures(item), **detail(item))


def _figures(item: IndexBloat | TableBloat) -> dict[str, Any]:
    return {"database": item.database, "size_bytes": item.size_bytes, "wasted_bytes": item.wasted_bytes,
            "ratio": None if item.ratio is None else round(item.ratio, 4), "method": item.method}


def _bloated(items: list[Any], max_ratio: float) -> list[Any]:
    found = [i for i in items if i.ratio is not None and i.ratio > max_ratio and getattr(i, "valid", True)]
    return sorted(found, key=lambda i: (-i.wasted_bytes, i.target))


def _indexes(plan: _Plan, policy: PostgresMaintenance, observed: ObservedMaintenance,
             window: WindowState | None) -> None:
    rule = policy.index_bloat
    bloated = _bloated(observed.all_indexes(), rule.max_ratio)
    if rule.action == "report":
        for index in bloated:
            plan.add("report-index-bloat", index.target, _bloat_text(index.ratio, index.wasted_bytes,
                                                                     index.size_bytes, index.method)
                     + f"; over max_ratio {rule.max_ratio:g}, index_bloat.action is report", **_figures(index))
        return

    def detail(index: IndexBloat) -> dict[str, Any]:
        statement = f"REINDEX INDEX CONCURRENTLY {quote_ident(index.schema)}.{quote_ident(index.name)}"
        return {"schema": index.schema, "table": index.table, "name": index.name,
                "lock_timeout": policy.lock_timeout,
                "statements": [f"SET lock_timeout = '{policy.lock_timeout}'", statement]}

    _rewrites(plan, bloated, "reindex", "reindex-index", "report-index-bloat", rule.disk_margin, observed, window,
              lambda index: None, detail)


def _tables(plan: _Plan, policy: PostgresMaintenance, observed: ObservedMaintenance,
            window: WindowState | None) -> None:
    rule = policy.table_bloat
    bloated = _bloated(observed.all_tables(), rule.max_ratio)
    if rule.action == "report":
        for table in bloated:
            plan.add("report-table-bloat", table.target, _bloat_text(table.ratio, table.wasted_bytes,
                                                                     table.size_bytes, table.method)
                     + f"; over max_ratio {rule.max_ratio:g}, table_bloat.action is report", **_figures(table))
        return

    def why_not(table: TableBloat) -> str | None:
        if "pg_repack" not in observed.databases[table.database].extensions:
            return (f"the pg_repack extension is not installed in database {table.database} (`dbfleet configure` "
                    "creates it when table_bloat.action is repack)")
        if not table.repackable:
            return "pg_repack needs a primary key or a unique index on NOT NULL columns"
        return None

    def detail(table: TableBloat) -> dict[str, Any]:
        return {"schema": table.schema, "name": table.name, "total_bytes": table.total_bytes,
                "lock_timeout": policy.lock_timeout,
                "statements": [f"pg_repack --dbname {table.database} --table "
                               f"{quote_ident(table.schema)}.{quote_ident(table.name)} (on the primary, as postgres)"]}

    _rewrites(plan, bloated, "pg_repack", "repack-table", "report-table-bloat", rule.disk_margin, observed, window,
              why_not, detail)


def _debris(plan: _Plan, policy: PostgresMaintenance, observed: ObservedMaintenance,
            window: WindowState | None) -> None:
    """Drop an interrupted rebuild's invalid copies in the window when clean_debris allows; the index policy
    reports them otherwise."""
    if not policy.index_bloat.clean_debris or window is None:
        return
    for db in observed.databases.values():
        for debris in sorted(db.debris, key=lambda d: d.target):
            text = f"INVALID leftover of an interrupted REINDEX CONCURRENTLY on {debris.schema}.{debris.table}"
            if not window.open:
                plan.add("report-debris", debris.target, f"{text}; dropping it is {window.describe()}",
                         database=debris.database)
                continue
            if plan.busy:
                plan.add("report-debris", debris.target, f"{text}; dropping it waits: {plan.busy}",
                         database=debris.database)
                continue
            statement = f"DROP INDEX CONCURRENTLY IF EXISTS {quote_ident(debris.schema)}.{quote_ident(debris.name)}"
            plan.add("drop-debris-index", debris.target, f"{text}; index_bloat.clean_debris is on, "
                     f"{window.describe()}", destructive=True, database=debris.database, schema=debris.schema,
                     name=debris.name, size_bytes=debris.size_bytes, lock_timeout=policy.lock_timeout,
                     statements=[statement])


def rewrite_busy(observed: ObservedMaintenance) -> str | None:
    """Why no rewrite (nor debris drop) may start on the cluster now, or None: its rewrite job runs, or its record
    cannot be read, or is still to be settled, or a rewrite statement of dbfleet's runs in the database."""
    job = observed.job
    if observed.job_unread:
        return f"the rewrite job record cannot be read: {observed.job_unread}"
    if observed.in_flight:
        first = observed.in_flight[0]
        return (f"a rewrite runs in database {first.database} (pid {first.pid}, {age(first.seconds)}): "
                f"{first.query[:120]}")
    if job is not None and job.alive:
        return f"rewrite job {job.line}"
    if job is not None and job.stopped_unsettled:
        return f"rewrite job {job.id} of a stopped operator ({job.owner}) is settled first"
    return None


def _job(plan: _Plan, observed: ObservedMaintenance) -> None:
    """The rewrite job of a stopped operator gets its true outcome written once nothing of it runs any more."""
    job = observed.job
    if job is None or not job.stopped_unsettled or observed.in_flight or observed.job_unread:
        return
    state, message = settle_rewrite(job, observed)
    plan.add("settle-rewrite", job.id, f"its record says running, but its operator ({job.owner}) stopped (last "
             f"heartbeat {job.heartbeat_at}) and nothing of it runs in the database: {state}, {message}",
             job=job.id, state=state, message=message)


def _debris_of(job: RewriteJob, debris: list[Debris]) -> list[Debris]:
    """The invalid copies a REINDEX CONCURRENTLY of the job's index leaves (its name, truncated, + _ccnew/_ccold)."""
    if job.place is None:
        return []
    database, schema, name = job.place
    return [d for d in debris if d.database == database and d.schema == schema
            and name.startswith(re.sub(r"_cc(new|old)[0-9]*$", "", d.name))]


def settle_rewrite(job: RewriteJob, observed: ObservedMaintenance) -> tuple[str, str]:
    """The true end of a rewrite job whose operator stopped, from the catalog: its relation's file node against
    the one it began with (REINDEX CONCURRENTLY and pg_repack both give the relation a new one when they finish),
    and what an interrupted one leaves (`_ccnew`/`_ccold` copies, pg_repack's trigger and tables)."""
    now = observed.filenode_text()
    if job.place is None:
        return INTERRUPTED, (f"its record names {job.target} ambiguously (a record older than schema and name kept "
                             "apart, with a '.' or '/' in a name); not judged from the catalog: it is planned "
                             "again while bloated in the window")
    if observed.job_filenode is None:
        return INTERRUPTED, f"{job.target} no longer exists"
    debris = [d.target for d in _debris_of(job, [d for db in observed.databases.values() for d in db.debris])]
    database = job.place[0]
    repack = observed.databases[database].repack_debris if database in observed.databases else []
    left = debris if job.action == "reindex-index" else repack
    leftovers = f"; it left {', '.join(left)}" + (
        ", which the debris rule drops in the window (index_bloat.clean_debris) or reports"
        if job.action == "reindex-index" else ", which is reported until removed (see README, pg_repack)") \
        if left else ""
    if job.before and now != job.before:
        return DONE, f"{job.target} was rewritten (file node {job.before} -> {now}){leftovers}"
    if left:
        return INTERRUPTED, f"{job.target} was not rewritten (file node {now}){leftovers}"
    return INTERRUPTED, f"{job.target} was not rewritten and nothing of it is left (file node {now}); it is " \
                        "planned again while bloated in the window"


def _repack_debris(plan: _Plan, observed: ObservedMaintenance) -> None:
    for db in observed.databases.values():
        for what in db.repack_debris:
            plan.add("report-repack-debris", f"{db.name}/{what}", "left by an interrupted pg_repack: a later "
                     "pg_repack of its table fails while it is there; remove it as README (pg_repack) says",
                     database=db.name)


def setting_text(value: bool | int | float) -> str:
    """A declared value as reloptions holds it once dbfleet set it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def setting_matches(actual: str | None, want: bool | int | float) -> bool:
    """Whether the server's text value says the same as the declared one (`on` is true, `0.050` is 0.05)."""
    if actual is None:
        return False
    if isinstance(want, bool):
        return (actual.strip().lower() in TRUE_WORDS) == want
    try:
        return abs(float(actual) - float(want)) <= 1e-9 * max(1.0, abs(float(want)))
    except ValueError:
        return False


def _autovacuum(plan: _Plan, policy: PostgresMaintenance, observed: ObservedMaintenance) -> None:
    for entry in policy.autovacuum:
        db = observed.databases.get(entry.database)
        if db is None:
            continue  # not observed: the cycle's notes say why
        schema, table = split_table(entry.table)
        target = f"{entry.database}/{schema}.{table}"
        actual = db.reloptions.get(f"{schema}.{table}")
        if actual is None:
            plan.add("report-autovacuum-blocked", target, f"autovacuum settings are declared for {schema}.{table}, "
                     "which does not exist")
            continue
        _autovacuum_table(plan, entry, target, schema, table, actual, policy.lock_timeout)


def _autovacuum_table(plan: _Plan, entry: TableAutovacuum, target: str, schema: str, table: str,
                      actual: dict[str, str], lock_timeout: str) -> None:
    declared = entry.settings.declared()
    differ = {k: v for k, v in declared.items() if not setting_matches(actual.get(k), v)}
    if not differ:
        return
    drifted = [f"{k} is {actual[k]} on the server, the spec says {setting_text(v)}"
               for k, v in differ.items() if k in actual]
    unset = [f"{k} = {setting_text(v)}" for k, v in differ.items() if k not in actual]
    parts = ([f"drift (changed by hand?): {'; '.join(drifted)}"] if drifted else []) + \
            ([f"declared, not set yet: {', '.join(unset)}"] if unset else [])
    assignments = ", ".join(f"{k} = '{setting_text(v)}'" for k, v in differ.items())
    plan.add("set-autovacuum", target, "; ".join(parts), database=entry.database, schema=schema, table=table,
             settings={k: setting_text(v) for k, v in differ.items()}, drift=bool(drifted),
             lock_timeout=lock_timeout,
             statements=[f"ALTER TABLE {quote_ident(schema)}.{quote_ident(table)} SET ({assignments})"])


def _dead_tuples(plan: _Plan, policy: PostgresMaintenance, observed: ObservedMaintenance) -> None:
    rule = policy.vacuum
    allowed = duration_seconds(rule.autovacuum_age_max)
    now = observed.now
    for table in sorted(observed.all_vacuum(), key=lambda t: t.target):
        if table.dead_tuples < rule.min_dead_tuples or table.dead_ratio <= rule.dead_tuple_ratio_max:
            continue
        last = table.last_vacuum
        seconds = None if last is None else max(0.0, (now - last).total_seconds())
        when = "never vacuumed" if seconds is None else f"last vacuumed {age(seconds)} ago"
        behind = seconds is None or seconds > allowed
        reason = (f"{table.dead_ratio:.0%} dead tuples ({table.dead_tuples} of "
                  f"{table.dead_tuples + table.live_tuples}), over {rule.dead_tuple_ratio_max:g}; {when}")
        if behind:
            reason += f": autovacuum is not keeping up (autovacuum_age_max {rule.autovacuum_age_max})"
        plan.add("report-dead-tuples", table.target, reason, database=table.database,
                 dead_ratio=round(table.dead_ratio, 4), dead_tuples=table.dead_tuples, behind=behind)


def _wraparound(plan: _Plan, policy: PostgresMaintenance, observed: ObservedMaintenance) -> None:
    rule = policy.vacuum
    for db in sorted(observed.ages, key=lambda a: a.name):
        over = []
        if db.xid_age > rule.xid_age_max:
            over.append(f"age(datfrozenxid) {db.xid_age} > xid_age_max {rule.xid_age_max}")
        if db.mxid_age > rule.mxid_age_max:
            over.append(f"mxid_age(datminmxid) {db.mxid_age} > mxid_age_max {rule.mxid_age_max}")
        if over:
            plan.add("report-wraparound", db.name, "; ".join(over) + ": transaction ID wraparound approaches, "
                     "vacuum (freeze) this database", xid_age=db.xid_age, mxid_age=db.mxid_age)
