"""MongoDB play without a server: topology filters, the sharding module's key logic, and syntax with Mongo hosts."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from dbfleet.inventory import HostAccess, build_inventory, host_roles
from dbfleet.inventory_format import inventory_yaml
from dbfleet.role_inputs import mongo_inputs
from dbfleet.spec import MongoCluster, load_fleet, parse_fleet

REPO = Path(__file__).resolve().parents[2]


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


topology = load(REPO / "playbooks/filter_plugins/dbfleet_mongo.py")
sharding = load(REPO / "playbooks/roles/mongos/library/mongodb_sharded_collection.py")


@pytest.fixture(scope="module")
def mongo() -> dict:
    """The MongoDB roles' inputs, as the inventory maps them from the example spec."""
    cluster = load_fleet(REPO / "fleet.example.yaml").cluster("mongo-main")
    assert isinstance(cluster, MongoCluster)
    return mongo_inputs(cluster)


ADDRESSES = {"mongo-cfg-1": "10.0.0.1", "mongo-a-1": "10.0.0.2", "mongo-b-1": "10.0.0.3", "mongos-1": "10.0.0.4"}


def part(mongo: dict, host: str) -> dict:
    return topology.mongo_topology(mongo["mongo_common_topology"], host, ADDRESSES, mongo["mongo_common_port"])


def test_each_host_knows_its_part_and_replica_set(mongo: dict) -> None:
    cfg = part(mongo, "mongo-cfg-1")
    assert (cfg["role"], cfg["replset"], cfg["members"]) == ("configsvr", "cfg", ["10.0.0.1:27017"])
    shard = part(mongo, "mongo-b-1")
    assert (shard["role"], shard["replset"], shard["first_member"]) == ("shardsvr", "shard-b", "mongo-b-1")
    router = part(mongo, "mongos-1")
    assert router["role"] == "mongos" and router["replset"] is None
    assert router["config_db"] == "cfg/10.0.0.1:27017"
    assert router["shards"] == [{"name": "shard-a", "connection": "shard-a/10.0.0.2:27017"},
                                {"name": "shard-b", "connection": "shard-b/10.0.0.3:27017"}]


def test_a_host_outside_the_cluster_is_an_error(mongo: dict) -> None:
    with pytest.raises(ValueError, match=r"pg-1 is not a member of this MongoDB cluster \(config servers cfg\)"):
        part(mongo, "pg-1")


def test_zone_ranges_come_from_the_sharded_collections() -> None:
    zones = [{"name": "eu", "shards": ["shard-a"]}]
    collections = [{"database": "app", "collection": "users", "key": {"region": 1},
                    "zones": {"eu": [{"region": "eu"}, {"region": "eu~"}]}}]
    assert topology.mongo_zone_ranges(zones, collections) == [
        {"name": "eu", "shards": ["shard-a"],
         "ranges": [{"namespace": "app.users", "min": {"region": "eu"}, "max": {"region": "eu~"}}]}]
    collections[0]["zones"]["eu"] = [{"region": "eu"}]
    with pytest.raises(ValueError, match=r"zone eu needs \[min, max\]"):
        topology.mongo_zone_ranges(zones, collections)


def test_shard_key_comparison_tells_hashed_from_ranged() -> None:
    assert sharding.normalise({"user_id": "hashed"}) == [("user_id", "hashed")]
    assert sharding.normalise({"a": 1, "b": 1.0}) == [("a", 1), ("b", 1)]
    assert sharding.normalise({"user_id": 1}) != sharding.normalise({"user_id": "hashed"})


def test_unknown_zone_shard_is_a_located_spec_error() -> None:
    text = (REPO / "fleet.example.yaml").read_text().replace(
        "    balancer_window:", "    zones: [{name: eu, shards: [shard-z]}]\n    balancer_window:")
    with pytest.raises(Exception, match=r"zones.eu: unknown shards \['shard-z'\]"):
        parse_fleet(text, "fleet.yaml")


def test_site_playbook_parses_with_mongo_hosts_present(tmp_path: Path) -> None:
    fleet = load_fleet(REPO / "fleet.example.yaml")
    access = {h: HostAccess(f"10.0.0.{i + 10}", {"ansible_connection": "local"})
              for i, h in enumerate(host_roles(fleet))}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(inventory_yaml(build_inventory(fleet, access, {"mongo_install_source": "present"})))
    result = subprocess.run(["ansible-playbook", "--syntax-check", "-i", str(inventory), "playbooks/site.yml"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    listed = subprocess.run(["ansible-playbook", "--list-hosts", "-i", str(inventory), "playbooks/mongo.yml"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    for host in ("mongo-cfg-1", "mongo-a-1", "mongo-b-1", "mongos-1"):
        assert host in listed.stdout


MONGO_HOST_CA = "{{ mongo_tls_dir ~ '/ca.crt' if mongo_common_tls_enabled else omit }}"
"""The CA the mongo roles' own connections trust: the fleet CA mongo_common installs (engines.tls.MONGO_HOST_CA)."""


def _module_tasks(node: object) -> list[dict]:
    """Every task dict in a tasks file, blocks included."""
    if isinstance(node, list):
        return [task for item in node for task in _module_tasks(item)]
    if isinstance(node, dict):
        if "block" in node:
            return [task for key in ("block", "rescue", "always") for task in _module_tasks(node.get(key, []))]
        return [node]
    return []


def test_every_mongo_role_connection_checks_the_certificate_and_the_name() -> None:
    """Issue 17: MongoDB connections did not check certificates. The roles' community.mongodb tasks and the
    sharding module talk TLS whenever the cluster does, against the fleet CA on the host, to 127.0.0.1 (a name
    every host certificate carries), and never turn verification off (ssl_cert_reqs defaults to CERT_REQUIRED,
    which pymongo's hostname check goes with)."""
    checked = []
    for path in sorted((REPO / "playbooks/roles").glob("mongo*/tasks/*.yml")):
        for task in _module_tasks(yaml.safe_load(path.read_text()) or []):
            module = next((k for k in task if k.startswith("community.mongodb.") or k == "mongodb_sharded_collection"),
                          None)
            if module is None:
                continue
            where, args = f"{path.parts[-3]}/{path.name}: {task.get('name')}", task[module]
            assert args.get("login_host", "127.0.0.1") == "127.0.0.1", where
            if module == "mongodb_sharded_collection":
                assert (args["tls"], args["tls_ca_file"]) == ("{{ mongo_common_tls_enabled }}", MONGO_HOST_CA), where
            else:
                assert (args["ssl"], args["ssl_ca_certs"]) == ("{{ mongo_common_tls_enabled }}", MONGO_HOST_CA), where
            text = yaml.safe_dump(args)
            assert "ssl_cert_reqs" not in text and "Invalid" not in text and "Insecure" not in text, where
            checked.append(where)
    assert len(checked) >= 8, checked  # mongod's replica set and users, mongos' shards, users, zones, balancer
