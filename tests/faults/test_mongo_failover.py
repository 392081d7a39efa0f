"""Kill one shard's primary while writing through mongos with w:majority and retryable writes.

Nothing acknowledged is lost.

Needs a real MongoDB (see README) and three-member shards, so it runs its own
small lab from a spec variant (config RS of 1, shard-a of 3, shard-b of 1, one
mongos) and removes it afterwards. Bounded: 30 s of writes, 60 s for an election.
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from dbfleet.lab import lifecycle
from dbfleet.lab.topology import container_name
from dbfleet.playbook import run_playbook
from dbfleet.secrets import load_secrets
from dbfleet.spec import parse_fleet
from mongo_support import require_server

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
LAB = "mongofault"


def variant() -> Any:
    data = yaml.safe_load((REPO / "fleet.example.yaml").read_text())
    mongo = copy.deepcopy(next(c for c in data["clusters"] if c["engine"] == "mongo"))
    mongo["shards"][0]["members"] = ["mongo-a-1", "mongo-a-2", "mongo-a-3"]
    data["clusters"] = [mongo]
    return parse_fleet(yaml.safe_dump(data), "mongo-failover variant")


def test_killing_a_shard_primary_loses_no_majority_write() -> None:
    require_server()
    from pymongo import MongoClient, WriteConcern
    from pymongo.errors import PyMongoError

    fleet = variant()
    state = lifecycle.up(fleet, LAB, REPO / "inventories", {"mongo", "monitor"})
    try:
        result = run_playbook("mongo.yml", state.inventory, None, echo=False)
        assert result.ok, result.output[-4000:]
        secrets = load_secrets(state.secrets)
        cluster = fleet.cluster("mongo-main")
        address = {h.name: h.address for h in state.hosts}
        ca = str(state.inventory.parent / "pki" / "ca.crt")
        tls = {"tls": True, "tlsCAFile": ca} if cluster.tls.enabled else {}
        auth = {"username": "dbfleet_admin", "password": secrets["mongo_admin_password"], "authSource": "admin"}
        router = MongoClient(address["mongos-1"], cluster.port, retryWrites=True, serverSelectionTimeoutMS=30000,
                             **auth, **tls)
        coll = router.app.get_collection("failover_probe", write_concern=WriteConcern("majority", wtimeout=20000))
        router.admin.command("shardCollection", "app.failover_probe", key={"_id": "hashed"})
        acked: list[int] = []
        errors: list[str] = []
        stop = threading.Event()

        def write() -> None:
            i = 0
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    coll.insert_one({"_id": i})
                    acked.append(i)
                except PyMongoError as exc:
                    errors.append(str(exc)[:120])
                i += 1
                time.sleep(0.01)

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(5)
        shard = MongoClient(address["mongo-a-1"], cluster.port, replicaSet="shard-a", **auth, **tls)
        primary = shard.admin.command("hello")["primary"].split(":")[0]
        victim = next(name for name, addr in address.items() if addr == primary)
        killed = time.monotonic()
        docker.from_env().containers.get(container_name(LAB, victim)).kill()
        elected = None
        while time.monotonic() - killed < 60:
            try:
                hello = shard.admin.command("hello")
                if hello.get("primary") and hello["primary"].split(":")[0] != primary:
                    elected = time.monotonic() - killed
                    break
            except PyMongoError:
                pass
            time.sleep(0.2)
        stop.set()
        writer.join(timeout=60)
        assert elected is not None, "no new shard-a primary within 60 s"
        stored = {d["_id"] for d in coll.find({}, {"_id": 1})}
        lost = [i for i in acked if i not in stored]
        print(f"\nshard-a election after killing {victim}: {elected:.1f}s; acknowledged {len(acked)}, "
              f"lost {len(lost)}, client errors {len(errors)}")
        assert lost == []
    finally:
        lifecycle.down(LAB, REPO / "inventories")
