"""Ansible filters: PostgreSQL settings as Patroni's dynamic configuration wants them, and the leader Patroni names.

Pure functions over plain values, unit-tested in tests/unit/test_patroni_roles.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def pg_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Settings with booleans spelled as PostgreSQL spells them; Patroni quotes every value itself."""
    out: dict[str, Any] = {}
    for name, value in parameters.items():
        if isinstance(value, bool):
            out[name] = "on" if value else "off"
        else:
            out[name] = value
    return out


def patroni_dcs(dcs: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """The DCS configuration: dbfleet's settings from the spec with the PostgreSQL parameters laid in."""
    postgresql = dict(dcs.get("postgresql") or {})
    postgresql["parameters"] = pg_parameters(parameters)
    return {**dcs, "postgresql": postgresql}


def patroni_leader(answers: Iterable[Mapping[str, Any]], servers: Iterable[str]) -> str:
    """The leader named by the first of `answers` (each host's `uri` result of GET /cluster, in host order) that
    names one of `servers`; '' when none does. A host whose Patroni did not answer 200 names no one."""
    allowed = set(servers)
    for answer in answers:
        if answer.get("status") != 200 or not isinstance(answer.get("json"), Mapping):
            continue
        leaders = [m.get("name") for m in answer["json"].get("members") or []
                   if isinstance(m, Mapping) and m.get("role") == "leader"]
        if leaders and isinstance(leaders[0], str) and leaders[0] in allowed:
            return leaders[0]  # the value itself: its data tags (Ansible's untrusted marking) stay on it
    return ""


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"pg_parameters": pg_parameters, "patroni_dcs": patroni_dcs, "patroni_leader": patroni_leader}
