"""Index definitions: declared and catalog text normalize to the same shape; create statements; tags."""

from __future__ import annotations

import pytest

from dbfleet.reconcile.index_defs import (
    declaration_tag,
    desired_mongo,
    desired_pg,
    normalize_expr,
    normalize_key,
    observed_mongo,
    observed_pg,
    split_table,
)
from dbfleet.spec import MongoIndex, PgIndex


def pg_row(**over):
    row = {"schema": "public", "table": "users", "name": "i", "keys": ["email"], "include": [], "method": "btree",
           "unique": False, "predicate": None, "definition": "CREATE INDEX i ON public.users USING btree (email)",
           "valid": True, "building": False, "constraint": None, "comment": None, "size_bytes": 8192}
    row.update(over)
    return row


# Printed forms as PostgreSQL 15's pg_get_indexdef(oid, k, true) shows them.
@pytest.mark.parametrize("declared, printed", [
    ("lower(email)", "lower(email)"),
    ("lower(note)", "lower(note::text)"),  # note is varchar
    ("LOWER( email )", "lower(email)"),
    ("(a + b)", "(a + b)"),
    ("date_trunc('day', created_at AT TIME ZONE 'UTC')",
     "date_trunc('day'::text, (created_at AT TIME ZONE 'UTC'::text))"),
    ("(payload->>'kind')", "(payload ->> 'kind'::text)"),
    ("note::varchar(20)", "note"),
])
def test_declared_and_printed_expressions_normalize_alike(declared, printed):
    assert normalize_expr(declared) == normalize_expr(printed)


def test_string_literals_keep_their_case_and_spaces():
    assert normalize_expr("status = 'Open Now'") == "status='Open Now'"
    assert normalize_expr("status = 'open'") != normalize_expr("status = 'OPEN'")


@pytest.mark.parametrize("declared, printed", [
    ("created_at", "created_at"),
    ("created_at ASC", "created_at"),
    ("created_at asc nulls last", "created_at"),
    ("created_at DESC", "created_at DESC"),
    ("created_at desc nulls first", "created_at DESC"),
    ("created_at DESC NULLS LAST", "created_at DESC NULLS LAST"),
    ("created_at NULLS FIRST", "created_at NULLS FIRST"),
])
def test_sort_orders_have_one_spelling(declared, printed):
    assert normalize_key(declared) == normalize_key(printed)


def test_sort_orders_differ_when_they_differ():
    assert normalize_key("created_at DESC") != normalize_key("created_at")
    assert normalize_key("created_at DESC NULLS LAST") != normalize_key("created_at DESC")


def test_a_declared_index_matches_its_catalog_row():
    spec = PgIndex(database="app", table="orders", name="orders_open_idx", columns=["created_at"],
                   where="status = 'open'")
    row = pg_row(table="orders", name="orders_open_idx", keys=["created_at"],
                 predicate="status = 'open'::text",
                 definition="CREATE INDEX orders_open_idx ON public.orders USING btree (created_at) "
                            "WHERE (status = 'open'::text)")
    assert desired_pg(spec).same_definition(observed_pg("app", row, {"pg-1": 0}))


def test_the_create_statement_is_concurrent_quoted_and_complete():
    spec = PgIndex(database="app", table="sales.Orders", name="o_idx", columns=["lower(email)", "id DESC"],
                   unique=True, where="deleted_at IS NULL")
    want = desired_pg(spec)
    assert want.create["statements"] == [('CREATE UNIQUE INDEX CONCURRENTLY "o_idx" ON "sales"."Orders" USING btree '
                                  "(lower(email), id DESC) WHERE deleted_at IS NULL")]
    assert (want.namespace, want.scope, want.ident) == ("sales", "sales.Orders", "app/sales.o_idx")
    assert want.create["tag"] == want.tag


def test_split_table_defaults_to_public():
    assert split_table("users") == ("public", "users")
    assert split_table("s.users") == ("s", "users")


def test_the_tag_follows_the_declaration():
    a = PgIndex(database="app", table="t", name="i", columns=["a"])
    assert declaration_tag(a) == declaration_tag(PgIndex(database="app", table="t", name="i", columns=["a"]))
    assert declaration_tag(a) != declaration_tag(PgIndex(database="app", table="t", name="i", columns=["b"]))
    assert declaration_tag(a).startswith("dbfleet:")


def test_observed_scans_are_summed_over_members():
    index = observed_pg("app", pg_row(), {"pg-1": 0, "pg-2": 5, "pg-3": 1})
    assert index.scans == 6
    assert dict(index.scans_by_member) == {"pg-1": 0, "pg-2": 5, "pg-3": 1}


def test_mongo_declared_and_listed_indexes_match():
    spec = MongoIndex(database="app", collection="sessions", name="sessions_ttl", keys=[{"created_at": 1}],
                      ttl_seconds=3600)
    doc = {"v": 2, "key": {"created_at": 1.0}, "name": "sessions_ttl", "expireAfterSeconds": 3600}
    want, have = desired_mongo(spec), observed_mongo("app", "sessions", doc, 0)
    assert want.same_definition(have)
    assert want.create["options"] == {"expireAfterSeconds": 3600}
    assert want.create["keys"] == [["created_at", 1]]


def test_mongo_partial_filters_compare_regardless_of_key_order():
    spec = MongoIndex(database="app", collection="c", name="p", keys=[{"a": 1}],
                      partial={"status": "open", "n": {"$gt": 1}})
    doc = {"v": 2, "key": {"a": 1}, "name": "p", "partialFilterExpression": {"n": {"$gt": 1}, "status": "open"}}
    assert desired_mongo(spec).same_definition(observed_mongo("app", "c", doc, None))


def test_mongo_method_and_id_index():
    hashed = observed_mongo("app", "events", {"key": {"user_id": "hashed"}, "name": "h"}, 3)
    assert hashed.method == "hashed" and hashed.scans == 3
    ident = observed_mongo("app", "events", {"key": {"_id": 1}, "name": "_id_"}, 0)
    assert ident.constraint  # never dropped


def test_a_column_that_adds_a_clause_never_reaches_create_index():
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="adds its own clause|comment"):
        PgIndex(database="app", table="t", name="i", columns=["id) WITH (fillfactor = 10) TABLESPACE pg_default --"])
    with pytest.raises(pydantic.ValidationError, match="another"):
        PgIndex(database="app", table="t", name="i", columns=["id"], where="true; DROP TABLE t")


@pytest.mark.parametrize("columns,where", [(["lower(email)", "id DESC"], "deleted_at IS NULL"),
                                           (["(a + b)", 'name COLLATE "C"', "email text_pattern_ops"], None)])
def test_the_create_statement_is_one_index_of_exactly_the_declared_columns(columns, where):
    from pglast import ast, parse_sql

    spec = PgIndex(database="app", table='sales.Orders', name="o_idx", columns=columns, where=where)
    (statement,) = parse_sql(desired_pg(spec).create["statements"][0])
    index = statement.stmt
    assert isinstance(index, ast.IndexStmt) and index.concurrent and index.idxname == "o_idx"
    assert (index.relation.schemaname, index.relation.relname) == ("sales", "Orders")
    assert len(index.indexParams) == len(columns) and (index.whereClause is not None) == (where is not None)
    assert index.options is None and index.tableSpace is None and index.indexIncludingParams is None
