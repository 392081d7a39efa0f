"""Queries from the spec or pg_stat_statements are checked with PostgreSQL's parser before anything plans them.

Issue: `indexes.missing.queries` was pasted into EXPLAIN without parameters,
so `SELECT 1; COMMIT; CREATE ROLE mallory SUPERUSER ...` left the read-only
transaction and created a superuser. Now only one plain SELECT is explained,
in the parser's own printing of it.
"""

from __future__ import annotations

import pytest

from dbfleet.sqltext import UnsafeQuery, one_select


def test_several_statements_are_refused_not_split() -> None:
    with pytest.raises(UnsafeQuery, match="3 statements"):
        one_select("SELECT 1; COMMIT; CREATE ROLE mallory SUPERUSER LOGIN PASSWORD 'x'")


@pytest.mark.parametrize(("text", "why"), [
    ("CREATE ROLE mallory", "CreateRoleStmt"),
    ("EXPLAIN ANALYZE SELECT 1", "ExplainStmt"),
    ("SELECT * INTO copy FROM users", "SELECT INTO"),
    ("WITH gone AS (DELETE FROM users RETURNING *) SELECT * FROM gone", "DeleteStmt"),
    ("SELECT * FROM (WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x) s", "UpdateStmt"),
    ("SELECT FROM WHERE", "not valid SQL"),
])
def test_anything_but_one_plain_select_is_refused(text: str, why: str) -> None:
    with pytest.raises(UnsafeQuery, match=why):
        one_select(text)


def test_a_select_comes_back_as_the_parser_prints_it() -> None:
    assert one_select("select count(*) from hot where kind = $1 -- trailing comment") == \
        "SELECT count(*) FROM hot WHERE kind = $1"
    assert one_select("SELECT 1;") == "SELECT 1"
    assert one_select("select $$; drop table x$$") == "SELECT '; drop table x'"
