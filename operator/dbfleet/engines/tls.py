"""How every dbfleet client reaches a server over TLS: one set of options per engine, from the cluster spec.

The operator's sessions, the backups and the leader lock all take their TLS
settings from here, so they cannot disagree. With no `tls.ca_cert` the lab CA
is generated on the hosts and the operator does not hold it: the channel is
encrypted but the server is not verified (PostgreSQL's sslmode=require).
Redis, new with TLS, never connects unverified: its clients check the chain
and the name against the fleet CA the pki role keeps beside the inventory
(fleet_ca), or the spec's `tls.ca_cert`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dbfleet.errors import PermanentError
from dbfleet.spec import ClusterBase, MongoCluster, PostgresCluster, RedisCluster


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


CONTROLLER_PKI_DIR = "pki"
"""The pki role's CA directory on the controller, beside the inventory (pki_dir: {{ inventory_dir }}/pki)."""


def fleet_ca(cluster: ClusterBase, inventory: Path | None) -> Path:
    """The CA the operator checks a cluster's servers against: the spec's `tls.ca_cert`, else the one the pki
    role made beside the inventory. A PermanentError when neither is there: the operator never connects
    without checking the server."""
    if cluster.tls.ca_cert:
        ca = Path(cluster.tls.ca_cert)
    elif inventory is not None:
        ca = inventory.parent / CONTROLLER_PKI_DIR / "ca.crt"
    else:
        raise PermanentError("tls.enabled, but neither tls.ca_cert nor an inventory names the CA to check the "
                             "servers against", cluster=cluster.name)
    if not ca.is_file():
        raise PermanentError(f"tls.enabled, but the CA {ca} is not there: configure the cluster first (the pki "
                             "role makes it), or set tls.ca_cert", cluster=cluster.name)
    return ca


REDIS_HOST_CA = "/etc/dbfleet/redis-tls/ca.crt"
"""Where redis_common puts the fleet CA on every Redis and Sentinel host (redis_tls_dir/ca.crt)."""


def redis_client_tls(cluster: RedisCluster, ca_file: str | Path | None) -> dict[str, Any]:
    """redis-py keyword arguments for data nodes and Sentinels alike: TLS, the chain checked against `ca_file`
    and the host name (or address) against the certificate, which the pki role issues for the host's name,
    its address, localhost and 127.0.0.1."""
    if not cluster.tls.enabled:
        return {}
    if ca_file is None:
        raise PermanentError("tls.enabled, but no CA to check the servers against", cluster=cluster.name)
    return {"ssl": True, "ssl_ca_certs": str(ca_file), "ssl_cert_reqs": "required", "ssl_check_hostname": True}


def redis_cli_tls_args(cluster: RedisCluster) -> list[str]:
    """Options for redis-cli run on a Redis host against its own server: TLS, the chain checked against the CA
    the roles installed there. (redis-cli checks the chain, not the name; the certificate names 127.0.0.1.)"""
    if not cluster.tls.enabled:
        return []
    return ["--tls", "--cacert", REDIS_HOST_CA]
