#!/usr/bin/python
"""Ansible module: etcd v3 authentication for Patroni, through etcd's JSON gateway over TLS.

Makes sure `root` exists with the root role, a user for Patroni exists with
its password, a role of the same name may read and write the keys below one
prefix (Patroni's namespace) and nothing else, and authentication is on. Each
step is done only when what etcd reports differs, so a second run changes
nothing. Passwords travel in request bodies over TLS, never on a command line.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: etcd_auth
short_description: Ensure etcd v3 authentication with a read-write user below one key prefix
description:
  - Through etcd's JSON gateway over TLS, makes sure C(root) exists with the root role, a user exists with its
    password, a role of the same name may read and write only the keys below one prefix, and authentication is on.
  - Each step runs only when what etcd reports differs, so a second run changes nothing.
options:
  url: {description: A member's client URL, type: str, required: true}
  ca_file: {description: CA certificate that signed the member's certificate, type: path, required: true}
  root_password: {description: Password of etcd's root user, type: str, required: true, no_log: true}
  user: {description: The user to create, type: str, required: true}
  password: {description: Its password, type: str, required: true, no_log: true}
  prefix: {description: Key prefix the user may read and write, type: str, required: true}
"""

EXAMPLES = r"""
- etcd_auth:
    url: https://127.0.0.1:2379
    ca_file: /etc/etcd/tls/ca.crt
    root_password: "{{ etcd_root_password }}"
    user: patroni
    password: "{{ etcd_patroni_password }}"
    prefix: /dbfleet/
"""

RETURN = r"""
changes: {description: What was done, in order, type: list, returned: always}
"""

NOT_ENABLED = "authentication is not enabled"
NOT_FOUND = ("user name not found", "role name not found")


class EtcdError(Exception):
    """etcd answered with an error."""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (its last byte plus one)."""
    raw = prefix.encode()
    return raw[:-1].decode() + chr(raw[-1] + 1)


class Gateway:
    def __init__(self, url: str, context: ssl.SSLContext, timeout: float = 10):
        self.url = url.rstrip("/")
        self.context = context
        self.timeout = timeout
        self.token: str | None = None

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = self.token
        request = urllib.request.Request(f"{self.url}/v3/{path}", json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                data = json.loads(exc.read() or b"{}")
            except ValueError:
                data = {}
            raise EtcdError(data.get("error") or data.get("message") or f"HTTP {exc.code}") from None


def authenticate(gateway: Gateway, user: str, password: str) -> str | None:
    """A token, or None when authentication is off."""
    try:
        return str(gateway.call("auth/authenticate", {"name": user, "password": password})["token"])
    except EtcdError as exc:
        if NOT_ENABLED in str(exc):
            return None
        raise


def lookup(gateway: Gateway, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return gateway.call(path, body)
    except EtcdError as exc:
        if any(text in str(exc) for text in NOT_FOUND):
            return None
        raise


def wanted_permission(prefix: str) -> dict[str, str]:
    return {"permType": "READWRITE", "key": b64(prefix), "range_end": b64(prefix_end(prefix))}


def plan(gateway: Gateway, enabled: bool, user: str, password: str, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """The calls that bring etcd to the wanted state, judged from what it reports now."""
    calls: list[tuple[str, dict[str, Any]]] = []
    root = lookup(gateway, "auth/user/get", {"name": "root"})
    if not enabled:
        if root is None:
            calls.append(("auth/user/add", {"name": "root", "password": "<root>"}))
        if root is None or "root" not in root.get("roles", []):
            calls.append(("auth/user/grant", {"user": "root", "role": "root"}))
    role = lookup(gateway, "auth/role/get", {"role": user})
    if role is None:
        calls.append(("auth/role/add", {"name": user}))
    perms = (role or {}).get("perm", [])
    if wanted_permission(prefix) not in perms:
        calls.append(("auth/role/grant", {"name": user, "perm": wanted_permission(prefix)}))
    found = lookup(gateway, "auth/user/get", {"name": user})
    if found is None:
        calls.append(("auth/user/add", {"name": user, "password": "<password>"}))
    elif enabled and not password_works(gateway, user, password):
        calls.append(("auth/user/changepw", {"name": user, "password": "<password>"}))
    if found is None or user not in found.get("roles", []):
        calls.append(("auth/user/grant", {"user": user, "role": user}))
    if not enabled:
        calls.append(("auth/enable", {}))
    return calls


def password_works(gateway: Gateway, user: str, password: str) -> bool:
    probe = Gateway(gateway.url, gateway.context, gateway.timeout)
    try:
        authenticate(probe, user, password)
        return True
    except EtcdError:
        return False


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "ca_file": {"type": "path", "required": True},
            "root_password": {"type": "str", "required": True, "no_log": True},
            "user": {"type": "str", "required": True},
            "password": {"type": "str", "required": True, "no_log": True},
            "prefix": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    if not p["prefix"]:
        module.fail_json(msg="prefix must not be empty: the user would get every key")
    context = ssl.create_default_context(cafile=p["ca_file"])
    gateway = Gateway(p["url"], context)
    secrets = {"<root>": p["root_password"], "<password>": p["password"]}
    try:
        token = authenticate(gateway, "root", p["root_password"])
        gateway.token = token
        calls = plan(gateway, token is not None, p["user"], p["password"], p["prefix"])
        if not module.check_mode:
            for path, body in calls:
                gateway.call(path, {k: secrets.get(v, v) if isinstance(v, str) else v for k, v in body.items()})
    except EtcdError as exc:
        module.fail_json(msg=f"etcd at {p['url']}: {exc}")
    except (urllib.error.URLError, OSError) as exc:
        module.fail_json(msg=f"etcd at {p['url']} unreachable: {exc}")
    module.exit_json(changed=bool(calls), changes=[path.removeprefix("auth/") for path, _ in calls])


if __name__ == "__main__":
    main()
