"""How every dbfleet client reaches a server over TLS: one set of options per engine, from the cluster spec.

The operator's sessions, the backups and the leader lock all take their TLS
settings from here, so they cannot disagree. With no `tls.ca_cert` the lab CA
is generated on the hosts and the operator does not hold it: the channel is
encrypted but the server is not verified (PostgreSQL's sslmode=require).
"""

from __future__ import annotations

from typing import Any

from dbfleet.spec import MongoCluster, PostgresCluster


def postgres_tls(cluster: PostgresCluster) -> dict[str, str]:
    """libpq connection parameters: sslmode, and sslrootcert when the spec names a CA."""
    if not cluster.tls.enabled:
        return {"sslmode": "prefer"}
    if cluster.tls.ca_cert:
        return {"sslmode": "verify-full", "sslrootcert": cluster.tls.ca_cert}
    return {"sslmode": "require"}


def mongo_client_tls(cluster: MongoCluster) -> dict[str, Any]:
    """pymongo keyword arguments."""
    if not cluster.tls.enabled:
        return {}
    if cluster.tls.ca_cert:
        return {"tls": True, "tlsCAFile": cluster.tls.ca_cert}
    return {"tls": True, "tlsAllowInvalidCertificates": True}


MONGO_HOST_CA = "/etc/mongodb/tls/ca.crt"
"""Where the mongo roles put the fleet CA on every MongoDB host (mongo_tls_dir/ca.crt)."""


def mongo_tool_args(cluster: MongoCluster) -> list[str]:
    """Options for mongodump and mongorestore run on a MongoDB host against 127.0.0.1.

    The server's chain is checked against the CA the roles installed on the
    host; the host name is not, because the tool dials the loopback address.
    """
    if not cluster.tls.enabled:
        return []
    return ["--tls", f"--tlsCAFile={MONGO_HOST_CA}", "--tlsAllowInvalidHostnames"]
