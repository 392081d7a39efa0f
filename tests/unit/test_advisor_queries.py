"""Queries from the spec or pg_stat_statements are checked with PostgreSQL's parser before anything plans them.

Issue: `indexes.missing.queries` was pasted into EXPLAIN without parameters,
so `SELECT 1; COMMIT; CREATE ROLE mallory SUPERUSER ...` left the read-only
transaction and created a superuser. Now only one plain SELECT is explained,
in the parser's own printing of it.
"""

from __future__ import annotations

import pytest

from dbfleet.pg_syntax import UnsafeQuery, one_select


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


def test_a_spec_query_that_is_not_one_select_is_a_located_spec_error() -> None:
    from pathlib import Path

    import yaml

    from dbfleet.spec import SpecError, parse_fleet

    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "fleet.example.yaml").read_text())
    data["clusters"][0]["indexes"]["missing"]["queries"] = ["SELECT 1; COMMIT; CREATE ROLE mallory SUPERUSER"]
    with pytest.raises(SpecError) as err:
        parse_fleet(yaml.safe_dump(data), "fleet.yaml")
    text = str(err.value)
    assert "fleet.yaml:" in text and "clusters.0.indexes.missing" in text and "3 statements" in text
