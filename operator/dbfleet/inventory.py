"""The Ansible inventory for a fleet: the same groups whether hosts are lab containers or EC2 instances.

The lab writes it from container addresses; inventories/aws/ builds it from
Pulumi stack outputs. Both call build_inventory, so the playbooks see one shape.
Each cluster's group vars are the inputs its hosts' roles declare, mapped from
the validated spec in one place (dbfleet.role_inputs), and the monitoring
group's are Prometheus's; no role reads the spec as a whole or parses YAML.
Every string from the spec is marked data for Ansible (dbfleet.inventory_format).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbfleet.addresses import check_address
from dbfleet.engines.base import AnyCluster
from dbfleet.engines.mongo import mongos_hosts
from dbfleet.inventory_format import SpecText, from_spec, inventory_yaml
from dbfleet.role_inputs import cluster_inputs, prometheus_inputs, standby_site_inputs
from dbfleet.spec import Fleet, MongoCluster, PostgresCluster, RedisCluster


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


STANDBY_GROUP = "patroni_standby"
"""The engine-role group of a standby site's hosts (dr.standby) with ha: patroni."""
MANUAL_STANDBY_GROUP = "postgres_standby"
"""The engine-role group of a standby site's hosts with ha: manual: hot standbys the postgres_server role builds,
streaming from the primary site (postgres_server_follow), never in postgres_primary or postgres_replica."""
STANDBY_GROUPS = (STANDBY_GROUP, MANUAL_STANDBY_GROUP)


def standby_group(name: str) -> str:
    """Ansible group name for a cluster's standby site: 'pg-main' -> 'cluster_pg_main_dr'. Its hosts keep the
    cluster's name (dbfleet_cluster: the stanza, the certificates) but form a site of their own: the roles find a
    host's fellow members in its site group (dbfleet_group), so the standby site runs its own etcd and Patroni."""
    return cluster_group(name) + "_dr"


def host_roles(fleet: Fleet) -> dict[str, tuple[str, list[str]]]:
    """Every host's cluster and the engine-role groups it belongs to."""
    roles: dict[str, tuple[str, list[str]]] = {}
    for c in fleet.clusters:
        if isinstance(c, PostgresCluster):
            for i, h in enumerate(c.all_hosts()):
                groups = ["postgres", "postgres_primary" if i == 0 else "postgres_replica"]
                roles[h.name] = (c.name, groups + (["patroni"] if c.ha == "patroni" else []))
            for group, hosts in (("etcd", c.etcd_hosts()), ("haproxy", c.endpoint_hosts())):
                for h in hosts:
                    cluster, groups = roles.get(h.name, (c.name, []))
                    roles[h.name] = (cluster, groups + [group])
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
            for name in mongos_hosts(c):
                roles[name] = (c.name, ["mongo", "mongos"])
    roles[fleet.monitoring.host] = ("", ["monitoring"])
    return roles


def standby_roles(fleet: Fleet) -> dict[str, tuple[str, list[str]]]:
    """Every standby site host's cluster and groups (dr.standby): a site of its own. With ha: patroni its first host
    is the standby leader at the start and the one etcd member; with ha: manual every host is a hot standby of the
    primary site (MANUAL_STANDBY_GROUP) until `dr promote` promotes the first. Apart from host_roles, which are the
    fleet region's machines (the stacks build a standby site in its own region)."""
    roles: dict[str, tuple[str, list[str]]] = {}
    for c in fleet.of_engine("postgres"):
        for i, h in enumerate(c.standby_hosts()):
            if c.ha == "manual":
                roles[h.name] = (c.name, ["postgres", MANUAL_STANDBY_GROUP])
                continue
            leads = ["postgres_primary", "etcd"] if i == 0 else ["postgres_replica"]
            roles[h.name] = (c.name, ["postgres", *leads, "patroni", STANDBY_GROUP])
    return roles


def inventory_roles(fleet: Fleet) -> dict[str, tuple[str, list[str]]]:
    """Every host the inventory can hold: the fleet region's (host_roles), then the standby sites'."""
    return {**host_roles(fleet), **standby_roles(fleet)}


def build_inventory(fleet: Fleet, access: dict[str, HostAccess],
                    extra_vars: dict[str, Any] | None = None) -> dict[str, Any]:
    """Inventory as a YAML-ready dict. Hosts missing from `access` are left out (say, no Mongo image)."""
    for host, reach in access.items():  # they reach conninfo strings, pg_hba lines and certificates
        check_address(reach.address, f"host {host}: its address")
    children: dict[str, dict[str, Any]] = {}

    def add(group: str, host: str, hostvars: dict[str, Any]) -> None:
        children.setdefault(group, {"hosts": {}})["hosts"][host] = hostvars

    for host, (cluster, groups) in inventory_roles(fleet).items():
        if host not in access:
            continue
        hostvars = {**access[host].connection, "dbfleet_address": access[host].address}
        for group in groups:
            add(group, host, {})
        if cluster:
            site = standby_group(cluster) if set(STANDBY_GROUPS) & set(groups) else cluster_group(cluster)
            hostvars |= {"dbfleet_cluster": SpecText(cluster), "dbfleet_group": site}
            add(site, host, {})
        children.setdefault("_hostvars", {"hosts": {}})["hosts"][host] = hostvars

    hostvars_group = children.pop("_hostvars", {"hosts": {}})
    present = [c for c in fleet.clusters if cluster_group(c.name) in children]
    for c in present:
        children[cluster_group(c.name)]["vars"] = cluster_vars(c)
        if isinstance(c, PostgresCluster) and standby_group(c.name) in children:
            follow = [access[h.name].address for h in c.all_hosts() if h.name in access]
            children[standby_group(c.name)]["vars"] = dict(from_spec(standby_site_inputs(c, follow)))
    if "monitoring" in children:
        children["monitoring"]["vars"] = from_spec(prometheus_inputs(present))
    all_vars: dict[str, Any] = {
        "dbfleet_fleet": from_spec(fleet.fleet.model_dump(mode="json")),
        "dbfleet_monitoring": from_spec(fleet.monitoring.model_dump(mode="json")),
        "dbfleet_addresses": {h: a.address for h, a in access.items()},
        **(extra_vars or {}),
    }
    return {"all": {"vars": all_vars, "hosts": hostvars_group["hosts"], "children": children}}


def cluster_vars(cluster: AnyCluster) -> dict[str, Any]:
    """A cluster group's vars: the inputs of the roles its hosts run (dbfleet.role_inputs), spec strings as data."""
    return dict(from_spec(cluster_inputs(cluster)))


def write_inventory(inventory: dict[str, Any], directory: Path) -> Path:
    """Write hosts.yml into `directory`, only when its content changed."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hosts.yml"
    text = "# Written by dbfleet from the fleet spec; do not edit.\n" + inventory_yaml(inventory)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path

