"""diff_indexes: desired indexes from the spec against observed ones, as actions. Pure, no servers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dbfleet.reconcile.index_defs import ObservedIndex, desired_mongo, desired_pg
from dbfleet.reconcile.index_observation import IndexAdvice, ObservedDatabase, ObservedIndexes, TableStats
from dbfleet.reconcile.indexes import (
    covers,
    diff_indexes,
    find_redundant,
    index_counts,
)
from dbfleet.spec import IndexPolicy, MongoIndex, PgIndex

EMAIL = PgIndex(database="app", table="users", name="users_email_lower_idx", columns=["lower(email)"], unique=True)
OPEN = PgIndex(database="app", table="orders", name="orders_open_idx", columns=["created_at"],
               where="status = 'open'")
COMPOSITE = PgIndex(database="app", table="orders", name="orders_customer_created_idx",
                    columns=["customer_id", "created_at"])


def idx(name, keys, table="orders", *, db="app", scans=0, **kw) -> ObservedIndex:
    kw.setdefault("definition", f"CREATE INDEX {name} ON public.{table} USING btree ({', '.join(keys)})")
    return ObservedIndex(database=db, namespace="public", scope=f"public.{table}", name=name, keys=tuple(keys),
                         scans=scans, **kw)


def as_observed(want) -> ObservedIndex:
    """What the server shows for a declared index the operator created (tagged)."""
    return ObservedIndex(database=want.database, namespace=want.namespace, scope=want.scope, name=want.name,
                         keys=want.keys, method=want.method, unique=want.unique, predicate=want.predicate,
                         options=want.options, comment=want.tag, scans=10)


def observed(*indexes, tables=("public.users", "public.orders"), window=30.0, counted=("pg-1", "pg-2", "pg-3"),
             missing=(), advice=(), engine="postgres") -> ObservedIndexes:
    db = ObservedDatabase("app", list(indexes), {t: TableStats(t) for t in tables}, window, tuple(counted),
                          tuple(missing), list(advice))
    return ObservedIndexes("pg-main", engine, {"app": db})


def policy(**rules) -> IndexPolicy:
    return IndexPolicy.model_validate(rules)


def kinds(actions):
    return [(a.kind, a.target) for a in actions]


# --------------------------------------------------------------------------- declared


def test_missing_declared_indexes_are_created_concurrently():
    actions = diff_indexes("pg-main", [EMAIL, OPEN], observed(), policy())
    assert kinds(actions) == [("create-index", "app/public.users_email_lower_idx"),
                              ("create-index", "app/public.orders_open_idx")]
    assert all(a.changes and not a.destructive and a.reason for a in actions)
    assert "CONCURRENTLY" in actions[0].detail["statements"][0] and actions[0].detail["tag"].startswith("dbfleet:")


def test_in_sync_gives_nothing_to_do():
    have = [as_observed(desired_pg(s)) for s in (EMAIL, OPEN, COMPOSITE)]
    assert diff_indexes("pg-main", [EMAIL, OPEN, COMPOSITE], observed(*have), policy()) == []


def test_an_untagged_index_of_the_same_definition_counts_as_declared():
    have = replace(as_observed(desired_pg(OPEN)), comment=None)
    assert diff_indexes("pg-main", [OPEN], observed(have), policy()) == []


def test_the_tag_settles_a_predicate_the_server_prints_differently():
    spec = PgIndex(database="app", table="orders", name="o", columns=["a"], where="status IN ('x', 'y')")
    printed = replace(as_observed(desired_pg(spec)),
                      predicate="status=ANYARRAY['x','y']")  # not what normalization makes of IN (...)
    assert diff_indexes("pg-main", [spec], observed(printed), policy()) == []
    assert kinds(diff_indexes("pg-main", [spec], observed(replace(printed, comment=None)), policy())) == [
        ("report-conflict", "app/public.o")]


def test_a_name_taken_by_another_definition_is_a_conflict_not_kept_silently():
    other = idx("orders_open_idx", ["created_at"])  # no WHERE
    actions = diff_indexes("pg-main", [OPEN], observed(other), policy())
    assert kinds(actions) == [("report-conflict", "app/public.orders_open_idx")]
    assert not actions[0].changes and "another definition" in actions[0].reason


def test_a_name_on_another_table_is_a_conflict():
    other = idx("orders_open_idx", ["created_at"], table="users", predicate="status='open'")
    assert kinds(diff_indexes("pg-main", [OPEN], observed(other), policy())) == [
        ("report-conflict", "app/public.orders_open_idx")]


def test_a_missing_table_blocks_creation_with_a_reason():
    actions = diff_indexes("pg-main", [OPEN], observed(tables=("public.users",)), policy())
    assert kinds(actions) == [("report-blocked", "app/public.orders_open_idx")]
    assert "does not exist" in actions[0].reason


def test_an_unobserved_database_blocks_creation_and_says_why():
    obs = ObservedIndexes("pg-main", "postgres", {}, skipped={"app": "database app does not exist"})
    actions = diff_indexes("pg-main", [OPEN], obs, policy())
    assert kinds(actions) == [("report-blocked", "app/public.orders_open_idx")]
    assert "does not exist" in actions[0].reason


# --------------------------------------------------------------------------- invalid


def test_an_invalid_declared_index_is_rebuilt():
    broken = replace(as_observed(desired_pg(EMAIL)), valid=False)
    actions = diff_indexes("pg-main", [EMAIL], observed(broken), policy())
    assert kinds(actions) == [("rebuild-index", "app/public.users_email_lower_idx")]
    want = desired_pg(EMAIL)
    assert actions[0].detail["statements"] == [
        'DROP INDEX CONCURRENTLY IF EXISTS "public"."users_email_lower_idx"', *want.create["statements"]]
    assert actions[0].detail["tag"] == want.tag


def test_an_invalid_undeclared_index_is_rebuilt_from_its_own_definition():
    broken = idx("x", ["a"], valid=False, definition="CREATE UNIQUE INDEX x ON public.orders USING btree (a)")
    (action,) = diff_indexes("pg-main", [], observed(broken), policy())
    assert action.detail["statements"] == ['DROP INDEX CONCURRENTLY IF EXISTS "public"."x"',
                                           "CREATE UNIQUE INDEX CONCURRENTLY x ON public.orders USING btree (a)"]
    assert "tag" not in action.detail


def test_invalid_is_only_reported_when_rebuild_is_off():
    broken = idx("x", ["a"], valid=False)
    actions = diff_indexes("pg-main", [], observed(broken), policy(invalid={"rebuild": False}))
    assert kinds(actions) == [("report-invalid", "app/public.x")]


def test_an_index_being_built_is_left_alone():
    building = idx("x", ["a"], valid=False, building=True)
    assert diff_indexes("pg-main", [], observed(building), policy()) == []


def test_leftovers_of_an_interrupted_reindex_are_reported_not_rebuilt():
    leftover = idx("orders_open_idx_ccnew", ["created_at"], valid=False)
    actions = diff_indexes("pg-main", [], observed(leftover), policy())
    assert kinds(actions) == [("report-invalid", "app/public.orders_open_idx_ccnew")]


def test_an_invalid_index_with_a_conflicting_definition_is_a_conflict_first():
    broken = idx("orders_open_idx", ["status"], valid=False)
    assert kinds(diff_indexes("pg-main", [OPEN], observed(broken), policy())) == [
        ("report-conflict", "app/public.orders_open_idx")]


# --------------------------------------------------------------------------- duplicates


def test_an_exact_duplicate_is_reported():
    a, b = idx("a_idx", ["customer_id"], scans=5), idx("b_idx", ["customer_id"], scans=5)
    actions = diff_indexes("pg-main", [], observed(a, b), policy())
    assert kinds(actions) == [("report-duplicate", "app/public.b_idx")]
    assert "a duplicate of a_idx" in actions[0].reason


def test_a_duplicate_is_dropped_only_when_the_policy_allows():
    a, b = idx("a_idx", ["customer_id"], scans=5), idx("b_idx", ["customer_id"], scans=5)
    actions = diff_indexes("pg-main", [], observed(a, b), policy(duplicate={"drop": True}))
    assert kinds(actions) == [("drop-index", "app/public.b_idx")]
    assert actions[0].destructive
    assert actions[0].detail["statements"] == ['DROP INDEX CONCURRENTLY IF EXISTS "public"."b_idx"']


def test_a_key_prefix_is_redundant():
    small, big = idx("c", ["customer_id"], scans=1), idx("cc", ["customer_id", "created_at"], scans=1)
    actions = diff_indexes("pg-main", [], observed(small, big), policy())
    assert kinds(actions) == [("report-duplicate", "app/public.c")]
    assert "prefix" in actions[0].reason


def test_a_constraint_index_is_never_dropped_its_plain_copy_is():
    pkey = idx("orders_pkey", ["id"], unique=True, constraint="constraint orders_pkey", scans=1)
    copy = idx("orders_id_idx", ["id"], scans=1)
    actions = diff_indexes("pg-main", [], observed(pkey, copy), policy(duplicate={"drop": True}))
    assert kinds(actions) == [("drop-index", "app/public.orders_id_idx")]


def test_two_constraint_indexes_are_reported_not_dropped():
    a = idx("a_key", ["id"], unique=True, constraint="constraint a_key", scans=1)
    b = idx("b_key", ["id"], unique=True, constraint="constraint b_key", scans=1)
    actions = diff_indexes("pg-main", [], observed(a, b), policy(duplicate={"drop": True}))
    assert kinds(actions) == [("report-duplicate", "app/public.b_key")]
    assert "not dropped: it backs constraint b_key" in actions[0].reason


def test_the_declared_copy_is_kept_and_the_other_dropped():
    declared = as_observed(desired_pg(COMPOSITE))
    other = idx("a_first_by_name", ["customer_id", "created_at"], scans=3)
    actions = diff_indexes("pg-main", [COMPOSITE], observed(declared, other), policy(duplicate={"drop": True}))
    assert kinds(actions) == [("drop-index", "app/public.a_first_by_name")]


def test_a_declared_prefix_index_is_reported_but_never_dropped():
    declared = as_observed(desired_pg(PgIndex(database="app", table="orders", name="c", columns=["customer_id"])))
    big = idx("cc", ["customer_id", "created_at"], scans=3)
    spec = [PgIndex(database="app", table="orders", name="c", columns=["customer_id"])]
    actions = diff_indexes("pg-main", spec, observed(declared, big), policy(duplicate={"drop": True}))
    assert kinds(actions) == [("report-duplicate", "app/public.c")]
    assert "declared in the spec" in actions[0].reason


def test_a_unique_index_is_not_made_redundant_by_a_wider_one():
    unique = idx("u", ["email"], unique=True)
    wider = idx("w", ["email", "name"])
    assert find_redundant([unique, wider]) == []


def test_a_plain_index_is_covered_by_a_unique_one_on_the_same_keys():
    plain, unique = idx("p", ["email"]), idx("u", ["email"], unique=True)
    found = find_redundant([plain, unique])
    assert [(r.index.name, r.covered_by.name, r.exact) for r in found] == [("p", "u", False)]


def test_partial_indexes_only_cover_the_same_predicate():
    assert not covers(idx("a", ["x", "y"], predicate="s='open'"), idx("b", ["x"]))
    assert covers(idx("a", ["x", "y"], predicate="s='open'"), idx("b", ["x"], predicate="s='open'"))


def test_sort_order_and_method_matter():
    assert not covers(idx("a", ["x desc", "y"]), idx("b", ["x"]))
    assert not covers(idx("a", ["x", "y"], method="hash"), idx("b", ["x"], method="hash"))
    assert covers(idx("a", ["x"], method="gin"), idx("b", ["x"], method="gin"))


def test_include_columns_must_be_covered():
    assert covers(idx("a", ["x"], include=("y",)), idx("b", ["x"]))
    assert not covers(idx("a", ["x"]), idx("b", ["x"], include=("y",)))
    assert covers(idx("a", ["x", "y"]), idx("b", ["x"], include=("y",)))


def test_three_copies_leave_exactly_one():
    copies = [idx(n, ["k"], scans=1) for n in ("c", "a", "b")]
    found = find_redundant(copies)
    assert sorted(r.index.name for r in found) == ["b", "c"]


def test_invalid_indexes_take_no_part_in_duplicate_detection():
    assert find_redundant([idx("a", ["k"]), idx("b", ["k"], valid=False)]) == []


def test_indexes_on_different_tables_or_databases_are_not_duplicates():
    assert find_redundant([idx("a", ["k"]), idx("b", ["k"], table="users")]) == []
    assert find_redundant([idx("a", ["k"]), idx("b", ["k"], db="other")]) == []


# --------------------------------------------------------------------------- unused


def test_an_index_with_no_scans_anywhere_is_unused():
    actions = diff_indexes("pg-main", [], observed(idx("lonely", ["note"])), policy())
    assert kinds(actions) == [("report-unused", "app/public.lonely")]
    assert "pg-1, pg-2, pg-3" in actions[0].reason


def test_an_index_used_only_on_a_replica_is_not_unused():
    used_on_replica = idx("on_replica", ["note"], scans=4, scans_by_member=(("pg-1", 0), ("pg-2", 4)))
    assert diff_indexes("pg-main", [], observed(used_on_replica), policy()) == []


def test_unused_needs_stats_older_than_the_policy_says():
    lonely = idx("lonely", ["note"])
    assert diff_indexes("pg-main", [], observed(lonely, window=3.0), policy()) == []  # default 7 days
    assert kinds(diff_indexes("pg-main", [], observed(lonely, window=3.0),
                              policy(unused={"min_stats_age_days": 2}))) == [("report-unused", "app/public.lonely")]


def test_no_index_is_called_unused_while_a_replica_is_unread():
    lonely = idx("lonely", ["note"])
    assert diff_indexes("pg-main", [], observed(lonely, missing=("pg-3",)), policy()) == []
    assert diff_indexes("pg-main", [], observed(lonely, window=None), policy()) == []


def test_unique_and_constraint_indexes_are_never_unused():
    unique = idx("u", ["email"], unique=True)
    pkey = idx("pk", ["id"], unique=True, constraint="constraint pk")
    assert diff_indexes("pg-main", [], observed(unique, pkey), policy(unused={"drop": True})) == []


def test_unused_indexes_are_dropped_only_when_allowed_and_never_declared_ones():
    lonely = idx("lonely", ["note"])
    declared = replace(as_observed(desired_pg(OPEN)), scans=0)
    actions = diff_indexes("pg-main", [OPEN], observed(lonely, declared), policy(unused={"drop": True}))
    assert kinds(actions) == [("drop-index", "app/public.lonely"), ("report-unused", "app/public.orders_open_idx")]
    by_target = {a.target: a for a in actions}
    assert by_target["app/public.lonely"].destructive
    assert "declared in the spec" in by_target["app/public.orders_open_idx"].reason


def test_the_cover_of_a_dropped_prefix_is_never_dropped_as_unused():
    small = idx("c", ["customer_id"], scans=40)  # used, but redundant
    big = idx("cc", ["customer_id", "created_at"], scans=0)  # unused so far: it takes over small's lookups
    actions = diff_indexes("pg-main", [], observed(small, big), policy(duplicate={"drop": True},
                                                                       unused={"drop": True}))
    assert kinds(actions) == [("drop-index", "app/public.c")]


def test_nothing_is_reported_when_the_class_is_off():
    lonely = idx("lonely", ["note"])
    copy = idx("copy", ["note"])
    quiet = policy(unused={"report": False}, duplicate={"report": False})
    assert diff_indexes("pg-main", [], observed(lonely, copy), quiet) == []


def test_each_index_gets_one_action_at_most():
    a, b = idx("a", ["k"]), idx("b", ["k"])  # duplicates, and both unused
    actions = diff_indexes("pg-main", [], observed(a, b), policy(duplicate={"drop": True}, unused={"drop": True}))
    targets = [x.target for x in actions]
    assert len(targets) == len(set(targets))
    assert ("drop-index", "app/public.b") in kinds(actions)


# --------------------------------------------------------------------------- advice


def advice(before, after):
    return IndexAdvice("app", "public.orders", ("note",), 'CREATE INDEX CONCURRENTLY ON "public"."orders" (note)',
                       "select * from orders where note = $1", "hot sequential scans", before, after)


def test_advice_is_reported_when_the_cost_falls_by_half():
    actions = diff_indexes("pg-main", [], observed(advice=[advice(1000, 10)]), policy())
    assert kinds(actions) == [("advise-index", "app/public.orders(note)")]
    assert not actions[0].changes and "-99%" in actions[0].reason


def test_advice_below_the_threshold_is_not_reported():
    assert diff_indexes("pg-main", [], observed(advice=[advice(1000, 600)]), policy()) == []
    assert kinds(diff_indexes("pg-main", [], observed(advice=[advice(1000, 600)]),
                              policy(missing={"min_cost_reduction": 0.3}))) == [
        ("advise-index", "app/public.orders(note)")]


def test_advice_is_silent_when_missing_report_is_off():
    assert diff_indexes("pg-main", [], observed(advice=[advice(1000, 10)]), policy(missing={"report": False})) == []


# --------------------------------------------------------------------------- MongoDB


EVENTS = MongoIndex(database="app", collection="events", name="events_user_ts", keys=[{"user_id": 1}, {"ts": -1}])
TTL = MongoIndex(database="app", collection="sessions", name="sessions_ttl", keys=[{"created_at": 1}],
                 ttl_seconds=3600)


def mongo(*indexes, collections=("events", "sessions"), window=30.0) -> ObservedIndexes:
    db = ObservedDatabase("app", list(indexes), {c: TableStats(c) for c in collections}, window, ("shards",))
    return ObservedIndexes("mongo-main", "mongo", {"app": db})


def midx(collection, name, keys, scans=1, **kw) -> ObservedIndex:
    return ObservedIndex(database="app", namespace=collection, scope=collection, name=name, keys=tuple(keys),
                         scans=scans, **kw)


def test_mongo_declared_indexes_are_created_even_before_the_collection_exists():
    actions = diff_indexes("mongo-main", [EVENTS, TTL], mongo(collections=()), policy())
    assert kinds(actions) == [("create-index", "app/events.events_user_ts"),
                              ("create-index", "app/sessions.sessions_ttl")]
    assert actions[1].detail["options"] == {"expireAfterSeconds": 3600}


def test_mongo_in_sync():
    have = [as_observed(desired_mongo(EVENTS)), as_observed(desired_mongo(TTL))]
    assert diff_indexes("mongo-main", [EVENTS, TTL], mongo(*have), policy()) == []


def test_mongo_same_name_other_options_is_a_conflict():
    other_ttl = midx("sessions", "sessions_ttl", ["created_at 1"], options=(("expireAfterSeconds", "60"),))
    other_keys = midx("events", "events_user_ts", ["user_id 1", "ts 1"])
    actions = diff_indexes("mongo-main", [EVENTS, TTL], mongo(other_ttl, other_keys), policy())
    assert kinds(actions) == [("report-conflict", "app/events.events_user_ts"),
                              ("report-conflict", "app/sessions.sessions_ttl")]


def test_mongo_prefix_duplicates_but_not_ttl_or_id():
    ident = midx("events", "_id_", ["_id 1"], constraint="the _id index", scans=0)
    user = midx("events", "user_1", ["user_id 1"])
    declared = as_observed(desired_mongo(EVENTS))
    ttl = as_observed(desired_mongo(TTL))
    wider = midx("sessions", "created_user", ["created_at 1", "user_id 1"])
    actions = diff_indexes("mongo-main", [EVENTS, TTL], mongo(ident, user, declared, ttl, wider),
                           policy(duplicate={"drop": True}))
    assert kinds(actions) == [("drop-index", "app/events.user_1")]
    assert actions[0].detail["collection"] == "events" and "statements" not in actions[0].detail


def test_mongo_unused_indexes_are_reported_never_dropped():
    lonely = midx("events", "lonely", ["x 1"], scans=0)
    obs = mongo(lonely)
    obs.databases["app"].every_member_counted = False
    (action,) = diff_indexes("mongo-main", [], obs, policy(unused={"drop": True}))
    assert action.kind == "report-unused" and "usage on secondaries is not counted" in action.reason


def test_mongo_unused_never_names_the_id_index():
    ident = midx("events", "_id_", ["_id 1"], constraint="the _id index", scans=0)
    lonely = midx("events", "lonely", ["x 1"], scans=0)
    assert kinds(diff_indexes("mongo-main", [], mongo(ident, lonely), policy())) == [
        ("report-unused", "app/events.lonely")]


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("drop", [False, True])
def test_the_diff_is_deterministic_and_never_drops_what_it_must_not(drop):
    indexes = [
        idx("orders_pkey", ["id"], unique=True, constraint="constraint orders_pkey"),
        idx("orders_id", ["id"]), idx("a", ["k"]), idx("b", ["k"]), idx("c", ["k", "j"]),
        as_observed(desired_pg(OPEN)), replace(as_observed(desired_pg(COMPOSITE)), scans=0),
        idx("lonely", ["z"]), idx("bad", ["q"], valid=False),
    ]
    rules = policy(duplicate={"drop": drop}, unused={"drop": drop})
    first = diff_indexes("pg-main", [OPEN, COMPOSITE], observed(*indexes), rules)
    again = diff_indexes("pg-main", [OPEN, COMPOSITE], observed(*reversed(indexes)), rules)
    assert first == again
    dropped = {a.target for a in first if a.kind == "drop-index"}
    assert not dropped & {"app/public.orders_pkey", "app/public.orders_open_idx",
                          "app/public.orders_customer_created_idx"}
    assert bool(dropped) == drop
    assert all(a.destructive == (a.kind == "drop-index") for a in first)


def test_index_counts_for_status_and_metrics():
    indexes = [as_observed(desired_pg(OPEN)), idx("a", ["k"], scans=1), idx("b", ["k"], scans=1),
               idx("lonely", ["z"]), idx("bad", ["q"], valid=False)]
    obs = observed(*indexes)
    actions = diff_indexes("pg-main", [OPEN, EMAIL], obs, policy(invalid={"rebuild": False}))
    assert index_counts([OPEN, EMAIL], obs, actions) == {"declared": 1, "missing": 1, "unused": 1,
                                                         "duplicate": 1, "invalid": 1}
