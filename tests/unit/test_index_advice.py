"""Missing-index candidates from EXPLAIN (FORMAT JSON, VERBOSE) plans, as PostgreSQL 15 prints them."""

from __future__ import annotations

from dbfleet.reconcile.advice import (
    advice_sql,
    candidate_keys,
    hypothetical_sql,
    is_read_query,
    mentions_table,
    parameter_count,
    plan_cost,
    seq_scans,
)

# Trimmed from a real plan: a nested loop over a filtered seq scan and an index scan.
JOIN_PLAN = [{"Plan": {
    "Node Type": "Nested Loop", "Total Cost": 8.33, "Plan Rows": 1,
    "Plans": [
        {"Node Type": "Seq Scan", "Relation Name": "users", "Schema": "public", "Alias": "u", "Total Cost": 0.0,
         "Plan Rows": 1, "Filter": "(lower(u.email) ~~ 'a%'::text)"},
        {"Node Type": "Index Scan", "Index Name": "orders_customer_created_idx", "Relation Name": "orders",
         "Schema": "public", "Alias": "o", "Total Cost": 8.32, "Plan Rows": 1,
         "Index Cond": "((o.customer_id = u.id) AND (o.created_at > (now() - '1 day'::interval)))",
         "Filter": "(o.status = 'open'::text)"},
    ]}}]

GATHER_PLAN = [{"Plan": {
    "Node Type": "Gather", "Total Cost": 5120.5, "Plan Rows": 10,
    "Plans": [{"Node Type": "Seq Scan", "Parallel Aware": True, "Relation Name": "orders", "Schema": "sales",
               "Alias": "orders", "Total Cost": 4100.0, "Plan Rows": 4,
               "Filter": "((orders.created_at > $2) AND ((orders.note)::text = $1) AND (orders.customer_id = 7))"}],
}}]

ORDERS = {"id", "customer_id", "created_at", "status", "note"}


def test_plan_cost_is_the_root_total():
    assert plan_cost(JOIN_PLAN) == 8.33
    assert plan_cost(GATHER_PLAN[0]) == 5120.5


def test_only_filtered_sequential_scans_are_candidates():
    scans = seq_scans(JOIN_PLAN)
    assert [(s.scope, s.filter) for s in scans] == [("public.users", "(lower(u.email) ~~ 'a%'::text)")]
    (parallel,) = seq_scans(GATHER_PLAN)
    assert parallel.scope == "sales.orders"


def test_equality_columns_come_first_then_one_range_column():
    (scan,) = seq_scans(GATHER_PLAN)
    assert candidate_keys(scan.filter, ORDERS) == ("note", "customer_id", "created_at")


def test_casts_and_aliases_do_not_hide_a_column():
    assert candidate_keys("((o.note)::text = $1)", ORDERS) == ("note",)
    assert candidate_keys("(status = 'open'::text)", ORDERS) == ("status",)


def test_words_inside_literals_and_unknown_names_are_ignored():
    assert candidate_keys("(note = 'status = 1')", ORDERS) == ("note",)
    assert candidate_keys("(nosuch = 1)", ORDERS) == ()


def test_keys_are_capped_and_unique():
    text = "((a = 1) AND (b = 2) AND (c = 3) AND (d = 4) AND (a = 5) AND (e > 1))"
    assert candidate_keys(text, set("abcde")) == ("a", "b", "c")


def test_parameter_count_reads_normalized_queries():
    assert parameter_count("select * from t where a = $1 and b > $12") == 12
    assert parameter_count("select '$5' from t") == 0
    assert parameter_count("select 1") == 0


def test_table_mentions_are_whole_words():
    assert mentions_table("SELECT * FROM orders o WHERE o.id = $1", "orders")
    assert not mentions_table("SELECT * FROM orders_archive", "orders")
    assert mentions_table("select * from public.Orders", "orders")


def test_only_reads_are_explained_for_advice():
    assert is_read_query("  SELECT 1")
    assert is_read_query("with x as (select 1) select * from x")
    assert not is_read_query("with d as (delete from t returning *) select * from d")
    assert not is_read_query("UPDATE t SET a = $1")


def test_statements_quote_identifiers():
    assert hypothetical_sql("public", "Orders", ("note",)) == 'CREATE INDEX ON "public"."Orders" USING btree (note)'
    assert advice_sql("s", "t", ("a", "b")) == 'CREATE INDEX CONCURRENTLY ON "s"."t" (a, b)'
