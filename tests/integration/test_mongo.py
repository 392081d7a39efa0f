"""Sharded MongoDB on the lab after the playbook, when a real server was supplied; skipped with one reason otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from mongo_support import client, require_server

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def mongo(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    require_server()  # before the lab: no converge is spent on a skip
    configured = request.getfixturevalue("configured")
    assert configured.has("mongo"), \
        f"a MongoDB source was supplied but the lab started none: {configured.state.skipped}"
    return configured, configured.fleet.of_engine("mongo")[0]


def test_every_member_is_primary_or_secondary(mongo: tuple[Any, Any]) -> None:
    lab, cluster = mongo
    for replset in [cluster.config_servers, *cluster.shards]:
        first = replset.hosts()[0].name
        status = client(lab, first, directConnection=True).admin.command("replSetGetStatus")
        assert status["set"] == replset.name
        states = {m["name"]: m["stateStr"] for m in status["members"]}
        assert set(states.values()) <= {"PRIMARY", "SECONDARY"} and "PRIMARY" in states.values(), states


def test_list_shards_shows_every_shard_and_collections_are_sharded_on_their_keys(mongo: tuple[Any, Any]) -> None:
    lab, cluster = mongo
    router = client(lab, cluster.mongos[0] if isinstance(cluster.mongos[0], str) else cluster.mongos[0].name)
    shards = {s["_id"] for s in router.admin.command("listShards")["shards"]}
    assert shards == {s.name for s in cluster.shards}
    for coll in cluster.sharded_collections:
        entry = router.config.collections.find_one({"_id": f"{coll.database}.{coll.collection}"})
        assert entry is not None, f"{coll.database}.{coll.collection} not sharded"
        assert dict(entry["key"]) == dict(coll.key), entry["key"]


def test_documents_through_mongos_spread_over_both_shards(mongo: tuple[Any, Any]) -> None:
    lab, cluster = mongo
    coll = cluster.sharded_collections[0]
    router = client(lab, cluster.mongos[0] if isinstance(cluster.mongos[0], str) else cluster.mongos[0].name)
    target = router[coll.database][coll.collection]
    field = next(iter(coll.key))
    target.insert_many([{field: i, "probe": True} for i in range(2000)])
    try:
        stats = router[coll.database].command("collStats", coll.collection)
        per_shard = {name: s["count"] for name, s in stats.get("shards", {}).items()}
        assert len([n for n in per_shard.values() if n > 0]) >= 2, per_shard
    finally:
        target.delete_many({"probe": True})


def test_unauthenticated_commands_are_refused(mongo: tuple[Any, Any]) -> None:
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure

    lab, cluster = mongo
    anonymous = MongoClient(lab.address(cluster.config_servers.hosts()[0].name), cluster.port, directConnection=True,
                            serverSelectionTimeoutMS=5000, tls=cluster.tls.enabled,
                            tlsCAFile=str(lab.inventory_path.parent / "pki" / "ca.crt")
                            if cluster.tls.enabled else None)
    with pytest.raises(OperationFailure, match="requires authentication"):
        anonymous.admin.command("listDatabases")


def test_keyfile_mode_and_not_running_as_root(mongo: tuple[Any, Any]) -> None:
    lab, cluster = mongo
    for h in cluster.all_hosts():
        host = lab.host(h.name)
        keyfile = host.file("/etc/mongodb/keyfile")
        assert keyfile.mode == 0o400 and keyfile.user == "mongodb", h.name
        processes = host.process.filter(comm="mongod") + host.process.filter(comm="mongos")
        assert processes and all(p.user == "mongodb" for p in processes), h.name


def test_second_converge_changes_nothing(mongo: tuple[Any, Any]) -> None:
    lab, _ = mongo
    result = lab.converge("mongo.yml")
    assert result.ok, result.output[-4000:]
    assert result.changed == {}, f"a second run changed {result.changed}"
