"""Index policy on the lab's sharded MongoDB, through mongos. Needs a MongoDB server image or tarball.

MongoDB is not in Debian, so the lab only starts it when the user supplies one
(DBFLEET_MONGO_IMAGE or DBFLEET_MONGO_TARBALL); otherwise these tests skip.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from dbfleet.cli import main
from mongo_support import client as mongo_client

pytestmark = [
    pytest.mark.lab,
    pytest.mark.mongo_server,
    pytest.mark.skipif(not (os.environ.get("DBFLEET_MONGO_IMAGE") or os.environ.get("DBFLEET_MONGO_TARBALL")),
                       reason="no MongoDB server available: set DBFLEET_MONGO_IMAGE or DBFLEET_MONGO_TARBALL"),
]

CLUSTER = "mongo-main"
SPEC = Path(__file__).resolve().parents[2] / "fleet.example.yaml"


def dbfleet(lab: Any, *args: str) -> tuple[int, dict[str, Any]]:
    argv = ["--spec", str(SPEC), *args,
            "--json", "--cluster", CLUSTER, "--reconciler", "indexes", "--inventory", str(lab.inventory_path),
            "--secrets", str(lab.state.secrets)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def mongos(configured: Any) -> Iterator[MongoClient[Any]]:
    if not configured.has("mongo"):
        pytest.skip("no MongoDB hosts in this lab")
    cluster = configured.fleet.cluster(CLUSTER)
    router = cluster.mongos[0] if isinstance(cluster.mongos[0], str) else cluster.mongos[0].name
    # As the mongo roles' admin user, with the certificate checked against the lab's CA (mongo_support).
    client: MongoClient[Any] = mongo_client(configured, router, serverSelectionTimeoutMS=10000)
    yield client
    client.close()


def index_keys(client: MongoClient[Any], collection: str) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in client["app"][collection].list_indexes()}


def test_declared_indexes_are_created_through_mongos_and_a_second_reconcile_does_nothing(configured, mongos):
    code, first = dbfleet(configured, "reconcile", "--once")
    assert code == 0, first
    events, sessions = index_keys(mongos, "events"), index_keys(mongos, "sessions")
    assert list(events["events_user_ts"]["key"].items()) == [("user_id", 1), ("ts", -1)]
    assert sessions["sessions_ttl"]["expireAfterSeconds"] == 3600
    code, second = dbfleet(configured, "reconcile", "--once")
    assert code == 0 and not [a for a in second["actions"] if a["changes"]]


def test_a_same_named_index_with_another_key_is_a_conflict(configured, mongos):
    mongos["app"]["sessions"].drop_index("sessions_ttl")
    mongos["app"]["sessions"].create_index([("created_at", -1)], name="sessions_ttl")
    try:
        code, plan = dbfleet(configured, "plan")
        assert code == 0
        conflicts = [a for a in plan["actions"] if a["kind"] == "report-conflict"]
        assert [a["target"] for a in conflicts] == ["app/sessions.sessions_ttl"]
        assert not [a for a in plan["actions"] if a["changes"]]
    finally:
        mongos["app"]["sessions"].drop_index("sessions_ttl")
    assert dbfleet(configured, "reconcile", "--once")[0] == 0
    assert index_keys(mongos, "sessions")["sessions_ttl"]["expireAfterSeconds"] == 3600
