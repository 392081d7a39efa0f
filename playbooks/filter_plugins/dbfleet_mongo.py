"""Ansible filters: a MongoDB cluster's topology from the spec, as the roles need it.

Pure functions over the `cluster` variable (the validated spec the inventory
carries), unit-tested in tests/unit/test_mongo_topology.py.
"""

from __future__ import annotations

from typing import Any


def _name(member: Any) -> str:
    return member if isinstance(member, str) else member["name"]


def _seeds(replset: dict[str, Any], addresses: dict[str, str], port: int) -> list[str]:
    return [f"{addresses.get(_name(m), _name(m))}:{port}" for m in replset["members"]]


def mongo_topology(cluster: dict[str, Any], host: str, addresses: dict[str, str]) -> dict[str, Any]:
    """This host's part in the cluster, its replica set's members, the config string and the shards."""
    port = int(cluster["port"])
    config = cluster["config_servers"]
    role, replset = "", None
    if host in [_name(m) for m in config["members"]]:
        role, replset = "configsvr", config
    for shard in cluster["shards"]:
        if host in [_name(m) for m in shard["members"]]:
            role, replset = "shardsvr", shard
    if host in [_name(m) for m in cluster["mongos"]]:
        role = "mongos"
    if not role:
        raise ValueError(f"{host} is not a member of MongoDB cluster {cluster['name']}")
    return {
        "role": role,
        "replset": replset["name"] if replset else None,
        "members": _seeds(replset, addresses, port) if replset else [],
        "first_member": _name(replset["members"][0]) if replset else None,
        "config_db": f"{config['name']}/" + ",".join(_seeds(config, addresses, port)),
        "shards": [{"name": s["name"], "connection": f"{s['name']}/" + ",".join(_seeds(s, addresses, port))}
                   for s in cluster["shards"]],
    }


def mongo_zone_ranges(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per zone: its shards and the [min, max] ranges the sharded collections give it."""
    zones = []
    for zone in cluster.get("zones", []):
        ranges = []
        for coll in cluster.get("sharded_collections", []):
            for bounds in [coll.get("zones", {}).get(zone["name"])] if zone["name"] in coll.get("zones", {}) else []:
                if len(bounds) != 2:
                    raise ValueError(f"sharded_collections {coll['database']}.{coll['collection']}: zone "
                                     f"{zone['name']} needs [min, max], got {bounds!r}")
                ranges.append({"namespace": f"{coll['database']}.{coll['collection']}", "min": bounds[0],
                               "max": bounds[1]})
        zones.append({"name": zone["name"], "shards": zone["shards"], "ranges": ranges})
    return zones


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"dbfleet_mongo_topology": mongo_topology, "dbfleet_mongo_zone_ranges": mongo_zone_ranges}
