"""The Redis roles' pure parts: master discovery, live-config and Sentinel diffs, and the rendered files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from role_support import role_inputs
from role_support import role_module as _module
from role_support import trusted as _trusted

from dbfleet.engines import tls
from dbfleet.inventory import HostAccess, build_inventory, host_roles
from dbfleet.spec import RedisCluster, load_fleet

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "playbooks" / "roles"
SECRET_KEYS = ("redis_admin_password", "redis_app_password", "redis_replication_password",
               "redis_sentinel_password", "redis_monitor_password")



discovery = _module("redis_common", "redis_current_master")
live_config = _module("redis_server", "redis_live_config")
monitor = _module("redis_sentinel", "redis_sentinel_monitor")
converge_state = _module("converge_state", "converge_state")  # configure --fast reads CONFIG, ACL and Sentinel too


# --------------------------------------------------------------------------- master discovery


def test_sentinels_outvote_the_inventory() -> None:
    answers = {"s1": "10.0.0.2", "s2": "10.0.0.2", "s3": None}
    assert discovery.choose_master(answers, {}, "10.0.0.1") == ("10.0.0.2", "sentinel")


def test_sentinel_majority_wins_a_split() -> None:
    answers = {"s1": "10.0.0.2", "s2": "10.0.0.3", "s3": "10.0.0.3"}
    assert discovery.choose_master(answers, {}, "10.0.0.1") == ("10.0.0.3", "sentinel")


def test_replication_state_names_the_master_when_no_sentinel_answers() -> None:
    roles = {"10.0.0.1": {"role": "slave", "master_host": "10.0.0.3"},
             "10.0.0.2": {"role": "slave", "master_host": "10.0.0.3"},
             "10.0.0.3": {"role": "master", "replicas": 2}}
    assert discovery.choose_master({"s1": None}, roles, "10.0.0.1") == ("10.0.0.3", "replication")


def test_replicas_of_an_unreachable_master_still_name_it() -> None:
    roles = {"10.0.0.1": {"role": "slave", "master_host": "10.0.0.3"},
             "10.0.0.2": {"role": "master", "replicas": 0}}
    assert discovery.choose_master({}, roles, "10.0.0.1") == ("10.0.0.3", "replication")


def test_fresh_standalone_nodes_fall_back_to_the_spec() -> None:
    roles = {a: {"role": "master", "replicas": 0} for a in ("10.0.0.1", "10.0.0.2")}
    assert discovery.choose_master({"s1": None}, roles, "10.0.0.1") == ("10.0.0.1", "spec")


# --------------------------------------------------------------------------- live config


@pytest.mark.parametrize("written, reported", [("128mb", "134217728"), ("1gb", "1073741824"), ("0", "0"),
                                                ("yes", "yes"), ("", ""), ("3600 1 300 100", "3600 1 300 100")])
def test_settings_compare_in_config_get_form(written: str, reported: str) -> None:
    assert live_config.settings_to_set({"x": reported}, {"x": written}) == {}


def test_only_differing_settings_are_set() -> None:
    observed = {"maxmemory": "134217728", "maxmemory-policy": "noeviction", "appendonly": "yes"}
    wanted = {"maxmemory": "128mb", "maxmemory-policy": "allkeys-lru", "appendonly": "yes"}
    assert live_config.settings_to_set(observed, wanted) == {"maxmemory-policy": ("noeviction", "allkeys-lru")}


# --------------------------------------------------------------------------- sentinel


def test_sentinel_master_reply_and_changes() -> None:
    observed = monitor.parse_master(["name", "cache", "quorum", "2", "down-after-milliseconds", "30000",
                                     "failover-timeout", "10000", "parallel-syncs", "1"])
    changes = monitor.settings_to_change(observed, 2, {"down-after-milliseconds": 2000, "failover-timeout": 10000,
                                                       "parallel-syncs": 1})
    assert changes == {"down-after-milliseconds": ("30000", "2000")}
    assert monitor.settings_to_change(observed, 3, {}) == {"quorum": ("2", "3")}


# --------------------------------------------------------------------------- rendered files



def _render(role: str, template: str, host: str, task_vars: dict[str, str] | None = None,
            **cluster_overrides: Any) -> str:
    """Render a role template with the role defaults (and redis_common's, which the server and Sentinel roles
    depend on), the inventory's vars for `host` and the task's vars."""
    fleet = load_fleet(REPO / "fleet.example.yaml")
    access = {h: HostAccess(f"10.0.0.{i}") for i, h in enumerate(host_roles(fleet), 1)}
    inventory = build_inventory(fleet, access)["all"]
    variables: dict[str, Any] = {}
    for defaults in ("redis_common", role) if role != "redis_exporter" else (role,):
        variables.update(_trusted(yaml.safe_load((ROLES / defaults / "defaults" / "main.yml").read_text())))
    variables.update(inventory["vars"], **inventory["hosts"][host],
                     **role_inputs(fleet.cluster("cache"), **cluster_overrides),
                     dbfleet_secrets={k: f"secret-{k}" for k in SECRET_KEYS}, **_trusted(task_vars or {}))
    text = (ROLES / role / "templates" / template).read_text()
    return str(Templar(loader=DataLoader(), variables=variables).template(trust_as_template(text)))


def _settings(conf: str) -> dict[str, str]:
    pairs = (line.split(" ", 1) for line in conf.splitlines() if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


@pytest.mark.parametrize("persistence, save, appendonly", [
    ("rdb", "3600 1 300 100 60 10000", "no"), ("aof", '""', "yes"),
    ("rdb+aof", "3600 1 300 100 60 10000", "yes"), ("none", '""', "no")])
def test_persistence_follows_the_spec(persistence: str, save: str, appendonly: str) -> None:
    conf = _settings(_render("redis_server", "dbfleet.conf.j2", "redis-2", persistence=persistence))
    assert (conf["save"], conf["appendonly"]) == (save, appendonly)


def test_data_node_binds_loopback_and_its_own_address_only() -> None:
    conf = _settings(_render("redis_server", "dbfleet.conf.j2", "redis-2"))
    fleet = load_fleet(REPO / "fleet.example.yaml")
    address = f"10.0.0.{list(host_roles(fleet)).index('redis-2') + 1}"
    assert conf["bind"] == f"127.0.0.1 {address}"
    assert conf["protected-mode"] == "yes"
    assert (conf["maxmemory"], conf["maxmemory-policy"]) == ("128mb", "allkeys-lru")
    assert (conf["min-replicas-to-write"], conf["min-replicas-max-lag"]) == ("1", "5")
    assert conf["masteruser"] == "replicator"
    assert conf["activedefrag"] == "no"


def test_activedefrag_follows_the_spec() -> None:
    conf = _settings(_render("redis_server", "dbfleet.conf.j2", "redis-2",
                             maintenance={"fragmentation": {"activedefrag": True}}))
    assert conf["activedefrag"] == "yes"


def test_acl_file_switches_default_off_and_stores_only_hashes() -> None:
    acl = _render("redis_server", "users.acl.j2", "redis-1")
    users = {line.split()[1]: line for line in acl.splitlines() if line}
    assert set(users) == {"default", "dbfleet_admin", "app", "replicator", "sentinel", "dbfleet_monitor"}
    assert " off " in users["default"] and " on " not in users["default"]
    assert "secret-" not in acl
    digest = hashlib.sha256(b"secret-redis_app_password").hexdigest()
    assert f"#{digest}" in users["app"] and "-@dangerous" in users["app"]
    assert all(line.startswith("user ") for line in acl.splitlines() if line), "ACL files take no comments"


def test_sentinel_base_binds_its_address_and_requires_a_password() -> None:
    conf = _render("redis_sentinel", "sentinel.conf.j2", "sentinel-1", tls=PLAIN)
    assert conf.startswith("# dbfleet: Sentinel base config")
    lines = conf.splitlines()
    assert "port 26379" in lines and "protected-mode yes" in lines
    assert any(line.startswith("bind 127.0.0.1 10.0.0.") and len(line.split()) == 3 for line in lines)
    assert 'requirepass "secret-redis_sentinel_password"' in lines
    assert not any(line.startswith("sentinel monitor") for line in lines), "the monitor is set with SENTINEL MONITOR"


# --------------------------------------------------------------------------- TLS (issue 17)

PLAIN = {"enabled": False, "ca_cert": None, "ca_key": None}
TLS_ON = {**PLAIN, "enabled": True}
CA = tls.REDIS_HOST_CA
TLS_DIR = CA.rsplit("/", 1)[0]


def test_a_tls_data_node_has_no_plaintext_port_and_replicates_over_tls() -> None:
    """Issue 17: Redis had no TLS, so ACL, replication and Sentinel passwords crossed the network in clear."""
    conf = _settings(_render("redis_server", "dbfleet.conf.j2", "redis-2", tls=TLS_ON))
    assert (conf["port"], conf["tls-port"]) == ("0", "6379")
    assert (conf["tls-cert-file"], conf["tls-key-file"], conf["tls-ca-cert-file"]) == (
        f"{TLS_DIR}/server.crt", f"{TLS_DIR}/server.key", CA)
    assert (conf["tls-replication"], conf["tls-auth-clients"]) == ("yes", "no")


def test_a_plaintext_data_node_says_so_explicitly() -> None:
    """tls-port 0: a TLS port that CONFIG REWRITE once recorded in redis.conf cannot come back."""
    conf = _settings(_render("redis_server", "dbfleet.conf.j2", "redis-2", tls=PLAIN))
    assert (conf["port"], conf["tls-port"], conf["tls-replication"]) == ("6379", "0", "no")
    assert "tls-cert-file" not in conf


def test_a_tls_sentinel_listens_on_tls_only_and_talks_tls_to_nodes_and_peers() -> None:
    lines = _render("redis_sentinel", "sentinel.conf.j2", "sentinel-1", tls=TLS_ON).splitlines()
    for line in ("port 0", "tls-port 26379", f"tls-cert-file {TLS_DIR}/server.crt",
                 f"tls-key-file {TLS_DIR}/server.key", f"tls-ca-cert-file {CA}", "tls-replication yes",
                 "tls-auth-clients no"):
        assert line in lines, line
    plain = _render("redis_sentinel", "sentinel.conf.j2", "sentinel-1", tls=PLAIN).splitlines()
    assert "port 26379" in plain and not any(line.startswith("tls-") for line in plain)


@pytest.mark.parametrize("address_var, address", [("redis_exporter_address", "rediss://localhost:6379"),
                                                   ("redis_exporter_sentinel_address", "rediss://localhost:26379")])
def test_the_exporters_dial_tls_and_check_the_certificate_against_the_fleet_ca(address_var: str, address: str) -> None:
    # The task's vars, as redis_exporter/tasks/main.yml passes them for each exporter.
    task_vars = {"exporter_address": f"{{{{ {address_var} }}}}", "exporter_user": "", "exporter_password": "pw",
                 "exporter_listen_address": "10.0.0.2:9121"}
    env = _render("redis_exporter", "exporter.default.j2", "redis-2", task_vars, tls=TLS_ON)
    values = dict(line.split("=", 1) for line in env.splitlines() if "=" in line and not line.startswith("#"))
    assert values["REDIS_ADDR"] == address
    args = values["ARGS"].strip('"').split()
    assert f"-tls-ca-cert-file={CA}" in args and "-skip-tls-verification" not in args
    plain = _render("redis_exporter", "exporter.default.j2", "redis-2", task_vars, tls=PLAIN)
    assert f"REDIS_ADDR={address.replace('rediss', 'redis')}" in plain.splitlines() and "tls" not in plain


@pytest.mark.parametrize("module", [discovery, live_config, monitor, converge_state], ids=lambda m: m.__name__)
def test_each_role_module_connects_with_the_operators_tls_options(module: ModuleType) -> None:
    """The modules run on the hosts (no dbfleet there): their options are checked against engines.tls here.
    redis-py 4 on Debian 12 checks no host name unless asked, so they ask."""
    example = load_fleet(REPO / "fleet.example.yaml").cluster("cache")
    assert isinstance(example, RedisCluster)
    cluster = example.model_copy(update={"tls": example.tls.model_copy(update={"enabled": True})})
    assert module.tls_options(True, CA) == tls.redis_client_tls(cluster, CA)
    assert module.tls_options(False, CA) == {}


def test_a_file_of_servers_set_up_the_other_way_than_tls_enabled_is_named() -> None:
    """redis_tls_other_way (redis_common's refusal to switch in place): slurp's results, content in base64."""
    import base64
    import importlib.util

    found = importlib.util.spec_from_file_location("dbfleet_redis", REPO / "playbooks/filter_plugins/dbfleet_redis.py")
    assert found and found.loader
    filters = importlib.util.module_from_spec(found)
    found.loader.exec_module(filters)

    def read(path: str, text: str | None) -> dict[str, Any]:
        return {"item": path} | ({"content": base64.b64encode(text.encode()).decode()} if text is not None else {})

    managed, sentinel, marker = "/etc/redis/dbfleet.conf", "/etc/redis/sentinel.conf", "# Managed by dbfleet"
    tls_files = [read(managed, "port 0\ntls-replication yes\n"), read(sentinel, f"{marker}\ntls-replication yes\n")]
    plain_files = [read(managed, "port 6379\n"), read(sentinel, f"{marker}\nport 26379\n")]
    assert filters.redis_tls_other_way(tls_files, True, sentinel, marker) == []
    assert filters.redis_tls_other_way(tls_files, False, sentinel, marker) == [managed, sentinel]
    assert filters.redis_tls_other_way(plain_files, True, sentinel, marker) == [managed, sentinel]
    # Debian's Sentinel file (no marker), a missing file, a commented line: nothing to refuse.
    fresh = [read(managed, None), read(sentinel, "port 26379\n"), read(managed, "# tls-replication yes\n")]
    assert filters.redis_tls_other_way(fresh, False, sentinel, marker) == []
    assert filters.redis_tls_other_way(fresh[:2], True, sentinel, marker) == []
