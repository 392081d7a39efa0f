"""inventories/example/: the inventory for machines of your own. hosts.yml is what site_inventory.py writes from
fleet.example.yaml and machines.yml, ansible-inventory reads it with group_vars/all/vars.yml, it names every host
of the example's clusters in the groups the playbooks use, and a vault-encrypted secrets.yml beside it is read."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from dbfleet.inventory import host_roles
from dbfleet.secrets import PASSWORD_KEYS, generate
from dbfleet.spec import load_fleet

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "example"
FLEET = load_fleet(REPO / "fleet.example.yaml")
ENV = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("site_inventory", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


site = load(EXAMPLE / "site_inventory.py")


def ansible_inventory(inventory: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    done = subprocess.run(["ansible-inventory", "-i", str(inventory), *args], capture_output=True, text=True,
                          env=env or ENV, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Unable to parse" not in done.stderr, done.stderr
    return json.loads(done.stdout)


def plain(value: Any) -> Any:
    """A string as ansible-inventory --list shows it, with the !unsafe marker taken off."""
    return value["__ansible_unsafe"] if isinstance(value, dict) and "__ansible_unsafe" in value else value


def test_the_committed_hosts_yml_is_what_the_script_writes(tmp_path: Path) -> None:
    assert site.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "hosts.yml").read_text() == (EXAMPLE / "hosts.yml").read_text(), \
        "regenerate: python3 inventories/example/site_inventory.py"


def test_ansible_reads_it_with_every_host_of_the_example_clusters_in_its_groups() -> None:
    listed = ansible_inventory(EXAMPLE / "hosts.yml", "--list")
    hostvars = listed["_meta"]["hostvars"]
    for cluster in FLEET.clusters:
        group = "cluster_" + cluster.name.replace("-", "_")
        assert set(listed[group]["hosts"]) == set(cluster.host_names()), cluster.name
        for host in cluster.host_names():
            assert hostvars[host]["dbfleet_address"].startswith("10.40."), host
            assert plain(hostvars[host]["dbfleet_cluster"]) == cluster.name  # spec text stays !unsafe
            assert hostvars[host]["dbfleet_monitored"] is True and "cluster" not in hostvars[host]  # group vars: inputs
    for host, (_, groups) in host_roles(FLEET).items():
        for group in groups:
            assert host in listed[group]["hosts"], (host, group)
    pg2 = hostvars["pg-2"]
    assert pg2["ansible_host"] == "pg-2.db.example.com" and pg2["ansible_user"] == "admin" and pg2["ansible_become"]
    assert pg2["mongo_install_source"] == "repo"  # from group_vars/all/vars.yml
    assert "-o ProxyJump=admin@bastion.example.com" in hostvars["monitor-1"]["ansible_ssh_common_args"]
    assert hostvars["pg-1"]["dbfleet_operator_address"] == "10.40.9.10"


def test_no_secret_is_committed_in_the_example() -> None:
    text = "\n".join(p.read_text() for p in EXAMPLE.rglob("*") if p.is_file() and p.suffix in {".yml", ".py"})
    assert "dbfleet_secrets:" not in text and not (EXAMPLE / "group_vars" / "all" / "secrets.yml").exists()


def test_a_vault_encrypted_secrets_file_beside_it_is_read_by_ansible(tmp_path: Path) -> None:
    """The layout the README walks through: group_vars/all/secrets.yml, made with ansible-vault."""
    site_dir = tmp_path / "mysite"
    shutil.copytree(EXAMPLE, site_dir, ignore=shutil.ignore_patterns("__pycache__"))
    password = tmp_path / "vault-pass"
    password.write_text("correct horse battery staple\n")
    secrets = site_dir / "group_vars" / "all" / "secrets.yml"
    subprocess.run(["ansible-vault", "encrypt", "--vault-password-file", str(password), "--output", str(secrets),
                    "-"], input=yaml.safe_dump({"dbfleet_secrets": generate()}), text=True, check=True,
                   capture_output=True, env=ENV, timeout=120)
    assert secrets.read_text().startswith("$ANSIBLE_VAULT;")
    env = {**ENV, "ANSIBLE_VAULT_PASSWORD_FILE": str(password)}
    host = ansible_inventory(site_dir / "hosts.yml", "--host", "pg-1", env=env)
    assert set(PASSWORD_KEYS) <= set(host["dbfleet_secrets"])


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["hosts"].pop("pg-3"), "in the spec only: pg-3; in machines only: none"),
    (lambda m: m["hosts"].update({"web-1": {"address": "10.40.5.5"}}), "in machines only: web-1"),
    (lambda m: m["hosts"]["pg-1"].update({"address": "pg-1.example.com"}), "hosts.pg-1.address"),
    (lambda m: m["hosts"]["pg-1"].update({"password": "x"}), "only ansible_* connection variables"),
])
def test_machines_that_do_not_fit_the_spec_are_refused(change: Any, message: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    machines = yaml.safe_load((EXAMPLE / "machines.yml").read_text())
    change(machines)
    path = tmp_path / "machines.yml"
    path.write_text(yaml.safe_dump(machines))
    assert site.main(["--machines", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "hosts.yml").exists()


def test_the_script_runs_as_the_readme_says(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE / "machines.yml", tmp_path / "machines.yml")
    argv = [sys.executable, str(EXAMPLE / "site_inventory.py"), "--spec", str(REPO / "fleet.example.yaml"),
            "--machines", str(tmp_path / "machines.yml")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "operator")})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "hosts.yml").read_text() == (EXAMPLE / "hosts.yml").read_text()
