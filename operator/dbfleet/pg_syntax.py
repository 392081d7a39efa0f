"""SQL text from outside (the spec, pg_stat_statements), checked with PostgreSQL's own parser (libpg_query, pglast).

What pglast reads as one statement the server reads as one statement. A text
that is not exactly what its place allows is refused with the reason, never
run:

- A declared index's `columns` and `where` are SQL that dbfleet places into a
  CREATE INDEX. Each must be one index element (a column, an expression, with
  an optional opclass, collation and ordering) or one boolean expression, with
  no comment, no second statement and no clause of its own (WITH, TABLESPACE,
  INCLUDE, NULLS NOT DISTINCT, WHERE).
- A query the index advisor explains must be one plain SELECT (one_select).
"""

from __future__ import annotations

from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError, scan
from pglast.stream import RawStream

_PROBE = "dbfleet_probe"
_COLUMN_HEAD = f"CREATE INDEX {_PROBE} ON {_PROBE} ("
_PREDICATE_HEAD = f"CREATE INDEX {_PROBE} ON {_PROBE} ({_PROBE}) WHERE "


class SqlPartError(ValueError):
    """A spec value that is not the one SQL element its place holds; the message says what it is instead."""


def _parsed_index(sql: str, head: str, text: str) -> dict[str, Any]:
    """The one CREATE INDEX statement `sql` holds, as pglast's dict, or SqlPartError naming where `text` fails."""
    try:
        statements = parse_sql(sql)
    except ParseError as exc:
        message, location = (list(exc.args) + ["", None])[:2]
        where = f" at character {location - len(head) + 1}" if isinstance(location, int) and location >= len(head) \
            else ""
        raise SqlPartError(f"PostgreSQL cannot parse it{where}: {message}") from None
    if len(statements) != 1 or not isinstance(statements[0].stmt, ast.IndexStmt):
        raise SqlPartError("it ends the statement and starts another")
    return statements[0].stmt(skip_none=True)


def _without(shape: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in shape.items() if k not in keys}


_REFERENCE = _without(_parsed_index(f"{_COLUMN_HEAD}{_PROBE})", _COLUMN_HEAD, _PROBE), "indexParams")
"""A bare CREATE INDEX: a part that adds anything else to the statement changes this shape."""


def _refuse_comments(text: str) -> None:
    try:
        tokens = scan(text)
    except ParseError as exc:
        raise SqlPartError(f"PostgreSQL cannot read it: {exc.args[0] if exc.args else exc}") from None
    if any(token.name in ("SQL_COMMENT", "C_COMMENT") for token in tokens):
        raise SqlPartError("it holds an SQL comment, which could hide the rest of the statement")


def check_index_column(text: str) -> str:
    """`text` if it is exactly one index element, such as `email`, `lower(email)`, `created_at DESC`."""
    _refuse_comments(text)
    shape = _parsed_index(f"{_COLUMN_HEAD}{text})", _COLUMN_HEAD, text)
    if len(shape.get("indexParams", ())) != 1:
        raise SqlPartError("it is more than one index column")
    if _without(shape, "indexParams") != _REFERENCE:
        raise SqlPartError("it adds its own clause to CREATE INDEX (WITH, TABLESPACE, INCLUDE, WHERE, ...)")
    return text


def check_index_predicate(text: str) -> str:
    """`text` if it is exactly one expression for an index's WHERE, such as `status = 'open'`."""
    _refuse_comments(text)
    shape = _parsed_index(f"{_PREDICATE_HEAD}{text}", _PREDICATE_HEAD, text)
    if "whereClause" not in shape or _without(shape, "indexParams", "whereClause") != _REFERENCE:
        raise SqlPartError("it adds its own clause to CREATE INDEX")
    return text


class UnsafeQuery(ValueError):
    """The text is not one plain SELECT; the message says why."""


def _statements(text: str) -> tuple[Any, ...]:
    """Every statement in `text`, or UnsafeQuery when PostgreSQL cannot parse it."""
    try:
        return tuple(parse_sql(text))
    except ParseError as exc:
        raise UnsafeQuery(f"not valid SQL: {exc}") from None


def one_select(text: str) -> str:
    """The text as exactly one SELECT that reads and writes nothing else, printed back by the parser.

    Refused: several statements, anything but SELECT, SELECT INTO (it creates
    a table) and data-modifying WITH queries. The printed form is what gets
    explained, so a comment or a trailing `;` can hide nothing.
    """
    statements = _statements(text)
    if len(statements) != 1:
        raise UnsafeQuery(f"{len(statements)} statements; exactly one SELECT is allowed")
    statement = statements[0].stmt
    if not isinstance(statement, ast.SelectStmt):
        raise UnsafeQuery(f"a {type(statement).__name__}, not a SELECT")
    if statement.intoClause is not None:
        raise UnsafeQuery("SELECT INTO creates a table")
    for cte in _ctes(statement):
        if not isinstance(cte.ctequery, ast.SelectStmt):
            raise UnsafeQuery(f"WITH {cte.ctename} is a {type(cte.ctequery).__name__}, not a SELECT")
    return str(RawStream()(statement))


def _ctes(statement: Any) -> list[Any]:
    """Every common table expression in a statement, nested ones included."""
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, ast.CommonTableExpr):
            found.append(node)
        if isinstance(node, ast.Node):
            for name in node:
                visit(getattr(node, name))
        elif isinstance(node, (tuple, list)):
            for item in node:
                visit(item)

    visit(statement)
    return found
