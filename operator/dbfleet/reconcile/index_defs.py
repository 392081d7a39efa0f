"""Index definitions reduced to what decides equivalence, for declared and observed indexes alike.

PostgreSQL prints a definition its own way (`lower((email)::text)`,
`(status = 'open'::text)`), so declared text and catalog text are both
normalized before comparing: casts, quotes, case, spaces and parentheses
outside string literals are dropped. An index the operator creates is also
tagged with a hash of its declaration (in its comment), which settles
equality for any predicate the normalization cannot reconcile.
MongoDB definitions are compared by key list and options.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from dbfleet.spec import MongoIndex, PgIndex

TAG_PREFIX = "dbfleet:"


@dataclass(frozen=True, kw_only=True)
class IndexShape:
    """The engine-neutral shape of an index: enough to compare two and find redundant ones."""

    database: str
    namespace: str
    """Where the name must be unique: a PostgreSQL schema, a MongoDB collection."""
    scope: str
    """What the index is on: 'schema.table' or a collection name."""
    name: str
    keys: tuple[str, ...]
    method: str = "btree"
    unique: bool = False
    predicate: str | None = None
    include: tuple[str, ...] = ()
    options: tuple[tuple[str, str], ...] = ()
    shown: str = field(default="", compare=False)
    """The definition as a person wrote it or the server prints it, for messages."""

    @property
    def ident(self) -> str:
        """How actions name the index: 'app/public.users_email_idx' or 'app/events.events_user_ts'."""
        return f"{self.database}/{self.namespace}.{self.name}"

    def same_definition(self, other: IndexShape) -> bool:
        return (self.scope, self.keys, self.method, self.unique, self.predicate, self.include, self.options) == (
            other.scope, other.keys, other.method, other.unique, other.predicate, other.include, other.options)

    def describe(self) -> str:
        if self.shown:
            return self.shown
        text = f"{'unique ' if self.unique else ''}{self.method} on {self.scope} ({', '.join(self.keys)})"
        if self.include:
            text += f" include ({', '.join(self.include)})"
        if self.predicate:
            text += f" where {self.predicate}"
        for key, value in self.options:
            text += f" {key}={value}"
        return text


@dataclass(frozen=True, kw_only=True)
class DesiredIndex(IndexShape):
    """A declared index, normalized, with what it takes to create it."""

    tag: str
    create: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, kw_only=True)
class ObservedIndex(IndexShape):
    """An index found on a server, with its health and usage."""

    definition: str = ""
    valid: bool = True
    building: bool = False
    """A build (CREATE INDEX / REINDEX CONCURRENTLY) is running on it right now."""
    constraint: str | None = None
    """The constraint this index backs (primary key, unique, exclusion, referenced by a foreign key)."""
    scans: int = 0
    """Index scans summed over every member that was counted."""
    scans_by_member: tuple[tuple[str, int], ...] = ()
    comment: str | None = None
    size_bytes: int = 0


# --------------------------------------------------------------------------- PostgreSQL


def quote_ident(name: str) -> str:
    """Quote an SQL identifier always, so reserved words and upper case survive (psycopg's quoting)."""
    return sql.Identifier(name).as_string(None)


def split_table(table: str) -> tuple[str, str]:
    """'users' -> ('public', 'users'); 'sales.orders' -> ('sales', 'orders')."""
    schema, _, name = table.rpartition(".")
    return schema or "public", name


_LITERAL = re.compile(r"'(?:[^']|'')*'")
CAST = re.compile(
    r"::\s*(?:\"[^\"]+\"|[a-z_][a-z0-9_.]*)"
    r"(?:\s+(?:varying|precision|without\s+time\s+zone|with\s+time\s+zone))?"
    r"(?:\s*\(\s*\d+(?:\s*,\s*\d+)?\s*\))?(?:\s*\[\])*"
)
_ORDER = re.compile(r"\s+(asc|desc)?(?:\s*\bnulls\s+(first|last))?\s*$", re.IGNORECASE)


def normalize_expr(text: str) -> str:
    """An SQL expression without casts, quotes, case, spaces or parentheses outside its string literals."""
    out: list[str] = []
    pos = 0
    for match in _LITERAL.finditer(text):
        out.append(_normalize_code(text[pos:match.start()]))
        out.append(match.group(0))
        pos = match.end()
    out.append(_normalize_code(text[pos:]))
    return "".join(out)


def _normalize_code(code: str) -> str:
    code = CAST.sub("", code.lower())
    return re.sub(r"[\s()\"]", "", code)


def normalize_key(text: str) -> str:
    """A key column or expression with its sort order in one canonical spelling ('' for ASC NULLS LAST)."""
    text = text.strip()
    match = _ORDER.search(text)
    desc = nulls_first = False
    if match and (match.group(1) or match.group(2)):
        desc = (match.group(1) or "").lower() == "desc"
        nulls_first = (match.group(2) or ("first" if desc else "last")).lower() == "first"
        text = text[: match.start()]
    suffix = {(False, False): "", (True, True): " desc", (True, False): " desc nulls last",
              (False, True): " nulls first"}[(desc, nulls_first)]
    return normalize_expr(text) + suffix


def declaration_tag(spec: PgIndex | MongoIndex) -> str:
    """A short hash of a declaration, stored with the index so later cycles recognise their own work."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return TAG_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def create_index_sql(spec: PgIndex) -> str:
    """CREATE INDEX CONCURRENTLY for a declaration: names quoted by psycopg; each column and the predicate are
    SQL that the spec checked at load with PostgreSQL's parser to be one index element and one expression."""
    schema, table = split_table(spec.table)
    statement = sql.SQL("CREATE {unique}INDEX CONCURRENTLY {name} ON {table} USING {method} ({columns}){where}").format(
        unique=sql.SQL("UNIQUE " if spec.unique else ""),
        name=sql.Identifier(spec.name),
        table=sql.Identifier(schema, table),
        method=sql.SQL(spec.method),  # one of the five access methods the spec's Literal allows
        columns=sql.SQL(", ").join(sql.SQL(column) for column in spec.columns),
        where=sql.SQL(" WHERE {}").format(sql.SQL(spec.where)) if spec.where else sql.SQL(""),
    )
    return statement.as_string(None)


def desired_pg(spec: PgIndex) -> DesiredIndex:
    schema, table = split_table(spec.table)
    create_sql = create_index_sql(spec)
    tag = declaration_tag(spec)
    return DesiredIndex(
        database=spec.database, namespace=schema, scope=f"{schema}.{table}", name=spec.name,
        keys=tuple(normalize_key(c) for c in spec.columns), method=spec.method, unique=spec.unique,
        predicate=normalize_expr(spec.where) if spec.where else None, tag=tag,
        shown=create_sql.replace(" CONCURRENTLY", "", 1),
        create={"database": spec.database, "schema": schema, "table": table, "name": spec.name,
                "statements": [create_sql], "tag": tag},
    )


def concurrent_create(definition: str) -> str:
    """pg_get_indexdef output made concurrent: 'CREATE UNIQUE INDEX i ON ...' ->
    'CREATE UNIQUE INDEX CONCURRENTLY i ON ...'."""
    return re.sub(r"^CREATE (UNIQUE )?INDEX ", r"CREATE \1INDEX CONCURRENTLY ", definition, count=1)


def observed_pg(database: str, row: dict[str, Any], scans_by_member: dict[str, int]) -> ObservedIndex:
    """Build an ObservedIndex from one row of the catalog query in engines/postgres.py."""
    predicate = row.get("predicate")
    return ObservedIndex(
        database=database, namespace=row["schema"], scope=f"{row['schema']}.{row['table']}", name=row["name"],
        keys=tuple(normalize_key(k) for k in row["keys"]), method=row["method"], unique=bool(row["unique"]),
        predicate=normalize_expr(predicate) if predicate else None,
        include=tuple(normalize_expr(k) for k in row.get("include") or ()),
        definition=row["definition"], shown=row["definition"], valid=bool(row["valid"]),
        building=bool(row.get("building")),
        constraint=row.get("constraint"), scans=sum(scans_by_member.values()),
        scans_by_member=tuple(sorted(scans_by_member.items())), comment=row.get("comment"),
        size_bytes=int(row.get("size_bytes") or 0),
    )


# --------------------------------------------------------------------------- MongoDB

MONGO_METHODS = {"hashed", "text", "2dsphere"}


def _mongo_key(field_name: str, direction: Any) -> str:
    if isinstance(direction, (int, float)) and not isinstance(direction, bool):
        direction = int(direction)
    return f"{field_name} {direction}"


def _mongo_method(directions: Iterable[Any]) -> str:
    kinds = {str(d) for d in directions} & MONGO_METHODS
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "btree")


def canonical_filter(expr: dict[str, Any] | None) -> str | None:
    if not expr:
        return None
    return json.dumps(expr, sort_keys=True, separators=(",", ":"), default=str)


def _mongo_options(ttl: Any) -> tuple[tuple[str, str], ...]:
    return (("expireAfterSeconds", str(int(ttl))),) if ttl is not None else ()


def _mongo_shown(collection: str, pairs: list[tuple[str, Any]], options: dict[str, Any]) -> str:
    keys = ", ".join(f"{f}: {d}" for f, d in pairs)
    extra = "".join(f", {k}: {json.dumps(v, sort_keys=True, default=str)}" for k, v in sorted(options.items()))
    return f"{collection} {{{keys}}}{extra}"


def desired_mongo(spec: MongoIndex) -> DesiredIndex:
    pairs = [next(iter(k.items())) for k in spec.keys]
    options: dict[str, Any] = {}
    if spec.unique:
        options["unique"] = True
    if spec.partial:
        options["partialFilterExpression"] = spec.partial
    if spec.ttl_seconds is not None:
        options["expireAfterSeconds"] = spec.ttl_seconds
    tag = declaration_tag(spec)
    return DesiredIndex(
        database=spec.database, namespace=spec.collection, scope=spec.collection, name=spec.name,
        keys=tuple(_mongo_key(f, d) for f, d in pairs), method=_mongo_method(d for _, d in pairs),
        unique=spec.unique, predicate=canonical_filter(spec.partial), options=_mongo_options(spec.ttl_seconds),
        tag=tag, shown=_mongo_shown(spec.collection, pairs, options),
        create={"database": spec.database, "collection": spec.collection, "name": spec.name,
                "keys": [[f, d] for f, d in pairs], "options": options},
    )


def observed_mongo(database: str, collection: str, doc: dict[str, Any], ops: int | None) -> ObservedIndex:
    """Build an ObservedIndex from a listIndexes document and its $indexStats operation count."""
    pairs = list(dict(doc["key"]).items())
    definition = json.dumps({k: v for k, v in doc.items() if k not in ("v", "ns")}, sort_keys=True, default=str)
    return ObservedIndex(
        database=database, namespace=collection, scope=collection, name=str(doc["name"]),
        keys=tuple(_mongo_key(f, d) for f, d in pairs), method=_mongo_method(d for _, d in pairs),
        unique=bool(doc.get("unique", False)), predicate=canonical_filter(doc.get("partialFilterExpression")),
        options=_mongo_options(doc.get("expireAfterSeconds")), definition=definition,
        shown=_mongo_shown(collection, pairs, {k: v for k, v in doc.items() if k not in ("v", "ns", "key", "name")}),
        constraint="the _id index" if doc["name"] == "_id_" else None,
        scans=ops or 0, scans_by_member=(("shards", ops or 0),),
    )
