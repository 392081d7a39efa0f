"""The spec reaches the roles as the inputs each declares (dbfleet.role_inputs): no role reads the spec as a whole,
every input is named for its role (or is a shared dbfleet_* fact), stays data, and every required input of every
role entry point a host runs is in its inventory; nothing the inventory maps goes unread."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dbfleet.inventory import HostAccess, build_inventory, inventory_roles
from dbfleet.inventory_format import SpecText
from dbfleet.role_inputs import cluster_inputs, prometheus_inputs
from dbfleet.spec import Fleet, MongoCluster, PostgresCluster, RedisCluster, load_fleet

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
ROLES = PLAYBOOKS / "roles"
ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if (p / "meta" / "argument_specs.yml").is_file())
FLEET = load_fleet(REPO / "fleet.example.yaml")
FROM_SECRETS = {"dbfleet_secrets"}
"""Required inputs that come from the secrets (vars or vault) file, not from the inventory."""

SPEC_AS_A_WHOLE = re.compile("|".join([
    r"\bcluster\.(?!yml\b)[a-z_]", r"\bcluster\[", r"(?<![+\w])cluster\s*\|", r"\bcluster is (not )?defined",
    r"\.cluster\b", r"\[['\"]cluster['\"]\]", r"hostvars, ['\"]cluster['\"]",
    r"dbfleet_patroni", r"dbfleet_pgbackrest"]))
"""The old ways in: `cluster.port`, `cluster['port']`, `cluster | filter`, `hostvars[h].cluster`, extract 'cluster',
and the rendered dicts beside it (not `cluster.yml`, a label named cluster, or Redis's +cluster|info)."""


def specs(role: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())["argument_specs"])


def test_no_role_or_playbook_reads_the_spec_as_a_whole() -> None:
    files = [p for p in PLAYBOOKS.rglob("*") if p.is_file() and p.suffix in {".yml", ".j2", ".py"}
             and "collection" not in p.relative_to(PLAYBOOKS).parts]
    assert len(files) > 47
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in files
             for n, line in enumerate(p.read_text().splitlines(), 1) if SPEC_AS_A_WHOLE.search(line)]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("cluster", FLEET.clusters, ids=lambda c: c.name)
def test_each_input_is_named_for_a_role_or_is_a_fleet_fact(cluster: Any) -> None:
    for name in cluster_inputs(cluster):
        assert name.startswith("dbfleet_") or any(name.startswith(role + "_") for role in ROLE_NAMES), name


def _strings(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_every_string_the_inventory_maps_is_spec_data() -> None:
    groups = lab_inventory(FLEET)["all"]["children"]
    for name, group in groups.items():
        for value in _strings(group.get("vars", {})):
            assert type(value) is SpecText, (name, value)


def test_the_inputs_have_the_types_the_roles_declare() -> None:
    pg, redis, mongo = (FLEET.of_engine(e)[0] for e in ("postgres", "redis", "mongo"))
    assert isinstance(pg, PostgresCluster) and isinstance(redis, RedisCluster) and isinstance(mongo, MongoCluster)
    found = {**cluster_inputs(pg), **cluster_inputs(redis), **cluster_inputs(mongo),
             **prometheus_inputs(FLEET.clusters)}
    kinds = {"int": int, "bool": bool, "str": str, "dict": dict, "list": list}
    declared = {name: option["type"] for role in ROLE_NAMES for entry in specs(role).values()
                for name, option in entry.get("options", {}).items()}
    assert type(found.pop("dbfleet_monitored")) is bool  # the monitoring plays' condition, no role's input
    for name, value in found.items():
        assert isinstance(value, kinds[declared[name]]), (name, value, declared[name])
    assert type(found["postgres_server_port"]) is int and type(found["redis_server_activedefrag"]) is bool


def test_synchronous_replication_off_is_no_synchronous_replica() -> None:
    pg = FLEET.of_engine("postgres")[0]
    assert isinstance(pg, PostgresCluster)
    off = pg.model_copy(update={"synchronous": pg.synchronous.model_copy(update={"enabled": False, "num_sync": 2})})
    on = pg.model_copy(update={"synchronous": pg.synchronous.model_copy(update={"enabled": True, "num_sync": 2})})
    assert cluster_inputs(off)["postgres_server_synchronous_replicas"] == 0
    assert cluster_inputs(on)["postgres_server_synchronous_replicas"] == 2


def test_an_unmonitored_cluster_is_left_out_of_the_scrape_interval() -> None:
    pg = FLEET.of_engine("postgres")[0]
    quiet = pg.model_copy(update={"monitoring": pg.monitoring.model_copy(update={"enabled": False,
                                                                               "scrape_interval": "1s"})})
    found = prometheus_inputs([quiet])
    assert found["prometheus_unmonitored_clusters"] == [pg.name] and found["prometheus_scrape_seconds"] == 15
    assert cluster_inputs(quiet)["dbfleet_monitored"] is False


def test_a_ca_the_spec_supplies_reaches_pki_and_prometheus() -> None:
    pg = FLEET.of_engine("postgres")[0]
    assert isinstance(pg, PostgresCluster) and pg.ha == "patroni" and pg.tls.ca_cert is None
    own = pg.model_copy(update={"tls": pg.tls.model_copy(update={"ca_cert": "/site/ca.crt", "ca_key": "/site/ca.key"})})
    found = cluster_inputs(own)
    assert (found["pki_supplied_ca_cert"], found["pki_supplied_ca_key"]) == ("/site/ca.crt", "/site/ca.key")
    assert "pki_supplied_ca_cert" not in cluster_inputs(pg)  # pki's default, '': the fleet CA

    def cas(cluster: PostgresCluster) -> tuple[list[str], bool]:
        found = prometheus_inputs([cluster])
        return found["prometheus_patroni_cluster_cas"], found["prometheus_patroni_fleet_ca"]

    assert cas(own) == (["/site/ca.crt"], False) and cas(pg) == ([], True)


# --------------------------------------------------------------------------- each host gets what its roles need


def lab_inventory(fleet: Fleet) -> dict[str, Any]:
    access = {h: HostAccess(f"10.0.0.{i}", {"ansible_connection": "local"})
              for i, h in enumerate(inventory_roles(fleet), 1)}
    return build_inventory(fleet, access, {"dbfleet_operator_address": "10.0.0.250"})


def host_vars(inventory: dict[str, Any], host: str) -> tuple[set[str], dict[str, Any]]:
    """The groups `host` is in ('all' too) and its variables, all vars, group vars and host vars merged."""
    top = inventory["all"]
    groups = {"all"} | {name for name, group in top["children"].items() if host in group["hosts"]}
    found = dict(top["vars"])
    for name in sorted(groups - {"all"}):
        found.update(top["children"][name].get("vars", {}))
    found.update(top["hosts"][host])
    return groups, found


def _matches(pattern: str, groups: set[str]) -> bool:
    """Ansible's host pattern, as the plays write it: a:b is either, a:!b is a but not b."""
    parts = pattern.split(":")
    return (any(p in groups for p in parts if not p.startswith("!"))
            and not any(p[1:] in groups for p in parts if p.startswith("!")))


def _included(role: str, entry: str) -> set[tuple[str, str]]:
    """(role, entry point) of `role`'s meta dependencies and of every role its tasks include, with their own."""
    found: set[tuple[str, str]] = set()
    meta = yaml.safe_load((ROLES / role / "meta" / "main.yml").read_text()) or {}
    deps = [(d["role"] if isinstance(d, dict) else d, "main") for d in meta.get("dependencies") or []]
    included = [(m[1], m[2] or "main") for path in (ROLES / role / "tasks").glob("*.yml")
                for m in re.finditer(r"include_role:\n\s+name: (\w+)(?:\n\s+tasks_from: (\S+))?", path.read_text())]
    for pair in deps + included:
        if pair not in found and pair[0] != role:
            found |= {pair} | _included(*pair)
    return found


def entry_points(groups: set[str]) -> set[tuple[str, str]]:
    """Every (role, entry point) the engine and monitoring plays run on a host in `groups`."""
    found: set[tuple[str, str]] = set()
    for playbook in ("postgres.yml", "redis.yml", "mongo.yml", "monitoring.yml"):
        for play in yaml.safe_load((PLAYBOOKS / playbook).read_text()):
            if _matches(play["hosts"], groups):
                for role in play.get("roles", []):
                    name = role["role"] if isinstance(role, dict) else role
                    found |= {(name, "main")} | _included(name, "main")
    return found


@pytest.mark.parametrize("spec", ["example", "manual"])
def test_every_required_input_of_every_entry_point_a_host_runs_is_in_the_inventory(spec: str) -> None:
    fleet = FLEET
    if spec == "manual":
        fleet = FLEET.model_copy(update={"clusters": [
            c.model_copy(update={"ha": "manual", "dr": c.dr.model_copy(update={"standby": None}) if c.dr else None})
            if isinstance(c, PostgresCluster) else c for c in FLEET.clusters]})
    inventory = lab_inventory(fleet)
    checked = set()
    for host in inventory["all"]["hosts"]:
        groups, found = host_vars(inventory, host)
        for role, entry in entry_points(groups):
            for name, option in specs(role)[entry]["options"].items():
                if option.get("required") and name not in FROM_SECRETS:
                    assert name in found, f"{host}: {role} {entry} needs {name}"
                    checked.add(role)
    expected = {"postgres_server", "pgbackrest", "postgres_exporter", "redis_common", "redis_server",
                "redis_sentinel", "redis_exporter", "mongo_common", "mongod", "mongos", "mongodb_exporter",
                "node_exporter", "prometheus", "pki"}
    assert checked >= expected | ({"patroni", "etcd", "haproxy"} if spec == "example" else set())


def test_every_input_the_inventory_maps_is_declared_by_a_role() -> None:
    """Nothing mapped goes unread: each group var is an option of some role's argument specs (dbfleet_monitored
    is the monitoring plays' own condition)."""
    declared = {name for role in ROLE_NAMES for entry in specs(role).values() for name in entry.get("options", {})}
    for name, group in lab_inventory(FLEET)["all"]["children"].items():
        for var in group.get("vars", {}):
            assert var in declared or var == "dbfleet_monitored", (name, var)
