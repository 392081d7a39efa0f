"""SQL text that comes from outside (the spec, pg_stat_statements), checked with PostgreSQL's own parser.

pglast is libpg_query, the server's parser: what it reads as one statement
the server reads as one statement. A text that is not exactly what the caller
allows is refused with the reason, never run.
"""

from __future__ import annotations

from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream


class UnsafeQuery(ValueError):
    """The text is not one plain SELECT; the message says why."""


def _statements(text: str) -> tuple[Any, ...]:
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
