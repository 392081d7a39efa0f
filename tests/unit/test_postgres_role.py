"""The postgres_server role's pure parts: the rendered dbfleet.conf (a value from the spec stays inside one quoted
value; pgaudit from the spec; the CIS logging settings) and the tasks that send passwords keeping their statements
out of the server log."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from role_support import role_inputs
from role_support import trusted as _trusted

from dbfleet.inventory import HostAccess, build_inventory, host_roles
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


def conninfo(text: str) -> dict[str, str]:
    """A libpq conninfo string as libpq reads it (conninfo_parse): keyword = value, a value bare or '...' with \\
    escaping the next character."""
    out, i = {}, 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        key = re.match(r"\s*([A-Za-z_]+)\s*=\s*", text[i:])
        assert key, f"libpq would not parse {text[i:]!r}"
        i += key.end()
        value = []
        if i < len(text) and text[i] == "'":
            i += 1
            while text[i] != "'":
                if text[i] == "\\":
                    i += 1
                value.append(text[i])
                i += 1
            i += 1
        else:
            while i < len(text) and not text[i].isspace():
                if text[i] == "\\":
                    i += 1
                value.append(text[i])
                i += 1
        assert key.group(1) not in out, f"{key.group(1)} given twice in {text!r}"
        out[key.group(1)] = "".join(value)
    return out


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



def _render(template: str, host: str, role_vars: dict[str, Any] | None = None, **cluster_overrides: Any) -> str:
    """Render a role template with the role defaults, the inventory's vars and the facts discover.yml sets."""
    fleet = load_fleet(REPO / "fleet.example.yaml")
    access = {h: HostAccess(f"10.0.0.{i}") for i, h in enumerate(host_roles(fleet), 1)}
    inventory = build_inventory(fleet, access)["all"]
    variables: dict[str, Any] = _trusted(yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()))
    variables.update(inventory["vars"], **inventory["hosts"][host],
                     **role_inputs(fleet.cluster("pg-main"), **cluster_overrides),
                     postgres_is_primary=host == "pg-1", postgres_server_primary_address="10.0.0.1",
                     postgres_server_slot=host.replace("-", "_"),
                     postgres_server_stream_slot=host.replace("-", "_"),
                     postgres_server_application_name=host.replace("-", "_"),
                     dbfleet_secrets={"postgres_replication_password": "secret-replication"})
    variables.update(role_vars or {})
    text = (ROLE / "templates" / template).read_text()
    # As the template action renders a file: backslashes in the template are the template's own.
    templar = Templar(loader=DataLoader(), variables=variables)
    return str(templar.template(trust_as_template(text), escape_backslashes=False))


def render_settings(parameters: dict[str, Any], host: str = "pg-1", **role_vars: Any) -> str:
    """dbfleet.conf.j2 for `host`, with `parameters` as the spec's."""
    return _render("dbfleet.conf.j2", host, role_vars, parameters=parameters)


def _settings(conf: str) -> dict[str, str]:
    return dict(settings(conf))


@pytest.mark.parametrize("host", ["pg-1", "pg-2"])
def test_the_lab_spec_preloads_pgaudit_beside_pg_stat_statements_and_sets_its_classes(host: str) -> None:
    conf = _settings(_render("dbfleet.conf.j2", host))
    assert conf["shared_preload_libraries"] == "pg_stat_statements,pgaudit"
    assert conf["pgaudit.log"] == "ddl,role"
    assert (conf["pgaudit.log_catalog"], conf["pgaudit.log_parameter"], conf["pgaudit.log_relation"]) == \
        ("off", "off", "off")


def test_without_audit_pgaudit_is_neither_loaded_nor_set() -> None:
    conf = _render("dbfleet.conf.j2", "pg-1", audit=None)
    assert _settings(conf)["shared_preload_libraries"] == "pg_stat_statements"
    assert "pgaudit" not in conf


def test_subtracted_classes_and_options_reach_the_file() -> None:
    audit = {"log": ["all", "-misc"], "log_catalog": True, "log_parameter": False, "log_relation": True}
    conf = _settings(_render("dbfleet.conf.j2", "pg-1", audit=audit))
    assert conf["pgaudit.log"] == "all,-misc"
    assert (conf["pgaudit.log_catalog"], conf["pgaudit.log_relation"]) == ("on", "on")


def test_pgaudit_is_installed_by_the_role_and_in_the_lab_image() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert "postgresql-{{ postgres_version }}-pgaudit" in defaults["postgres_server_packages"]
    dockerfile = (REPO / "operator/dbfleet/lab/images/postgres/Dockerfile").read_text()
    assert "postgresql-15-pgaudit" in dockerfile


def _tasks(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load(path.read_text()) or [])


def test_every_task_that_sends_a_password_keeps_the_statement_out_of_the_server_log() -> None:
    """CREATE/ALTER ROLE ... PASSWORD 'x': PostgreSQL's statement logging writes it as sent (pgaudit redacts it)."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    options = defaults["postgres_server_secret_session_options"].split()
    assert options == ["-c", "log_statement=none", "-c", "log_min_duration_statement=-1",
                       "-c", "log_min_error_statement=panic"]
    senders = [task for path in sorted((ROLE / "tasks").glob("*.yml")) for task in _tasks(path)
               if "password" in (task.get("community.postgresql.postgresql_user") or {})]
    assert len(senders) == 2
    for task in senders:
        pgoptions = task.get("environment", {}).get("PGOPTIONS")
        assert pgoptions == "{{ postgres_server_secret_session_options }}", task["name"]


def test_the_extension_is_created_after_the_restart_that_loads_the_library() -> None:
    main = [task.get("name", "") for task in _tasks(ROLE / "tasks" / "main.yml")]
    assert main.index("Audit with pgaudit as the spec says") > main.index("Restart where a changed setting needs it")
    dropped = next(t for t in _tasks(ROLE / "tasks" / "primary.yml") if t["name"].startswith("Drop pgaudit"))
    assert dropped["when"] == "postgres_server_audit | length == 0"


def test_logging_follows_the_cis_benchmark() -> None:
    conf = _settings(_render("dbfleet.conf.j2", "pg-2"))
    assert (conf["log_connections"], conf["log_disconnections"], conf["log_replication_commands"]) == \
        ("on", "on", "on")
    assert all(escape in conf["log_line_prefix"] for escape in ("%m", "%p", "%u", "%d", "%a", "%h"))
    assert conf["log_timezone"] == "UTC" and conf["ssl_min_protocol_version"] == "TLSv1.2"


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
    assert read["log_line_prefix"] == "%m [%p] %q%u@%d app=%a client=%h "
    assert read["archive_command"] == "pgbackrest --stanza=pg-main archive-push %p"


def test_a_replica_streams_from_one_line_of_conninfo() -> None:
    read = dict(settings(render_settings({}, host="pg-2", postgres_is_primary=False, postgres_server_slot="pg_2",
                                         postgres_server_stream_slot="pg_2", postgres_server_application_name="pg_2",
                                         postgres_server_primary_address="10.0.0.1")))
    assert read["primary_conninfo"].startswith("host='10.0.0.1' port=5432 user='replicator' passfile=")
    assert "  " not in read["primary_conninfo"] and read["primary_slot_name"] == "pg_2"


def test_a_standby_site_host_streams_from_the_primary_site_without_a_slot_and_restores_from_repo2() -> None:
    """A standby site's host (dr.standby, ha: manual) while its site has no primary: discover.yml gives it the
    primary site's addresses (postgres_server_follow), no slot and its host name; its restore_command (a role
    input) is quoted by postgresql.conf's rules."""
    restore = "pgbackrest --stanza=pg-main --repo=2 archive-get %f \"%p\" # it's"
    read = dict(settings(render_settings(
        {}, host="pg-2", postgres_is_primary=False, postgres_server_slot="pg_dr_1", postgres_server_stream_slot="",
        postgres_server_application_name="pg-dr-1", postgres_server_primary_address="10.0.0.1,10.0.0.2,10.0.0.3",
        postgres_server_restore_command=restore)))
    parsed = conninfo(read["primary_conninfo"])
    assert parsed["host"] == "10.0.0.1,10.0.0.2,10.0.0.3" and parsed["sslmode"] == "verify-full"
    assert parsed["application_name"] == "pg-dr-1" and "primary_slot_name" not in read
    assert read["restore_command"] == restore
    task = (ROLE / "tasks" / "replica.yml").read_text()
    assert "(['-S', postgres_server_stream_slot] if postgres_server_stream_slot else [])" in task


def test_replicas_and_pg_basebackup_verify_the_primary_against_the_fleet_ca() -> None:
    """Debian 12's libpq 15 has no require_auth, so pg_basebackup (tasks/replica.yml, the same conninfo) and
    streaming replication rely on verify-full: only a server with a fleet-CA certificate for the primary's address
    is ever asked for the replication password. pgBackRest reaches the server over the local socket only."""
    from dbfleet.engines.pgbackrest import host_config
    from dbfleet.spec import PostgresCluster

    parsed = conninfo(dict(settings(render_settings(
        {}, host="pg-2", postgres_is_primary=False, postgres_server_slot="pg_2", postgres_server_stream_slot="pg_2",
        postgres_server_application_name="pg_2",
        postgres_server_primary_address="10.0.0.1")))["primary_conninfo"])
    assert (parsed["host"], parsed["sslmode"], parsed["sslrootcert"]) == (
        "10.0.0.1", "verify-full", "/etc/postgresql/tls/ca.crt")
    assert "['-d', postgres_server_primary_conninfo" in (ROLE / "tasks" / "replica.yml").read_text()
    example = load_fleet(REPO / "fleet.example.yaml").cluster("pg-main")
    assert isinstance(example, PostgresCluster)
    pgbackrest = host_config(example)
    assert "pg1-socket-path=" in pgbackrest and "pg1-host" not in pgbackrest


@pytest.mark.parametrize("audit", [None, {"log": ["ddl"]}])
def test_a_restored_copy_preloads_what_the_clusters_servers_preload(audit: Any) -> None:
    """Regression: a drill's scratch server loaded no pgaudit, so pg_amcheck's CREATE EXTENSION in a database
    with the pgaudit extension failed ("pgaudit must be loaded via shared_preload_libraries")."""
    from dbfleet.backups.postgres import scratch_server_conf
    from dbfleet.spec import PgAudit, PostgresCluster

    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    templar = Templar(loader=DataLoader(), variables={"postgres_server_audit": audit or {}})
    preloaded = templar.template(trust_as_template(defaults["postgres_preload_libraries"]))
    example = load_fleet(REPO / "fleet.example.yaml").cluster("pg-main")
    assert isinstance(example, PostgresCluster)
    cluster = example.model_copy(update={"audit": None if audit is None else PgAudit(**audit)})
    conf = dict(settings(scratch_server_conf(cluster)))
    assert conf["shared_preload_libraries"].split(",") == list(preloaded)


@pytest.mark.parametrize("address", ["10.0.0.1' sslmode=disable host='evil", "10.0.0.1 sslmode=disable",
                                     "10.0.0.1\\' sslmode=disable"])
def test_an_address_stays_one_conninfo_value_in_postgresql_conf(address: str) -> None:
    """Regression: the primary's address (postgres_server_follow, from the inventory) went into conninfo unquoted;
    the inventory refuses such an address at load, and the role quotes it by libpq's rules all the same."""
    read = dict(settings(render_settings({}, host="pg-2", postgres_is_primary=False,
                                         postgres_server_primary_address=address)))
    parsed = conninfo(read["primary_conninfo"])
    assert parsed["host"] == address and parsed["sslmode"] == "verify-full", parsed


def test_pg_basebackup_gets_its_conninfo_as_one_argument_not_through_a_shell() -> None:
    """Regression: tasks/replica.yml ran pg_basebackup -d '<conninfo>' in a shell: a ' in an address ended the
    quoting and the rest ran as shell."""
    tasks = _tasks(ROLE / "tasks" / "replica.yml")
    assert not [t["name"] for t in tasks if "ansible.builtin.shell" in t or "shell" in t]
    clone = next(t for t in tasks if t["name"].startswith("Clone the primary"))
    address = "10.0.0.1' host=evil; touch /tmp/x '"
    variables = _trusted(yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()))
    variables.update(postgres_server_primary_address=address, postgres_server_application_name="pg-dr-1",
                     postgres_server_stream_slot="", postgres_server_tls_enabled=True, postgres_version=15,
                     postgres_tls_dir="/etc/postgresql/tls", postgres_bin_dir="/usr/lib/postgresql/15/bin",
                     postgres_data_dir="/var/lib/postgresql/15/main", postgres_server_port=5432)
    templar = Templar(loader=DataLoader(), variables=variables)
    argv = templar.template(trust_as_template(clone["ansible.builtin.command"]["argv"]))
    assert isinstance(argv, list) and argv[-2] == "-d" and "-S" not in argv, argv
    assert conninfo(argv[-1])["host"] == address, argv
