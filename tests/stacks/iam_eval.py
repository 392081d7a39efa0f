"""A small evaluator of identity-policy Allow statements, enough to ask "may this role do that?" in the tests.

It follows IAM's rules for what the stack writes: an action and a resource match
with `*` and `?` wildcards, every condition operator of a statement must hold,
within an operator every key, and a key holds when any of its values does; a key
missing from the request fails (no ...IfExists operators are used). An unknown
operator fails the test rather than being guessed at.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _like(pattern: str, value: str) -> bool:
    # fnmatch also knows [...] classes, which IAM does not: the stack writes none, so refuse rather than misread.
    assert "[" not in pattern, pattern
    return fnmatchcase(value, pattern)


def _holds(operator: str, wanted: dict[str, Any], context: dict[str, str]) -> bool:
    for key, values in wanted.items():
        if key not in context:
            return False
        actual = context[key]
        if operator == "StringLike":
            ok = any(_like(v, actual) for v in _listed(values))
        elif operator == "StringEquals":
            ok = actual in _listed(values)
        elif operator == "Bool":
            ok = actual.lower() in [v.lower() for v in _listed(values)]
        else:
            raise AssertionError(f"the evaluator does not know condition operator {operator}")
        if not ok:
            return False
    return True


def allowed(policy: dict[str, Any], action: str, resource: str, context: dict[str, str] | None = None) -> bool:
    """Whether any Allow statement of `policy` grants `action` on `resource` with this request context."""
    context = context or {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow", statement
        if not any(_like(a, action) for a in _listed(statement["Action"])):
            continue
        if not any(_like(r, resource) for r in _listed(statement["Resource"])):
            continue
        if all(_holds(op, wanted, context) for op, wanted in statement.get("Condition", {}).items()):
            return True
    return False
