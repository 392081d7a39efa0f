"""inventories/aws/stack_inventory.py: stack outputs become an inventory with exactly the lab's groups."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pulumi_mocks import REPO, SPEC, Run, fleet_variant, run_program

from dbfleet.inventory import HostAccess, build_inventory, host_roles, inventory_roles
from dbfleet.spec import Fleet, load_fleet

SCRIPT = REPO / "inventories" / "aws" / "stack_inventory.py"
CHECKOUT = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "operator"), os.environ.get("PYTHONPATH")) if p)}
"""Ansible runs the script with the python3 on PATH: it must import this checkout's dbfleet, not another one
installed on the machine."""


def _load_script() -> ModuleType:
    loaded = importlib.util.spec_from_file_location("stack_inventory", SCRIPT)
    assert loaded and loaded.loader
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


stack_inventory = _load_script()


def _memberships(inventory: dict[str, Any]) -> dict[str, set[str]]:
    return {group: set(body["hosts"]) for group, body in inventory["all"]["children"].items()}


def test_outputs_give_the_lab_groups_and_ssm_connections(example_fleet: Fleet, example_run: Run) -> None:
    inventory = stack_inventory.aws_inventory(example_fleet, example_run.outputs)
    lab_shape = build_inventory(example_fleet, {h: HostAccess("10.0.0.1") for h in host_roles(example_fleet)})
    assert _memberships(inventory) == _memberships(lab_shape)
    pg = inventory["all"]["hosts"]["pg-1"]
    outputs = example_run.outputs["hosts"]["pg-1"]
    assert pg["ansible_host"] == outputs["instance_id"] and pg["dbfleet_address"] == outputs["address"]
    assert "aws ssm start-session --region us-east-1 --target %h" in pg["ansible_ssh_common_args"]
    assert pg["ansible_user"] == "admin" and pg["ansible_become"] is True
    everyone = inventory["all"]["vars"]
    assert everyone["dbfleet_operator_address"] == example_run.outputs["hosts"]["monitor-1"]["address"]
    assert everyone["dbfleet_aws"]["backups"]["pg-main"]["prefix"] == "pg-main/"
    # The same role inputs the lab's inventory carries: one mapping (dbfleet.role_inputs) for every inventory.
    for group in ("cluster_pg_main", "cluster_cache", "monitoring"):
        assert inventory["all"]["children"][group]["vars"] == lab_shape["all"]["children"][group]["vars"], group


def test_bastion_connections_use_private_addresses(example_fleet: Fleet, example_run: Run) -> None:
    inventory = stack_inventory.aws_inventory(example_fleet, example_run.outputs, bastion="admin@203.0.113.7")
    redis = inventory["all"]["hosts"]["redis-2"]
    assert redis["ansible_host"] == example_run.outputs["hosts"]["redis-2"]["address"]
    assert redis["ansible_ssh_common_args"] == "-o ProxyJump=admin@203.0.113.7"


def test_a_spec_the_stack_was_not_built_from_is_refused(example_fleet: Fleet, example_run: Run) -> None:
    hosts = {k: v for k, v in example_run.outputs["hosts"].items() if k != "pg-3"}
    hosts["pg-9"] = hosts["pg-2"]
    with pytest.raises(stack_inventory.InventoryError, match=r"spec only: pg-3; in the stack only: pg-9.*pulumi up"):
        stack_inventory.aws_inventory(example_fleet, {**example_run.outputs, "hosts": hosts})


@pytest.mark.skipif(not shutil.which("ansible-inventory"), reason="ansible-inventory is not installed")
def test_ansible_reads_both_the_written_file_and_the_script(full_example_run: Run, tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(full_example_run.outputs))
    assert stack_inventory.main(["--outputs", str(outputs), "--spec", str(SPEC), "--out", str(tmp_path)]) == 0
    env = {**os.environ, **CHECKOUT, "DBFLEET_STACK_OUTPUTS": str(outputs), "DBFLEET_SPEC": str(SPEC)}
    seen = {}
    for source in (tmp_path / "hosts.yml", SCRIPT):
        done = subprocess.run(["ansible-inventory", "-i", str(source), "--list"], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=120)
        assert done.returncode == 0, done.stderr
        listed = json.loads(done.stdout)
        assert "Unable to parse" not in done.stderr, done.stderr
        seen[source.name] = {g: set(listed[g].get("hosts", [])) for g in listed
                             if g not in ("_meta", "all", "ungrouped")}
        # The cluster name comes from the spec: both sources hand it to Ansible as not to be templated.
        assert listed["_meta"]["hostvars"]["sentinel-2"]["dbfleet_cluster"] == {"__ansible_unsafe": "cache"}
        assert listed["_meta"]["hostvars"]["sentinel-2"]["ansible_user"] == "admin"
    example = load_fleet(SPEC)
    assert seen["hosts.yml"] == seen["stack_inventory.py"] == {
        g: hosts for g, hosts in _memberships(build_inventory(
            example, {h: HostAccess("x") for h in inventory_roles(example)})).items()}


@pytest.mark.skipif(not shutil.which("ansible"), reason="ansible is not installed")
def test_the_inventory_script_hands_spec_strings_to_ansible_as_data(full_example_run: Run, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    jinja = "{{ lookup('pipe', 'touch " + str(marker) + "') }}"
    spec = tmp_path / "fleet.yaml"
    spec.write_text(SPEC.read_text().replace("      max_connections: 100\n",
                                             f"      max_connections: 100\n      work_mem: {json.dumps(jinja)}\n", 1))
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(full_example_run.outputs))
    env = {**os.environ, **CHECKOUT, "DBFLEET_STACK_OUTPUTS": str(outputs), "DBFLEET_SPEC": str(spec),
           "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    done = subprocess.run(["ansible", "pg-1", "-i", str(SCRIPT), "-m", "ansible.builtin.debug",
                           "-a", json.dumps({"msg": "{{ postgres_server_parameters.work_mem }}"})],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lookup('pipe', 'touch" in done.stdout and not marker.exists(), "Ansible ran a lookup from the spec"


@pytest.fixture(scope="module")
def standby_fleet() -> Fleet:
    def standby(data: dict[str, Any]) -> None:
        data["clusters"][0]["dr"]["standby"] = {"hosts": ["pg-dr-1", "pg-dr-2"], "region": "us-west-2",
                                                "vpc_cidr": "10.41.0.0/16"}

    return fleet_variant(standby)


def test_standby_hosts_are_in_the_labs_groups_and_reached_in_their_region(standby_fleet: Fleet) -> None:
    """The standby site's hosts get what the lab gives them (its site group with the standby cluster's inputs,
    so the playbooks configure it on AWS as in the lab), reached through SSM in their own region."""
    outputs = run_program(standby_fleet).outputs
    inventory = stack_inventory.aws_inventory(standby_fleet, outputs)
    lab_shape = build_inventory(standby_fleet, {h: HostAccess("10.0.0.1") for h in inventory_roles(standby_fleet)})
    groups = _memberships(inventory)
    assert groups == _memberships(lab_shape)
    assert groups["cluster_pg_main_dr"] == {"pg-dr-1", "pg-dr-2"} and "pg-dr-1" not in groups["cluster_pg_main"]
    site = inventory["all"]["children"]["cluster_pg_main_dr"]["vars"]
    assert site.keys() == lab_shape["all"]["children"]["cluster_pg_main_dr"]["vars"].keys()
    primary = {outputs["hosts"][h]["address"] for h in ("pg-1", "pg-2", "pg-3")}
    assert primary <= set(json.dumps(site, default=str).replace('"', " ").replace(",", " ").split()), \
        "the standby site follows the fleet region's servers by their addresses"
    host = inventory["all"]["hosts"]["pg-dr-2"]
    assert host["ansible_host"] == outputs["standby_hosts"]["pg-dr-2"]["instance_id"]
    assert "aws ssm start-session --region us-west-2 --target %h" in host["ansible_ssh_common_args"]
    assert host["dbfleet_address"] == outputs["standby_hosts"]["pg-dr-2"]["address"]
    assert (host["dbfleet_cluster"], host["dbfleet_group"], host["dbfleet_region"], host["ansible_user"]) == \
        ("pg-main", "cluster_pg_main_dr", "us-west-2", "admin")
    assert "--region us-east-1" in inventory["all"]["hosts"]["pg-1"]["ansible_ssh_common_args"]
    jumped = stack_inventory.aws_inventory(standby_fleet, outputs, bastion="admin@203.0.113.7")["all"]["hosts"]
    assert jumped["pg-dr-1"]["ansible_host"] == outputs["standby_hosts"]["pg-dr-1"]["address"]
    with pytest.raises(stack_inventory.InventoryError, match=r"in the spec only: pg-dr-1, pg-dr-2; in the stack only: "
                                                             r"none"):
        stack_inventory.aws_inventory(standby_fleet, {k: v for k, v in outputs.items() if k != "standby_hosts"})
