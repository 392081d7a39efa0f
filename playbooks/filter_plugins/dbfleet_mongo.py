"""Ansible filters: a MongoDB cluster's topology from the spec, as the roles need it.

Pure functions over the MongoDB roles' inputs, which the inventory maps from
the validated spec (dbfleet.role_inputs): mongo_common_topology, mongos_zones
and mongos_sharded_collections. Unit-tested in tests/unit/test_mongo_playbook.py.
"""

from __future__ import annotations

from typing import Any


def _seeds(replset: dict[str, Any], addresses: dict[str, str], port: int) -> list[str]:
    return [f"{addresses.get(m, m)}:{port}" for m in replset["members"]]


def mongo_topology(topology: dict[str, Any], host: str, addresses: dict[str, str], port: int) -> dict[str, Any]:
    """This host's part in the cluster, its replica set's members, the config string and the shards.

    `topology` is mongo_common_topology: config_servers and shards ({name, members: [host]}) and mongos ([host])."""
    port = int(port)
    config = topology["config_servers"]
    role, replset = "", None
    if host in config["members"]:
        role, replset = "configsvr", config
    for shard in topology["shards"]:
        if host in shard["members"]:
            role, replset = "shardsvr", shard
    if host in topology["mongos"]:
        role = "mongos"
    if not role:
        raise ValueError(f"{host} is not a member of this MongoDB cluster (config servers {config['name']})")
    return {
        "role": role,
        "replset": replset["name"] if replset else None,
        "members": _seeds(replset, addresses, port) if replset else [],
        "first_member": replset["members"][0] if replset else None,
        "config_db": f"{config['name']}/" + ",".join(_seeds(config, addresses, port)),
        "shards": [{"name": s["name"], "connection": f"{s['name']}/" + ",".join(_seeds(s, addresses, port))}
                   for s in topology["shards"]],
    }


def mongo_zone_ranges(zones: list[dict[str, Any]], sharded_collections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per zone (mongos_zones): its shards and the [min, max] ranges the sharded collections
    (mongos_sharded_collections) give it."""
    found = []
    for zone in zones:
        ranges = []
        for coll in sharded_collections:
            for bounds in [coll.get("zones", {}).get(zone["name"])] if zone["name"] in coll.get("zones", {}) else []:
                if len(bounds) != 2:
                    raise ValueError(f"sharded_collections {coll['database']}.{coll['collection']}: zone "
                                     f"{zone['name']} needs [min, max], got {bounds!r}")
                ranges.append({"namespace": f"{coll['database']}.{coll['collection']}", "min": bounds[0],
                               "max": bounds[1]})
        found.append({"name": zone["name"], "shards": zone["shards"], "ranges": ranges})
    return found


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"dbfleet_mongo_topology": mongo_topology, "dbfleet_mongo_zone_ranges": mongo_zone_ranges}
