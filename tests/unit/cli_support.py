"""What tests of the operator's commands share without a lab."""

from __future__ import annotations

from pathlib import Path


def empty_fleet_files(tmp_path: Path) -> Path:
    """An inventory with one host of the example's PostgreSQL cluster and a secrets file, but no fleet CA beside
    it: reconcile starts, and the cluster's observation fails at once (it never connects unverified), so it runs
    without servers. Returns the inventory's path."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    pg-1: {dbfleet_address: 127.0.0.1}\n")
    secrets = tmp_path / "group_vars" / "all" / "secrets.yml"
    secrets.parent.mkdir(parents=True)
    secrets.write_text("dbfleet_secrets: {}\n")
    return inventory
