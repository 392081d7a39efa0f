"""Ansible filters: PostgreSQL settings as Patroni's dynamic configuration wants them.

Pure functions over plain values, unit-tested in tests/unit/test_patroni_roles.py.
"""

from __future__ import annotations

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


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"pg_parameters": pg_parameters, "patroni_dcs": patroni_dcs}
