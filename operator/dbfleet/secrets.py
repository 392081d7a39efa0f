"""Fleet credentials: generated once for the lab, read by Ansible (as vars) and the operator.

The file is YAML with one key, `dbfleet_secrets`, kept mode 0600 and out of git.
On AWS the same keys come from an ansible-vault file. Values are never logged.
"""

from __future__ import annotations

import base64
import os
import secrets as random
from pathlib import Path
from typing import Any

import yaml

from dbfleet.age_keys import new_identity

PASSWORD_KEYS = (
    "postgres_superuser_password",
    "postgres_replication_password",
    "postgres_app_password",
    "postgres_monitor_password",
    "patroni_rest_password",
    "etcd_root_password",
    "etcd_patroni_password",
    "etcd_operator_password",
    "redis_app_password",
    "redis_replication_password",
    "redis_sentinel_password",
    "redis_monitor_password",
    "redis_admin_password",
    "mongo_admin_password",
    "mongo_app_password",
    "mongo_monitor_password",
    "backup_cipher_pass",
)
BACKUP_CIPHER_PASS = "backup_cipher_pass"
"""pgBackRest's repository passphrase (repo1-cipher-type=aes-256-cbc)."""
BACKUP_AGE_IDENTITY = "backup_age_identity"
"""The age identity MongoDB dumps and Redis snapshots are encrypted to (only its recipient reaches the hosts)."""
BACKUP_AGE_IDENTITY_OLD = "backup_age_identity_old"
"""After a rotation, the previous identity: still tried when decrypting older backups."""
OPTIONAL_PASSWORD_KEYS = ("operator_metrics_password",)
"""Generated for the lab like the others, but checked only where used: the operator's /metrics password, when
the spec asks for basic auth (dbfleet.monitoring.endpoint), so an older vault file still loads without it."""


class SecretsError(RuntimeError):
    """The secrets file is missing keys or unreadable."""


def generate() -> dict[str, str]:
    values = {key: random.token_urlsafe(24) for key in PASSWORD_KEYS + OPTIONAL_PASSWORD_KEYS}
    values["mongo_keyfile"] = base64.b64encode(random.token_bytes(600)).decode()
    values[BACKUP_AGE_IDENTITY] = new_identity()
    return values


def ensure_secrets_file(path: Path) -> dict[str, str]:
    """Create the file with fresh values if absent; add any missing key; never change an existing value."""
    current: dict[str, str] = {}
    if path.exists():
        current = load_secrets(path, require_all=False)
    missing = {k: v for k, v in generate().items() if k not in current}
    if missing or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**current, **missing}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("# Lab credentials written by dbfleet. Keep out of git; never share.\n")
            yaml.safe_dump({"dbfleet_secrets": merged}, handle)
        current = merged
    os.chmod(path, 0o600)
    return current


def load_secrets(path: Path, require_all: bool = True) -> dict[str, str]:
    try:
        data: Any = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SecretsError(f"{path}: no such secrets file (run `dbfleet lab up`, or point --secrets at one)") from None
    values = data.get("dbfleet_secrets") if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise SecretsError(f"{path}: expected a mapping under the key dbfleet_secrets")
    if require_all:
        missing = [k for k in PASSWORD_KEYS if k not in values]
        if missing:
            raise SecretsError(f"{path}: dbfleet_secrets lacks {', '.join(missing)}")
    return {str(k): str(v) for k, v in values.items()}
