"""Every role's meta/argument_specs.yml: a wrong input is refused before the role's first task, naming the option;
what dbfleet's inventories give passes; and the specs agree with the roles' defaults/main.yml.

No lab: the refusals run a tiny play on localhost in check mode and with a Python that does not exist, so no module
of the role could run even if the validation let it through (the validation runs in the controller). The inventories
are checked with --tags matching no task, so only the roles' argument validation runs (Ansible tags it `always`, and
it needs no connection).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dbfleet.inventory import HostAccess, build_inventory, inventory_roles, write_inventory
from dbfleet.secrets import generate
from dbfleet.spec import load_fleet

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "playbooks" / "roles"
ROLE_DIRS = sorted(p for p in ROLES.iterdir() if (p / "tasks").is_dir())
ENV = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ROLES),
       "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_LOCALHOST_WARNING": "0",
       "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
VALIDATION = "Validating arguments against arg spec"
MAGIC = {"inventory_dir", "playbook_dir"}
"""Ansible's own variables: a default templated from these alone can be checked (the role's inputs cannot be wrong
in it), so it may be declared in the spec."""


def ansible_playbook(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ansible-playbook", *args], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)


def specs(role: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"])


def defaults(role: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {})


# --------------------------------------------------------------------------- a wrong input is refused


def run_role(tmp_path: Path, role: str, variables: dict[str, Any]) -> str:
    """Run `role` alone on localhost in check mode with `variables` as play vars; return its output."""
    play = [{"name": f"{role} with a wrong input", "hosts": "localhost", "connection": "local",
             "gather_facts": False, "vars": {"ansible_python_interpreter": "/nonexistent/python3", **variables},
             "roles": [role]}]
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    done = ansible_playbook("-i", "localhost,", "--check", str(playbook))
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    return out


MONGOD = {"dbfleet_cluster": "mongo-main", "mongo_common_port": 27017, "mongo_common_tls_enabled": False}
MONGO_COMMON = {**MONGOD, "mongo_common_series": "7.0", "dbfleet_addresses": {}, "dbfleet_secrets": {},
                "mongo_common_topology": {"config_servers": {"name": "cfg", "members": []}, "shards": [], "mongos": []}}
PROMETHEUS = {"dbfleet_address": "10.0.0.9", "dbfleet_fleet": {"name": "lab"},
              "dbfleet_monitoring": {"prometheus_port": 9090}, "prometheus_scrape_seconds": 15,
              "prometheus_unmonitored_clusters": [], "prometheus_patroni_ports": {},
              "prometheus_patroni_cluster_cas": [], "prometheus_patroni_fleet_ca": False,
              "prometheus_mongo_replsets": {}}
"""Every required input of these roles but the one a case gets wrong."""


@pytest.mark.parametrize(("role", "variables", "message"), [
    ("mongod", {**MONGOD, "dbfleet_address": "10.0.0.1", "mongo_common_port": "mongo-main"},
     "argument 'mongo_common_port' is of type str and we were unable to convert to int"),
    ("mongod", MONGOD,
     "missing required arguments: dbfleet_address"),
    ("mongo_common", {**MONGO_COMMON, "mongo_install_source": "apt"},
     "value of mongo_install_source must be one of: repo, tarball, present, got: apt"),
    ("prometheus", {**PROMETHEUS, "prometheus_exporters": [{"job": "node"}]},
     "missing required arguments: group, port found in prometheus_exporters"),
    ("mongo_common", {**MONGO_COMMON, "mongo_common_topology": {"config_servers": {"name": "cfg", "members": []},
                                                                "shards": []}},
     "missing required arguments: mongos found in mongo_common_topology"),
], ids=["wrong-type", "missing", "not-a-choice", "list-element", "dict-suboption"])
def test_a_wrong_input_is_refused_before_any_task_naming_the_option(tmp_path: Path, role: str,
                                                                     variables: dict[str, Any], message: str) -> None:
    out = run_role(tmp_path, role, variables)
    assert "Validation of arguments failed" in out, out
    assert message in out, out
    ran = re.findall(r"^TASK \[([^\]]+)\]", out, re.MULTILINE)
    assert ran == [f"{role} : {VALIDATION} 'main' - {specs(ROLES / role)['main']['short_description']}"], ran


# --------------------------------------------------------------------------- what dbfleet writes passes


def manual_spec(folder: Path) -> Path:
    """fleet.example.yaml with its PostgreSQL clusters on ha: manual (no patroni or endpoints section)."""
    data = yaml.safe_load((REPO / "fleet.example.yaml").read_text())
    for cluster in data["clusters"]:
        if cluster["engine"] == "postgres":
            cluster["ha"] = "manual"
            cluster.pop("patroni", None)
            cluster.pop("endpoints", None)
            (cluster.get("dr") or {}).pop("standby", None)  # a Patroni standby cluster
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "fleet.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return spec


def lab_inventory(folder: Path, spec: Path = REPO / "fleet.example.yaml") -> Path:
    """hosts.yml as `dbfleet lab up` writes it for `spec` (lab/lifecycle.py), with made-up addresses."""
    fleet = load_fleet(spec)
    access = {h: HostAccess(f"172.30.0.{i}", {"ansible_connection": "community.docker.docker",
                                              "ansible_host": f"dbfleet-lab-{h}", "ansible_user": "root"})
              for i, h in enumerate(inventory_roles(fleet), 2)}
    extra = {"dbfleet_lab": "lab", "dbfleet_operator_address": "172.30.0.1", "dbfleet_lab_subnet": "172.30.0.0/24",
             "mongo_install_source": "present"}
    return write_inventory(build_inventory(fleet, access, extra), folder)


@pytest.mark.parametrize(("inventory", "not_run"), [
    ("lab", {"postgres_server"}),
    ("lab-manual", {"etcd", "patroni", "haproxy"}),
    ("example", {"postgres_server"}),
])
def test_the_inventories_dbfleet_writes_pass_every_roles_validation(tmp_path: Path, inventory: str,
                                                                   not_run: set[str]) -> None:
    """Each role's main entry point, on the hosts site.yml gives it. pki is only ever included, and so is
    postgres_server under Patroni (the patroni role includes its entry points), so with every PostgreSQL cluster on
    ha: patroni its main does not run, and with every one on ha: manual etcd, patroni and haproxy have no hosts.
    The entry points the roles include are not reached here (--tags skips the include tasks)."""
    if inventory == "example":
        hosts = REPO / "inventories" / "example" / "hosts.yml"
    elif inventory == "lab-manual":
        hosts = lab_inventory(tmp_path / "lab", manual_spec(tmp_path / "spec"))
    else:
        hosts = lab_inventory(tmp_path / "lab")
    secrets = tmp_path / "secrets.yml"
    secrets.write_text(yaml.safe_dump({"dbfleet_secrets": generate()}))
    done = ansible_playbook("-i", str(hosts), "--check", "--tags", "no-task-has-this-tag",
                            "-e", "ansible_connection=local", "-e", "ansible_become=false",
                            "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"@{secrets}",
                            str(REPO / "playbooks" / "site.yml"))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    ran = set(re.findall(r"^TASK \[([^\]]+)\]", out, re.MULTILINE))
    # converge_state runs only under `configure --fast` and after a configure run (site.yml's first and last plays).
    assert {task.split(" : ")[0] for task in ran} == \
        {role.name for role in ROLE_DIRS} - {"pki", "converge_state"} - not_run, ran
    assert all(VALIDATION in task for task in ran), ran


# --------------------------------------------------------------------------- the specs and the roles agree


@pytest.mark.parametrize("role", ROLE_DIRS, ids=lambda p: p.name)
def test_the_spec_declares_each_default_as_defaults_main_sets_it(role: Path) -> None:
    """A literal default is declared with the same value. A default templated from the role's inputs is left out:
    Ansible templates every declared variable before checking any, so a wrong input would fail there instead, with a
    message that is not the validation's (its description names these)."""
    main = specs(role)["main"]["options"]
    for name, value in defaults(role).items():
        templated = [expression.strip() for expression in re.findall(r"\{\{(.*?)\}\}", str(value), re.DOTALL)]
        if templated and not set(templated) <= MAGIC:
            assert name not in main, f"{role.name}: {name} is templated from its inputs: leave it out of the spec"
            assert name in str(specs(role)["main"]["description"]), f"{role.name}: name {name} in the main description"
        else:
            assert name in main, f"{role.name}: {name} (defaults/main.yml) is not in meta/argument_specs.yml"
    for entry, spec in specs(role).items():
        for name, option in spec["options"].items():
            if "default" in option:
                assert option["default"] == defaults(role)[name], f"{role.name} {entry}: {name}"


def entry_points_used() -> set[tuple[str, str]]:
    """(role, entry point) for every include_role/import_role in the playbooks and roles."""
    used = set()
    for path in [*REPO.glob("playbooks/*.yml"), *ROLES.glob("*/tasks/*.yml")]:
        text = path.read_text()
        for match in re.finditer(r"(?:include|import)_role:\n\s+name: (\w+)(?:\n\s+tasks_from: (\S+))?", text):
            used.add((match[1], match[2] or "main"))
    return used


def test_every_entry_point_the_playbooks_use_has_a_spec() -> None:
    used = entry_points_used()
    assert ("postgres_server", "discover") in used and ("pki", "operator") in used
    for role, entry in used:
        assert entry in specs(ROLES / role), f"{role}: tasks_from {entry} has no entry in meta/argument_specs.yml"
