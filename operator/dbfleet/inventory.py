"""The Ansible inventory for a fleet: the same groups whether hosts are lab containers or EC2 instances.

The lab writes it from container addresses; inventories/aws/ builds it from
Pulumi stack outputs. Both call build_inventory, so the playbooks see one shape.
Each cluster's validated spec is rendered into its group's vars as `cluster`,
which is how the roles read the spec without parsing YAML themselves.

Every string that comes from the spec is data to Ansible, never a template:
build_inventory marks it SpecText, hosts.yml carries it tagged `!unsafe`, and
the JSON an inventory script prints wraps it as `{"__ansible_unsafe": ...}`.
So `{{ lookup('pipe', ...) }}` in a parameter reaches postgresql.conf as text
and never runs. dbfleet's own connection variables stay plain strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dbfleet.spec import Fleet, MongoCluster, PostgresCluster, RedisCluster


class SpecText(str):
    """A string that came from the spec: written for Ansible as `!unsafe`, so it is never templated."""


def from_spec(value: Any) -> Any:
    """`value` (a model dump) with every string in it, at any depth, marked SpecText; keys stay plain, since
    Ansible does not template mapping keys."""
    if isinstance(value, str):
        return SpecText(value)
    if isinstance(value, dict):
        return {key: from_spec(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [from_spec(item) for item in value]
    return value


class _InventoryDumper(yaml.SafeDumper):
    """YAML for Ansible: a SpecText is written `!unsafe '...'`."""


_InventoryDumper.add_representer(
    SpecText, lambda dumper, value: dumper.represent_scalar("!unsafe", str(value), style="'"))


class InventoryLoader(yaml.SafeLoader):
    """Reads a hosts.yml dbfleet wrote: an `!unsafe` string comes back as a plain string."""


InventoryLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def inventory_yaml(inventory: dict[str, Any]) -> str:
    """The inventory as YAML for Ansible, spec strings tagged `!unsafe`."""
    return yaml.dump(inventory, Dumper=_InventoryDumper, sort_keys=False, width=4096)  # a value, one line


def inventory_json_value(value: Any) -> Any:
    """`value` for the JSON an inventory script prints: a SpecText becomes `{"__ansible_unsafe": text}`, the form
    Ansible's script inventory reads as not to be templated."""
    if isinstance(value, SpecText):
        return {"__ansible_unsafe": str(value)}
    if isinstance(value, dict):
        return {key: inventory_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [inventory_json_value(item) for item in value]
    return value


@dataclass(frozen=True)
class HostAccess:
    """How Ansible and the operator reach one host."""

    address: str
    """The private address the databases use to reach each other."""
    connection: dict[str, Any] = field(default_factory=dict)
    """Ansible connection vars: ansible_host, ansible_connection, ansible_user, ..."""


def cluster_group(name: str) -> str:
    """Ansible group name for a cluster: 'pg-main' -> 'cluster_pg_main'."""
    return "cluster_" + name.replace("-", "_")


def host_roles(fleet: Fleet) -> dict[str, tuple[str, list[str]]]:
    """Every host's cluster and the engine-role groups it belongs to."""
    roles: dict[str, tuple[str, list[str]]] = {}
    for c in fleet.clusters:
        if isinstance(c, PostgresCluster):
            for i, h in enumerate(c.all_hosts()):
                roles[h.name] = (c.name, ["postgres", "postgres_primary" if i == 0 else "postgres_replica"])
        elif isinstance(c, RedisCluster):
            data = [h.name for h in c.data_hosts()]
            for i, name in enumerate(data):
                roles[name] = (c.name, ["redis", "redis_primary" if i == 0 else "redis_replica"])
            for h in c.sentinel_hosts():
                cluster, groups = roles.get(h.name, (c.name, []))
                roles[h.name] = (cluster, groups + ["redis_sentinel"])
        elif isinstance(c, MongoCluster):
            for h in c.config_servers.hosts():
                roles[h.name] = (c.name, ["mongo", "mongo_config"])
            for shard in c.shards:
                for h in shard.hosts():
                    roles[h.name] = (c.name, ["mongo", "mongo_shard", "mongo_shard_" + shard.name.replace("-", "_")])
            for h in c.mongos:
                name = h if isinstance(h, str) else h.name
                roles[name] = (c.name, ["mongo", "mongos"])
    roles[fleet.monitoring.host] = ("", ["monitoring"])
    return roles


def build_inventory(fleet: Fleet, access: dict[str, HostAccess], extra_vars: dict[str, Any] | None = None) -> dict[str, Any]:
    """Inventory as a YAML-ready dict. Hosts missing from `access` are left out (say, no Mongo image)."""
    children: dict[str, dict[str, Any]] = {}

    def add(group: str, host: str, hostvars: dict[str, Any]) -> None:
        children.setdefault(group, {"hosts": {}})["hosts"][host] = hostvars

    for host, (cluster, groups) in host_roles(fleet).items():
        if host not in access:
            continue
        hostvars = {**access[host].connection, "dbfleet_address": access[host].address}
        if cluster:
            hostvars["dbfleet_cluster"] = SpecText(cluster)
        for group in groups:
            add(group, host, {})
        if cluster:
            add(cluster_group(cluster), host, {})
        children.setdefault("_hostvars", {"hosts": {}})["hosts"][host] = hostvars

    hostvars_group = children.pop("_hostvars", {"hosts": {}})
    for c in fleet.clusters:
        group = cluster_group(c.name)
        if group in children:
            children[group]["vars"] = {"cluster": from_spec(c.model_dump(mode="json"))}
    all_vars: dict[str, Any] = {
        "dbfleet_fleet": from_spec(fleet.fleet.model_dump(mode="json")),
        "dbfleet_monitoring": from_spec(fleet.monitoring.model_dump(mode="json")),
        "dbfleet_addresses": {h: a.address for h, a in access.items()},
        **(extra_vars or {}),
    }
    return {"all": {"vars": all_vars, "hosts": hostvars_group["hosts"], "children": children}}


def write_inventory(inventory: dict[str, Any], directory: Path) -> Path:
    """Write hosts.yml into `directory`, only when its content changed."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hosts.yml"
    text = "# Written by dbfleet from the fleet spec; do not edit.\n" + inventory_yaml(inventory)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def load_inventory(path: Path) -> dict[str, Any]:
    """A hosts.yml written by write_inventory, `!unsafe` strings read as plain strings."""
    return yaml.load(path.read_text(), Loader=InventoryLoader) or {}


def read_inventory_hosts(path: Path) -> dict[str, dict[str, Any]]:
    """Host vars by host name from a hosts.yml written by write_inventory."""
    data = load_inventory(path)
    return dict(data["all"].get("hosts") or {})
