"""Redis adapter: observe the master, its replicas and the Sentinels (Redis has no index reconciler).

Data nodes are read as the read-only `dbfleet_monitor` ACL user (INFO only);
Sentinels with their requirepass (engines.credentials). With `tls.enabled`
every connection is TLS, the server's certificate and address checked
against the fleet CA (engines.tls). One client per server and login is kept
for the session's life, so a watching operator holds a fixed number of
connections however many cycles it runs. The master is the one the Sentinels
name for the cluster (their master name is the cluster name), cross-checked
with each node's own INFO replication role.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dbfleet.engines.access import CONNECT_TIMEOUT, FleetAccess
from dbfleet.engines.base import EngineSession, Member, Topology
from dbfleet.engines.credentials import REDIS_MONITOR, REDIS_SENTINEL, Login
from dbfleet.engines.tls import redis_client_tls
from dbfleet.errors import PermanentError, ReconcileError, TemporaryError
from dbfleet.spec import RedisCluster

CLIENT_NAME = "dbfleet-operator"
"""CLIENT SETNAME of the operator's connections, so a server's CLIENT LIST shows them."""


class RedisSession(EngineSession[RedisCluster]):
    engine = "redis"

    def __init__(self, cluster: RedisCluster, access: FleetAccess):
        super().__init__(cluster, access)
        self._clients: dict[tuple[str, int, str | None], redis.Redis] = {}

    def client(self, host: str, port: int, login: Login) -> redis.Redis:
        """This session's client for one server and login, made on first use and kept until close()."""
        key = (host, port, login.user)
        client = self._clients.get(key)
        if client is None:
            tls = redis_client_tls(self.cluster, self.access.ca_file(self.cluster))
            client = redis.Redis(host=self.access.address(host), port=port, username=login.user,
                                 password=self.access.password(login), socket_connect_timeout=CONNECT_TIMEOUT,
                                 socket_timeout=CONNECT_TIMEOUT, decode_responses=True, client_name=CLIENT_NAME,
                                 # The loop retries with its own backoff; redis-py's default 3 retries would
                                 # make a frozen cluster cost 20 s per command.
                                 retry=Retry(NoBackoff(), 0), **tls)
            self._clients[key] = client
            self.connections += 1
        return client

    def command(self, host: str, port: int, login: Login, *args: Any) -> Any:
        self.queries += 1
        try:
            return self.client(host, port, login).execute_command(*args)  # type: ignore[no-untyped-call]
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            raise TemporaryError(f"{args[0]}: {exc}", host=host) from None
        except redis.RedisError as exc:
            raise PermanentError(f"{args[0]}: {exc}", host=host) from None

    def read_topology(self) -> Topology:
        cluster = self.cluster
        members: list[Member] = []
        masters: list[str] = []
        for host in cluster.data_hosts():
            try:
                info = self.command(host.name, cluster.port, REDIS_MONITOR, "INFO", "replication")
            except ReconcileError as exc:
                members.append(Member(host.name, "unknown", False, exc.message))
                continue
            role = "primary" if info.get("role") == "master" else "replica"
            if role == "primary":
                masters.append(host.name)
            detail = f"{info.get('connected_slaves', 0)} replicas connected" if role == "primary" else \
                f"link {info.get('master_link_status', '?')}"
            members.append(Member(host.name, role, True, detail))
        by_address = {self.access.addresses.get(h.name): h.name for h in cluster.data_hosts()}
        votes: Counter[str] = Counter()
        for host in cluster.sentinel_hosts():
            try:
                addr = self.command(host.name, cluster.sentinel_port, REDIS_SENTINEL,
                                    "SENTINEL", "get-master-addr-by-name", cluster.name)
            except ReconcileError as exc:
                members.append(Member(host.name, "sentinel", False, exc.message))
                continue
            named = by_address.get(addr[0], f"{addr[0]}:{addr[1]}") if addr else "none"
            votes[named] += 1
            members.append(Member(host.name, "sentinel", True, f"names {named} master"))
        primary = _agreed_primary(votes, masters, cluster.effective_quorum)
        facts: dict[str, Any] = {}
        if primary is not None:
            memory = self.command(primary, cluster.port, REDIS_MONITOR, "INFO", "memory")
            facts["used_memory"] = int(memory.get("used_memory", 0))
        return Topology(cluster.name, self.engine, primary, tuple(members), facts)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def _agreed_primary(votes: Counter[str], masters: list[str], quorum: int) -> str | None:
    """The master a quorum of Sentinels names, if it says so itself; else the only self-declared master."""
    if votes:
        named, count = votes.most_common(1)[0]
        if count >= quorum and (not masters or named in masters):
            return named
    return masters[0] if len(masters) == 1 else None
