"""The postgres_server role's rendered settings: a value from the spec stays inside one quoted value."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

from dbfleet.inventory import HostAccess, build_inventory, cluster_group, host_roles
from dbfleet.spec import load_fleet

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "playbooks" / "roles" / "postgres_server"

# postgresql.conf's grammar (src/backend/utils/misc/guc-file.l): a name, an optional `=`, one value (a quoted
# string, or an unquoted word or number), an optional comment.
SETTING = re.compile(r"\s*(?P<name>[A-Za-z_][A-Za-z0-9_.$]*)\s*=?\s*"
                     r"(?P<value>'(?:[^'\\\n]|\\.|'')*'|[A-Za-z0-9_.:/+-]+)\s*(?:#.*)?")
ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unquote(value: str) -> str:
    """A quoted postgresql.conf value as the server reads it (GUC_scanstr)."""
    if not value.startswith("'"):
        return value
    out, body, i = [], value[1:-1], 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1]
            octal = re.match(r"[0-7]{1,3}", body[i + 1:])
            if octal:
                out.append(chr(int(octal.group(0), 8)))
                i += 1 + len(octal.group(0))
                continue
            out.append(ESCAPES.get(nxt, nxt))
            i += 2
        elif c == "'":  # the lexer only lets '' through inside a string
            out.append("'")
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def settings(conf: str) -> list[tuple[str, str]]:
    """Every (name, value) the server reads from `conf`; a line it could not read fails the test."""
    found = []
    for line in conf.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = SETTING.fullmatch(line)
        assert match, f"postgresql.conf would not parse this line: {line!r}"
        found.append((match["name"], _unquote(match["value"])))
    return found


def _trusted(value: Any) -> Any:
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {k: _trusted(v) for k, v in value.items()}
    return value


def render_settings(parameters: dict[str, Any], host: str = "pg-1", **role_vars: Any) -> str:
    """dbfleet.conf.j2 for `host` with the role defaults, the inventory's vars, and `parameters` as the spec's."""
    fleet = load_fleet(REPO / "fleet.example.yaml")
    access = {h: HostAccess(f"10.0.0.{i}") for i, h in enumerate(host_roles(fleet), 1)}
    inventory = build_inventory(fleet, access)["all"]
    cluster = {**inventory["children"][cluster_group("pg-main")]["vars"]["cluster"], "parameters": parameters}
    variables: dict[str, Any] = _trusted(yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()))
    variables.update(inventory["vars"], **inventory["hosts"][host], cluster=cluster, postgres_is_primary=True)
    variables.update(role_vars)
    text = (ROLE / "templates" / "dbfleet.conf.j2").read_text()
    # As the template action renders a file: backslashes in the template are the template's own.
    templar = Templar(loader=DataLoader(), variables=variables)
    return str(templar.template(trust_as_template(text), escape_backslashes=False))


HOSTILE = [
    "x\\'\nssl = off #",  # the reproduction: once rendered as `work_mem = 'x\''` and a line `ssl = off`
    "x\\",
    "it's",
    "a'; include '/etc/passwd' #",
    "tab\there\rand return",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_parameter_value_stays_inside_one_quoted_value(value: str) -> None:
    read = settings(render_settings({"work_mem": value}))
    assert [v for name, v in read if name == "work_mem"] == [value]
    assert [v for name, v in read if name == "ssl"] == ["on"]
    assert not any(name == "include" for name, _ in read)


def test_ordinary_settings_render_as_before() -> None:
    read = dict(settings(render_settings({"shared_buffers": "128MB", "max_connections": 100, "jit": False})))
    assert (read["shared_buffers"], read["max_connections"], read["jit"]) == ("128MB", "100", "off")
    assert read["log_line_prefix"] == "%m [%p] %q%u@%d "
    assert read["archive_command"] == "pgbackrest --stanza=pg-main archive-push %p"


def test_a_replica_streams_from_one_line_of_conninfo() -> None:
    read = dict(settings(render_settings({}, host="pg-2", postgres_is_primary=False, postgres_slot="pg_2",
                                         postgres_primary_address="10.0.0.1")))
    assert read["primary_conninfo"].startswith("host=10.0.0.1 port=5432 user=replicator passfile=")
    assert "  " not in read["primary_conninfo"] and read["primary_slot_name"] == "pg_2"
