#!/usr/bin/python
"""Ansible module: make a running Redis's settings equal the wanted ones, in one round trip.

community.general.redis sets one parameter per call; a data node has a dozen
managed settings, and one call each made a converge slow. This module reads
them all with one CONFIG GET, sets only those that differ with one CONFIG SET
(atomic in Redis 7), and reports what changed. Secret settings (masterauth)
are compared and set the same way but never shown. With `tls`, the
connection is TLS and the server's certificate is checked against `ca_file`.
"""

from __future__ import annotations

import re

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import redis
except ImportError:  # reported by main(), so the pure logic stays importable
    redis = None  # type: ignore[assignment]

DOCUMENTATION = r"""
module: redis_live_config
short_description: Apply Redis settings with CONFIG SET when they differ
description:
  - Reads the settings with CONFIG GET and sets the ones that differ with one CONFIG SET, so a change
    needs no restart. An unknown setting fails. Supports check mode.
options:
  settings: {description: Setting name -> value as written in redis.conf, type: dict, default: {}}
  secret_settings: {description: Same, for values never to be shown, type: dict, default: {}, no_log: true}
  login_host: {description: Address of the Redis node to talk to, type: str, default: 127.0.0.1}
  login_port: {description: Its port, type: int, default: 6379}
  login_user: {description: ACL user allowed CONFIG, type: str}
  login_password: {description: Its password, type: str, no_log: true}
  tls: {description: Connect with TLS (the server listens on TLS only), type: bool, default: false}
  ca_file: {description: CA to check the server certificate against; required with tls, type: path}
"""

EXAMPLES = r"""
- name: Apply the managed settings to the running node
  redis_live_config:
    settings:
      maxmemory: 256mb
      maxmemory-policy: allkeys-lru
    secret_settings:
      masterauth: "{{ redis_replication_password }}"
    login_port: 6379
    login_user: dbfleet_admin
    login_password: "{{ redis_admin_password }}"
    tls: true
    ca_file: /etc/redis/tls/ca.crt
"""

RETURN = r"""
changes:
  description: "name -> [old, new] for each setting set; secrets show as (secret)"
  type: dict
  returned: always
"""

UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "k": 1000, "m": 1000**2, "g": 1000**3}
MEMORY = re.compile(r"^(\d+)(b|kb|mb|gb|k|m|g)$", re.IGNORECASE)


def canonical(value: object) -> str:
    """A setting as CONFIG GET reports it: memory sizes in bytes, '' for an empty value."""
    text = str(value).strip()
    match = MEMORY.match(text)
    if match:
        return str(int(match.group(1)) * UNITS[match.group(2).lower()])
    return text


def settings_to_set(observed: dict[str, str], wanted: dict[str, object]) -> dict[str, tuple[str | None, str]]:
    """Wanted settings whose running value differs: name -> (observed, wanted), canonical form."""
    out = {}
    for name, value in wanted.items():
        want = canonical(value)
        have = observed.get(name)
        if have is None or canonical(have) != want:
            out[name] = (have, want)
    return out


def tls_options(tls: bool, ca_file: str | None) -> dict:
    """redis-py's TLS arguments: the chain checked against ca_file, the host name or address against the
    certificate (redis-py 4 on Debian 12 checks no name unless told to)."""
    if not tls:
        return {}
    return {"ssl": True, "ssl_ca_certs": ca_file, "ssl_cert_reqs": "required", "ssl_check_hostname": True}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "settings": {"type": "dict", "default": {}},
            "secret_settings": {"type": "dict", "default": {}, "no_log": True},
            "login_host": {"type": "str", "default": "127.0.0.1"},
            "login_port": {"type": "int", "default": 6379},
            "login_user": {"type": "str"},
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
    where = f"redis {p['login_host']}:{p['login_port']}"
    client = redis.Redis(host=p["login_host"], port=p["login_port"], username=p["login_user"],
                         password=p["login_password"], socket_timeout=10, socket_connect_timeout=5,
                         decode_responses=True, **tls_options(p["tls"], p["ca_file"]))
    wanted = {**p["settings"], **p["secret_settings"]}
    try:
        reply = client.execute_command("CONFIG", "GET", *wanted) if wanted else []
    except redis.RedisError as exc:
        module.fail_json(msg=f"{where}: CONFIG GET: {exc}")
    observed = dict(zip(reply[0::2], reply[1::2], strict=False)) if isinstance(reply, list) else dict(reply)
    unknown = sorted(set(wanted) - set(observed))
    if unknown:
        module.fail_json(msg=f"{where}: unknown settings {', '.join(unknown)}")
    todo = settings_to_set(observed, wanted)
    shown = {k: ["(secret)", "(secret)"] if k in p["secret_settings"] else list(v) for k, v in todo.items()}
    if todo and not module.check_mode:
        args = [x for name, (_, value) in todo.items() for x in (name, value)]
        try:
            client.execute_command("CONFIG", "SET", *args)
        except redis.RedisError as exc:
            module.fail_json(msg=f"{where}: CONFIG SET {', '.join(todo)}: {exc}", changes=shown)
    module.exit_json(changed=bool(todo), changes=shown)


if __name__ == "__main__":
    main()
