"""Security checks after the converge: the CIS PostgreSQL benchmark's automated checks that apply, pgaudit's
AUDIT lines, Redis and MongoDB basics, and no secret in any log or in Ansible's output."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterable
from typing import Any

import psycopg
import pytest

from dbfleet.engines.tls import REDIS_HOST_CA
from dbfleet.spec import PostgresCluster
from mongo_support import require_server
from redis_support import node as redis_node

pytestmark = pytest.mark.lab


def pg_query(lab: Any, cluster: Any, host: str, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
    with psycopg.connect(host=lab.address(host), port=cluster.port, dbname=dbname, user="postgres",
                         password=lab.secrets["postgres_superuser_password"], sslmode="require", connect_timeout=5,
                         autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def pg_run(lab: Any, cluster: Any, host: str, *statements: str, dbname: str = "postgres") -> None:
    """Statements that return no rows, each in its own transaction."""
    with psycopg.connect(host=lab.address(host), port=cluster.port, dbname=dbname, user="postgres",
                         password=lab.secrets["postgres_superuser_password"], sslmode="require", connect_timeout=5,
                         autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture(scope="module")
def pg(configured: Any) -> tuple[Any, PostgresCluster]:
    if not configured.has("postgres"):
        pytest.skip("the lab runs no PostgreSQL hosts")
    cluster = configured.fleet.of_engine("postgres")[0]
    assert cluster.audit is not None, "the lab spec audits with pgaudit"
    return configured, cluster


def pg_settings(lab: Any, cluster: Any, host: str, names: Iterable[str]) -> dict[str, str]:
    wanted = ", ".join(f"'{n}'" for n in names)  # names are this module's constants, not input
    return dict(pg_query(lab, cluster, host, f"select name, setting from pg_settings where name in ({wanted})"))


def current_primary(lab: Any, cluster: Any) -> str:
    """The host not in recovery (a switchover earlier in the session may have moved it from the spec's first)."""
    (primary,) = [h for h in cluster.host_names() if not pg_query(lab, cluster, h, "select pg_is_in_recovery()")[0][0]]
    return primary


SERVER_LOG = "/var/log/postgresql/postgresql-15-main.log"
"""The server log: where Debian's pg_ctlcluster sends the server's stderr under ha: manual, and where the
logging collector writes it under ha: patroni (log_destination = stderr either way)."""


def server_log(lab: Any, host: str) -> str:
    return str(lab.host(host).file(SERVER_LOG).content_string)


def wait_for_log_line(lab: Any, host: str, *words: str, timeout: float = 15) -> str:
    """The first line of the server log holding every one of `words`, once it is written."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in server_log(lab, host).splitlines() if all(w in line for w in words)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"{host}: no line with {words} in {SERVER_LOG} after {timeout}s"
        time.sleep(0.5)


# --------------------------------------------------------------------------- CIS PostgreSQL benchmark
# The CIS PostgreSQL 15 Benchmark's automated recommendations that apply to dbfleet's topology: logging,
# connection and authentication, file modes, pgaudit, superuser use. README "Security" lists the ones that do
# not apply, or that dbfleet does differently, and why.

CIS_LOGGING = {
    "log_connections": "on",
    "log_disconnections": "on",
    "log_replication_commands": "on",    # "logging of replication commands is configured"
    "log_hostname": "off",               # no DNS lookup per connection
    "log_min_messages": "warning",
    "log_min_error_statement": "error",
    "debug_print_parse": "off",
    "debug_print_rewritten": "off",
    "debug_print_plan": "off",
    "debug_pretty_print": "on",
    "log_destination": "stderr",         # Debian's pg_ctlcluster writes stderr to SERVER_LOG (see README)
    "log_timezone": "UTC",               # GMT or UTC: one zone across regions
}
PREFIX_ESCAPES = ("%m", "%p", "%u", "%d", "%a", "%h")
"""log_line_prefix: each line says when (ms), which process, user and database, which application, from where."""


def test_cis_logging_settings(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    for name in cluster.host_names():
        settings = pg_settings(lab, cluster, name, [*CIS_LOGGING, "log_line_prefix", "log_statement", "pgaudit.log"])
        assert {k: settings.get(k) for k in CIS_LOGGING} == CIS_LOGGING, name
        missing = [e for e in PREFIX_ESCAPES if e not in settings["log_line_prefix"]]
        assert not missing, f"{name}: log_line_prefix {settings['log_line_prefix']!r} lacks {missing}"
        # log_statement: DDL is logged, by log_statement or by pgaudit (dbfleet's way: log_statement would log
        # CREATE ROLE ... PASSWORD in clear).
        classes = settings.get("pgaudit.log", "").split(",")
        assert settings["log_statement"] in ("ddl", "mod", "all") or {"ddl", "all"} & set(classes), settings
        log = lab.host(name).file(SERVER_LOG)
        assert log.is_file and log.user == "postgres" and log.size > 0, f"{name}: {SERVER_LOG}"
        assert log.mode & 0o037 == 0, f"{name}: {SERVER_LOG} is {oct(log.mode)}: only its group (adm) may read it"


def test_cis_connection_and_authentication(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    for name in cluster.host_names():
        settings = pg_settings(lab, cluster, name, ["ssl", "password_encryption", "ssl_min_protocol_version",
                                                    "listen_addresses"])
        assert (settings["ssl"], settings["password_encryption"]) == ("on", "scram-sha-256"), name
        assert settings["ssl_min_protocol_version"] in ("TLSv1.2", "TLSv1.3"), f"{name}: {settings}"
        assert "*" not in settings["listen_addresses"] and "0.0.0.0" not in settings["listen_addresses"], name
        rules = pg_query(lab, cluster, name, "select line_number, type, auth_method, error from pg_hba_file_rules")
        assert not [r for r in rules if r[3]], f"{name}: pg_hba.conf has errors: {rules}"
        # Local connections by peer, TCP only with TLS and SCRAM; anything else rejected.
        weak = [r for r in rules if r[2] in ("trust", "password", "md5", "ident")]
        assert not weak, f"{name}: weak authentication in pg_hba.conf: {weak}"
        clear = [r for r in rules if r[1] not in ("local", "hostssl") and r[2] != "reject"]
        assert not clear, f"{name}: TCP rules without TLS that do not reject: {clear}"
        assert {r[2] for r in rules if r[1] == "local"} <= {"peer", "reject"}, f"{name}: {rules}"
        # No password kept as MD5 or in clear: every stored one is a SCRAM verifier.
        weak_passwords = pg_query(lab, cluster, name, "select rolname from pg_authid where rolpassword is not null "
                                                      "and rolpassword not like 'SCRAM-SHA-256$%'")
        assert weak_passwords == [], f"{name}: {weak_passwords}"
    replicas = [h for h in cluster.host_names() if h != current_primary(lab, cluster)]
    for name in replicas:  # streaming replication over TLS: replicas verify the primary they stream from
        conninfo = pg_settings(lab, cluster, name, ["primary_conninfo"])["primary_conninfo"]
        assert "sslmode=verify-full" in conninfo and "password" not in conninfo, name


def _mode_problems(host: Any, path: str, user: str, most: int) -> list[str]:
    f = host.file(path)
    if not f.exists:
        return [f"{path} is missing"]
    problems = []
    if f.user != user:
        problems.append(f"{path} is owned by {f.user}, not {user}")
    if f.mode & ~most:
        problems.append(f"{path} is {oct(f.mode)}, more open than {oct(most)}")
    return problems


def test_cis_file_modes(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    expected = [  # (path, owner, the most open mode allowed)
        ("/var/lib/postgresql/15/main", "postgres", 0o700),              # the data directory
        ("/etc/postgresql/15/main/postgresql.conf", "postgres", 0o644),  # Debian's; no secret in it
        ("/etc/postgresql/15/main/pg_hba.conf", "postgres", 0o640),
        ("/etc/postgresql/15/main/pg_ident.conf", "postgres", 0o640),
        ("/etc/postgresql/tls/server.key", "postgres", 0o600),           # the TLS key
        ("/usr/share/postgresql/15/extension", "root", 0o755),           # extension files owned by root
        ("/usr/lib/postgresql/15/lib", "root", 0o755),
    ]
    passfile = None
    if cluster.ha == "patroni":  # Patroni holds the settings (passwords among them) and its own passfile
        expected += [("/etc/patroni/config.yml", "postgres", 0o600)]
        passfile = "/var/lib/postgresql/.pgpass.patroni"  # written when Patroni streams: on every replica
    else:
        expected += [("/etc/postgresql/15/main/conf.d", "postgres", 0o750),
                     ("/etc/postgresql/15/main/conf.d/dbfleet.conf", "postgres", 0o640),
                     ("/var/lib/postgresql/.pgpass", "postgres", 0o600)]  # the replication password
    problems = []
    primary = current_primary(lab, cluster)
    for name in cluster.host_names():
        host = lab.host(name)
        problems += [f"{name}: {p}" for path, user, most in expected for p in _mode_problems(host, path, user, most)]
        if passfile and (name != primary or host.file(passfile).exists):  # the leader has one if it once streamed
            problems += [f"{name}: {p}" for p in _mode_problems(host, passfile, "postgres", 0o600)]
        data_mode = pg_settings(lab, cluster, name, ["data_directory_mode"])["data_directory_mode"]
        if data_mode != "0700":
            problems.append(f"{name}: data_directory_mode {data_mode}")
        history = host.file("/var/lib/postgresql/.psql_history")  # psql keeps no history of statements
        if history.exists and not (history.is_symlink and history.linked_to == "/dev/null"):
            problems.append(f"{name}: ~postgres/.psql_history keeps statements")
    assert not problems, "\n".join(problems)


def test_cis_superuser_use(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    for name in cluster.host_names():
        supers = pg_query(lab, cluster, name, "select rolname from pg_roles where rolsuper")
        assert supers == [("postgres",)], f"{name}: superusers {supers}"  # excessive privileges revoked
        powers = pg_query(lab, cluster, name, "select rolname, rolcreaterole, rolcreatedb, rolbypassrls, "
                                              "rolreplication from pg_roles where rolname !~ '^pg_' "
                                              "and rolname <> 'postgres' order by rolname")
        loose = [r for r in powers if any(r[1:4]) or (r[4] and r[0] != "replicator")]
        assert not loose, f"{name}: roles with administrative attributes: {loose}"
        logins = {r[0] for r in pg_query(lab, cluster, name, "select rolname from pg_roles where rolcanlogin")}
        assert {"app", "dbfleet_monitor", "replicator"} <= logins
        for database in ["postgres", *cluster.databases]:  # PUBLIC may not create objects in schema public
            creates = pg_query(lab, cluster, name, "select has_schema_privilege('public', 'public', 'CREATE')",
                               dbname=database)
            assert creates == [(False,)], f"{name}/{database}: PUBLIC can create in schema public"


def test_cis_pgaudit_loaded_and_configured(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    assert cluster.audit is not None
    for name in cluster.host_names():
        assert lab.host(name).package("postgresql-15-pgaudit").is_installed, name
        settings = pg_settings(lab, cluster, name, ["shared_preload_libraries", "pgaudit.log", "pgaudit.log_catalog",
                                                    "pgaudit.log_parameter"])
        assert "pgaudit" in settings["shared_preload_libraries"].split(","), f"{name}: {settings}"
        assert "pg_stat_statements" in settings["shared_preload_libraries"].split(","), f"{name}: {settings}"
        assert settings["pgaudit.log"] == ",".join(cluster.audit.log), name
        assert (settings["pgaudit.log_catalog"], settings["pgaudit.log_parameter"]) == ("off", "off"), name
        for database in ["postgres", *cluster.databases]:
            assert pg_query(lab, cluster, name, "select extversion from pg_extension where extname = 'pgaudit'",
                            dbname=database), f"{name}/{database}: no pgaudit extension"


def test_a_create_role_and_a_create_table_are_audit_lines_in_the_server_log(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    primary = current_primary(lab, cluster)
    probe = f"cis_audit_probe_{uuid.uuid4().hex[:8]}"
    pg_run(lab, cluster, primary, f"create role {probe} nologin", f"drop role {probe}")
    line = wait_for_log_line(lab, primary, "AUDIT: SESSION,", ",ROLE,CREATE ROLE,", probe)
    assert "postgres@postgres" in line, line  # log_line_prefix names who did it
    database = cluster.databases[0]
    pg_run(lab, cluster, primary, f"create table {probe} (id int)", f"drop table {probe}", dbname=database)
    # The extension's event trigger names the object: type and schema-qualified name.
    wait_for_log_line(lab, primary, "AUDIT: SESSION,", ",DDL,CREATE TABLE,TABLE,public." + probe)


def _set_statement_logging(lab: Any, cluster: PostgresCluster, host: str, value: str | None) -> None:
    """ALTER SYSTEM log_statement (None resets it) and wait until new sessions see it."""
    change = f"alter system set log_statement = '{value}'" if value else "alter system reset log_statement"
    pg_run(lab, cluster, host, change, "select pg_reload_conf()")
    deadline = time.monotonic() + 10
    while pg_query(lab, cluster, host, "show log_statement") != [(value or "none",)]:
        assert time.monotonic() < deadline, f"{host}: log_statement did not become {value}"
        time.sleep(0.2)


def test_a_password_the_role_sets_reaches_no_log_even_with_ddl_logged(pg: tuple[Any, PostgresCluster]) -> None:
    """Regression: with log_statement = ddl (what the CIS benchmark asks), the role's ALTER ROLE ... PASSWORD
    was written to the server log as sent, password and all. pgaudit's line keeps the role's name and redacts."""
    lab, cluster = pg
    primary = current_primary(lab, cluster)
    probe = f"probe-{uuid.uuid4().hex}"  # a throwaway password for the app user, put back just after
    before = len(server_log(lab, primary).splitlines())
    _set_statement_logging(lab, cluster, primary, "ddl")
    outputs: dict[str, str] = {}
    try:
        changed = lab.converge("postgres.yml", ["-v", "--limit", primary, "-e", f"postgres_app_password={probe}"])
        outputs["postgres.yml -v, the password changed"] = changed.output
        assert changed.ok, changed.output[-3000:]
    finally:
        _set_statement_logging(lab, cluster, primary, None)
        restored = lab.converge("postgres.yml", ["-v", "--limit", primary])
        outputs["postgres.yml -v, the password put back"] = restored.output
        assert restored.ok, restored.output[-3000:]
    # Verbose Ansible output shows every task's arguments and results: no secret, and not the new password.
    secrets = _secrets(lab) | {"the probe password": probe}
    leaks = [f"{where}: {key}" for where, text in outputs.items() for key, value in secrets.items() if value in text]
    assert not leaks, f"secrets in Ansible output: {leaks}"
    with psycopg.connect(host=lab.address(primary), port=cluster.port, dbname=cluster.databases[0], user="app",
                         password=lab.secrets["postgres_app_password"], sslmode="require", connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)  # the secrets file's password is back
    log = server_log(lab, primary)
    assert probe not in log, "the app user's password is in the server log"
    altered = [line for line in log.splitlines()[before:] if ",ROLE,ALTER ROLE," in line]
    assert len(altered) >= 2, altered
    assert all('""app""' in line and "PASSWORD <REDACTED>" in line for line in altered), altered


def test_redis_default_user_off_protected_mode_and_bind(configured: Any) -> None:
    lab = configured
    if not lab.has("redis"):
        pytest.skip("the lab runs no Redis hosts")
    cluster = lab.fleet.of_engine("redis")[0]
    for h in cluster.data_hosts():
        node = redis_node(lab, h.name, cluster, timeout=3)
        default = node.acl_getuser("default")
        assert "off" in default["flags"], default
        assert node.config_get("protected-mode") == {"protected-mode": "yes"}
        assert node.config_get("bind")["bind"].split() == ["127.0.0.1", lab.address(h.name)]
    if cluster.tls.enabled:
        for h in cluster.all_hosts():
            key = lab.host(h.name).file(f"{REDIS_HOST_CA.rsplit('/', 1)[0]}/server.key")
            assert (key.mode, key.user, key.group) == (0o600, "redis", "redis"), h.name


def test_mongo_authorization_keyfile_tls_not_root(configured: Any) -> None:
    require_server()
    lab = configured
    cluster = lab.fleet.of_engine("mongo")[0]
    for h in cluster.all_hosts():
        host = lab.host(h.name)
        config = host.file("/etc/mongodb/mongos.conf" if h.name in [m if isinstance(m, str) else m.name
                                                                   for m in cluster.mongos]
                           else "/etc/mongodb/mongod.conf").content_string
        assert "keyFile: /etc/mongodb/keyfile" in config
        assert "mongos.conf" in config or "authorization: enabled" in config
        assert ("mode: requireTLS" in config) == cluster.tls.enabled
        assert host.file("/etc/mongodb/keyfile").mode == 0o400
        assert all(p.user == "mongodb" for p in host.process.filter(comm="mongod") + host.process.filter(comm="mongos"))


def _secrets(lab: Any) -> dict[str, str]:
    # Only values long enough to be unmistakable (all generated ones are).
    return {k: v for k, v in lab.secrets.items() if isinstance(v, str) and len(v) >= 16}


def test_no_secret_in_any_host_log(configured: Any) -> None:
    lab = configured
    secrets = _secrets(lab)
    found = []
    for name in lab.hostvars:
        # Raw bytes: logs may hold binary records, and a secret is found whatever surrounds it.
        logs = subprocess.run(["docker", "exec", lab.container(name), "sh", "-c",
                               "journalctl --no-pager -o cat; find /var/log -type f -size -20M ! -name '*.journal' "
                               "-exec cat {} +"], capture_output=True, timeout=120, check=False).stdout
        assert len(logs) > 1000, f"{name}: expected some log content to search"
        found += [f"{name}: {key}" for key, value in secrets.items() if value.encode() in logs]
    assert not found, f"secrets found in logs: {found}"


def test_no_secret_in_ansible_output(configured: Any) -> None:
    lab = configured
    secrets = _secrets(lab)
    # `postgres.yml -v` is searched by the password test above, which runs it anyway.
    outputs = {"site.yml (the session's converge)": lab.converge_once("site.yml").output}
    leaks = [f"{where}: {key}" for where, text in outputs.items() for key, value in secrets.items() if value in text]
    assert not leaks, f"secrets in Ansible output: {leaks}"


def test_configure_check_shows_no_private_key_and_no_secret(configured: Any) -> None:
    """Issue: `dbfleet configure --check` adds --diff, and the pki role copied server.key without no_log, so a
    key about to be (re)installed was printed whole. Here one replica's key is moved aside so the copy would
    change it, and the dry run's whole output is searched for the key and every secret."""
    import sys
    from pathlib import Path

    lab = configured
    spec = Path(__file__).resolve().parents[2] / "fleet.example.yaml"
    if not lab.has("postgres"):
        pytest.skip("the lab runs no PostgreSQL hosts")
    replica = lab.fleet.of_engine("postgres")[0].host_names()[-1]
    host, key = lab.host(replica), "/etc/postgresql/tls/server.key"
    assert host.run(f"mv {key} {key}.aside").rc == 0
    try:
        done = subprocess.run([sys.executable, "-m", "dbfleet", "--spec", str(spec), "configure", "--check",
                               "--lab", lab.name, "--inventories", str(lab.inventories), "--limit", replica],
                              capture_output=True, text=True, timeout=900)
    finally:
        assert host.run(f"mv {key}.aside {key}").rc == 0
    output = done.stdout + done.stderr
    assert "server.key" in output  # the task did see the key to install (and would change it)
    assert "PRIVATE KEY" not in output
    leaks = [name for name, value in _secrets(lab).items() if value in output]
    assert not leaks, f"secrets in `configure --check` output: {leaks}"
