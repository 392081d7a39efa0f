"""How every dbfleet client reaches a server over TLS: one set of options per engine, from the cluster spec.

The operator's sessions, the backups and the leader lock all take their TLS
settings from here, so they cannot disagree. Servers are always verified:
against the spec's `tls.ca_cert`, or the fleet CA the pki role made beside
the inventory (`<inventory dir>/pki/ca.crt`). Every host certificate names
the host, its address, localhost and 127.0.0.1, so host names are checked too.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from dbfleet.errors import PermanentError
from dbfleet.spec import MongoCluster, PostgresCluster, RedisCluster

PKI_DIR = "pki"
"""The pki role's `pki_dir`, relative to the inventory's folder: the fleet CA is `ca.crt` in it."""

MONGO_HOST_CA = "/etc/mongodb/tls/ca.crt"
"""Where the mongo roles put the fleet CA on every MongoDB host (mongo_tls_dir/ca.crt)."""

POSTGRES_AUTH = "scram-sha-256"
"""The only way libpq may authenticate the operator (require_auth): a server that asks for a cleartext or
md5 password, like an impostor would, gets nothing."""


def fleet_ca(cluster: PostgresCluster | MongoCluster | RedisCluster, inventory: Path | None) -> Path | None:
    """The CA the cluster's server certificates are verified against, as the operator sees it. A
    PermanentError when TLS is on and the file is not there: the operator never connects unverified."""
    if cluster.tls.ca_cert:
        ca = Path(cluster.tls.ca_cert)
    elif inventory is None:
        return None
    else:
        ca = inventory.parent / PKI_DIR / "ca.crt"
    if cluster.tls.enabled and not ca.is_file():
        raise PermanentError(f"{cluster.name} has TLS, but the CA {ca} is not there: configure the cluster first "
                             "(the pki role makes it), or set tls.ca_cert", cluster=cluster.name)
    return ca


def _required(cluster: PostgresCluster | MongoCluster | RedisCluster, ca: Path | None) -> Path:
    if ca is None:
        raise PermanentError(f"{cluster.name} has TLS but no CA to verify its servers with: give tls.ca_cert, "
                             "or an inventory whose pki/ca.crt the playbooks made", cluster=cluster.name)
    return ca


def postgres_tls(cluster: PostgresCluster, ca: Path | None) -> dict[str, str]:
    """libpq connection parameters: the server verified (verify-full) and SCRAM required."""
    if not cluster.tls.enabled:
        return {"sslmode": "prefer", "require_auth": POSTGRES_AUTH}
    return {"sslmode": "verify-full", "sslrootcert": str(_required(cluster, ca)), "require_auth": POSTGRES_AUTH}


def mongo_client_tls(cluster: MongoCluster, ca: Path | None) -> dict[str, Any]:
    """pymongo keyword arguments: certificate and host name checked against the CA."""
    if not cluster.tls.enabled:
        return {}
    return {"tls": True, "tlsCAFile": str(_required(cluster, ca))}


def mongo_tool_args(cluster: MongoCluster) -> list[str]:
    """Options for mongodump and mongorestore run on a MongoDB host against 127.0.0.1.

    The server is checked against the CA the roles installed on the host;
    127.0.0.1 is in every host certificate, so the host name is checked too.
    """
    if not cluster.tls.enabled:
        return []
    return ["--tls", f"--tlsCAFile={MONGO_HOST_CA}"]


REDIS_HOST_CA = "/etc/dbfleet/redis-tls/ca.crt"
"""Where redis_common puts the fleet CA on every Redis and Sentinel host (redis_tls_dir/ca.crt)."""


def redis_client_tls(cluster: RedisCluster, ca: str | Path | None) -> dict[str, Any]:
    """redis-py keyword arguments for data nodes and Sentinels alike: TLS, the chain checked against `ca`
    and the host name (or address) against the certificate, which the pki role issues for the host's name,
    its address, localhost and 127.0.0.1."""
    if not cluster.tls.enabled:
        return {}
    checked = _required(cluster, None if ca is None else Path(ca))
    return {"ssl": True, "ssl_ca_certs": str(checked), "ssl_cert_reqs": "required", "ssl_check_hostname": True}


def redis_cli_tls_args(cluster: RedisCluster) -> list[str]:
    """Options for redis-cli run on a Redis host against its own server: TLS, the chain checked against the CA
    the roles installed there. (redis-cli checks the chain, not the name; the certificate names 127.0.0.1.)"""
    if not cluster.tls.enabled:
        return []
    return ["--tls", "--cacert", REDIS_HOST_CA]


def https_context(cluster: PostgresCluster, ca: Path | None) -> ssl.SSLContext:
    """TLS for the HTTPS APIs on a cluster's hosts (Patroni's REST API and etcd, always HTTPS): the certificate
    and the host name checked against the same CA as PostgreSQL's, whether or not the cluster's PostgreSQL uses
    TLS."""
    if ca is None:
        raise PermanentError(f"{cluster.name}: no CA to verify Patroni's REST API and etcd with: give "
                             "tls.ca_cert, or an inventory whose pki/ca.crt the playbooks made", cluster=cluster.name)
    if not ca.is_file():
        raise PermanentError(f"{cluster.name}: the CA {ca} to verify Patroni's REST API and etcd with is not there: "
                             "configure the cluster first (the pki role makes it), or set tls.ca_cert",
                             cluster=cluster.name)
    return ssl.create_default_context(cafile=str(ca))
