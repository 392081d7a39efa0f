#!/usr/bin/python
"""Ansible module: make one Sentinel monitor a named master with the wanted settings.

Sentinel owns its config file and rewrites it at run time (peers, replicas,
epochs, the master's address after a failover), so this module works through
Sentinel's commands instead of a template: SENTINEL MONITOR when the master is
unknown, SENTINEL SET for settings that differ. It never moves a monitored
master: where the master is, is Sentinel's decision after the first start.
With `tls`, the connection is TLS and the Sentinel's certificate is checked
against `ca_file`.
"""

from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import redis
except ImportError:  # reported by main(), so the pure logic stays importable
    redis = None  # type: ignore[assignment]

DOCUMENTATION = r"""
module: redis_sentinel_monitor
short_description: Ensure a Sentinel monitors a master with the given settings
description:
  - SENTINEL MONITOR when the master is not monitored yet, SENTINEL SET for settings that differ.
    A monitored master is never moved. Supports check mode.
options:
  name: {description: Master name, type: str, required: true}
  master_host: {description: Master address, used only when the master is not monitored yet, type: str, required: true}
  master_port: {description: Master port, type: int, default: 6379}
  quorum: {description: Sentinels that must agree the master is down, type: int, required: true}
  settings:
    description: SENTINEL SET options, e.g. down-after-milliseconds, failover-timeout, parallel-syncs.
    type: dict
    default: {}
  auth_user: {description: ACL user Sentinel uses on the data nodes, type: str}
  auth_pass: {description: Its password; set when the monitor is created, type: str, no_log: true}
  login_host: {description: Address of the Sentinel to talk to, type: str, default: 127.0.0.1}
  login_port: {description: Its port, type: int, default: 26379}
  login_password: {description: The Sentinel's requirepass, type: str, no_log: true}
  tls: {description: Connect with TLS (the server listens on TLS only), type: bool, default: false}
  ca_file: {description: CA to check the server's certificate against; required with tls, type: path}
"""

EXAMPLES = r"""
- name: Monitor the cache cluster's master from this Sentinel
  redis_sentinel_monitor:
    name: cache
    master_host: 10.0.3.11
    master_port: 6379
    quorum: 2
    settings:
      down-after-milliseconds: 5000
      failover-timeout: 60000
      parallel-syncs: 1
    auth_user: sentinel
    auth_pass: "{{ redis_sentinel_password }}"
    login_port: 26379
    login_password: "{{ redis_sentinel_password }}"
"""

RETURN = r"""
created: {description: Whether SENTINEL MONITOR was issued, type: bool, returned: always}
changes: {description: "Settings set, name -> [old, new]", type: dict, returned: always}
master: {description: Address and port the Sentinel now reports for the master, type: list, returned: always}
"""


def parse_master(reply: list) -> dict[str, str]:
    """SENTINEL MASTER's flat [key, value, ...] reply as a dict of strings."""
    items = [str(x) for x in reply]
    return dict(zip(items[0::2], items[1::2], strict=False))


def settings_to_change(observed: dict[str, str], quorum: int,
                       settings: dict[str, object]) -> dict[str, tuple[str | None, str]]:
    """Wanted settings whose observed value differs: name -> (observed, wanted)."""
    wanted = {"quorum": str(quorum), **{k: str(v) for k, v in settings.items()}}
    return {k: (observed.get(k), v) for k, v in wanted.items() if observed.get(k) != v}


def tls_options(tls: bool, ca_file: str | None) -> dict:
    """redis-py's TLS arguments: the chain checked against ca_file, the host name or address against the
    certificate (redis-py 4 on Debian 12 checks no name unless told to)."""
    if not tls:
        return {}
    return {"ssl": True, "ssl_ca_certs": ca_file, "ssl_cert_reqs": "required", "ssl_check_hostname": True}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "master_host": {"type": "str", "required": True},
            "master_port": {"type": "int", "default": 6379},
            "quorum": {"type": "int", "required": True},
            "settings": {"type": "dict", "default": {}},
            "auth_user": {"type": "str"},
            "auth_pass": {"type": "str", "no_log": True},
            "login_host": {"type": "str", "default": "127.0.0.1"},
            "login_port": {"type": "int", "default": 26379},
            "login_password": {"type": "str", "no_log": True},
            "tls": {"type": "bool", "default": False},
            "ca_file": {"type": "path"},
        },
        required_if=[("tls", True, ["ca_file"])],
        supports_check_mode=True,
    )
    if redis is None:
        module.fail_json(msg=missing_required_lib("redis (Debian: python3-redis)"))
    p = module.params
    client = redis.Redis(host=p["login_host"], port=p["login_port"], password=p["login_password"],
                         socket_timeout=5, socket_connect_timeout=5, decode_responses=True,
                         **tls_options(p["tls"], p["ca_file"]))
    name = p["name"]

    def sentinel(*args: object) -> Any:
        try:
            return client.execute_command("SENTINEL", *args)
        except redis.RedisError as exc:
            module.fail_json(msg=f"sentinel {p['login_host']}:{p['login_port']}: SENTINEL {args[0]} {name}: {exc}")
        return None

    try:
        observed = parse_master(client.execute_command("SENTINEL", "MASTER", name))
        created = False
    except redis.ResponseError as exc:
        if "no such master" not in str(exc).lower():
            module.fail_json(msg=f"sentinel {p['login_host']}:{p['login_port']}: SENTINEL MASTER {name}: {exc}")
        observed, created = {}, True
    except redis.RedisError as exc:
        module.fail_json(msg=f"sentinel {p['login_host']}:{p['login_port']}: unreachable: {exc}")

    changes = settings_to_change(observed, p["quorum"], p["settings"])
    if module.check_mode or not (created or changes):
        module.exit_json(changed=created or bool(changes), created=created, changes=changes,
                         master=[observed.get("ip"), observed.get("port")])

    if created:
        sentinel("MONITOR", name, p["master_host"], p["master_port"], p["quorum"])
        if p["auth_user"]:
            sentinel("SET", name, "auth-user", p["auth_user"])
        if p["auth_pass"]:
            sentinel("SET", name, "auth-pass", p["auth_pass"])
    for key, (_, value) in changes.items():
        if not (created and key == "quorum"):
            sentinel("SET", name, key, value)
    master = sentinel("GET-MASTER-ADDR-BY-NAME", name) or [None, None]
    module.exit_json(changed=True, created=created, changes=changes, master=list(master))


if __name__ == "__main__":
    main()
