#!/usr/bin/python
"""Ansible module: find a Redis cluster's current master, asking the Sentinels first.

The inventory names the spec's initial primary, which is stale after a
Sentinel failover. This module asks every Sentinel for the master of the
named cluster; when none answers (first deployment), it reads INFO
replication on every data node; when that shows no replication yet, it
returns the fallback (the spec's primary). It never changes anything.
With `tls`, every connection is TLS and checks the server's certificate
chain against `ca_file` and its address against the certificate's names.
"""

from __future__ import annotations

from collections import Counter

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import redis
except ImportError:  # reported by main(), so the pure logic stays importable
    redis = None  # type: ignore[assignment]

DOCUMENTATION = r"""
module: redis_current_master
short_description: Find a Redis cluster's current master
description:
  - Asks the Sentinels (get-master-addr-by-name), then the data nodes (INFO replication),
    then falls back to the given address. Read-only; supports check mode.
options:
  name: {description: Master name in Sentinel (the cluster name), type: str, required: true}
  sentinels: {description: Sentinel addresses, type: list, elements: str, default: []}
  sentinel_port: {description: Sentinel port, type: int, default: 26379}
  sentinel_password: {description: Sentinel requirepass, type: str, no_log: true}
  nodes: {description: Data node addresses, type: list, elements: str, default: []}
  port: {description: Data node port, type: int, default: 6379}
  login_user: {description: ACL user on the data nodes, type: str}
  login_password: {description: Its password, type: str, no_log: true}
  fallback: {description: Address to use when nothing shows a master yet, type: str, required: true}
  timeout: {description: Seconds to wait for each answer, type: float, default: 2}
  tls: {description: Connect with TLS (the servers listen on TLS only), type: bool, default: false}
  ca_file: {description: CA to check the servers' certificates against; required with tls, type: path}
"""

EXAMPLES = r"""
- name: Find the cache cluster's master (Sentinels, then the data nodes, then the spec's primary)
  redis_current_master:
    name: cache
    sentinels: [10.0.3.21, 10.0.3.22, 10.0.3.23]
    nodes: [10.0.3.11, 10.0.3.12, 10.0.3.13]
    login_user: dbfleet_admin
    login_password: "{{ redis_admin_password }}"
    fallback: 10.0.3.11
  register: redis_common_discovered
"""

RETURN = r"""
address: {description: The master's address, type: str, returned: always}
source: {description: "sentinel, replication or spec", type: str, returned: always}
sentinel_answers: {description: Address (or null) per Sentinel, type: dict, returned: always}
node_roles: {description: Role per reachable data node (master, or replica of an address), type: dict, returned: always}
"""


def choose_master(sentinel_answers: dict, node_roles: dict, fallback: str) -> tuple[str, str]:
    """Pick the master from what was observed; return (address, source).

    sentinel_answers: Sentinel address -> master address it reports, or None.
    node_roles: data node address -> {"role": "master", "replicas": n} or
                {"role": "slave", "master_host": address}; unreachable nodes are absent.
    Sentinels win (most votes); then a master that has replicas, or the address
    most replicas point at; then the fallback.
    """
    votes = Counter(a for a in sentinel_answers.values() if a)
    if votes:
        return votes.most_common(1)[0][0], "sentinel"
    serving = sorted(addr for addr, r in node_roles.items() if r.get("role") == "master" and r.get("replicas", 0) > 0)
    if len(serving) == 1:
        return serving[0], "replication"
    pointed = Counter(r["master_host"] for r in node_roles.values()
                      if r.get("role") == "slave" and r.get("master_host"))
    if pointed:
        return pointed.most_common(1)[0][0], "replication"
    return fallback, "spec"


def tls_options(tls: bool, ca_file: str | None) -> dict:
    """redis-py's TLS arguments: the chain checked against ca_file, the host name or address against the
    certificate (redis-py 4 on Debian 12 checks no name unless told to)."""
    if not tls:
        return {}
    return {"ssl": True, "ssl_ca_certs": ca_file, "ssl_cert_reqs": "required", "ssl_check_hostname": True}


def _ask_sentinel(address: str, port: int, password: str | None, name: str, timeout: float,
                  tls: dict) -> str | None:
    client = redis.Redis(host=address, port=port, password=password, socket_timeout=timeout,
                         socket_connect_timeout=timeout, decode_responses=True, **tls)
    try:
        answer = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
    except redis.RedisError:
        return None
    finally:
        client.close()
    return answer[0] if answer else None


def _node_role(address: str, port: int, user: str | None, password: str | None, timeout: float,
               tls: dict) -> dict | None:
    client = redis.Redis(host=address, port=port, username=user, password=password, socket_timeout=timeout,
                         socket_connect_timeout=timeout, decode_responses=True, **tls)
    try:
        info = client.info("replication")
    except redis.RedisError:
        return None
    finally:
        client.close()
    if info.get("role") == "slave":
        return {"role": "slave", "master_host": info.get("master_host")}
    return {"role": "master", "replicas": int(info.get("connected_slaves", 0))}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "sentinels": {"type": "list", "elements": "str", "default": []},
            "sentinel_port": {"type": "int", "default": 26379},
            "sentinel_password": {"type": "str", "no_log": True},
            "nodes": {"type": "list", "elements": "str", "default": []},
            "port": {"type": "int", "default": 6379},
            "login_user": {"type": "str"},
            "login_password": {"type": "str", "no_log": True},
            "fallback": {"type": "str", "required": True},
            "timeout": {"type": "float", "default": 2.0},
            "tls": {"type": "bool", "default": False},
            "ca_file": {"type": "path"},
        },
        required_if=[("tls", True, ["ca_file"])],
        supports_check_mode=True,
    )
    if redis is None:
        module.fail_json(msg=missing_required_lib("redis (Debian: python3-redis)"))
    p = module.params
    tls = tls_options(p["tls"], p["ca_file"])
    answers = {s: _ask_sentinel(s, p["sentinel_port"], p["sentinel_password"], p["name"], p["timeout"], tls)
               for s in p["sentinels"]}
    roles = {}
    if not any(answers.values()):
        for node in p["nodes"]:
            role = _node_role(node, p["port"], p["login_user"], p["login_password"], p["timeout"], tls)
            if role is not None:
                roles[node] = role
    address, source = choose_master(answers, roles, p["fallback"])
    module.exit_json(changed=False, address=address, source=source, sentinel_answers=answers, node_roles=roles)


if __name__ == "__main__":
    main()
