"""Patroni (ha: patroni): its dynamic configuration as the spec decides it, and its REST API.

The roles put `dynamic_config` into Patroni's DCS (the patroni role lays the
PostgreSQL parameters on top); the operator reads each member's role, state,
lag and timeline from `GET /cluster`, and asks for a switchover with
`POST /switchover`, the only call here that writes (basic auth as the REST
API user, over TLS). Reads need no password: Patroni only guards the calls
that change something.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dbfleet.engines.access import CONNECT_TIMEOUT, FleetAccess
from dbfleet.engines.credentials import PATRONI_REST
from dbfleet.engines.tls import https_context
from dbfleet.errors import PermanentError, TemporaryError
from dbfleet.spec import PostgresCluster

NAMESPACE = "/dbfleet/"
"""Patroni's namespace in etcd; the etcd role lets Patroni's user read and write only below it."""

RUNNING_STATES = ("running", "streaming")
"""Member states (GET /cluster) of a server that answers: the leader runs, a replica streams or runs."""


def dynamic_config(cluster: PostgresCluster) -> dict[str, Any]:
    """The spec's part of Patroni's dynamic configuration (the DCS `config` key), without parameters."""
    p, sync = cluster.patroni, cluster.synchronous
    return {
        "ttl": p.ttl, "loop_wait": p.loop_wait, "retry_timeout": p.retry_timeout,
        "maximum_lag_on_failover": p.maximum_lag_on_failover, "primary_start_timeout": p.primary_start_timeout,
        "synchronous_mode": sync.enabled, "synchronous_mode_strict": sync.enabled and sync.strict,
        "synchronous_node_count": sync.num_sync, "failsafe_mode": p.failsafe_mode,
        "postgresql": {"use_pg_rewind": True, "use_slots": True},
    }


@dataclass(frozen=True)
class PatroniMember:
    """One member as Patroni's GET /cluster reports it."""

    name: str
    role: str
    """'leader', 'sync_standby' or 'replica'."""
    state: str
    """'running', 'streaming', 'starting', 'stopped', 'crashed', 'creating replica', ..."""
    timeline: int | None = None
    lag: int | None = None
    """Bytes behind the leader (None on the leader, or when Patroni does not know)."""
    pending_restart: bool = False
    replayed: int | None = None
    """Where the member replayed to (GET /patroni), asked only of a member behind the leader's timeline."""
    diverged_at: int | None = None
    """The leader's fork point from the member's timeline, when the member replayed past it (see fork_point)."""

    @property
    def up(self) -> bool:
        return self.state in RUNNING_STATES


@dataclass(frozen=True)
class PatroniState:
    """The whole cluster as one member's REST API saw it."""

    members: tuple[PatroniMember, ...]
    source: str
    """The member whose API answered."""
    paused: bool = False
    raw: dict[str, Any] = field(default_factory=dict, compare=False)
    history: tuple[tuple[int, int], ...] = ()
    """The leader's timeline history as (parent timeline, switch point), read only when a member is behind."""

    @property
    def leader(self) -> PatroniMember | None:
        return next((m for m in self.members if m.role == "leader"), None)

    @property
    def timeline(self) -> int | None:
        leader = self.leader
        return leader.timeline if leader else None

    def summary(self) -> str:
        leader = self.leader
        if leader is None:
            return "patroni: no leader"
        paused = ", paused" if self.paused else ""
        return f"patroni: leader {leader.name} ({leader.state}), timeline {leader.timeline}{paused}"


def parse_lsn(text: str) -> int:
    """'0/28021EA0' as a byte position."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def parse_history(data: Any) -> tuple[tuple[int, int], ...]:
    """GET /history's lines ([timeline, switch point, reason, ...]) as (parent timeline, switch point)."""
    lines: list[tuple[int, int]] = []
    for line in data if isinstance(data, list) else []:
        if not isinstance(line, list) or len(line) < 2:
            continue
        lsn = line[1]
        lines.append((int(line[0]), lsn if isinstance(lsn, int) else parse_lsn(str(lsn))))
    return tuple(lines)


WAL_SEGMENT_BYTES = 16 * 1024 * 1024
"""PostgreSQL's default wal_segment_size, which dbfleet does not change."""
SEGMENT_NAME = re.compile(r"[0-9A-F]{24}")
"""A WAL segment file's name as PostgreSQL writes it: timeline, log and segment, 8 upper-case hex digits each."""


def off_history_segment(wal: str, history: Sequence[tuple[int, int]],
                        segment_bytes: int = WAL_SEGMENT_BYTES) -> bool:
    """Whether WAL segment file `wal` (24 hex digits: timeline, log, segment) lies on a timeline the leader's
    history left at or before the segment's end: WAL the current timeline never replays.

    A member that pg_rewind moved to a new timeline can keep such segments in pg_wal; promoted later, it queues
    them for archiving, and pgBackRest refuses each one that the archive holds with other bytes, which stops all
    archiving behind it (README: Patroni, "WAL archiving after a rewind"). `history` is (parent timeline, switch
    point) as parse_history gives it, oldest first."""
    if not SEGMENT_NAME.fullmatch(wal):
        return False
    timeline, log, seg = int(wal[:8], 16), int(wal[8:16], 16), int(wal[16:], 16)
    start = log * 0x1_0000_0000 + seg * segment_bytes
    for parent, switchpoint in history:
        if parent == timeline:
            # Wholly after the switch point, or holding it: the next timeline has its own file for that segment.
            return start + segment_bytes > switchpoint
    return False


def stale_ready(ready: Sequence[str], history: Sequence[tuple[int, int]]) -> list[str]:
    """The segments among `ready` (names queued for archiving, without `.ready`) that lie off `history`."""
    return sorted(wal for wal in ready if off_history_segment(wal, history))


def fork_point(timeline: int | None, replayed: int | None, history: Sequence[tuple[int, int]]) -> int | None:
    """Where the leader's history left `timeline`, if a member on it replayed past that point; None otherwise.

    Such a member holds WAL the leader never had and can follow no one until it is rewound. This is the rule of
    Patroni's own diverged-LSN check for a replica; Patroni 3.0.2 makes that check once, when the replica
    changes leader, so WAL of the old timeline restored from the archive afterwards goes unseen."""
    if timeline is None or replayed is None:
        return None
    for parent, switchpoint in history:
        if parent == timeline:
            return switchpoint if replayed > switchpoint else None
        if parent > timeline:  # the leader's history does not pass through the member's timeline
            return switchpoint
    return None


def parse_cluster(data: dict[str, Any], source: str) -> PatroniState:
    """GET /cluster's JSON as a PatroniState."""
    members = []
    for m in data.get("members", []):
        lag = m.get("lag")
        members.append(PatroniMember(str(m["name"]), str(m.get("role", "")), str(m.get("state", "")),
                                     int(m["timeline"]) if m.get("timeline") is not None else None,
                                     lag if isinstance(lag, int) else None, bool(m.get("pending_restart"))))
    return PatroniState(tuple(members), source, bool(data.get("pause")), data)


class PatroniApi:
    """Patroni's REST API on each member of one cluster, over TLS with the fleet CA."""

    def __init__(self, cluster: PostgresCluster, access: FleetAccess, timeout: float = CONNECT_TIMEOUT,
                 hosts: Sequence[str] | None = None):
        self.cluster = cluster
        self.access = access
        self.timeout = timeout
        self.hosts = list(hosts) if hosts is not None else cluster.host_names()
        """The members asked: the primary site's servers, or a standby site's (dr.standby)."""
        self.context: ssl.SSLContext = https_context(cluster, access.ca_file(cluster))

    def url(self, host: str, path: str) -> str:
        return f"https://{self.access.address(host)}:{self.cluster.patroni.rest_api_port}/{path.lstrip('/')}"

    def request(self, host: str, path: str, method: str = "GET", body: dict[str, Any] | None = None,
                timeout: float | None = None) -> tuple[int, Any]:
        """(status, decoded body) of one call; a TemporaryError naming the host when it does not answer."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if method != "GET":
            login = f"{PATRONI_REST.user}:{self.access.password(PATRONI_REST)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(login).decode()
        request = urllib.request.Request(self.url(host, path), data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout, context=self.context) as response:
                return response.status, _decode(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _decode(exc.read())
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TemporaryError(f"Patroni REST API {method} /{path.lstrip('/')}: {reason}", host=host,
                                 cluster=self.cluster.name) from None

    def cluster_state(self) -> PatroniState:
        """GET /cluster from the first member that answers."""
        failures = []
        for host in self.hosts:
            try:
                status, data = self.request(host, "cluster")
            except TemporaryError as exc:
                failures.append(f"{host}: {exc.message}")
                continue
            if status == 200 and isinstance(data, dict):
                return self.with_divergence(parse_cluster(data, host))
            failures.append(f"{host}: HTTP {status}")
        raise TemporaryError("no member's Patroni REST API answers (" + "; ".join(failures) + ")",
                             cluster=self.cluster.name, action="read Patroni state")

    def with_divergence(self, state: PatroniState) -> PatroniState:
        """The state with each member behind the leader's timeline checked against the leader's history.

        Asks GET /history of the leader and GET /patroni of those members only, so a healthy cycle costs no
        extra call; a member or leader that does not answer is left unchecked this cycle."""
        leader = state.leader
        if leader is None or leader.timeline is None:
            return state
        behind = {m.name for m in state.members
                  if m.role != "leader" and m.timeline is not None and m.timeline < leader.timeline}
        if not behind:
            return state
        history = self.history(leader.name)
        if history is None:
            return state
        members = []
        for m in state.members:
            if m.name in behind:
                replayed = self.replayed(m.name)
                m = replace(m, replayed=replayed, diverged_at=fork_point(m.timeline, replayed, history))
            members.append(m)
        return replace(state, members=tuple(members), history=history)

    def history(self, leader: str) -> tuple[tuple[int, int], ...] | None:
        """GET /history of the leader; None when it does not answer."""
        try:
            status, raw = self.request(leader, "history")
        except TemporaryError:
            return None
        return parse_history(raw) if status == 200 else ()

    def replayed(self, host: str) -> int | None:
        """GET /patroni's xlog.replayed_location of one member; None when it does not say."""
        try:
            status, data = self.request(host, "patroni")
        except TemporaryError:
            return None
        xlog = data.get("xlog") if status == 200 and isinstance(data, dict) else None
        value = xlog.get("replayed_location") if isinstance(xlog, dict) else None
        return value if isinstance(value, int) else None

    def dynamic_config(self, host: str) -> dict[str, Any]:
        """GET /config: the site's dynamic configuration, as one member reads it from the DCS."""
        status, data = self.request(host, "config")
        if status != 200 or not isinstance(data, dict):
            raise TemporaryError(f"GET /config: HTTP {status}", host=host, cluster=self.cluster.name)
        return data

    def patch_config(self, host: str, patch: dict[str, Any]) -> dict[str, Any]:
        """PATCH /config (as the REST API user): Patroni merges `patch` into the DCS configuration, a null value
        removing a key; every member applies it on its next loop."""
        status, data = self.request(host, "config", "PATCH", patch)
        if status == 200 and isinstance(data, dict):
            return data
        text = data if isinstance(data, str) else json.dumps(data)
        if status in (401, 403):
            raise PermanentError(f"Patroni refused the credentials for PATCH /config: {text}", host=host,
                                 cluster=self.cluster.name, action="patch config")
        raise TemporaryError(f"PATCH /config: HTTP {status}: {text}", host=host, cluster=self.cluster.name,
                             action="patch config")

    def member_wal(self, host: str) -> tuple[str | None, int | None]:
        """GET /patroni of one member: its role, what its PostgreSQL runs as ('primary' or 'master' when it accepts
        writes, 'standby_leader', 'replica'), and where its WAL ends: `xlog.location` of a
        server that accepts writes, the further of `received_location` and `replayed_location` of one in recovery;
        (None, None) when it does not answer."""
        try:
            status, data = self.request(host, "patroni")
        except TemporaryError:
            return None, None
        if status != 200 or not isinstance(data, dict):
            return None, None
        role = data.get("role")
        xlog = data.get("xlog")
        found = [v for k in ("location", "received_location", "replayed_location")
                 if isinstance(xlog, dict) and isinstance(v := xlog.get(k), int) and not isinstance(v, bool)]
        return (str(role) if role is not None else None), (max(found) if found else None)

    def reinitialize(self, host: str) -> None:
        """POST /reinitialize on one member (`force`: even while Patroni is busy with it): Patroni replaces its data
        directory from the leader, as `patronictl reinit` does."""
        status, data = self.request(host, "reinitialize", "POST", {"force": True}, timeout=30)
        if status != 200:
            raise TemporaryError(f"POST /reinitialize: HTTP {status}: {data}", cluster=self.cluster.name, host=host,
                                 action="reinit")

    def switchover(self, leader: str, candidate: str, timeout: float = 60) -> str:
        """POST /switchover to the leader's API; Patroni waits for the candidate to take over."""
        status, data = self.request(leader, "switchover", "POST", {"leader": leader, "candidate": candidate},
                                    timeout=timeout)
        text = data if isinstance(data, str) else json.dumps(data)
        if status == 200:
            return text
        if status in (401, 403):
            raise PermanentError(f"Patroni refused the credentials for a switchover: {text}", host=leader,
                                 cluster=self.cluster.name, action="switchover")
        if status in (412, 400):
            raise PermanentError(f"Patroni refused the switchover to {candidate}: {text}", host=leader,
                                 cluster=self.cluster.name, action="switchover")
        raise TemporaryError(f"switchover to {candidate}: HTTP {status}: {text}", host=leader,
                             cluster=self.cluster.name, action="switchover")


def _decode(raw: bytes) -> Any:
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()

