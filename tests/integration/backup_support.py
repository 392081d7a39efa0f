"""Helpers the backup integration tests share: access to a lab cluster's backups, and the role check."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dbfleet.backups.access import BackupAccess
from dbfleet.backups.manifest import ROOT
from dbfleet.progress import Progress
from dbfleet.wiring import open_access

REPO = Path(__file__).resolve().parents[2]


def converged_lab(request: pytest.FixtureRequest) -> Any:
    """The configured lab; DBFLEET_BACKUP_TEST_NO_CONVERGE=1 uses the running lab as it is (development)."""
    if os.environ.get("DBFLEET_BACKUP_TEST_NO_CONVERGE") == "1":
        return request.getfixturevalue("lab")
    return request.getfixturevalue("configured")


def fresh_access(lab: Any, cluster: str) -> BackupAccess:
    """Access to the cluster's backups, with this cluster's dbfleet manifests cleared."""
    access = open_access(lab.fleet.cluster(cluster), lab.inventory_path, progress=Progress("test", quiet=True))
    access.storage.delete_prefix(f"{ROOT}/{cluster}/")
    return access


def require_pgbackrest(access: BackupAccess, host: str) -> None:
    """Skip only while the pgbackrest role has not landed; once it has, a missing stanza is a failure."""
    result = access.executor.run(host, ["pgbackrest", f"--stanza={access.name}", "info"], user="postgres")
    # A new stanza says "error (no valid backups)": configured, just never backed up yet.
    configured = result.ok and ("status: ok" in result.out or "(no valid backups)" in result.out)
    if not configured and not (REPO / "playbooks" / "roles" / "pgbackrest").exists():
        pytest.skip("the pgbackrest role (playbooks/roles/pgbackrest) has not landed yet, so no stanza exists")
    assert configured, f"pgbackrest stanza {access.name} not configured on {host}: {result.tail(5)}"
