"""PostgreSQL on the lab after the playbook: services, files, TLS, replication, auth, pgBackRest, idempotency.

Primary-agnostic: the primary is the host not in recovery, since a switchover
test may have moved it from the spec's first host earlier in the session.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dbfleet.spec import PostgresCluster

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def pg(configured: Any) -> tuple[Any, PostgresCluster]:
    if not configured.has("postgres"):
        pytest.skip("the lab runs no PostgreSQL hosts")
    return configured, configured.fleet.of_engine("postgres")[0]


def connect(lab: Any, cluster: PostgresCluster, host: str, user: str = "postgres", password: str | None = None,
            dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(host=lab.address(host), port=cluster.port, dbname=dbname, user=user,
                           password=password if password is not None else lab.secrets["postgres_superuser_password"],
                           sslmode=kwargs.pop("sslmode", "require"), connect_timeout=5, autocommit=True, **kwargs)


def query(lab: Any, cluster: PostgresCluster, host: str, sql: str, params: tuple[Any, ...] = (),
          dbname: str = "postgres") -> list[tuple[Any, ...]]:
    with connect(lab, cluster, host, dbname=dbname) as conn:
        return conn.execute(sql, params).fetchall()


def roles(lab: Any, cluster: PostgresCluster) -> tuple[str, list[str]]:
    """(primary, replicas) as the servers say right now."""
    recovery = {h: query(lab, cluster, h, "select pg_is_in_recovery()")[0][0] for h in cluster.host_names()}
    primaries = [h for h, standby in recovery.items() if not standby]
    assert len(primaries) == 1, f"expected one primary, found {recovery}"
    return primaries[0], [h for h, standby in recovery.items() if standby]


def test_packages_installed_and_service_running(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    for name in cluster.host_names():
        host = lab.host(name)
        for package in ("postgresql-15", "pgbackrest", "postgresql-15-hypopg"):
            assert host.package(package).is_installed, f"{name}: {package}"
        if cluster.ha == "patroni":
            # Patroni owns the server: its unit runs, Debian's cluster unit is neither running nor enabled.
            assert host.service("patroni").is_running and host.service("patroni").is_enabled, name
            assert not host.service("postgresql@15-main").is_enabled, name
            assert host.file("/etc/postgresql/15/main/start.conf").content_string.strip().endswith("manual")
        else:
            service = host.service("postgresql@15-main")
            assert service.is_running and service.is_enabled, name


def test_listens_only_on_loopback_and_its_own_address(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    for name in cluster.host_names():
        listening = {s for s in lab.host(name).socket.get_listening_sockets() if s.endswith(f":{cluster.port}")}
        assert listening == {f"tcp://127.0.0.1:{cluster.port}", f"tcp://{lab.address(name)}:{cluster.port}"}, name


def test_data_directory_and_config_file_modes(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    primary, _ = roles(lab, cluster)
    for name in cluster.host_names():
        host = lab.host(name)
        pgdata = host.file("/var/lib/postgresql/15/main")
        assert pgdata.is_directory and pgdata.user == "postgres" and pgdata.mode == 0o700, name
        owned = ["/etc/postgresql/15/main/pg_hba.conf"]
        if cluster.ha == "manual":
            owned.append("/etc/postgresql/15/main/conf.d/dbfleet.conf")
        else:
            config = host.file("/etc/patroni/config.yml")  # holds the passwords Patroni logs in with
            assert config.user == "postgres" and config.mode == 0o600, f"{name}: config.yml is {oct(config.mode)}"
            assert not host.file("/etc/postgresql/15/main/conf.d/dbfleet.conf").exists
        for path in owned:
            f = host.file(path)
            assert f.user == "postgres" and f.mode == 0o640, f"{name}: {path} is {oct(f.mode)}"
        key = host.file("/etc/postgresql/tls/server.key")
        assert key.user == "postgres" and key.mode == 0o600, name
        # The replication password: dbfleet's passfile (ha: manual), or the one Patroni writes for itself when
        # it streams (so on every replica; on the leader only if it once was one).
        pgpass = host.file("/var/lib/postgresql/.pgpass.patroni" if cluster.ha == "patroni"
                           else "/var/lib/postgresql/.pgpass")
        if cluster.ha == "patroni" and name == primary and not pgpass.exists:
            continue
        assert pgpass.user == "postgres" and pgpass.mode == 0o600, name


def test_settings_ssl_scram_checksums_and_wal(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    wanted = {"ssl": "on", "password_encryption": "scram-sha-256", "data_checksums": "on", "wal_level": "replica",
              "archive_mode": "on", "log_connections": "on", "hot_standby": "on"}
    for name in cluster.host_names():
        got = dict(query(lab, cluster, name, "select name, setting from pg_settings where name = any(%s)",
                         (list(wanted),)))
        assert got == wanted, name
        for key, value in cluster.parameters.items():
            setting = query(lab, cluster, name, f"select current_setting('{key}')")[0][0]
            assert setting == str(value), f"{name}: {key} = {setting}, spec says {value}"
        with connect(lab, cluster, name) as conn:
            assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0] is True


def test_hba_has_no_remote_trust_and_refuses_plaintext(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    primary, _ = roles(lab, cluster)
    rules = query(lab, cluster, primary, "select type, auth_method from pg_hba_file_rules where error is null")
    assert rules and all(method != "trust" for _, method in rules), rules
    assert all(method in ("scram-sha-256", "reject") for kind, method in rules if kind != "local"), rules
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        connect(lab, cluster, primary, sslmode="disable").close()


def test_every_replica_streams_through_its_own_active_slot(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    primary, replicas = roles(lab, cluster)
    assert len(replicas) == cluster.replicas
    slots_wanted = {r.replace("-", "_") for r in replicas}
    # ha: manual names each standby after its slot; Patroni names it after the member (slot: '-' -> '_').
    expected = set(replicas) if cluster.ha == "patroni" else slots_wanted
    # A standby site (dr.standby) streams too, without a slot, from the first primary-site server that answers.
    standby_site = {h.name for h in cluster.standby_hosts()}
    deadline = time.monotonic() + 30
    while True:
        streaming = dict(query(lab, cluster, primary,
                               "select application_name, state from pg_stat_replication"))
        slots = dict(query(lab, cluster, primary,
                           "select slot_name, active from pg_replication_slots where slot_type = 'physical'"))
        if {a for a, s in streaming.items() if s == "streaming" and a not in standby_site} == expected and \
                all(slots.get(name) for name in slots_wanted):
            break
        assert time.monotonic() < deadline, f"streaming {streaming}, slots {slots}, expected {expected}"
        time.sleep(0.5)
    if cluster.synchronous.enabled:
        sync = dict(query(lab, cluster, primary, "select application_name, sync_state from pg_stat_replication"))
        if cluster.ha == "patroni":
            # Patroni 3.0 names num_sync synchronous standbys (priority), the others are potential.
            assert sum(s == "sync" for s in sync.values()) == cluster.synchronous.num_sync, sync
        else:
            assert set(sync.values()) == {"quorum"}, f"ANY {cluster.synchronous.num_sync} quorum expected: {sync}"
    for replica in replicas:
        conninfo = query(lab, cluster, replica, "select conninfo from pg_stat_wal_receiver")[0][0]
        assert f"host={lab.address(primary)}" in conninfo and "sslmode=verify-full" in conninfo, conninfo
        assert "password" not in conninfo


@pytest.fixture
def marker_table(pg: tuple[Any, PostgresCluster]) -> Iterator[str]:
    lab, cluster = pg
    primary, _ = roles(lab, cluster)
    table = "replication_probe"
    database = cluster.databases[0]
    with connect(lab, cluster, primary, dbname=database) as conn:
        conn.execute(f"create table if not exists {table} (id text primary key, at timestamptz default now())")
    yield table
    with connect(lab, cluster, primary, dbname=database) as conn:
        conn.execute(f"drop table if exists {table}")


def test_a_row_written_on_the_primary_is_read_on_every_replica_within_5s(
        pg: tuple[Any, PostgresCluster], marker_table: str) -> None:
    lab, cluster = pg
    primary, replicas = roles(lab, cluster)
    database = cluster.databases[0]
    token = uuid.uuid4().hex
    with connect(lab, cluster, primary, dbname=database) as conn:
        conn.execute(f"insert into {marker_table} (id) values (%s)", (token,))
    written = time.monotonic()
    for replica in replicas:
        with connect(lab, cluster, replica, dbname=database) as conn:
            while not conn.execute(f"select 1 from {marker_table} where id = %s", (token,)).fetchone():
                assert time.monotonic() - written < 5, f"{replica} did not show the row within 5 s"
                time.sleep(0.05)


def test_a_write_on_a_replica_fails_read_only(pg: tuple[Any, PostgresCluster], marker_table: str) -> None:
    lab, cluster = pg
    _, replicas = roles(lab, cluster)
    for replica in replicas:
        with connect(lab, cluster, replica, dbname=cluster.databases[0]) as conn:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute(f"insert into {marker_table} (id) values ('from-replica')")


def test_wrong_password_and_unknown_user_are_refused(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    primary, _ = roles(lab, cluster)
    for user, password in (("postgres", "not-the-password"), ("app", "not-the-password"), ("nobody", "x")):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            connect(lab, cluster, primary, user=user, password=password).close()
    with connect(lab, cluster, primary, user="app", password=lab.secrets["postgres_app_password"],
                 dbname=cluster.databases[0]) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "app"


def test_pgbackrest_check_passes_on_the_primary(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    primary, _ = roles(lab, cluster)
    result = lab.host(primary).run(f"runuser -u postgres -- pgbackrest --stanza={cluster.name} check")
    assert result.rc == 0, result.stderr + result.stdout


def test_second_converge_changes_nothing(pg: tuple[Any, PostgresCluster]) -> None:
    lab, cluster = pg
    primary, _ = roles(lab, cluster)
    result = lab.converge("postgres.yml")
    assert result.ok, result.output[-4000:]
    assert result.changed == {}, f"a second run changed {result.changed}"
    assert roles(lab, cluster)[0] == primary
