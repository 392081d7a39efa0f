"""Redis with Sentinel on the lab after the playbook: services, ACLs, replication, Sentinels, idempotency.

Master-agnostic: every test asks the Sentinels which node is the master, since
a fault test may have failed the spec's primary over earlier in the session.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.sentinel import Sentinel

from dbfleet.spec import RedisCluster

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


def node(lab: Any, host: str, cluster: RedisCluster, user: str = "dbfleet_admin",
         secret: str = "redis_admin_password") -> redis.Redis:
    return redis.Redis(lab.address(host), cluster.port, username=user, password=lab.secrets[secret],
                       socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True)


def sentinel_node(lab: Any, host: str, cluster: RedisCluster) -> redis.Redis:
    return redis.Redis(lab.address(host), cluster.sentinel_port, password=lab.secrets["redis_sentinel_password"],
                       socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True)


def current_master(lab: Any, cluster: RedisCluster) -> str:
    """The data host the Sentinels name as master."""
    sentinel = Sentinel([(lab.address(h.name), cluster.sentinel_port) for h in cluster.sentinel_hosts()],
                        sentinel_kwargs={"password": lab.secrets["redis_sentinel_password"], "socket_timeout": TIMEOUT})
    address, _ = sentinel.discover_master(cluster.name)
    return next(h.name for h in cluster.data_hosts() if lab.address(h.name) == address)


def as_dict(reply: Any) -> dict[str, str]:
    """A Sentinel reply, flat [key, value, ...] or already parsed by redis-py, as a dict of strings."""
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[0::2], reply[1::2], strict=False)
    return {str(k): str(v) for k, v in pairs}


def raw_reply(address: str, port: int, command: bytes) -> bytes:
    """Send one inline command without authenticating; return the first reply line."""
    with socket.create_connection((address, port), timeout=TIMEOUT) as conn:
        conn.sendall(command + b"\r\n")
        return conn.recv(512).split(b"\r\n")[0]


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
        assert raw_reply(lab.address(h.name), cluster.port, b"PING").startswith(b"-NOAUTH"), h.name
        assert raw_reply(lab.address(h.name), cluster.port, b"AUTH default nopass").startswith(b"-WRONGPASS"), h.name
    for h in cluster.sentinel_hosts():
        assert raw_reply(lab.address(h.name), cluster.sentinel_port, b"PING").startswith(b"-NOAUTH"), h.name


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
    sentinels = {h.name: lab.address(h.name) for h in cluster.sentinel_hosts()}
    clients = {name: sentinel_node(lab, name, cluster) for name in sentinels}
    for name, client in clients.items():
        assert client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", cluster.name)[0] == master_address
        state = as_dict(client.execute_command("SENTINEL", "MASTER", cluster.name))
        assert (state["quorum"], state["down-after-milliseconds"], state["failover-timeout"]) == (
            str(cluster.effective_quorum), str(cluster.down_after_ms), str(cluster.failover_timeout_ms)), name

    def peers_known() -> bool:
        for name, client in clients.items():
            peers = {as_dict(s)["ip"] for s in client.execute_command("SENTINEL", "SENTINELS", cluster.name)}
            replicas = client.execute_command("SENTINEL", "REPLICAS", cluster.name)
            if peers != set(sentinels.values()) - {sentinels[name]} or len(replicas) != cluster.replicas:
                return False
        return True

    wait_for("every Sentinel knows the other Sentinels and every replica", peers_known, timeout=20)


def test_second_converge_changes_nothing(cache: tuple[Any, RedisCluster]) -> None:
    lab, cluster = cache
    master = current_master(lab, cluster)
    result = lab.converge("redis.yml")
    assert result.ok, result.output[-4000:]
    assert result.changed == {}, f"a second run changed {result.changed}"
    assert current_master(lab, cluster) == master


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
