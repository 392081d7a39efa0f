"""Redis with Sentinel on the lab after the playbook: services, ACLs, replication, Sentinels, idempotency.

Master-agnostic: every test asks the Sentinels which node is the master, since
a fault test may have failed the spec's primary over earlier in the session.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from dbfleet.inventory import cluster_vars
from dbfleet.inventory_format import inventory_yaml
from dbfleet.monitoring.exporters import REDIS, SENTINEL
from dbfleet.spec import RedisCluster
from redis_support import node, sentinel_node, sentinels, tls_options

pytestmark = pytest.mark.lab

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def cache(configured: Any) -> tuple[Any, RedisCluster]:
    if not configured.has("redis"):
        pytest.skip("the lab runs no Redis hosts")
    cluster = configured.fleet.of_engine("redis")[0]
    return configured, cluster


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30, every: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    for _ in range(int(timeout / every) + 1):
        try:
            last = check()
        except redis.RedisError as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            break
        time.sleep(every)
    pytest.fail(f"{what}: not true within {timeout:.0f}s (last: {last!r})")


def current_master(lab: Any, cluster: RedisCluster) -> str:
    """The data host the Sentinels name as master."""
    address, _ = sentinels(lab, cluster).discover_master(cluster.name)
    return next(h.name for h in cluster.data_hosts() if lab.address(h.name) == address)


def as_dict(reply: Any) -> dict[str, str]:
    """A Sentinel reply, flat [key, value, ...] or already parsed by redis-py, as a dict of strings."""
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[0::2], reply[1::2], strict=False)
    return {str(k): str(v) for k, v in pairs}


def raw_reply(lab: Any, cluster: RedisCluster, address: str, port: int, command: bytes) -> bytes:
    """Send one inline command without authenticating (over TLS when the cluster has it); return the first
    reply line."""
    with socket.create_connection((address, port), timeout=TIMEOUT) as raw:
        conn = raw
        if cluster.tls.enabled:
            context = ssl.create_default_context(cafile=tls_options(lab, cluster)["ssl_ca_certs"])
            conn = context.wrap_socket(raw, server_hostname=address)
        conn.sendall(command + b"\r\n")
        return conn.recv(512).split(b"\r\n")[0]


def plaintext_reply(address: str, port: int) -> bytes:
    """What a plaintext client gets for an inline PING: a RESP line from a plaintext server; nothing (the
    connection closed or reset) from a TLS-only one."""
    with socket.create_connection((address, port), timeout=TIMEOUT) as conn:
        conn.sendall(b"PING\r\n")
        try:
            return conn.recv(512)
        except ConnectionResetError:
            return b""


def require_tls(cluster: RedisCluster) -> None:
    if not cluster.tls.enabled:
        pytest.skip(f"cluster {cluster.name} runs without TLS (tls.enabled: false in the spec)")


def other_ca(directory: Path) -> Path:
    """A self-signed CA that signed nothing of the fleet's, written to `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the dbfleet CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / "other-ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@contextmanager
def loopback_relay(target: tuple[str, int], listen: str = "127.0.0.2") -> Iterator[int]:
    """Forward connections to `listen`:<port yielded> on to `target`, bytes untouched (TLS passes through).

    A server reached through it is reached at an address its certificate does not name.
    """
    server = socket.create_server((listen, 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for conn in (src, dst):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(target, timeout=TIMEOUT)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_services_run_and_listen_only_on_loopback_and_their_address(cache: tuple[Any, RedisCluster]) -> None:
    lab, cluster = cache
    for service, hosts, port in (("redis-server", cluster.data_hosts(), cluster.port),
                                 ("redis-sentinel", cluster.sentinel_hosts(), cluster.sentinel_port)):
        for h in hosts:
            host = lab.host(h.name)
            assert host.service(service).is_running and host.service(service).is_enabled, f"{h.name}: {service}"
            listening = {s for s in host.socket.get_listening_sockets() if s.endswith(f":{port}")}
            assert listening == {f"tcp://127.0.0.1:{port}", f"tcp://{lab.address(h.name)}:{port}"}, h.name


def test_unauthenticated_commands_are_refused(cache: tuple[Any, RedisCluster]) -> None:
    lab, cluster = cache
    for h in cluster.data_hosts():
        assert raw_reply(lab, cluster, lab.address(h.name), cluster.port, b"PING").startswith(b"-NOAUTH"), h.name
        assert raw_reply(lab, cluster, lab.address(h.name), cluster.port,
                         b"AUTH default nopass").startswith(b"-WRONGPASS"), h.name
    for h in cluster.sentinel_hosts():
        assert raw_reply(lab, cluster, lab.address(h.name), cluster.sentinel_port,
                         b"PING").startswith(b"-NOAUTH"), h.name


def servers(cluster: RedisCluster) -> list[tuple[str, int]]:
    """(host, port) of every data node and Sentinel."""
    return [(h.name, cluster.port) for h in cluster.data_hosts()] + \
        [(h.name, cluster.sentinel_port) for h in cluster.sentinel_hosts()]


def test_a_plaintext_client_gets_no_answer_from_any_node_or_sentinel(cache: tuple[Any, RedisCluster]) -> None:
    """Issue 17: without TLS the ACL, replication and Sentinel passwords crossed the network in clear. Now
    the port speaks TLS only (`port 0`): plaintext gets no RESP reply and redis-py without TLS cannot even
    send AUTH (a made-up password here, never a real one in clear)."""
    lab, cluster = cache
    require_tls(cluster)
    for host, port in servers(cluster):
        reply = plaintext_reply(lab.address(host), port)
        assert not reply.startswith((b"+", b"-", b"$", b"*", b":")), f"{host}:{port} answered plaintext: {reply!r}"
        plain = redis.Redis(lab.address(host), port, username="app", password="not-the-password",
                            socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
        with pytest.raises(redis.ConnectionError):
            plain.ping()
        plain.close()


def test_every_node_and_sentinel_listens_on_tls_only(cache: tuple[Any, RedisCluster]) -> None:
    lab, cluster = cache
    require_tls(cluster)
    for h in cluster.data_hosts():
        got = node(lab, h.name, cluster).config_get("*")
        assert (got["port"], got["tls-port"], got["tls-replication"], got["tls-auth-clients"]) == (
            "0", str(cluster.port), "yes", "no"), h.name
    for h in cluster.sentinel_hosts():
        # Sentinel has no CONFIG: its file says how it listens, and the TLS clients above reach it.
        conf = lab.host(h.name).file("/etc/redis/sentinel.conf").content_string.splitlines()
        assert {"port 0", f"tls-port {cluster.sentinel_port}", "tls-replication yes"} <= set(conf), h.name


def test_a_client_trusting_another_ca_is_refused(cache: tuple[Any, RedisCluster], tmp_path: Path) -> None:
    """Certificates are checked: a client that does not trust the fleet CA fails the handshake."""
    lab, cluster = cache
    require_tls(cluster)
    ca = other_ca(tmp_path)
    for host, port in servers(cluster):
        client = redis.Redis(lab.address(host), port, password="not-the-password", ssl=True, ssl_ca_certs=str(ca),
                             ssl_cert_reqs="required", ssl_check_hostname=True, socket_timeout=TIMEOUT,
                             socket_connect_timeout=TIMEOUT)
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            client.ping()
        client.close()


def test_the_operator_checks_the_server_name_as_well_as_the_chain(cache: tuple[Any, RedisCluster]) -> None:
    """The operator's session, reaching a real node at an address its certificate does not name (127.0.0.2,
    relayed byte for byte), refuses it; the same relay with name checks off gets through, so only the name
    was wrong."""
    from dbfleet.engines.access import FleetAccess
    from dbfleet.engines.credentials import REDIS_MONITOR
    from dbfleet.engines.redis import RedisSession
    from dbfleet.errors import TemporaryError

    lab, cluster = cache
    require_tls(cluster)
    host = cluster.data_hosts()[0].name
    with loopback_relay((lab.address(host), cluster.port)) as port:
        access = FleetAccess.load(lab.inventory_path, lab.state.secrets)
        access.addresses = {**access.addresses, host: "127.0.0.2"}
        session = RedisSession(cluster, access)
        try:
            with pytest.raises(TemporaryError, match="mismatch|doesn't match|not valid for"):
                session.command(host, port, REDIS_MONITOR, "PING")
        finally:
            session.close()
        relayed = redis.Redis("127.0.0.2", port, username="dbfleet_monitor",
                              password=lab.secrets["redis_monitor_password"], socket_timeout=TIMEOUT,
                              socket_connect_timeout=TIMEOUT,
                              **{**tls_options(lab, cluster), "ssl_check_hostname": False})
        assert relayed.ping()
        relayed.close()


def test_the_exporters_reach_their_servers(cache: tuple[Any, RedisCluster]) -> None:
    """prometheus-redis-exporter dials rediss:// and checks the certificate: redis_up is 1 only if it got in."""
    lab, cluster = cache
    if not cluster.monitoring.enabled:
        pytest.skip(f"cluster {cluster.name} has monitoring.enabled: false, so no exporters")

    def metrics(host: str, port: int) -> dict[str, str]:
        with urllib.request.urlopen(f"http://{lab.address(host)}:{port}/metrics", timeout=10) as reply:
            lines = reply.read().decode().splitlines()
        return dict(line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))

    for h in cluster.data_hosts():
        wait_for(f"{h.name}'s exporter reaching Redis", lambda h=h: metrics(h.name, REDIS.port).get("redis_up") == "1")
    for h in cluster.sentinel_hosts():
        wait_for(f"{h.name}'s exporter reaching Sentinel",
                 lambda h=h: metrics(h.name, SENTINEL.port).get("redis_sentinel_masters") == "1")


def test_acl_users_and_the_app_user_limits(cache: tuple[Any, RedisCluster]) -> None:
    lab, cluster = cache
    master = current_master(lab, cluster)
    acl = {line.split()[1]: line for line in node(lab, master, cluster).acl_list()}
    assert set(acl) == {"default", "dbfleet_admin", "app", "replicator", "sentinel", "dbfleet_monitor"}
    assert " off " in acl["default"]
    app = node(lab, master, cluster, "app", "redis_app_password")
    assert app.set("dbfleet:test:acl", "1") and app.info("replication")["role"] == "master"
    for command in (("CONFIG", "GET", "maxmemory"), ("FLUSHALL",), ("KEYS", "*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.execute_command(*command)
    monitor = node(lab, master, cluster, "dbfleet_monitor", "redis_monitor_password")
    assert monitor.info("replication")["role"] == "master"
    with pytest.raises(redis.exceptions.NoPermissionError):
        monitor.set("dbfleet:test:acl", "2")


def test_settings_follow_the_spec(cache: tuple[Any, RedisCluster]) -> None:
    lab, cluster = cache
    units = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
    size = cluster.maxmemory
    unit = size.lstrip("0123456789")
    want = {
        "maxmemory": str(int(size[: -len(unit)]) * units[unit]),
        "maxmemory-policy": cluster.maxmemory_policy,
        "min-replicas-to-write": str(cluster.min_replicas_to_write),
        "min-replicas-max-lag": str(cluster.min_replicas_max_lag),
        "appendonly": "yes" if "aof" in cluster.persistence else "no",
        "protected-mode": "yes",
        "activedefrag": "yes" if cluster.maintenance.fragmentation.activedefrag else "no",
    }
    for h in cluster.data_hosts():
        got = node(lab, h.name, cluster).config_get("*")
        assert {k: got[k] for k in want} == want, h.name
        assert bool(got["save"]) == ("rdb" in cluster.persistence), h.name
        assert got["bind"] == f"127.0.0.1 {lab.address(h.name)}", h.name


def test_master_lists_every_replica_online(cache: tuple[Any, RedisCluster]) -> None:
    lab, cluster = cache
    master = current_master(lab, cluster)
    replicas = {lab.address(h.name) for h in cluster.data_hosts() if h.name != master}
    assert len(replicas) == cluster.replicas

    def online() -> set[str]:
        info = node(lab, master, cluster).info("replication")
        seen = {v["ip"] for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                and v.get("state") == "online"}
        return seen if seen == replicas else set()

    wait_for(f"{master} lists replicas {sorted(replicas)} online", online)


def test_a_write_on_the_master_reaches_every_replica(cache: tuple[Any, RedisCluster]) -> None:
    lab, cluster = cache
    master = current_master(lab, cluster)
    key, value = "dbfleet:test:replication", uuid.uuid4().hex
    node(lab, master, cluster, "app", "redis_app_password").set(key, value)
    replicas = {h.name: node(lab, h.name, cluster, "app", "redis_app_password") for h in cluster.data_hosts()}
    wait_for(f"{key} on every data node", lambda: all(r.get(key) == value for r in replicas.values()),
             timeout=15, every=0.2)


def test_each_sentinel_knows_the_master_and_the_other_sentinels(cache: tuple[Any, RedisCluster]) -> None:
    lab, cluster = cache
    master_address = lab.address(current_master(lab, cluster))
    addresses = {h.name: lab.address(h.name) for h in cluster.sentinel_hosts()}
    clients = {name: sentinel_node(lab, name, cluster) for name in addresses}
    for name, client in clients.items():
        assert client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", cluster.name)[0] == master_address
        state = as_dict(client.execute_command("SENTINEL", "MASTER", cluster.name))
        assert (state["quorum"], state["down-after-milliseconds"], state["failover-timeout"]) == (
            str(cluster.effective_quorum), str(cluster.down_after_ms), str(cluster.failover_timeout_ms)), name

    def peers_known() -> bool:
        for name, client in clients.items():
            peers = {as_dict(s)["ip"] for s in client.execute_command("SENTINEL", "SENTINELS", cluster.name)}
            replicas = client.execute_command("SENTINEL", "REPLICAS", cluster.name)
            if peers != set(addresses.values()) - {addresses[name]} or len(replicas) != cluster.replicas:
                return False
        return True

    wait_for("every Sentinel knows the other Sentinels and every replica", peers_known, timeout=20)


def test_a_restarted_data_node_keeps_every_rdb_save_point(cache: tuple[Any, RedisCluster]) -> None:
    """Redis 7.0's CONFIG REWRITE puts each save point on a line of its own, and a starting server keeps only the
    last: the role joins them on one line, so a restarted replica snapshots as configured (and the next converge
    changes nothing)."""
    lab, cluster = cache
    master = current_master(lab, cluster)
    want = node(lab, master, cluster).config_get("save")["save"]
    if "rdb" in cluster.persistence:
        assert len(want.split()) >= 4, f"the role's save points, several of them: {want!r}"
    replica = next(h.name for h in cluster.data_hosts() if h.name != master)
    restarted = lab.host(replica).run("systemctl restart redis-server")
    assert restarted.rc == 0, restarted.stderr

    def streaming() -> bool:
        try:
            return node(lab, replica, cluster).info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False

    wait_for(f"{replica} streaming again after its restart", streaming, timeout=60)
    assert node(lab, replica, cluster).config_get("save")["save"] == want


def test_second_converge_changes_nothing(cache: tuple[Any, RedisCluster]) -> None:
    lab, cluster = cache
    master = current_master(lab, cluster)
    result = lab.converge("redis.yml")
    assert result.ok, result.output[-4000:]
    assert result.changed == {}, f"a second run changed {result.changed}"
    assert current_master(lab, cluster) == master


def test_switching_tls_in_place_is_refused_before_any_change_or_connection(
        cache: tuple[Any, RedisCluster], tmp_path: Path) -> None:
    """Flipping tls.enabled on a running cluster would have the roles ask the servers for the master in the
    wrong mode (TLS off: the admin and Sentinel passwords in clear to TLS-only ports) and write a managed file
    the next restart would pick up, splitting the cluster. Every host stops before either."""
    lab, cluster = cache
    flipped = cluster.model_copy(update={"tls": cluster.tls.model_copy(update={"enabled": not cluster.tls.enabled})})
    extra = tmp_path / "flipped.yml"
    extra.write_text(inventory_yaml(cluster_vars(flipped)))  # the roles' inputs, as the inventory would map them
    result = lab.converge("redis.yml", ["-e", f"@{extra}"])
    assert not result.ok, "a converge that flips tls.enabled must fail"
    assert "does not switch a running cluster in place" in result.output, result.output[-3000:]
    assert "Find the current master" not in result.output, "no server may be asked in the wrong mode"
    assert result.changed == {}, f"the refused run changed {result.changed}"
    master = current_master(lab, cluster)
    assert node(lab, master, cluster).ping()


def test_a_watching_operator_holds_a_fixed_number_of_redis_connections(
        cache: tuple[Any, RedisCluster], tmp_path: Any) -> None:
    """Issue: RedisSession made a client per command and kept them all while the session lived, so under
    --watch the master's connections grew every cycle. Counted on the master after 2 and after 20 cycles."""
    from dbfleet.engines.access import FleetAccess
    from dbfleet.engines.redis import CLIENT_NAME
    from dbfleet.reconcile.leader import FileLeaderLock
    from dbfleet.reconcile.loop import Operator, watch

    lab, cluster = cache
    master = node(lab, current_master(lab, cluster), cluster)
    access = FleetAccess.load(lab.inventory_path, lab.state.secrets)
    operator = Operator(lab.fleet, access, reconcilers=[], clusters={cluster.name}, keep_sessions=True)
    seen: dict[int, tuple[int, int]] = {}

    def count(report: Any) -> None:
        assert report.ok, report.render()
        cycle = len(seen) + 1
        named = sum(c.get("name") == CLIENT_NAME for c in master.client_list())
        seen[cycle] = (named, int(master.info("clients")["connected_clients"]))

    watch(operator, FileLeaderLock(tmp_path / "leader.lock"), 0.05, count, max_cycles=20)
    assert len(seen) == 20
    (named_2, clients_2), (named_20, clients_20) = seen[2], seen[20]
    assert 1 <= named_2 == named_20, seen
    # The exporter and the Sentinels reconnect now and then: allow one connection of noise, not 18 cycles' worth.
    assert clients_20 - clients_2 <= 1, seen
