"""Where clients connect: the DSN of a cluster's read-write or read-only endpoint, without a password.

With `ha: patroni` the endpoints are HAProxy's ports on the spec's endpoint
hosts (the PostgreSQL hosts by default): read-write reaches the member whose
Patroni holds the leader lock, read-only the running replicas. libpq tries
the listed hosts in turn, so one HAProxy host down costs one connect attempt.
With `ha: manual` there is no proxy: the DSN lists the servers themselves and
lets libpq pick by `target_session_attrs`.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from dbfleet.engines.access import FleetAccess
from dbfleet.engines.tls import postgres_tls
from dbfleet.spec import PostgresCluster

CONNECT_TIMEOUT = 3
"""Seconds libpq waits for one host before it tries the next one of the DSN."""


def endpoint_dsn(cluster: PostgresCluster, access: FleetAccess, read_only: bool = False, user: str = "app",
                 dbname: str | None = None) -> str:
    """A postgresql:// URI for the cluster's endpoint; the password comes from the client's own store."""
    if cluster.ha == "patroni":
        port = cluster.endpoints.ro_port if read_only else cluster.endpoints.rw_port
        hosts = [h.name for h in cluster.endpoint_hosts()]
        attrs = None
    else:
        port = cluster.port
        hosts = cluster.host_names()
        attrs = "standby" if read_only else "read-write"
    netloc = ",".join(f"{access.address(h)}:{port}" for h in hosts)
    query = {**postgres_tls(cluster, access.ca_file(cluster)), "connect_timeout": str(CONNECT_TIMEOUT)}
    if attrs:
        query["target_session_attrs"] = attrs
    database = quote(dbname or cluster.databases[0], safe="")
    return f"postgresql://{quote(user, safe='')}@{netloc}/{database}?{urlencode(query)}"
