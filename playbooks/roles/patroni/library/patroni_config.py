#!/usr/bin/python
"""Ansible module: Patroni's dynamic configuration (the DCS `config` key) as wanted, through its REST API.

GET /config, compare, and PATCH only what differs: changed keys, and
PostgreSQL parameters no longer wanted (set to null, since dbfleet owns every
parameter in the DCS). Keys Patroni keeps that the caller does not mention are
left alone. Check mode reports the PATCH without sending it; --diff shows it.
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
module: patroni_config
short_description: Ensure Patroni's dynamic configuration holds the given settings
description:
  - Reads GET /config from a member's REST API and sends PATCH /config with only what differs; PostgreSQL
    parameters no longer wanted are removed (set to null). Keys the caller does not mention are left alone.
  - Check mode reports the PATCH without sending it.
options:
  url: {description: "A member's REST API, e.g. https://10.0.0.1:8008", type: str, required: true}
  ca_file: {description: CA that signed the API's certificate, type: path, required: true}
  user: {description: REST API user (PATCH needs it), type: str, required: true}
  password: {description: Its password, type: str, required: true, no_log: true}
  config: {description: The wanted settings (a subset of the DCS configuration), type: dict, required: true}
"""

EXAMPLES = r"""
- patroni_config:
    url: https://10.0.0.1:8008
    ca_file: /etc/postgresql/tls/ca.crt
    user: patroni
    password: "{{ patroni_rest_password }}"
    config: {ttl: 30, loop_wait: 10, postgresql: {parameters: {max_connections: 100}}}
"""

RETURN = r"""
patch: {description: The body sent with PATCH /config (or that would be, in check mode), type: dict, returned: always}
"""

PARAMETERS_PATH = ".postgresql.parameters"


def config_changes(current: dict[str, Any], wanted: dict[str, Any], path: str = "") -> dict[str, Any]:
    """The PATCH body that turns `current` into `wanted`."""
    patch: dict[str, Any] = {}
    for key, value in wanted.items():
        here = current.get(key)
        if isinstance(value, dict) and isinstance(here, dict):
            inner = config_changes(here, value, f"{path}.{key}")
            if inner:
                patch[key] = inner
        elif here != value:
            patch[key] = value
    if path == PARAMETERS_PATH:
        patch.update({key: None for key in current if key not in wanted})
    return patch


def patched(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`current` after Patroni applies `patch` (null removes a key), for --diff."""
    out = dict(current)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = patched(out[key], value)
        else:
            out[key] = value
    return out


def call(url: str, context: ssl.SSLContext, method: str = "GET", body: dict[str, Any] | None = None,
         auth: tuple[str, str] | None = None) -> Any:
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    request = urllib.request.Request(url, data, headers, method=method)
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        return json.loads(response.read() or b"{}")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "ca_file": {"type": "path", "required": True},
            "user": {"type": "str", "required": True},
            "password": {"type": "str", "required": True, "no_log": True},
            "config": {"type": "dict", "required": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    base = p["url"].rstrip("/")
    context = ssl.create_default_context(cafile=p["ca_file"])
    try:
        current = call(f"{base}/config", context)
        patch = config_changes(current, p["config"])
        if patch and not module.check_mode:
            call(f"{base}/config", context, "PATCH", patch, (p["user"], p["password"]))
    except urllib.error.HTTPError as exc:
        module.fail_json(msg=f"Patroni at {base}: HTTP {exc.code}: {exc.read()[:300]!r}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        module.fail_json(msg=f"Patroni at {base}: {exc}")
    diff = {"before": json.dumps(current, indent=2, sort_keys=True) + "\n",
            "after": json.dumps(patched(current, patch), indent=2, sort_keys=True) + "\n"}
    module.exit_json(changed=bool(patch), patch=patch, diff=diff)


if __name__ == "__main__":
    main()
