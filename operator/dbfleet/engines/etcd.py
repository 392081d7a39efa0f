"""etcd's v3 JSON gateway (etcd 3.4 serves it under /v3/): leases and keys, as one etcd user, over TLS.

The operator keeps its leader lease in the etcd of a Patroni cluster
(dbfleet.reconcile.etcd_leader). As Patroni's etcd3 client does, every call
is a POST of JSON to one member, the next member tried when one does not
answer or has no raft leader; keys and values travel base64-encoded, as the
gateway wants them. Authentication: POST /v3/auth/authenticate gives a token
that goes in the Authorization header, fetched again when etcd says it has
expired. The member's certificate is checked against the fleet CA, and the
password travels only in a request body over that TLS.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dbfleet.engines.access import CONNECT_TIMEOUT, FleetAccess
from dbfleet.engines.credentials import ETCD_OPERATOR, ETCD_ROOT, Login
from dbfleet.engines.tls import https_context
from dbfleet.errors import PermanentError, ReconcileError, TemporaryError
from dbfleet.spec import PostgresCluster

OPERATOR_PREFIX = "/dbfleet-operator/"
"""The operator's keys; the etcd role lets the operator's etcd user read and write below it and nowhere else.
Patroni's namespace (/dbfleet/) does not contain it, nor it Patroni's."""

LEADER_KEY = OPERATOR_PREFIX + "leader"
"""The leader lock: created only while absent, bound to its holder's lease, its value naming the holder."""

UNAUTHENTICATED = 16
"""gRPC's Unauthenticated: the token expired (etcd's simple tokens live five minutes unused) or is unknown."""
UNAVAILABLE = 14
"""gRPC's Unavailable: this member has no raft leader, or timed out; another member may still serve."""
AUTH_NOT_ENABLED = "authentication is not enabled"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode("utf-8", "replace")


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd's range (or a failed create) returns it."""

    key: str
    value: str
    lease: int
    """The lease the key is bound to; 0 for none."""
    create_revision: int


def _key_value(data: dict[str, Any]) -> KeyValue:
    return KeyValue(unb64(data.get("key", "")), unb64(data.get("value", "")), int(data.get("lease", 0)),
                    int(data.get("create_revision", 0)))


class EtcdGateway:
    """The v3 JSON gateway of one etcd cluster's members, as one user."""

    def __init__(self, endpoints: Sequence[str], context: ssl.SSLContext, login: Login, password: str, *,
                 timeout: float = CONNECT_TIMEOUT, where: str = ""):
        if not endpoints:
            raise PermanentError(f"no etcd member to ask{f' ({where})' if where else ''}")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.context = context
        self.user = login.user or ""
        self._password = password
        self.timeout = timeout
        self.where = where or ", ".join(self.endpoints)
        self._token: str | None = None
        self._first = 0
        """The member that answered last: asked first next time."""

    # -- the calls the leader lock makes ---------------------------------------

    def grant_lease(self, ttl: int) -> tuple[int, int]:
        """A new lease: (its ID, the TTL etcd granted, which may be longer than asked)."""
        data = self.call("lease/grant", {"TTL": ttl})
        return int(data["ID"]), int(data.get("TTL", ttl))

    def keep_alive(self, lease: int) -> int:
        """Renew a lease: the seconds it now has to live, 0 when it has already expired (or was revoked)."""
        data = self.call("lease/keepalive", {"ID": str(lease)})
        result = data.get("result")
        if not isinstance(result, dict):  # not an answer about the lease: say so rather than call it expired
            raise TemporaryError(f"etcd ({self.where}) gave no keep-alive answer for lease {lease:x}: {data}")
        return int(result.get("TTL", 0))

    def revoke(self, lease: int) -> None:
        """End a lease now; the keys bound to it go with it. A lease already gone is fine."""
        try:
            self.call("lease/revoke", {"ID": str(lease)})
        except PermanentError as exc:
            if "lease not found" not in exc.message:
                raise

    def create(self, key: str, value: str, lease: int) -> KeyValue | None:
        """Put `key` bound to `lease` only if it does not exist (create_revision == 0), in one transaction.
        None when it was created; otherwise the key as it stands, holder and lease."""
        data = self.call("kv/txn", {
            "compare": [{"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": {"key": b64(key), "value": b64(value), "lease": str(lease)}}],
            "failure": [{"request_range": {"key": b64(key)}}],
        })
        if data.get("succeeded"):
            return None
        responses = data.get("responses") or [{}]
        kvs = responses[0].get("response_range", {}).get("kvs") or []
        # Gone between the compare and the range cannot happen in one transaction; an empty answer is a bug.
        if not kvs:
            raise TemporaryError(f"etcd ({self.where}) refused to create {key} but shows no such key")
        return _key_value(kvs[0])

    def get(self, key: str) -> KeyValue | None:
        data = self.call("kv/range", {"key": b64(key)})
        kvs = data.get("kvs") or []
        return _key_value(kvs[0]) if kvs else None

    # -- the etcd leader's place (the members reconciler) ---------------------

    def leader(self) -> EtcdLeader:
        """Which member leads etcd's raft now, by name (an etcd member's name is its fleet host's)."""
        leader = str(self.call("maintenance/status", {}).get("leader", ""))
        members = self.call("cluster/member/list", {}).get("members") or []
        names = {str(m.get("ID")): str(m.get("name", "")) for m in members}
        urls = {str(m.get("ID")): [str(u) for u in m.get("clientURLs") or []] for m in members}
        return EtcdLeader(names.get(leader, ""), {name: member_id for member_id, name in names.items()},
                          tuple(urls.get(leader, ())))

    # -- transport -------------------------------------------------------------

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One RPC: the members in turn until one answers. A TemporaryError when none does (each one's reason
        in it), a PermanentError when etcd refuses (credentials, permissions, a bad request)."""
        failures: list[str] = []
        count = len(self.endpoints)
        for step in range(count):
            index = (self._first + step) % count
            endpoint = self.endpoints[index]
            try:
                data = self._call_authenticated(endpoint, path, body)
            except _Unreachable as exc:
                failures.append(f"{endpoint}: {exc}")
                continue
            self._first = index
            return data
        raise TemporaryError(f"no etcd member answers {path} ({'; '.join(failures)})")

    def _call_authenticated(self, endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._token is None:
            self._token = self._authenticate(endpoint)
        try:
            return self._post(endpoint, path, body, self._token)
        except _Refused as exc:
            if exc.code != UNAUTHENTICATED:
                raise self._error(path, body, exc) from None
        self._token = self._authenticate(endpoint)  # expired: once more with a new token
        try:
            return self._post(endpoint, path, body, self._token)
        except _Refused as exc:
            raise self._error(path, body, exc) from None

    def _authenticate(self, endpoint: str) -> str:
        """A token for the user; "" when the cluster has no authentication (then no header is sent)."""
        try:
            data = self._post(endpoint, "auth/authenticate", {"name": self.user, "password": self._password}, "")
        except _Refused as exc:
            if AUTH_NOT_ENABLED in exc.message:
                return ""
            raise PermanentError(f"etcd ({self.where}) refused user {self.user}: {exc.message}",
                                 action="authenticate") from None
        return str(data.get("token", ""))

    def _error(self, path: str, body: dict[str, Any], exc: _Refused) -> ReconcileError:
        compare = body.get("compare") or [{}]
        key = body.get("key", compare[0].get("key"))  # a transaction names its key in its comparison
        what = f"{path} {unb64(key)}" if isinstance(key, str) else path
        if exc.status == 403 or "permission denied" in exc.message:
            return PermanentError(f"etcd ({self.where}) denies user {self.user} {what}: {exc.message}")
        return PermanentError(f"etcd ({self.where}) refused {what}: {exc.message}")

    def _post(self, endpoint: str, path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        request = urllib.request.Request(f"{endpoint}/v3/{path}", json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                status, data = response.status, _decode(response.read())
        except urllib.error.HTTPError as exc:
            status, data = exc.code, _decode(exc.read())
            data.setdefault("error", f"HTTP {exc.code}")
        except (urllib.error.URLError, OSError) as exc:
            raise _Unreachable(str(getattr(exc, "reason", exc))) from None
        error = data.get("error")
        if not error:
            return data
        # A streaming call (lease/keepalive) reports its error inside a 200 answer: {"error": {"grpc_code": ...}}.
        detail = error if isinstance(error, dict) else data
        message = str(detail.get("message") or error)
        code = detail.get("grpc_code", detail.get("code"))
        if status == 503 or code == UNAVAILABLE:
            raise _Unreachable(message)
        raise _Refused(status, code if isinstance(code, int) else None, message)


@dataclass(frozen=True)
class EtcdLeader:
    """etcd's raft leader: its member name, every member's ID by name, and the leader's client URLs."""

    name: str
    ids: dict[str, str]
    urls: tuple[str, ...]


def move_leader(cluster: PostgresCluster, access: FleetAccess, leader_urls: Sequence[str], target_id: str) -> None:
    """Hand etcd's raft leadership to member `target_id` (MoveLeader, asked of the leader itself). etcd 3.4 lets
    only its root user do this, so this one call goes as root (from the fleet's secrets, which the operator
    holds anyway); no other call of the operator's does."""
    gateway = EtcdGateway(leader_urls, https_context(cluster, access.ca_file(cluster)), ETCD_ROOT,
                          access.password(ETCD_ROOT), where=f"etcd of {cluster.name}")
    try:
        gateway.call("maintenance/transfer-leadership", {"targetID": target_id})
    except PermanentError as exc:
        if "not leader" in exc.message:  # it moved since the cycle looked: the next cycle looks again
            raise TemporaryError(exc.message, cluster=cluster.name, action="move etcd's leader") from None
        raise


class _Unreachable(Exception):
    """This member did not answer, or cannot serve now: the next one is asked."""


class _Refused(Exception):
    """etcd answered with an error."""

    def __init__(self, status: int, code: int | None, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        return {"error": raw.decode("utf-8", "replace").strip()[:200]}
    return data if isinstance(data, dict) else {}


def client_endpoints(cluster: PostgresCluster, access: FleetAccess) -> list[str]:
    """The client URLs of the cluster's etcd members the inventory knows, in the spec's order."""
    port = cluster.patroni.etcd.client_port
    return [f"https://{access.addresses[h.name]}:{port}" for h in cluster.etcd_hosts() if h.name in access.addresses]


def operator_gateway(cluster: PostgresCluster, access: FleetAccess) -> EtcdGateway:
    """The operator's way into a Patroni cluster's etcd: its user, the fleet CA (as for Patroni's REST API)."""
    endpoints = client_endpoints(cluster, access)
    if not endpoints:
        names = ", ".join(h.name for h in cluster.etcd_hosts())
        raise PermanentError(f"none of the etcd members of {cluster.name} ({names}) is in the inventory",
                             cluster=cluster.name)
    return EtcdGateway(endpoints, https_context(cluster, access.ca_file(cluster)), ETCD_OPERATOR,
                       access.password(ETCD_OPERATOR), where=f"etcd of {cluster.name}")
