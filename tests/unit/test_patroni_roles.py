"""The ha: patroni roles' pure parts: Patroni's configuration as data, the DCS diff, etcd's RBAC plan, HAProxy.

Templates are rendered with the role defaults and the inventory's vars, as in
test_redis_roles.py; the modules' decisions are tested on plain values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.yaml.loader import AnsibleLoader
from ansible.template import Templar, trust_as_template
from role_support import role_module as _module
from role_support import trusted as _trusted

from dbfleet.engines.patroni import dynamic_config
from dbfleet.inventory import HostAccess, build_inventory, cluster_group, inventory_roles, standby_group
from dbfleet.inventory_format import inventory_yaml
from dbfleet.spec import PostgresCluster, load_fleet, parse_fleet

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "playbooks" / "roles"
SPEC_TEXT = (REPO / "fleet.example.yaml").read_text()
FLEET = load_fleet(REPO / "fleet.example.yaml")
sys.path.insert(0, str(REPO / "playbooks" / "filter_plugins"))
import dbfleet_postgres as filters  # noqa: E402

ETCD_AUTH = _module("etcd", "etcd_auth")
PATRONI_CONFIG = _module("patroni", "patroni_config")



def _variables(host: str, fleet_text: str = SPEC_TEXT) -> dict[str, Any]:
    fleet = parse_fleet(fleet_text)
    access = {h: HostAccess(f"10.0.0.{i}") for i, h in enumerate(inventory_roles(fleet), 1)}
    # As Ansible reads it: the hosts.yml text dbfleet writes, spec strings `!unsafe`, through Ansible's loader.
    inventory = AnsibleLoader(inventory_yaml(build_inventory(fleet, access))).get_single_data()["all"]
    groups = {name: list(group["hosts"]) for name, group in inventory["children"].items()}
    hostvars = {h: {**v, "inventory_hostname": h} for h, v in inventory["hosts"].items()}
    variables: dict[str, Any] = {}
    for role in ("postgres_server", "patroni", "haproxy", "etcd"):
        variables.update(_trusted(yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())))
    group_vars = inventory["children"][cluster_group("pg-main")]["vars"]
    variables.update(inventory["vars"], **hostvars[host], **group_vars, groups=groups, hostvars=hostvars,
                     dbfleet_secrets={k: f"secret-{k}" for k in (
                         "postgres_superuser_password", "postgres_replication_password", "postgres_app_password",
                         "postgres_monitor_password", "patroni_rest_password", "etcd_patroni_password",
                         "etcd_root_password")})
    return variables


def _render(role: str, template: str, host: str, extra: dict[str, Any] | None = None,
            fleet_text: str = SPEC_TEXT) -> str:
    variables = {**_variables(host, fleet_text), **(extra or {})}
    templar = Templar(loader=DataLoader(), variables=variables)
    templar.environment.filters.update(filters.FilterModule().filters())
    text = (ROLES / role / "templates" / template).read_text()
    return str(templar.template(trust_as_template(text)))


def _patroni_config(host: str = "pg-2", parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    cluster = FLEET.cluster("pg-main")
    assert isinstance(cluster, PostgresCluster)
    dcs = filters.patroni_dcs(dynamic_config(cluster), parameters or {"max_connections": 100})
    extra = {"patroni_etcd_members": ["pg-1", "pg-2", "pg-3"], "patroni_dcs_wanted": dcs}
    return yaml.safe_load(_render("patroni", "config.yml.j2", host, extra))


def test_patroni_config_names_the_member_its_api_its_etcd_and_its_server() -> None:
    config = _patroni_config("pg-2")
    address = config["restapi"]["connect_address"].split(":")[0]
    assert (config["scope"], config["name"], config["namespace"]) == ("pg-main", "pg-2", "/dbfleet/")
    assert config["restapi"]["listen"] == f"{address}:8008"
    assert config["restapi"]["certfile"] == "/etc/postgresql/tls/server.crt"
    assert config["restapi"]["authentication"] == {"username": "patroni", "password": "secret-patroni_rest_password"}
    etcd = config["etcd3"]
    assert etcd["protocol"] == "https" and len(etcd["hosts"]) == 3 and all(h.endswith(":2379") for h in etcd["hosts"])
    assert (etcd["username"], etcd["password"]) == ("patroni", "secret-etcd_patroni_password")
    assert etcd["cacert"] == "/etc/postgresql/tls/ca.crt" and "cert" not in etcd
    pg = config["postgresql"]
    assert pg["listen"] == f"127.0.0.1,{address}:5432"
    assert pg["data_dir"] == "/var/lib/postgresql/15/main" and pg["config_dir"] == "/etc/postgresql/15/main"
    assert pg["create_replica_methods"] == ["pgbackrest", "basebackup"]
    assert pg["pgbackrest"]["command"].startswith("pgbackrest --stanza=pg-main ") and pg["pgbackrest"]["keep_data"]
    assert pg["authentication"]["replication"]["sslmode"] == "verify-full"
    assert pg["parameters"]["hba_file"] == "/etc/postgresql/15/main/pg_hba.conf" and pg["parameters"]["ssl"] == "on"
    assert "data-checksums" in config["bootstrap"]["initdb"]


def test_patroni_replication_and_rewind_connections_verify_the_server_against_the_fleet_ca() -> None:
    """Replicas Patroni starts stream with `replication`, and pg_rewind connects as `superuser` (there is no
    `rewind` user): without require_auth in Debian 12's libpq 15, verify-full against the fleet CA is what keeps
    the passwords from a server that is not the cluster's."""
    authentication = _patroni_config("pg-2")["postgresql"]["authentication"]
    assert "rewind" not in authentication
    for user in ("replication", "superuser"):
        assert (authentication[user]["sslmode"], authentication[user]["sslrootcert"]) == (
            "verify-full", "/etc/postgresql/tls/ca.crt"), user


def test_bootstrap_dcs_carries_the_spec_timings_sync_mode_and_failsafe() -> None:
    dcs = _patroni_config()["bootstrap"]["dcs"]
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (6, 1, 2)
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is False
    assert dcs["synchronous_node_count"] == 1 and dcs["failsafe_mode"] is True
    assert dcs["postgresql"]["use_pg_rewind"] is True and dcs["postgresql"]["parameters"] == {"max_connections": 100}


def test_a_parameter_value_is_data_in_patroni_config_never_yaml() -> None:
    hostile = "x'\n  evil: {{ 7 * 7 }}\nttl: 1"
    dcs = _patroni_config(parameters={"application_name": hostile})["bootstrap"]["dcs"]
    assert dcs["postgresql"]["parameters"]["application_name"] == hostile
    assert dcs["ttl"] == 6 and "evil" not in dcs


def test_pg_parameters_spell_booleans_as_postgres_does() -> None:
    assert filters.pg_parameters({"hot_standby": True, "fsync": False, "max_connections": 5, "x": "on"}) == {
        "hot_standby": "on", "fsync": "off", "max_connections": 5, "x": "on"}


def test_the_leader_is_the_first_answering_patronis_and_only_one_of_the_servers() -> None:
    """patroni_leader (the patroni role's discover): the hosts' GET /cluster results in host order."""
    def seen(leader: str, status: int = 200) -> dict[str, Any]:
        return {"status": status, "json": {"members": [{"name": "pg-9", "role": "replica"},
                                                       {"name": leader, "role": "leader"}]}}
    servers = ["pg-1", "pg-2", "pg-3"]
    assert filters.patroni_leader([{"status": -1}, seen("pg-2"), seen("pg-3")], servers) == "pg-2"
    assert filters.patroni_leader([seen("pg-1", status=503), seen("pg-3")], servers) == "pg-3"
    assert filters.patroni_leader([seen("etcd-1"), seen("pg-1")], servers) == "pg-1"  # not a server: the next
    assert filters.patroni_leader([{}, {"status": 200, "json": {"members": []}}], servers) == ""
    assert filters.patroni_leader([], servers) == ""


def test_the_dcs_diff_patches_only_what_differs_and_drops_parameters_no_longer_wanted() -> None:
    module = PATRONI_CONFIG
    current = {"ttl": 30, "loop_wait": 10, "check_timeline": False,
               "postgresql": {"use_pg_rewind": True, "parameters": {"max_connections": 100, "work_mem": "4MB"}}}
    wanted = {"ttl": 8, "loop_wait": 10, "postgresql": {"use_pg_rewind": True,
                                                       "parameters": {"max_connections": 200}}}
    patch = module.config_changes(current, wanted)
    assert patch == {"ttl": 8, "postgresql": {"parameters": {"max_connections": 200, "work_mem": None}}}
    after = module.patched(current, patch)
    assert after["postgresql"]["parameters"] == {"max_connections": 200} and after["check_timeline"] is False
    assert module.config_changes(after, wanted) == {}, "a second run changes nothing"


class FakeEtcd:
    """etcd's auth store as the JSON gateway shows it (in-process, for the plan only)."""

    def __init__(self, users: dict[str, list[str]], roles: dict[str, list[dict[str, str]]]):
        self.users, self.roles = users, roles

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        module = ETCD_AUTH
        if path == "auth/user/get":
            if body["name"] not in self.users:
                raise module.EtcdError("etcdserver: user name not found")
            return {"roles": self.users[body["name"]]}
        if path == "auth/role/get":
            if body["role"] not in self.roles:
                raise module.EtcdError("etcdserver: role name not found")
            return {"perm": self.roles[body["role"]]}
        raise AssertionError(path)


def test_etcd_auth_plan_on_a_fresh_cluster_creates_root_the_user_its_role_and_enables_auth() -> None:
    module = ETCD_AUTH
    calls = [path for path, _ in module.plan(FakeEtcd({}, {}), False, "patroni", "pw", "/dbfleet/")]
    assert calls == ["auth/user/add", "auth/user/grant", "auth/role/add", "auth/role/grant", "auth/user/add",
                     "auth/user/grant", "auth/enable"]
    grant = dict(module.plan(FakeEtcd({}, {}), False, "patroni", "pw", "/dbfleet/"))["auth/role/grant"]
    assert grant["perm"]["permType"] == "READWRITE"
    assert module.b64("/dbfleet0") == grant["perm"]["range_end"], "the range ends right after the prefix"


def test_etcd_auth_plan_with_everything_in_place_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    module = ETCD_AUTH
    monkeypatch.setattr(module, "password_works", lambda *a: True)
    etcd = FakeEtcd({"root": ["root"], "patroni": ["patroni"]}, {"patroni": [module.wanted_permission("/dbfleet/")]})
    assert module.plan(etcd, True, "patroni", "pw", "/dbfleet/") == []
    monkeypatch.setattr(module, "password_works", lambda *a: False)
    assert [p for p, _ in module.plan(etcd, True, "patroni", "pw", "/dbfleet/")] == ["auth/user/changepw"]


def test_etcd_member_settings_use_tls_for_peers_and_clients() -> None:
    text = _render("etcd", "etcd.default.j2", "pg-1", {"etcd_members": ["pg-1", "pg-2", "pg-3"]})
    settings = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert settings["ETCD_NAME"] == '"pg-1"'
    assert settings["ETCD_INITIAL_CLUSTER"].count("https://") == 3
    assert settings["ETCD_PEER_CLIENT_CERT_AUTH"] == '"true"' and "ETCD_PEER_TRUSTED_CA_FILE" in settings
    assert "ETCD_TRUSTED_CA_FILE" not in settings, "etcd 3.4's gateway refuses client certificates with auth on"
    assert all(url.startswith("https://") for key in ("ETCD_LISTEN_CLIENT_URLS", "ETCD_LISTEN_PEER_URLS")
               for url in settings[key].strip('"').split(","))


def test_haproxy_checks_patroni_over_tls_on_both_ports() -> None:
    cfg = _render("haproxy", "haproxy.cfg.j2", "pg-1")
    assert "listen pg-main-rw" in cfg and "listen pg-main-ro" in cfg
    assert "http-check send meth GET uri /primary" in cfg
    assert "http-check send meth GET uri /replica?lag=16MB" in cfg
    servers = [line.split() for line in cfg.splitlines() if line.strip().startswith("server ")]
    assert len(servers) == 6 and all(s[s.index("port") + 1] == "8008" for s in servers)
    assert "check-ssl verify required ca-file /etc/haproxy/tls/ca.crt" in cfg
    assert "on-marked-down shutdown-sessions" in cfg
    assert cfg.count("tcp-request connection reject if !{ src -f /etc/haproxy/dbfleet-clients.lst }") == 2


def test_the_haproxy_allowlist_is_the_fleet_the_operator_and_allowed_clients() -> None:
    text = SPEC_TEXT.replace("    databases: [app]\n", "    databases: [app]\n    allowed_clients: [10.9.0.0/16]\n")
    listed = _render("haproxy", "clients.lst.j2", "pg-1", {"dbfleet_operator_address": "10.0.0.254"},
                     fleet_text=text).splitlines()
    assert "10.9.0.0/16" in listed and "10.0.0.254/32" in listed and "127.0.0.1/32" in listed
    assert not any(line.startswith("0.0.0.0") for line in listed)


def test_inventory_groups_for_patroni_etcd_and_haproxy() -> None:
    text = SPEC_TEXT.replace("      # etcd: {hosts: [pg-1, pg-2, pg-3]}", "      etcd: {hosts: [pg-1, pg-2, etcd-3]}")
    text = text.replace("{rw_port: 5000, ro_port: 5001}", "{hosts: [proxy-1], rw_port: 5000, ro_port: 5001}")
    fleet = parse_fleet(text)
    access = {h: HostAccess(f"10.0.0.{i}") for i, h in enumerate(inventory_roles(fleet), 1)}
    groups = build_inventory(fleet, access)["all"]["children"]
    # The standby site (pg-dr-1) runs Patroni and a one-member etcd of its own, in a site group of its own.
    assert set(groups["patroni"]["hosts"]) == {"pg-1", "pg-2", "pg-3", "pg-dr-1"}
    assert set(groups["etcd"]["hosts"]) == {"pg-1", "pg-2", "etcd-3", "pg-dr-1"}
    assert set(groups["haproxy"]["hosts"]) == {"proxy-1"}
    assert {"etcd-3", "proxy-1"} <= set(groups[cluster_group("pg-main")]["hosts"])
    assert "pg-dr-1" not in groups[cluster_group("pg-main")]["hosts"]
    assert set(groups[standby_group("pg-main")]["hosts"]) == {"pg-dr-1"}
    site = groups[standby_group("pg-main")]["vars"]
    assert site["patroni_scope"] == "pg-main-dr" and site["pgbackrest_standby_site"] is True
    follows = [access[h].address for h in ("pg-1", "pg-2", "pg-3")]
    assert site["patroni_standby_cluster"]["host"] == ",".join(follows)
    assert "--repo=2" in site["patroni_restore_command"] and "--repo=2" in site["patroni_replica_command"]
    primary = groups[cluster_group("pg-main")]["vars"]
    assert primary["patroni_scope"] == "pg-main" and primary["patroni_standby_cluster"] == {}
    assert "--repo" not in primary["patroni_restore_command"]
    assert "postgres" not in [g for g, v in groups.items() if "etcd-3" in v["hosts"]]
    dcs = groups[cluster_group("pg-main")]["vars"]["patroni_dynamic_config"]
    assert json.dumps(dcs) and dcs["ttl"] == 6
