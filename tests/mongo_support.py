"""What the MongoDB integration and fault tests share: the one skip reason, and clients."""

from __future__ import annotations

import os
from typing import Any

import pytest

NO_SERVER = ("no MongoDB server supplied (Debian and the reachable registries carry none): set "
             "DBFLEET_MONGO_IMAGE to a local image such as mongo:7.0 or DBFLEET_MONGO_TARBALL to the official "
             "Linux tarball; see README, 'MongoDB: supplying a server'")


def require_server() -> None:
    """Skip, with the one reason, when no MongoDB was supplied; never fake one."""
    if not (os.environ.get("DBFLEET_MONGO_IMAGE") or os.environ.get("DBFLEET_MONGO_TARBALL")):
        pytest.skip(NO_SERVER)


def client(lab: Any, host: str, **kwargs: Any) -> Any:
    """A pymongo client to one host as dbfleet_admin, over TLS with the lab's CA."""
    from pymongo import MongoClient

    cluster = lab.fleet.of_engine("mongo")[0]
    tls = {"tls": True, "tlsCAFile": str(lab.inventory_path.parent / "pki" / "ca.crt")} if cluster.tls.enabled else {}
    options = {"username": "dbfleet_admin", "password": lab.secrets["mongo_admin_password"], "authSource": "admin",
               "serverSelectionTimeoutMS": 5000, **tls, **kwargs}
    return MongoClient(lab.address(host), cluster.port, **options)
