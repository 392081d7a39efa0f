"""Index policy: desired indexes from the spec against observed ones, as a list of actions.

`diff_indexes` is pure and engine-neutral: PostgreSQL and MongoDB observations
come in the same shapes (reconcile/index_defs.py). It yields, in this order:
rebuilds of INVALID indexes, creations of declared ones, conflicts (a declared
name with another definition), duplicate or redundant indexes, unused ones and
missing-index advice. Each index gets at most one action. Drops appear only
when the policy says `drop: true` for that class, and never for an index that
backs a constraint or is declared in the spec.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from dbfleet.actions import Action
from dbfleet.reconcile.index_defs import (
    DesiredIndex,
    IndexShape,
    ObservedIndex,
    concurrent_create,
    desired_mongo,
    desired_pg,
    quote_ident,
)
from dbfleet.reconcile.index_observation import ObservedDatabase, ObservedIndexes
from dbfleet.spec import IndexPolicy, MongoIndex, PgIndex

RECONCILER = "indexes"
LEFTOVER = re.compile(r"_cc(new|old)[0-9]*$")
"""Names REINDEX CONCURRENTLY gives its temporary copies; an invalid one is debris of an interrupted rebuild."""


_LAST_DESIRED: list[tuple[Sequence[Any], list[DesiredIndex]]] = []


def desired_indexes(declared: Sequence[PgIndex | MongoIndex]) -> list[DesiredIndex]:
    """The declared indexes normalized; the last few results are kept, as each cycle asks twice per cluster."""
    for seen, result in _LAST_DESIRED:
        if seen is declared:
            return result
    result = [desired_pg(d) if isinstance(d, PgIndex) else desired_mongo(d) for d in declared]
    _LAST_DESIRED.insert(0, (declared, result))
    del _LAST_DESIRED[8:]
    return result


def matches(desired: DesiredIndex, found: ObservedIndex) -> bool:
    """The found index is the declared one: tagged with this declaration, or of the same definition."""
    return (found.comment or "").strip() == desired.tag or desired.same_definition(found)


# --------------------------------------------------------------------------- redundancy


@dataclass(frozen=True)
class Redundancy:
    index: ObservedIndex
    covered_by: ObservedIndex
    exact: bool


def covers(big: IndexShape, small: IndexShape) -> bool:
    """Every lookup `small` serves, `big` serves as well, and `small` enforces nothing `big` does not."""
    if (big.database, big.scope, big.method, big.predicate) != (small.database, small.scope, small.method,
                                                                  small.predicate):
        return False
    if small.options and small.options != big.options:
        return False  # a TTL index deletes documents; it is not just a lookup path
    if small.unique:
        return big.unique and big.keys == small.keys
    if small.method != "btree":
        return big.keys == small.keys and set(small.include) <= set(big.include)
    if big.keys[: len(small.keys)] != small.keys:
        return False
    return set(small.include) <= set(big.keys + big.include)


def _keep_rank(index: ObservedIndex, declared: Collection[str]) -> tuple[bool, bool, bool, str]:
    """Lower sorts first: of two equal indexes keep the constraint's, then the declared, then the unique one."""
    return (index.constraint is None, index.ident not in declared, not index.unique, index.name)


def find_redundant(indexes: Sequence[ObservedIndex], declared: Collection[str] = frozenset()) -> list[Redundancy]:
    """Indexes made redundant by another on the same table or collection: an exact copy or a key prefix."""
    groups: dict[tuple[Any, ...], list[ObservedIndex]] = {}
    for index in indexes:
        if index.valid and not index.building:  # only indexes on one table can cover each other
            groups.setdefault((index.database, index.scope, index.method, index.predicate), []).append(index)
    found: dict[str, Redundancy] = {}
    for group in groups.values():
        smalls = sorted(group, key=lambda i: i.ident)
        bigs = sorted(group, key=lambda i: (len(i.keys), i.ident))
        for small in smalls:
            for big in bigs:
                if big is small or not covers(big, small):
                    continue
                exact = covers(small, big)
                if exact and _keep_rank(small, declared) < _keep_rank(big, declared):
                    continue  # `small` is the one to keep; `big` is reported on its own turn
                if small.ident not in found or (exact and not found[small.ident].exact):
                    found[small.ident] = Redundancy(small, big, exact)
    return [found[k] for k in sorted(found)]


def protection(index: ObservedIndex, declared: Collection[str]) -> str | None:
    """Why an index must never be dropped, or None."""
    if index.constraint:
        return f"it backs {index.constraint}"
    if index.ident in declared:
        return "it is declared in the spec"
    return None


# --------------------------------------------------------------------------- the diff


class _Plan:
    """Collects actions, at most one per index."""

    def __init__(self, cluster: str):
        self.cluster = cluster
        self.actions: list[Action] = []
        self.targets: set[str] = set()

    def add(self, kind: str, target: str, reason: str, destructive: bool = False, **detail: Any) -> None:
        if target in self.targets:
            return
        self.targets.add(target)
        self.actions.append(Action(self.cluster, RECONCILER, kind, target, reason, destructive, detail))


def _index_detail(engine: str, index: ObservedIndex, verb: str, declared: DesiredIndex | None = None
                  ) -> dict[str, Any]:
    """What the adapter needs to drop or rebuild an index; for PostgreSQL, the statements themselves."""
    detail: dict[str, Any] = {"database": index.database, "name": index.name, "scope": index.scope}
    if engine != "postgres":
        detail["collection"] = index.namespace
        return detail
    detail["schema"] = index.namespace
    drop = f"DROP INDEX CONCURRENTLY IF EXISTS {quote_ident(index.namespace)}.{quote_ident(index.name)}"
    if verb == "drop":
        detail["statements"] = [drop]
    elif declared is not None:  # rebuilt as declared, and tagged again
        detail["statements"] = [drop, *declared.create["statements"]]
        detail["tag"] = declared.tag
    else:
        detail["statements"] = [drop, concurrent_create(index.definition)]
    return detail


def diff_indexes(cluster: str, declared: Sequence[PgIndex | MongoIndex], observed: ObservedIndexes,
                 policy: IndexPolicy) -> list[Action]:
    """Pure: the actions that bring the observed indexes to the policy. Same input, same list."""
    engine = observed.engine
    plan = _Plan(cluster)
    desired = desired_indexes(declared)
    declared_idents = {d.ident for d in desired}
    found = {i.ident: i for i in observed.all_indexes()}
    by_ident = {d.ident: d for d in desired}
    conflicts = {d.ident for d in desired if d.ident in found and not matches(d, found[d.ident])}

    for index in sorted(found.values(), key=lambda i: i.ident):
        if index.valid or index.building or index.ident in conflicts:
            continue
        if LEFTOVER.search(index.name):
            if policy.invalid.report:
                plan.add("report-invalid", index.ident, f"INVALID leftover of an interrupted REINDEX CONCURRENTLY "
                         f"on {index.scope}; drop it by hand once no rebuild is running", definition=index.definition)
        elif policy.invalid.rebuild:
            plan.add("rebuild-index", index.ident, f"INVALID (a failed or interrupted concurrent build) on "
                     f"{index.scope}; dropping and building it again, concurrently",
                     **_index_detail(engine, index, "rebuild", by_ident.get(index.ident)))
        elif policy.invalid.report:
            plan.add("report-invalid", index.ident, f"INVALID on {index.scope}; invalid.rebuild is off",
                     definition=index.definition)

    for want in desired:
        have = found.get(want.ident)
        database = observed.databases.get(want.database)
        if have is None:
            if database is None:
                why = observed.skipped.get(want.database, "not in the spec's databases")
                plan.add("report-blocked", want.ident, f"database {want.database} was not observed ({why})")
            elif engine == "postgres" and want.scope not in database.tables:
                plan.add("report-blocked", want.ident, f"table {want.scope} does not exist in {want.database}; "
                         "the index is created once it does")
            else:
                plan.add("create-index", want.ident, "declared in the spec and absent",
                         **want.create)
        elif want.ident in conflicts:
            plan.add("report-conflict", want.ident, f"an index of this name exists with another definition: "
                     f"declared {want.describe()}; found {have.describe()}", found=have.definition)

    redundant_by = {r.index.ident: r for r in find_redundant(list(found.values()), declared_idents)}
    for ident, red in redundant_by.items():
        guard = protection(red.index, declared_idents)
        how = "a duplicate of" if red.exact else "redundant: its keys are a prefix of"
        reason = f"{how} {red.covered_by.name} ({red.covered_by.describe()})"
        if policy.duplicate.drop and guard is None:
            plan.add("drop-index", ident, reason, destructive=True, policy="duplicate",
                     **_index_detail(engine, red.index, "drop"))
        elif policy.duplicate.report or policy.duplicate.drop:
            kept = f"; not dropped: {guard}" if guard and policy.duplicate.drop else ""
            plan.add("report-duplicate", ident, reason + kept, covered_by=red.covered_by.ident)

    # An index that stands in for a redundant one takes over its lookups: never call it unused.
    covering = {r.covered_by.ident for r in redundant_by.values()}
    for database in observed.databases.values():
        _diff_unused(plan, engine, database, policy, declared_idents, covering)
        _diff_advice(plan, database, policy)
    return plan.actions


def _diff_unused(plan: _Plan, engine: str, database: ObservedDatabase, policy: IndexPolicy,
                 declared: set[str], covering: set[str]) -> None:
    rule = policy.unused
    if not (rule.report or rule.drop) or database.members_missing:
        return
    window = database.stats_window_days
    if window is None or window < rule.min_stats_age_days:
        return
    where = ", ".join(database.members_counted) or "the servers"
    for index in sorted(database.indexes, key=lambda i: i.ident):
        if index.scans or not index.valid or index.building or index.unique or index.constraint \
                or index.ident in covering:
            continue
        reason = f"0 scans in {window:.1f} days, summed over {where}"
        guard = protection(index, declared)
        if guard is None and not database.every_member_counted:
            guard = "usage on secondaries is not counted"
        if rule.drop and guard is None:
            plan.add("drop-index", index.ident, reason, destructive=True, policy="unused",
                     **_index_detail(engine, index, "drop"))
        else:
            kept = f"; not dropped: {guard}" if guard and rule.drop else ""
            plan.add("report-unused", index.ident, reason + kept, size_bytes=index.size_bytes)


def _diff_advice(plan: _Plan, database: ObservedDatabase, policy: IndexPolicy) -> None:
    rule = policy.missing
    if not rule.report:
        return
    for advice in sorted(database.advice, key=lambda a: (a.scope, a.keys)):
        if advice.reduction < rule.min_cost_reduction:
            continue
        target = f"{database.name}/{advice.scope}({', '.join(advice.keys)})"
        plan.add("advise-index", target,
                 f"{advice.source}: planner cost {advice.cost_before:.0f} -> {advice.cost_after:.0f} "
                 f"(-{advice.reduction:.0%}) with a hypothetical index",
                 statements=[advice.sql], query=advice.query[:500], database=database.name)


def index_counts(declared: Sequence[PgIndex | MongoIndex], observed: ObservedIndexes,
                 actions: list[Action]) -> dict[str, int]:
    """Declared indexes present and valid; missing ones; and the unused, duplicate and invalid found."""
    valid = {i.ident for i in observed.all_indexes() if i.valid}
    desired = desired_indexes(declared)
    kinds = [(a.kind, a.detail.get("policy")) for a in actions]
    return {
        "declared": sum(d.ident in valid for d in desired),
        "missing": sum(k in ("create-index", "report-blocked") for k, _ in kinds),
        "unused": sum(k == "report-unused" or p == "unused" for k, p in kinds),
        "duplicate": sum(k == "report-duplicate" or p == "duplicate" for k, p in kinds),
        "invalid": sum(not i.valid for i in observed.all_indexes()),
    }
