"""The executor picks docker or ssh per host from the inventory and keeps secrets off the command line."""

from __future__ import annotations

import base64
import shlex

import pytest

from dbfleet.engines.executor import InventoryExecutor, SshExecutor, as_user
from dbfleet.errors import PermanentError


def test_as_user_uses_runuser_for_non_root() -> None:
    assert as_user("postgres", ["pgbackrest", "info"]) == ["runuser", "-u", "postgres", "--", "pgbackrest", "info"]
    assert as_user(None, ["true"]) == ["true"] and as_user("root", ["true"]) == ["true"]


def test_ssh_command_sends_env_on_stdin_and_sudo_for_a_login_user() -> None:
    ex = SshExecutor({"pg-1": {"ansible_host": "10.40.1.10", "ansible_user": "admin", "ansible_port": 2222,
                               "ansible_ssh_private_key_file": "/k/id"}})
    argv, stdin = ex.command("pg-1", ["pgbackrest", "--stanza=pg-main", "info"], "postgres",
                             {"PGBACKREST_REPO1_S3_KEY_SECRET": "s3cr3t"})
    joined = " ".join(argv)
    assert "s3cr3t" not in joined and base64.b64decode(stdin.strip()) == b"s3cr3t"
    assert argv[:2] == ["ssh", "-o"] and "admin@10.40.1.10" in argv and "-p" in argv and "/k/id" in argv
    remote = shlex.split(argv[-1])[-1]
    assert "read -r PGBACKREST_REPO1_S3_KEY_SECRET" in remote
    assert "sudo -E runuser -u postgres -- pgbackrest --stanza=pg-main info" in remote


def test_inventory_routes_by_connection() -> None:
    ex = InventoryExecutor({"pg-1": {"ansible_connection": "ssh", "ansible_host": "10.0.0.1"}})
    assert ex._for("pg-1") is ex._ssh
    with pytest.raises(PermanentError, match="pg-9"):
        ex.run("pg-9", ["true"])
