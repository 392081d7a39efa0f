"""The mongodb_exporter role's rendered files: with the cluster's TLS on, the exporter dials a name the host
certificate carries, with the TLS options the operator's client takes, checked against the fleet CA, which its
user can read; the password never reaches its command line.

Issue 17: the URI had no TLS options while mongod runs requireTLS, so the exporter could not connect (or, without
requireTLS, would have sent the monitor password in clear).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from pymongo import uri_parser
from role_support import role_inputs, trusted

from dbfleet.engines import tls
from dbfleet.inventory import HostAccess, build_inventory, host_roles
from dbfleet.spec import MongoCluster, load_fleet

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "playbooks" / "roles" / "mongodb_exporter"
FLEET = load_fleet(REPO / "fleet.example.yaml")
PASSWORD = "secret-monitor-pw"


def defaults() -> dict[str, Any]:
    return dict(yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()))


def cluster() -> MongoCluster:
    found = FLEET.cluster("mongo-main")
    assert isinstance(found, MongoCluster)
    return found


def render(template: str, tls_on: bool, **role_vars: Any) -> dict[str, str]:
    """The role's template for mongo-a-1 as the template task renders it: role defaults, the inventory's vars for
    the host, the cluster's role inputs; the file's KEY=value lines."""
    access = {h: HostAccess(f"10.0.0.{i}") for i, h in enumerate(host_roles(FLEET), 1)}
    inventory = build_inventory(FLEET, access)["all"]
    variables: dict[str, Any] = {**trusted(defaults()), **inventory["vars"], **inventory["hosts"]["mongo-a-1"]}
    variables.update(role_inputs(cluster(), tls={**cluster().tls.model_dump(mode="json"), "enabled": tls_on}),
                     dbfleet_secrets={"mongo_monitor_password": PASSWORD}, **trusted(role_vars))
    text = (ROLE / "templates" / template).read_text()
    rendered = str(Templar(loader=DataLoader(), variables=variables).template(trust_as_template(text)))
    return dict(line.split("=", 1) for line in rendered.splitlines() if "=" in line and not line.startswith("#"))


def test_with_tls_the_exporter_dials_localhost_with_the_operators_tls_options(tmp_path: Path) -> None:
    """pymongo reads the rendered URI (it checks the CA file is readable, so the test gives it one): the options
    it finds are the ones engines/tls.py gives the operator's client for the same CA."""
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    env = render("mongodb-exporter.default.j2", True, mongodb_exporter_tls_dir=str(tmp_path))
    uri = env["MONGODB_URI"].strip("'")
    parsed = uri_parser.parse_uri(uri)
    assert parsed["nodelist"] == [("localhost", cluster().port)]
    wanted = tls.mongo_client_tls(cluster().model_copy(update={"tls": cluster().tls.model_copy(
        update={"enabled": True})}), tmp_path / "ca.crt")
    assert wanted == {"tls": True, "tlsCAFile": str(tmp_path / "ca.crt")}
    assert {key: parsed["options"].get(key) for key in wanted} == wanted
    assert not any("invalid" in key.lower() or "insecure" in key.lower() for key in parsed["options"])


def test_the_default_uri_names_the_exporters_copy_of_the_ca_and_a_name_the_certificate_carries() -> None:
    env = render("mongodb-exporter.default.j2", True)
    uri = urlsplit(env["MONGODB_URI"].strip("'"))
    assert uri.hostname == "localhost" and uri.username is None and uri.password is None
    assert parse_qs(uri.query) == {"directConnection": ["true"], "tls": ["true"],
                                   "tlsCAFile": ["/etc/mongodb-exporter/ca.crt"]}
    pki = (REPO / "playbooks" / "roles" / "pki" / "tasks" / "main.yml").read_text()
    assert "'DNS:localhost'" in pki  # every host certificate names localhost, so the name is checked too


def test_without_tls_the_uri_has_no_tls_options() -> None:
    env = render("mongodb-exporter.default.j2", False)
    assert "tls" not in env["MONGODB_URI"].lower()


def test_the_password_stays_in_the_environment_file_not_on_the_command_line() -> None:
    env = render("mongodb-exporter.default.j2", True)
    assert env["MONGODB_PASSWORD"] == f"'{PASSWORD}'" and env["MONGODB_USER"] == "'dbfleet_monitor'"
    assert PASSWORD not in env["ARGS"] and PASSWORD not in env["MONGODB_URI"]
    unit = (ROLE / "templates" / "mongodb-exporter.service.j2").read_text()
    assert "ExecStart={{ mongodb_exporter_binary }} $ARGS\n" in unit
    assert "EnvironmentFile=/etc/default/mongodb-exporter" in unit


def test_the_exporters_user_reads_a_copy_of_the_ca_the_mongo_roles_install() -> None:
    """The CA mongo_common installs sits under /etc/mongodb, root:mongodb 0750: the exporter (user prometheus)
    cannot open it there, so the role copies it to a directory of its own, world-readable like any CA."""
    found = defaults()
    assert found["mongodb_exporter_tls_ca_source"] == tls.MONGO_HOST_CA
    common = yaml.safe_load((REPO / "playbooks/roles/mongo_common/defaults/main.yml").read_text())
    assert not found["mongodb_exporter_tls_dir"].startswith(common["mongo_config_dir"] + "/")
    tasks = yaml.safe_load((ROLE / "tasks" / "main.yml").read_text())
    (block,) = [t for t in tasks if t.get("when") == "mongodb_exporter_tls_enabled"]
    directory, copy = block["block"]
    assert directory["ansible.builtin.file"]["path"] == "{{ mongodb_exporter_tls_dir }}"
    assert directory["ansible.builtin.file"]["mode"] == "0755"
    assert copy["ansible.builtin.copy"] | {"mode": "0644"} == copy["ansible.builtin.copy"]
    assert (copy["ansible.builtin.copy"]["src"], copy["ansible.builtin.copy"]["dest"]) == (
        "{{ mongodb_exporter_tls_ca_source }}", "{{ mongodb_exporter_tls_ca }}")
    assert copy["ansible.builtin.copy"]["remote_src"] is True
