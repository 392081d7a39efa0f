"""The prometheus role's scrape configuration for the operator, rendered from the inventory as Ansible would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from role_support import trusted as _trusted

from dbfleet.inventory import HostAccess, build_inventory, inventory_roles
from dbfleet.spec import Fleet, load_fleet, parse_fleet

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "playbooks" / "roles" / "prometheus"
OPERATOR = "172.30.0.1"
PASSWORD = "operator-metrics-secret-4xQ"



def _render(fleet: Fleet) -> tuple[str, dict[str, Any]]:
    """prometheus.yml for the monitoring host, with the role's defaults and the inventory's groups and vars."""
    access = {h: HostAccess(f"10.0.0.{i}") for i, h in enumerate(inventory_roles(fleet), 1)}
    inventory = build_inventory(fleet, access, {"dbfleet_operator_address": OPERATOR})["all"]
    groups: dict[str, list[str]] = {"all": sorted(inventory["hosts"])}
    hostvars = {h: {**inventory["vars"], **v} for h, v in inventory["hosts"].items()}
    for name, group in inventory["children"].items():
        groups[name] = sorted(group["hosts"])
        for host in group["hosts"]:
            hostvars[host].update(group.get("vars", {}))
    monitor = fleet.monitoring.host
    variables: dict[str, Any] = _trusted(yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()))
    variables.update(hostvars[monitor], groups=groups, hostvars=hostvars, inventory_hostname=monitor,
                     inventory_dir=str(REPO / "inventories" / "local" / "lab"), playbook_dir=str(REPO / "playbooks"),
                     dbfleet_secrets={"operator_metrics_password": PASSWORD})
    text = (ROLE / "templates" / "prometheus.yml.j2").read_text()
    rendered = str(Templar(loader=DataLoader(), variables=variables).template(trust_as_template(text)))
    return rendered, yaml.safe_load(rendered)


def _operator_job(config: dict[str, Any]) -> dict[str, Any]:
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "dbfleet-operator"]
    return job


def test_the_lab_scrapes_the_operator_over_https_with_basic_auth() -> None:
    text, config = _render(load_fleet(REPO / "fleet.example.yaml"))
    job = _operator_job(config)
    assert job["static_configs"] == [{"targets": [f"{OPERATOR}:9640"]}]
    assert job["scheme"] == "https"
    assert job["tls_config"] == {"ca_file": "/etc/prometheus/dbfleet-ca.crt"}
    assert job["basic_auth"] == {"username": "prometheus", "password_file": "/etc/prometheus/dbfleet-operator.password"}
    # prometheus.yml is world-readable (0644): the password lives only in the file Prometheus alone reads.
    assert PASSWORD not in text


def test_plain_http_when_the_spec_asks_for_nothing() -> None:
    text = (REPO / "fleet.example.yaml").read_text()
    plain = text.replace("    tls: true ", "    tls: false", 1)
    plain = plain.replace("    basic_auth: true ", "    basic_auth: false", 1)
    assert plain != text
    job = _operator_job(_render(parse_fleet(plain))[1])
    assert "scheme" not in job and "tls_config" not in job and "basic_auth" not in job


@pytest.mark.parametrize("username", ["scraper.one", "a-b_c"])
def test_the_username_is_quoted_for_yaml(username: str) -> None:
    text = (REPO / "fleet.example.yaml").read_text()
    named = text.replace("    basic_auth: true ", f"    username: {username}\n    basic_auth: true ", 1)
    assert _operator_job(_render(parse_fleet(named))[1])["basic_auth"]["username"] == username
