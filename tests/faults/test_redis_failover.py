"""Redis faults: the master stops or is cut off; Sentinel promotes a replica and the old master rejoins.

Each test is bounded (FAILOVER_BOUND, REJOIN_BOUND). The failover figure, the
seconds from `docker stop` of the master until a client that asks Sentinel for
the master can write again, is printed, recorded as a test property and
written to bench/results/redis_failover.json.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest
import redis
from redis.sentinel import Sentinel

from dbfleet.engines.tls import redis_cli_tls_args
from dbfleet.lab.topology import network_name
from dbfleet.spec import RedisCluster
from redis_support import node, sentinels

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "redis_failover.json"
FAILOVER_BOUND = 60.0
REJOIN_BOUND = 90.0
TIMEOUT = 1.0


@pytest.fixture(scope="module")
def cache(configured: Any) -> tuple[Any, RedisCluster]:
    if not configured.has("redis"):
        pytest.skip("the lab runs no Redis hosts")
    return configured, configured.fleet.of_engine("redis")[0]


def bounded(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> tuple[Any, float]:
    """Poll `check` until truthy; return (value, seconds taken); fail after `timeout` seconds."""
    start = time.monotonic()
    last: Any = None
    for _ in range(int(timeout / every) + 1):
        try:
            last = check()
        except (redis.RedisError, OSError) as exc:
            last = exc
        else:
            if last:
                return last, time.monotonic() - start
        if time.monotonic() - start > timeout:
            break
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f}s (last: {last!r})")


def sentinel_client(lab: Any, cluster: RedisCluster) -> Sentinel:
    """An application's view: ask the Sentinels for the master, log in as `app` (over TLS when the spec says)."""
    return sentinels(lab, cluster, timeout=TIMEOUT, username="app", password=lab.secrets["redis_app_password"])


def admin(lab: Any, host: str, cluster: RedisCluster) -> redis.Redis:
    return node(lab, host, cluster, timeout=TIMEOUT)


def master_host(lab: Any, cluster: RedisCluster, sentinel: Sentinel) -> str:
    address, _ = sentinel.discover_master(cluster.name)
    return next(h.name for h in cluster.data_hosts() if lab.address(h.name) == address)


def write_through_sentinel(sentinel: Sentinel, cluster: RedisCluster, key: str, value: str) -> bool:
    master = sentinel.master_for(cluster.name, socket_timeout=TIMEOUT, retry_on_timeout=False)
    try:
        return bool(master.set(key, value))
    finally:
        master.close()


def replica_of(lab: Any, cluster: RedisCluster, host: str, master: str) -> bool:
    info = admin(lab, host, cluster).info("replication")
    return (info["role"] == "slave" and info["master_host"] == lab.address(master)
            and info["master_link_status"] == "up")


def healthy(lab: Any, cluster: RedisCluster, sentinel: Sentinel) -> str:
    """The master's name once every other data node replicates from it with its link up."""
    master = master_host(lab, cluster, sentinel)
    others = [h.name for h in cluster.data_hosts() if h.name != master]
    return master if all(replica_of(lab, cluster, h, master) for h in others) else ""


def record(figures: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


def test_sentinel_promotes_a_replica_when_the_master_stops(cache: tuple[Any, RedisCluster],
                                                           record_property: Callable[[str, Any], None]) -> None:
    lab, cluster = cache
    # Issue 17 claims Sentinel's failover over TLS: the lab spec turns TLS on, each data node listens on TLS only
    # (plaintext port 0), and the application's client reaches the Sentinels and the master over TLS.
    assert cluster.tls.enabled, "the lab's Redis runs without TLS: this would not be the failover over TLS"
    for h in cluster.data_hosts():
        settings = admin(lab, h.name, cluster).config_get("*port")
        assert (settings["port"], settings["tls-port"]) == ("0", str(cluster.port)), (h.name, settings)
    sentinel = sentinel_client(lab, cluster)
    assert all(s.connection_pool.connection_class is redis.SSLConnection for s in sentinel.sentinels)
    old, _ = bounded("a healthy cluster before the fault", lambda: healthy(lab, cluster, sentinel), REJOIN_BOUND)
    key, value = f"dbfleet:test:failover:{uuid.uuid4().hex}", "before"
    assert write_through_sentinel(sentinel, cluster, key, value)
    assert admin(lab, old, cluster).wait(cluster.replicas, 5000) == cluster.replicas

    container = docker.from_env().containers.get(lab.container(old))
    started = time.monotonic()
    container.stop(timeout=10)
    stopped = time.monotonic() - started
    try:
        _, took = bounded("a write through Sentinel after the master stopped",
                          lambda: write_through_sentinel(sentinel, cluster, key + ":after", "after"),
                          FAILOVER_BOUND, every=0.1)
        unavailable = stopped + took
        new = master_host(lab, cluster, sentinel)
        assert new != old, f"Sentinel still names {old} as master"
        assert admin(lab, new, cluster).get(key) == value, "the promoted replica lost an acknowledged write"
    finally:
        container.start()
    _, rejoined = bounded(f"{old} back as a replica of {new}", lambda: replica_of(lab, cluster, old, new),
                          REJOIN_BOUND, every=0.5)

    figures = {"bench": "redis_failover", "metric": "write_unavailable_seconds", "value": round(unavailable, 2),
               "unit": "s", "docker_stop_seconds": round(stopped, 2), "old_master_rejoined_seconds": round(rejoined, 1),
               "down_after_ms": cluster.down_after_ms, "failover_timeout_ms": cluster.failover_timeout_ms,
               "old_master": old, "new_master": new}
    print(f"\nredis failover: writes through Sentinel resumed {unavailable:.2f}s after `docker stop` of {old} "
          f"(the stop itself {stopped:.2f}s; down-after-milliseconds {cluster.down_after_ms}); {new} promoted; "
          f"{old} replicating again {rejoined:.1f}s after `docker start`")
    record_property("redis_failover_seconds", figures["value"])
    record(figures)
    assert master_host(lab, cluster, sentinel) == new
    # A converge after the failover keeps the promoted master and changes nothing.
    result = lab.converge("redis.yml")
    assert result.ok, result.output[-4000:]
    assert result.changed == {}, f"a converge after the failover changed {result.changed}"
    assert healthy(lab, cluster, sentinel) == new


def test_an_isolated_master_refuses_writes_and_rejoins(cache: tuple[Any, RedisCluster]) -> None:
    """min-replicas-to-write: a master cut off from its replicas stops accepting writes."""
    lab, cluster = cache
    if cluster.min_replicas_to_write < 1:
        pytest.skip("the spec lets a master write without replicas")
    sentinel = sentinel_client(lab, cluster)
    old, _ = bounded("a healthy cluster before the fault", lambda: healthy(lab, cluster, sentinel), REJOIN_BOUND)
    client = docker.from_env()
    container = client.containers.get(lab.container(old))
    network = client.networks.get(network_name(lab.name))

    def write_on_isolated() -> str:
        # From inside the container: the lab network is gone, loopback is not.
        _code, out = container.exec_run(
            ["redis-cli", *redis_cli_tls_args(cluster), "-h", "127.0.0.1", "-p", str(cluster.port),
             "--user", "dbfleet_admin", "--no-auth-warning", "SET", "dbfleet:test:isolated", "1"],
            environment={"REDISCLI_AUTH": lab.secrets["redis_admin_password"]})
        return out.decode().strip()

    def refused_on_isolated() -> str:
        reply = write_on_isolated()
        return reply if reply.startswith("NOREPLICAS") else ""

    assert write_on_isolated() == "OK"
    network.disconnect(container)
    try:
        reply, took = bounded(f"{old} refusing writes once cut off", refused_on_isolated,
                              cluster.min_replicas_max_lag + 15, every=0.5)
        print(f"\nredis isolation: {old} refused writes {took:.1f}s after losing its replicas ({reply[:40]})")
        bounded("Sentinel promoting a reachable replica",
                lambda: master_host(lab, cluster, sentinel) != old, FAILOVER_BOUND, every=0.5)
    finally:
        network.connect(container, ipv4_address=lab.address(old), aliases=[old])
    new, _ = bounded(f"{old} rejoining as a replica", lambda: healthy(lab, cluster, sentinel), REJOIN_BOUND, every=0.5)
    assert new != old
