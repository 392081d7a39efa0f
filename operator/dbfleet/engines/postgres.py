"""PostgreSQL adapter: connections to each member, the current primary, and where Debian puts things.

The operator connects as the `postgres` superuser (engines.credentials) with
the TLS settings of engines.tls to each host's private address. The current
primary is whichever member is not in recovery, so a switchover is followed;
with `ha: patroni` the roles, states, lag and timeline come from Patroni's
REST API (engines.patroni) instead, and the servers are asked only when no
member's API answers.
Driver errors become TemporaryErrors (retry later) or PermanentErrors (report)
naming the host; the password never appears in one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from dbfleet.engines.access import CONNECT_TIMEOUT, FleetAccess
from dbfleet.engines.base import EngineSession, Member, Topology
from dbfleet.engines.credentials import POSTGRES_SUPERUSER
from dbfleet.engines.etcd import EtcdGateway, operator_gateway
from dbfleet.engines.patroni import PatroniApi, PatroniState, format_lsn, stale_ready
from dbfleet.engines.tls import postgres_tls
from dbfleet.errors import PermanentError, ReconcileError, TemporaryError
from dbfleet.spec import PostgresCluster

log = logging.getLogger(__name__)

APPLICATION_NAME = "dbfleet-operator"
SESSION_OPTIONS = "-c lock_timeout=10s -c statement_timeout=120s"
TEMPORARY_SQLSTATES = {
    "25006",  # read_only_sql_transaction: the primary moved under us
    "55P03",  # lock_not_available: lock_timeout
    "57014",  # query_canceled: statement_timeout
    "40001", "40P01",  # serialization failure, deadlock
}

MEMBER_SQL = ("SELECT pg_is_in_recovery() AS recovery, "
              "ARRAY(SELECT application_name FROM pg_stat_replication) AS standbys")
"""A member's role, and the standbys streaming from it (read from the primary's row): one statement a member."""
ADVICE_LANE = "advice"
"""The connection the index advice runs on: its rolled-back transaction and DEALLOCATE ALL would make psycopg
forget the statements prepared on the default one every cycle."""
PREPARE_WHEN_ASKED = 2**31 - 1
"""psycopg's prepare_threshold: no statement is prepared for its count of runs, only where a caller asks
(`PostgresSession.run(..., prepare=True)`: the same catalog reads every cycle, whose planning cost as much server
CPU as their execution). None would refuse even those."""
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
              "tcp_user_timeout": 10000}
"""A server that vanished (a killed primary) is noticed in about 10 s, not the kernel's minutes: the leader
lock's connection, kept between cycles, is the one that matters."""

PERMANENT_CONNECT_SQLSTATES = {"3D000", "28P01", "28000"}  # no such database, bad password, rejected by pg_hba
PERMANENT_CONNECT_MESSAGES = (
    "does not exist", "password authentication failed", "no pg_hba.conf entry",
    # Not the fleet's server, or not one that authenticates as the fleet's do: retrying will not change that.
    "certificate verify failed", "authentication method requirement", "root certificate file",
    "server certificate for",
)

ARCHIVER_FAILING = """SELECT last_failed_wal,
       last_failed_time > coalesce(last_archived_time, '-infinity') AS failing
  FROM pg_stat_archiver WHERE last_failed_time IS NOT NULL"""
"""The archiver's latest attempt failed (PostgreSQL retries the same segment until it succeeds)."""
QUEUED_SEGMENTS = """SELECT left(name, -6) AS wal FROM pg_ls_archive_statusdir()
 WHERE name LIKE '%.ready' ORDER BY name"""
"""The segments waiting for archive_command (their archive_status/*.ready files)."""

Query = str | bytes | sql.SQL | sql.Composed
"""A statement: a constant string, or one composed with psycopg.sql from identifiers and literals."""


@dataclass(frozen=True)
class PgPaths:
    """Where Debian's packages put one PostgreSQL version's cluster `main` (the roles use the same layout)."""

    version: str

    @property
    def bin_dir(self) -> str:
        return f"/usr/lib/postgresql/{self.version}/bin"

    @property
    def data_dir(self) -> str:
        return f"/var/lib/postgresql/{self.version}/main"

    @property
    def service(self) -> str:
        return f"postgresql@{self.version}-main"


def pg_paths(cluster: PostgresCluster) -> PgPaths:
    return PgPaths(str(cluster.version))


def patroni_members(hosts: list[str], state: PatroniState) -> list[Member]:
    """The spec's hosts as Patroni sees them: the leader is primary, the others replicas; one Patroni does not
    list is down (Patroni not running there, or its member key expired)."""
    found = {m.name: m for m in state.members}
    members = []
    for host in hosts:
        m = found.get(host)
        if m is None:
            members.append(Member(host, "unknown", False, "not in Patroni's member list (Patroni is not running)"))
            continue
        role = "primary" if m.role == "leader" else "replica"
        lag = f", {m.lag} bytes behind" if m.lag else ""
        members.append(Member(host, role, m.up, f"patroni {m.role}, {m.state}, timeline {m.timeline}{lag}"))
    return members


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def classify(exc: psycopg.Error, host: str, what: str) -> ReconcileError:
    """A driver error as a TemporaryError (retry later) or a PermanentError (report)."""
    state = getattr(exc, "sqlstate", None) or ""
    message = f"{what}: {_first_line(exc)}"
    if state in PERMANENT_CONNECT_SQLSTATES or any(p in message for p in PERMANENT_CONNECT_MESSAGES):
        return PermanentError(message, host=host)  # retrying will not create the database or fix the password
    if isinstance(exc, psycopg.OperationalError) or state in TEMPORARY_SQLSTATES:
        return TemporaryError(message, host=host)
    return PermanentError(message, host=host)


def connect(cluster: PostgresCluster, access: FleetAccess, host: str, dbname: str,
            application_name: str = APPLICATION_NAME) -> psycopg.Connection[Any]:
    """An autocommit superuser connection to one member; the password never appears in errors or logs."""
    params: dict[str, Any] = {
        "host": access.address(host), "port": cluster.port, "dbname": dbname, "user": POSTGRES_SUPERUSER.user,
        "password": access.password(POSTGRES_SUPERUSER), "connect_timeout": CONNECT_TIMEOUT,
        "application_name": application_name, "options": SESSION_OPTIONS, **KEEPALIVES,
        **postgres_tls(cluster, access.ca_file(cluster))}
    try:
        return psycopg.connect(autocommit=True, prepare_threshold=PREPARE_WHEN_ASKED, **params)
    except psycopg.Error as exc:
        raise classify(exc, host, f"connect to database {dbname}") from None


class PostgresSession(EngineSession[PostgresCluster]):
    engine = "postgres"

    def __init__(self, cluster: PostgresCluster, access: FleetAccess):
        super().__init__(cluster, access)
        self._conns: dict[tuple[str, str, str], psycopg.Connection[Any]] = {}
        """(host, database, lane) -> connection."""
        self._patroni: PatroniApi | None = None
        self._etcd: EtcdGateway | None = None

    def connection(self, host: str, dbname: str, lane: str = "") -> psycopg.Connection[Any]:
        """This session's connection to one database on one member; a `lane` (say, ADVICE_LANE) is a connection
        of its own beside the default one."""
        conn = self._conns.get((host, dbname, lane))
        if conn is None or conn.closed:
            conn = connect(self.cluster, self.access, host, dbname)
            self.connections += 1
            self._conns[(host, dbname, lane)] = conn
        return conn

    def run(self, host: str, dbname: str, query: Query, params: Any = None, *,
            prepare: bool = False, lane: str = "") -> list[dict[str, Any]]:
        """One statement on one member; driver errors become Temporary or Permanent errors naming the host.

        `prepare`: a named prepared statement on this connection, planned once and kept, for the catalog reads
        every cycle repeats word for word. psycopg forgets them all when a transaction block on the connection
        rolls back, or a DROP, ALTER or DEALLOCATE ALL is run through it: work that does that every cycle (the
        index advice) has a lane of its own. A statement the server no longer knows drops the connection (a
        TemporaryError: the retry reconnects and prepares again)."""
        conn = self.connection(host, dbname, lane)
        self.queries += 1
        try:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(query, params, prepare=prepare or None)
                return cur.fetchall() if cur.description else []
        except psycopg.errors.InvalidSqlStatementName as exc:
            conn.close()
            self._conns.pop((host, dbname, lane), None)
            raise TemporaryError(f"database {dbname}: {_first_line(exc)}; reconnecting", host=host) from None
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                self._conns.pop((host, dbname, lane), None)
            raise classify(exc, host, f"database {dbname}") from None

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    @property
    def patroni(self) -> PatroniApi:
        """The cluster's Patroni REST API (ha: patroni)."""
        if self._patroni is None:
            self._patroni = PatroniApi(self.cluster, self.access)
        return self._patroni

    def read_topology(self) -> Topology:
        if self.cluster.ha == "patroni":
            try:
                return self._patroni_topology(self.patroni.cluster_state())
            except TemporaryError as exc:
                log.warning("%s: %s; asking the servers instead", self.cluster.name, exc.message)
                topology = self._sql_topology()
                topology.facts["patroni_error"] = exc.message
                return topology
        return self._sql_topology()

    def _patroni_topology(self, state: PatroniState) -> Topology:
        """Members as Patroni reports them; a spec host Patroni does not list is down."""
        self.queries += 1
        members = patroni_members(self.cluster.host_names(), state)
        leader = state.leader
        primary = leader.name if leader is not None and leader.up and leader.name in self.cluster.host_names() \
            else None
        standbys = sorted(m.name.replace("-", "_") for m in state.members if m.role != "leader" and m.up)
        facts: dict[str, Any] = {"standbys": standbys, "patroni": {
            "summary": state.summary(), "leader": leader.name if leader else None, "timeline": state.timeline,
            "paused": state.paused, "source": state.source,
            "members": {m.name: {"role": m.role, "state": m.state, "lag": m.lag, "timeline": m.timeline,
                                 "pending_restart": m.pending_restart,
                                 **({"replayed": format_lsn(m.replayed)} if m.replayed is not None else {}),
                                 **({"diverged_at": format_lsn(m.diverged_at)} if m.diverged_at is not None else {})}
                        for m in state.members}}}
        if primary is not None:
            archiver = self._stuck_archiver(primary, state)
            if archiver:
                facts["patroni"]["archiver"] = archiver
            facts["patroni"]["etcd"] = self._etcd_leader()
        return Topology(self.cluster.name, self.engine, primary, tuple(members), facts)

    def _etcd_leader(self) -> dict[str, Any]:
        """Where etcd's raft leader is (the members reconciler keeps it off the PostgreSQL leader's host); empty
        when etcd does not answer, which the leader lock and Patroni report in their own ways."""
        try:
            if self._etcd is None:  # kept with the session: a watching operator authenticates once, not per cycle
                self._etcd = operator_gateway(self.cluster, self.access)
            leader = self._etcd.leader()
        except ReconcileError as exc:
            log.warning("%s: cannot read etcd's leader: %s", self.cluster.name, exc.message)
            return {}
        self.queries += 1
        return {"leader": leader.name, "ids": leader.ids, "urls": list(leader.urls)}

    def _stuck_archiver(self, leader: str, state: PatroniState) -> dict[str, Any]:
        """When the leader's archiver is failing: the segment it fails on, and which queued segments lie off the
        leader's timeline history (README: Patroni, "WAL archiving after a rewind"). Empty while archiving works: a
        healthy cycle costs one query."""
        try:
            rows = self.run(leader, "postgres", ARCHIVER_FAILING, prepare=True)
            if not rows or not rows[0]["failing"]:
                return {}
            queued = [r["wal"] for r in self.run(leader, "postgres", QUEUED_SEGMENTS)]
        except ReconcileError as exc:
            log.warning("%s: cannot read %s's archiver: %s", self.cluster.name, leader, exc.message)
            return {}
        history = state.history or self.patroni.history(leader) or ()
        return {"failing_wal": rows[0]["last_failed_wal"], "queued": len(queued),
                "off_history": stale_ready(queued, history)}

    def _sql_topology(self) -> Topology:
        members = []
        standbys: dict[str, list[str]] = {}
        for host in self.cluster.host_names():
            try:
                row = self.run(host, "postgres", MEMBER_SQL, prepare=True)[0]
                members.append(Member(host, "replica" if row["recovery"] else "primary", True))
                standbys[host] = list(row["standbys"])
            except ReconcileError as exc:
                members.append(Member(host, "unknown", False, exc.message))
        primaries = [m.host for m in members if m.role == "primary"]
        facts: dict[str, Any] = {}
        if len(primaries) == 1:
            facts["standbys"] = sorted(standbys[primaries[0]])
        return Topology(self.cluster.name, self.engine, primaries[0] if len(primaries) == 1 else None,
                        tuple(members), facts)

    def primary_connection(self, dbname: str = "postgres") -> tuple[str, psycopg.Connection[Any]]:
        """The primary and this session's connection to it."""
        host = self.primary()
        return host, self.connection(host, dbname)
