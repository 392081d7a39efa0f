"""How every dbfleet client reaches a server over TLS: one set of options per engine, from the cluster spec.

The operator's sessions, the backups and the leader lock all take their TLS
settings from here, so they cannot disagree. With no `tls.ca_cert` the lab CA
is generated on the hosts and the operator does not hold it: the channel is
encrypted but the server is not verified (PostgreSQL's sslmode=require).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from dbfleet.spec import MongoCluster, PostgresCluster

CONTROLLER_PKI = "pki"
"""The folder beside the inventory where the pki role keeps the fleet CA it made (roles/pki/defaults: pki_dir)."""


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


def controller_ca(inventory: Path | None) -> Path | None:
    """The fleet CA the pki role made on the controller beside the inventory, if it is there."""
    if inventory is None:
        return None
    path = inventory.parent / CONTROLLER_PKI / "ca.crt"
    return path if path.is_file() else None


def https_context(cluster: PostgresCluster, inventory: Path | None) -> ssl.SSLContext:
    """TLS for the HTTPS APIs on the hosts (Patroni's REST API): the spec's CA, else the CA the pki role made
    beside the inventory; with neither the channel is encrypted but the server is not verified, as with
    PostgreSQL's sslmode=require."""
    ca = cluster.tls.ca_cert or controller_ca(inventory)
    if ca:
        return ssl.create_default_context(cafile=str(ca))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
