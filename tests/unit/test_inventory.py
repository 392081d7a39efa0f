"""The inventory shape shared by the lab and AWS."""

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dbfleet.engines.access import read_inventory_hosts
from dbfleet.inventory import HostAccess, build_inventory, cluster_group, host_roles, write_inventory
from dbfleet.inventory_format import load_inventory
from dbfleet.lab.topology import plan_hosts, subnet_candidates
from dbfleet.spec import load_fleet, parse_fleet

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
    assert groups[cluster_group("pg-main")]["vars"]["postgres_server_port"] == 5432
    assert "cluster" not in groups[cluster_group("pg-main")]["vars"]  # the roles' inputs, not the spec as a whole
    assert groups["monitoring"]["vars"]["prometheus_scrape_seconds"] == 5  # the example's shortest scrape_interval
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


# --------------------------------------------------------------------------- spec values reach Ansible as data

def _hostile_fleet(marker_dir: Path):
    """The example with Jinja in a parameter, a backup path and a Mongo zone key, each touching a marker file."""
    def jinja(name: str) -> str:
        return "{{ lookup('pipe', 'touch " + str(marker_dir / name) + "') }}"

    text = (REPO / "fleet.example.yaml").read_text()
    text = text.replace("      max_connections: 100\n",
                        f"      max_connections: 100\n      work_mem: {json.dumps(jinja('param'))}\n", 1)
    text = text.replace("target: {kind: local, path: /var/lib/dbfleet/backups}",
                        f"target: {{kind: local, path: {json.dumps('/backups/' + jinja('path'))}}}", 1)
    text = text.replace("key: {user_id: hashed}}",
                        f"key: {{user_id: hashed}}, zones: {{{json.dumps(jinja('key'))}: []}}}}", 1)
    return parse_fleet(text, "hostile.yaml"), jinja


def test_spec_strings_are_written_tagged_unsafe_and_read_back_as_plain_strings(tmp_path: Path) -> None:
    fleet, jinja = _hostile_fleet(tmp_path)
    access = {h: HostAccess(f"10.0.0.{i}", {"ansible_connection": "local"}) for i, h in enumerate(host_roles(fleet), 1)}
    path = write_inventory(build_inventory(fleet, access), tmp_path)
    text = path.read_text()
    def quoted(value: str) -> str:  # YAML's single-quoted style doubles a quote
        return "'" + value.replace("'", "''") + "'"

    assert f"work_mem: !unsafe {quoted(jinja('param'))}" in text
    repo = quoted('/backups/' + jinja('path') + '/pgbackrest/pg-main')
    assert f"pgbackrest_local_repo_paths:\n        - !unsafe {repo}" in text
    assert "ansible_connection: local" in text and "dbfleet_address: 10.0.0." in text  # dbfleet's own: plain
    assert "dbfleet_cluster: !unsafe 'pg-main'" in text
    hosts = read_inventory_hosts(path)
    assert hosts["pg-1"]["dbfleet_cluster"] == "pg-main" and type(hosts["pg-1"]["dbfleet_cluster"]) is str
    group = load_inventory(path)["all"]["children"][cluster_group("pg-main")]["vars"]
    work_mem = group["postgres_server_parameters"]["work_mem"]
    assert work_mem == jinja("param") and type(work_mem) is str


@pytest.mark.skipif(not shutil.which("ansible"), reason="ansible is not installed")
def test_ansible_does_not_evaluate_jinja_from_the_spec(tmp_path: Path) -> None:
    fleet, jinja = _hostile_fleet(tmp_path)
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    access = {h: HostAccess("127.0.0.1", local) for h in host_roles(fleet)}
    path = write_inventory(build_inventory(fleet, access), tmp_path / "inventory")
    env = {**os.environ, "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    for hosts, args in (("pg-1", "var=postgres_server_parameters"), ("pg-1", "var=pgbackrest_conf"),
                        ("mongos-1", "var=mongos_sharded_collections"),
                        ("pg-1", json.dumps({"msg": "{{ postgres_server_parameters.work_mem }} "
                                                    "{{ pgbackrest_local_repo_paths }} "
                                                    "{{ postgres_server_parameters }}"}))):
        done = subprocess.run(["ansible", hosts, "-i", str(path), "-m", "ansible.builtin.debug", "-a", args],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "lookup('pipe', 'touch" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inventory"], "Ansible ran a lookup from the spec"


@pytest.mark.skipif(not shutil.which("ansible"), reason="ansible is not installed")
def test_an_empty_spec_string_reaches_ansible_as_an_empty_string(tmp_path: Path) -> None:
    """ansible-core 2.19 reads `!unsafe ''` as None: pgbackrest's `pgbackrest_spool_path | length` failed the
    converge of every PostgreSQL cluster without dr (found by bench fleet's one-host clusters)."""
    data = yaml.safe_load((REPO / "fleet.example.yaml").read_text())
    del next(c for c in data["clusters"] if c["name"] == "pg-main")["dr"]
    fleet = parse_fleet(yaml.safe_dump(data), "no-dr.yaml")
    assert fleet.cluster("pg-main").dr is None  # type: ignore[union-attr]
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    path = write_inventory(build_inventory(fleet, {h: HostAccess("127.0.0.1", local) for h in host_roles(fleet)}),
                           tmp_path / "inventory")
    assert "pgbackrest_spool_path: ''" in path.read_text()
    env = {**os.environ, "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    args = json.dumps({"msg": "spool={{ pgbackrest_spool_path | type_debug }}:{{ pgbackrest_spool_path | length }}"})
    done = subprocess.run(["ansible", "pg-1", "-i", str(path), "-m", "ansible.builtin.debug", "-a", args],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "spool=str:0" in done.stdout


def test_backup_access_reads_an_inventory_with_unsafe_spec_strings(tmp_path: Path) -> None:
    from dbfleet.spec import S3Target
    from dbfleet.wiring import open_access

    fleet = load_fleet(REPO / "fleet.example.yaml")
    access = {h: HostAccess(f"10.0.0.{i}", {"ansible_connection": "local"}) for i, h in enumerate(host_roles(fleet), 1)}
    path = write_inventory(build_inventory(fleet, access, {"dbfleet_operator_address": "10.0.0.250"}), tmp_path)
    cluster = fleet.cluster("cache")
    cluster = cluster.model_copy(update={"backup": cluster.backup.model_copy(
        update={"target": S3Target(kind="s3", bucket="acme-bk")})})
    secrets = tmp_path / "secrets.yml"
    secrets.write_text("dbfleet_secrets: {redis_admin_password: x}\n")
    opened = open_access(cluster, path, secrets=secrets, s3_client=object())
    assert opened.fleet.lab is None and opened.scratch is None
    assert opened.fleet.addresses["redis-1"] == access["redis-1"].address
