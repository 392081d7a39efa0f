"""CIS-style automated checks after the converge, and no secret in any log or in Ansible's output."""

from __future__ import annotations

import subprocess
from typing import Any

import psycopg
import pytest

from dbfleet.engines.tls import REDIS_HOST_CA
from mongo_support import require_server
from redis_support import node as redis_node

pytestmark = pytest.mark.lab


def pg_query(lab: Any, cluster: Any, host: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(host=lab.address(host), port=cluster.port, dbname="postgres", user="postgres",
                         password=lab.secrets["postgres_superuser_password"], sslmode="require", connect_timeout=5,
                         autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def test_postgres_ssl_scram_no_remote_trust_one_superuser_logging_and_modes(configured: Any) -> None:
    lab = configured
    if not lab.has("postgres"):
        pytest.skip("the lab runs no PostgreSQL hosts")
    cluster = lab.fleet.of_engine("postgres")[0]
    for name in cluster.host_names():
        settings = dict(pg_query(lab, cluster, name, "select name, setting from pg_settings where name in "
                                 "('ssl', 'password_encryption', 'log_connections', 'log_disconnections')"))
        assert settings == {"ssl": "on", "password_encryption": "scram-sha-256", "log_connections": "on",
                            "log_disconnections": "on"}, name
        rules = pg_query(lab, cluster, name, "select type, auth_method from pg_hba_file_rules")
        assert not [r for r in rules if r[0] != "local" and r[1] in ("trust", "password", "md5")], rules
        supers = pg_query(lab, cluster, name, "select rolname from pg_roles where rolsuper")
        assert supers == [("postgres",)], f"{name}: superusers {supers}"
        host = lab.host(name)
        assert host.file("/var/lib/postgresql/15/main").mode == 0o700
        assert host.file("/etc/postgresql/tls/server.key").mode == 0o600
        assert host.file("/etc/postgresql/15/main/pg_hba.conf").mode == 0o640


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
    outputs = {"site.yml (the session's converge)": lab.converge_once("site.yml").output}
    if lab.has("postgres"):
        primary = lab.fleet.of_engine("postgres")[0].primary
        verbose = lab.converge("postgres.yml", ["-v", "--limit", primary])
        assert verbose.ok, verbose.output[-3000:]
        outputs["postgres.yml -v"] = verbose.output
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
