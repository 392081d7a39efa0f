"""Missing-index candidates read from PostgreSQL plans: which sequential scans filter on which columns.

Pure functions over `EXPLAIN (FORMAT JSON)` output; engines/postgres.py runs
the EXPLAINs, with and without a hypothetical index (hypopg), and the index
diff reports a candidate only when the planner cost falls far enough.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dbfleet.reconcile.index_defs import CAST, quote_ident

MAX_KEYS = 3
_PARAM = re.compile(r"\$([0-9]+)")
_COMPARISON = re.compile(
    r"(?<![\w.\"])(?:[a-z_][a-z0-9_]*\.)?\"?([a-z_][a-z0-9_]*)\"?\s*"
    r"(=|<>|!=|<=|>=|<|>|~~\*?|!~~|\bIS\b|\bBETWEEN\b)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SeqScan:
    schema: str
    table: str
    filter: str
    rows: float

    @property
    def scope(self) -> str:
        return f"{self.schema}.{self.table}"


def plan_root(explain: Any) -> dict[str, Any]:
    """The top plan node of EXPLAIN (FORMAT JSON) output, as psycopg returns it."""
    doc = explain[0] if isinstance(explain, list) else explain
    plan: dict[str, Any] = doc["Plan"]
    return plan


def plan_cost(explain: Any) -> float:
    return float(plan_root(explain)["Total Cost"])


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def seq_scans(explain: Any) -> list[SeqScan]:
    """Sequential scans with a filter, anywhere in the plan (parallel ones included)."""
    found = []
    for node in _nodes(plan_root(explain)):
        if node.get("Node Type") == "Seq Scan" and node.get("Filter"):
            found.append(SeqScan(node.get("Schema", "public"), node["Relation Name"], node["Filter"],
                                 float(node.get("Plan Rows", 0))))
    return found


def candidate_keys(filter_text: str, columns: set[str]) -> tuple[str, ...]:
    """Index keys for a filter: columns compared for equality first, then one range column."""
    equal: list[str] = []
    ranged: list[str] = []
    # '((note)::text = $1)' -> ' note  = $1 ': casts and parentheses stand between a column and its operator
    bare = re.sub(r"[()]", " ", CAST.sub("", _strip_literals(filter_text)))
    for match in _COMPARISON.finditer(bare):
        column, op = match.group(1).lower(), match.group(2).upper()
        if column not in columns:
            continue
        bucket = equal if op in ("=", "IS") else ranged
        if column not in equal and column not in ranged:
            bucket.append(column)
    keys = equal[:MAX_KEYS]
    if ranged and len(keys) < MAX_KEYS:
        keys.append(ranged[0])
    return tuple(keys)


def _strip_literals(text: str) -> str:
    return re.sub(r"'(?:[^']|'')*'", "''", text)


def parameter_count(query: str) -> int:
    """The highest $n placeholder in a normalized query (pg_stat_statements text), 0 if none."""
    return max((int(n) for n in _PARAM.findall(_strip_literals(query))), default=0)


def mentions_table(query: str, table: str) -> bool:
    return re.search(rf"(?<![\w$]){re.escape(table)}(?![\w$])", query, re.IGNORECASE) is not None


def hypothetical_sql(schema: str, table: str, keys: tuple[str, ...]) -> str:
    """What hypopg_create_index takes: a plain CREATE INDEX statement."""
    return f"CREATE INDEX ON {quote_ident(schema)}.{quote_ident(table)} USING btree ({', '.join(keys)})"


def advice_sql(schema: str, table: str, keys: tuple[str, ...]) -> str:
    """What a person would run to add the advised index without blocking writes."""
    return f"CREATE INDEX CONCURRENTLY ON {quote_ident(schema)}.{quote_ident(table)} ({', '.join(keys)})"


def is_read_query(query: str) -> bool:
    """A query worth explaining for advice: a SELECT (or WITH ... SELECT), not DDL or a write."""
    head = query.lstrip().lower()
    return head.startswith(("select", "with")) and not re.search(r"\b(insert|update|delete)\b", head)
