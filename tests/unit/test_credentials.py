"""The facts the operator and the roles share, checked without a server: user names, password keys, TLS options.

Issue: engines/mongo.py logged in as `admin` while the roles create
`dbfleet_admin` (which the backups used), and the two copies disagreed on TLS.
Each login now lives in engines/credentials.py and each TLS option in
engines/tls.py; these tests read the role defaults and what every client is
really given, so the copies cannot drift again.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from dbfleet.age_keys import new_identity
from dbfleet.backups.spool import WORK_ROOT, WORKDIR_SCRIPT
from dbfleet.engines import credentials, tls
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.mongo import MongoSession
from dbfleet.engines.postgres import PostgresSession
from dbfleet.engines.redis import RedisSession
from dbfleet.errors import PermanentError
from dbfleet.inventory import cluster_vars
from dbfleet.secrets import BACKUP_AGE_IDENTITY, PASSWORD_KEYS
from dbfleet.spec import MongoCluster, PostgresCluster, RedisCluster, load_fleet

REPO = Path(__file__).resolve().parents[2]
FLEET = load_fleet(REPO / "fleet.example.yaml")
SECRET_REF = re.compile(r"^\{\{ dbfleet_secrets\.(\w+) \}\}$")


def role_defaults(role: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "playbooks" / "roles" / role / "defaults" / "main.yml").read_text())


def secret_key(value: str) -> str:
    found = SECRET_REF.match(value)
    assert found, f"{value!r} is not a reference into dbfleet_secrets"
    return found.group(1)


@pytest.mark.parametrize(("login", "role", "user_var", "password_var"), [
    (credentials.POSTGRES_SUPERUSER, "postgres_server", "postgres_superuser", "postgres_superuser_password"),
    (credentials.MONGO_ADMIN, "mongo_common", "mongo_admin_user", "mongo_admin_password"),
    (credentials.REDIS_ADMIN, "redis_common", "redis_admin_user", "redis_admin_password"),
    (credentials.REDIS_MONITOR, "redis_common", "redis_monitor_user", "redis_monitor_password"),
    (credentials.REDIS_SENTINEL, "redis_common", None, "redis_sentinel_password"),
    (credentials.PATRONI_REST, "patroni", "patroni_rest_user", "patroni_rest_password"),
    (credentials.ETCD_PATRONI, "patroni", "patroni_etcd_user", "patroni_etcd_password"),
    (credentials.ETCD_PATRONI, "etcd", "etcd_patroni_user", "etcd_patroni_password"),
    (credentials.ETCD_ROOT, "etcd", "etcd_root_user", "etcd_root_password"),
    (credentials.ETCD_OPERATOR, "etcd", "etcd_operator_user", "etcd_operator_password"),
])
def test_each_login_is_a_user_the_roles_create_with_the_password_they_set(
        login: credentials.Login, role: str, user_var: str | None, password_var: str) -> None:
    defaults = role_defaults(role)
    if user_var is not None:
        assert login.user == defaults[user_var]
    assert login.secret == secret_key(defaults[password_var])
    assert login.secret in PASSWORD_KEYS


def test_the_advisor_plans_as_the_read_only_role_the_postgres_role_creates() -> None:
    assert credentials.EXPLAIN_ROLE == role_defaults("postgres_server")["postgres_explain_role"]
    tasks = (REPO / "playbooks/roles/postgres_server/tasks/primary.yml").read_text()
    assert "groups: [pg_read_all_data]" in tasks and "role_attr_flags: NOLOGIN" in tasks


_PROJECT = Path(tempfile.mkdtemp(prefix="dbfleet-credentials-"))
ACCESS = FleetAccess({h: "10.0.0.9" for c in FLEET.clusters for h in c.host_names()},
                     {**{key: f"pw-{key}" for key in PASSWORD_KEYS}, BACKUP_AGE_IDENTITY: new_identity()},
                     _PROJECT / "inventories/local/lab/hosts.yml")
FLEET_CA = str(_PROJECT / "inventories/local/lab/pki/ca.crt")  # the pki role's CA, there as after a converge
Path(FLEET_CA).parent.mkdir(parents=True)
Path(FLEET_CA).write_text("-----BEGIN CERTIFICATE-----\n")


def test_the_mongo_session_logs_in_as_the_user_the_roles_create(monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed before: the session asked for user `admin`, which no role creates."""
    made: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr("dbfleet.engines.mongo.MongoClient", lambda *a, **kw: made.append((a, kw)) or object())
    cluster = FLEET.cluster("mongo-main")
    assert isinstance(cluster, MongoCluster)
    MongoSession(cluster, ACCESS).client()
    (_, kwargs), = made
    assert kwargs["username"] == role_defaults("mongo_common")["mongo_admin_user"] == "dbfleet_admin"
    assert kwargs["password"] == "pw-mongo_admin_password"
    assert kwargs["tls"] is True and kwargs["tlsCAFile"] == FLEET_CA
    assert not any("Invalid" in key or "Insecure" in key for key in kwargs)  # certificates and names checked


def test_mongodump_logs_in_as_the_same_user_with_the_same_tls() -> None:
    from dbfleet.backups.access import BackupAccess
    from dbfleet.backups.mongo import MongoBackups
    from dbfleet.backups.storage import LocalStorage
    from dbfleet.engines.executor import ExecResult

    cluster = FLEET.cluster("mongo-main")
    assert isinstance(cluster, MongoCluster)
    ran: list[list[str]] = []

    class Hosts:
        def check(self, host: str, argv: list[str], **kw: Any) -> ExecResult:
            ran.append(list(argv))
            return ExecResult(0, f"{WORK_ROOT}/work.test\n" if argv[:3] == ["sh", "-c", WORKDIR_SCRIPT] else "", "")

        def run(self, host: str, argv: list[str], **kw: Any) -> ExecResult:
            return self.check(host, argv)

        def write_text(self, host: str, path: str, text: str, **kw: Any) -> None:
            assert path.startswith(f"{WORK_ROOT}/work.test/")  # the password file sits in the private work dir

    access = BackupAccess(cluster, Hosts(), LocalStorage(Path("/nonexistent")), ACCESS)  # type: ignore[arg-type]
    adapter = MongoBackups()
    pending = adapter.new_manifest(access, "full", __import__("datetime").datetime(2026, 1, 1), "100.9")
    adapter._dump(access, pending, cluster.config_servers)
    dump = next(argv for argv in ran if argv[0] == "mongodump")
    assert dump[dump.index("--username") + 1] == credentials.MONGO_ADMIN.user
    assert cluster.tls.enabled
    assert "--tls" in dump and f"--tlsCAFile={tls.MONGO_HOST_CA}" in dump
    assert not any("Invalid" in arg or "Insecure" in arg for arg in dump)


def test_the_host_ca_the_tools_trust_is_where_the_mongo_roles_put_it() -> None:
    defaults = role_defaults("mongo_common")
    tls_dir = defaults["mongo_tls_dir"].replace("{{ mongo_config_dir }}", defaults["mongo_config_dir"])
    assert tls.MONGO_HOST_CA == f"{tls_dir}/ca.crt"
    assert tls.MONGO_HOST_CA == role_defaults("mongodb_exporter")["mongodb_exporter_tls_ca_source"]


def test_postgres_connects_as_the_superuser_the_role_sets_with_the_shared_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict[str, Any]] = []

    class Conn:
        closed = False

    monkeypatch.setattr("dbfleet.engines.postgres.psycopg.connect", lambda **kw: made.append(kw) or Conn())
    cluster = FLEET.cluster("pg-main")
    assert isinstance(cluster, PostgresCluster)
    PostgresSession(cluster, ACCESS).connection("pg-1", "postgres")
    (kwargs,) = made
    assert kwargs["user"] == role_defaults("postgres_server")["postgres_superuser"]
    assert kwargs["password"] == "pw-postgres_superuser_password"
    assert (kwargs["sslmode"], kwargs["sslrootcert"], kwargs["require_auth"]) == \
        ("verify-full", FLEET_CA, "scram-sha-256")


def test_the_fleet_ca_is_where_the_pki_role_makes_it() -> None:
    assert role_defaults("pki")["pki_dir"] == "{{ inventory_dir }}/" + tls.PKI_DIR


def with_tls(cluster: Any, enabled: bool = True) -> RedisCluster:
    assert isinstance(cluster, RedisCluster)
    return cluster.model_copy(update={"tls": cluster.tls.model_copy(update={"enabled": enabled})})


def redis_access(tmp_path: Path) -> tuple[RedisCluster, FleetAccess, Path]:
    """The example's Redis cluster, and access through an inventory with the fleet CA the pki role leaves
    beside it."""
    cluster = with_tls(FLEET.cluster("cache"))
    inventory = tmp_path / "local" / "lab" / "hosts.yml"
    ca = inventory.parent / "pki" / "ca.crt"
    ca.parent.mkdir(parents=True)
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    return cluster, FleetAccess(ACCESS.addresses, ACCESS.secrets, inventory), ca


def test_redis_sessions_log_in_as_the_monitor_user(tmp_path: Path) -> None:
    cluster, access, _ = redis_access(tmp_path)
    session = RedisSession(cluster, access)
    client = session.client("redis-1", cluster.port, credentials.REDIS_MONITOR)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["username"] == role_defaults("redis_common")["redis_monitor_user"]
    assert session.client("redis-1", cluster.port, credentials.REDIS_MONITOR) is client  # one per server and login
    session.close()


def test_patroni_namespace_is_the_one_etcd_grants() -> None:
    """One fact in one place: the inventory gives the patroni and etcd roles the same namespace, Patroni's."""
    from dbfleet.engines.patroni import NAMESPACE

    pg = FLEET.cluster("pg-main")
    assert isinstance(pg, PostgresCluster)
    found = cluster_vars(pg)
    assert found["etcd_patroni_namespace"] == found["patroni_namespace"] == NAMESPACE
    assert "etcd_patroni_namespace" not in role_defaults("etcd")


def test_the_operator_s_etcd_prefix_reaches_the_etcd_role_and_is_apart_from_patroni_s() -> None:
    """The prefix the leader lock writes below is the one the etcd role grants the operator's user, carried by
    the inventory (etcd_operator_prefix), and neither user's range holds the other's keys."""
    from dbfleet.engines.etcd import LEADER_KEY, OPERATOR_PREFIX
    from dbfleet.engines.patroni import NAMESPACE

    assert "etcd_operator_prefix" not in role_defaults("etcd")
    pg = FLEET.cluster("pg-main")
    assert isinstance(pg, PostgresCluster)
    assert str(cluster_vars(pg)["etcd_operator_prefix"]) == OPERATOR_PREFIX
    assert LEADER_KEY.startswith(OPERATOR_PREFIX) and OPERATOR_PREFIX.endswith("/")
    assert not OPERATOR_PREFIX.startswith(NAMESPACE) and not NAMESPACE.startswith(OPERATOR_PREFIX)
    tasks = (REPO / "playbooks/roles/etcd/tasks/main.yml").read_text()
    assert 'user: "{{ etcd_operator_user }}"' in tasks and 'prefix: "{{ etcd_operator_prefix }}"' in tasks


def test_redis_sessions_check_the_servers_certificate_and_name_against_the_fleet_ca(tmp_path: Path) -> None:
    """Issue 17: Redis had no TLS. The example turns it on; the session's clients (data nodes and Sentinels)
    verify the chain against the CA the pki role made and the address against the certificate."""
    import redis

    cluster, access, ca = redis_access(tmp_path)
    session = RedisSession(cluster, access)
    for port, login in ((cluster.port, credentials.REDIS_MONITOR), (cluster.sentinel_port, credentials.REDIS_SENTINEL)):
        pool = session.client("redis-1", port, login).connection_pool
        assert pool.connection_class is redis.SSLConnection
        kwargs = pool.connection_kwargs
        assert (kwargs["ssl_ca_certs"], kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"]) == (
            str(ca), "required", True)
    session.close()


def test_without_the_fleet_ca_a_redis_session_does_not_connect_unverified(tmp_path: Path) -> None:
    cluster, access, ca = redis_access(tmp_path)
    ca.unlink()
    with pytest.raises(PermanentError, match="the CA .*ca.crt is not there"):
        RedisSession(cluster, access).client("redis-1", cluster.port, credentials.REDIS_MONITOR)
    with pytest.raises(PermanentError, match="no CA"):
        tls.redis_client_tls(cluster, None)


def test_the_operator_trusts_the_ca_the_pki_role_makes_beside_the_inventory(tmp_path: Path) -> None:
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    cluster, access, ca = redis_access(tmp_path)
    defaults = {k: trust_as_template(v) if isinstance(v, str) else v for k, v in role_defaults("pki").items()}
    variables = {**defaults, "inventory_dir": str(ca.parent.parent), **cluster_vars(cluster)}
    rendered = Templar(loader=DataLoader(), variables=variables).template(trust_as_template("{{ pki_ca_cert }}"))
    assert Path(str(rendered)) == tls.fleet_ca(cluster, access.inventory) == ca


def test_the_host_ca_the_redis_tools_trust_is_where_the_redis_roles_put_it() -> None:
    common = role_defaults("redis_common")
    assert tls.REDIS_HOST_CA == common["redis_tls_ca"].replace("{{ redis_tls_dir }}", common["redis_tls_dir"])
    assert tls.REDIS_HOST_CA == role_defaults("redis_exporter")["redis_exporter_tls_ca"]


def test_redis_cli_of_the_backups_and_of_the_role_handlers_use_the_same_tls() -> None:
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    from dbfleet.backups.access import BackupAccess
    from dbfleet.backups.redis import cli
    from dbfleet.backups.storage import LocalStorage
    from dbfleet.engines.executor import ExecResult

    cluster = with_tls(FLEET.cluster("cache"))
    ran: list[list[str]] = []

    class Hosts:
        def run(self, host: str, argv: list[str], **kw: Any) -> ExecResult:
            ran.append(list(argv))
            return ExecResult(0, "", "")

    access = BackupAccess(cluster, Hosts(), LocalStorage(Path("/nonexistent")), ACCESS)  # type: ignore[arg-type]
    cli(access, "redis-2", "DBSIZE")
    (argv,) = ran
    assert argv[1:4] == ["--tls", "--cacert", tls.REDIS_HOST_CA] == tls.redis_cli_tls_args(cluster)
    defaults = {k: trust_as_template(v) if isinstance(v, str) else v
                for k, v in role_defaults("redis_common").items()}
    for enabled in (True, False):
        spec = with_tls(cluster, enabled)
        variables = {**defaults, **cluster_vars(spec)}
        handlers = Templar(loader=DataLoader(), variables=variables).template(
            trust_as_template("{{ redis_cli_tls_args }}"))
        assert list(handlers) == tls.redis_cli_tls_args(spec), enabled
