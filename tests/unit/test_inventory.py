"""The inventory shape shared by the lab and AWS."""

import ipaddress
from pathlib import Path

from dbfleet.inventory import HostAccess, build_inventory, cluster_group, host_roles
from dbfleet.lab.topology import plan_hosts, subnet_candidates
from dbfleet.spec import load_fleet

REPO = Path(__file__).resolve().parents[2]


def test_groups_and_cluster_vars() -> None:
    fleet = load_fleet(REPO / "fleet.example.yaml")
    access = {h: HostAccess(f"10.0.0.{i}", {"ansible_host": h}) for i, h in enumerate(host_roles(fleet), 1)}
    inv = build_inventory(fleet, access)["all"]
    groups = inv["children"]
    assert set(groups["postgres_primary"]["hosts"]) == {"pg-1"}
    assert set(groups["postgres_replica"]["hosts"]) == {"pg-2", "pg-3"}
    assert set(groups["redis_sentinel"]["hosts"]) == {"sentinel-1", "sentinel-2", "sentinel-3"}
    assert set(groups["mongo_shard"]["hosts"]) == {"mongo-a-1", "mongo-b-1"}
    assert set(groups["monitoring"]["hosts"]) == {"monitor-1"}
    assert groups[cluster_group("pg-main")]["vars"]["cluster"]["replicas"] == 2
    assert inv["hosts"]["pg-2"]["dbfleet_address"] == access["pg-2"].address


def test_missing_hosts_are_left_out() -> None:
    fleet = load_fleet(REPO / "fleet.example.yaml")
    access = {"pg-1": HostAccess("10.0.0.1")}
    inv = build_inventory(fleet, access)["all"]
    assert list(inv["hosts"]) == ["pg-1"] and "mongo" not in inv["children"]


def test_lab_plan_addresses_are_unique_and_in_subnet() -> None:
    fleet = load_fleet(REPO / "fleet.example.yaml")
    subnet = subnet_candidates("t")[0]
    hosts = plan_hosts(fleet, subnet)
    assert len({h.address for h in hosts}) == len(hosts)
    assert all(ipaddress.ip_address(h.address) in subnet for h in hosts)
    assert {h.engine for h in plan_hosts(fleet, subnet, {"postgres"})} == {"postgres"}


def test_subnets_stay_in_the_lab_range() -> None:
    nets = subnet_candidates("lab")
    assert len(set(nets)) == 1024
    assert all(n.subnet_of(ipaddress.ip_network("172.28.0.0/14")) for n in nets)
