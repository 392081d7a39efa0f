"""The PostgreSQL backup's round trips: the shell scripts that find the primary and read pgbackrest info.

The scripts run for real in a local `sh`, with `psql` and `pgbackrest` on PATH
replaced by small scripts that answer as each host would (down, replica,
primary with or without the canary table). What is tested is the scripts'
control flow and the parsing of what they print, not a server.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

import pytest

from dbfleet.backups.access import BackupAccess
from dbfleet.backups.postgres import backup_label, info_and_rows, probe_primary
from dbfleet.backups.storage import LocalStorage
from dbfleet.engines.executor import CommandFailed, ExecResult, Executor
from dbfleet.reconcile.errors import TemporaryError
from dbfleet.spec import load_fleet

REPO = Path(__file__).resolve().parents[2]

PSQL = """#!/bin/sh
case "$*" in
  *pg_is_in_recovery*) [ "$STATE" = down ] && { echo "psql: connection refused" >&2; exit 2; }; echo "$STATE" ;;
  *"count(*) from public.canary"*) [ "$ROWS" = absent ] && { echo 'relation does not exist' >&2; exit 1; }
                                   echo "$ROWS" ;;
  *) echo "unexpected psql $*" >&2; exit 9 ;;
esac
"""
PGBACKREST = """#!/bin/sh
case "$*" in
  version) echo "pgBackRest 2.45" ;;
  "--stanza=pg-main --output=json info") [ "$INFO" = fail ] && { echo "stanza missing" >&2; exit 55; }
      echo '[{"name": "pg-main", "backup": [{"label": "20261129-000000F"}]}]' ;;
  *) echo "unexpected pgbackrest $*" >&2; exit 9 ;;
esac
"""


class LocalHosts(Executor):
    """Runs each command in a local sh; a host's answers come from its environment (STATE, ROWS, INFO)."""

    def __init__(self, bin_dir: Path, hosts: Mapping[str, Mapping[str, str]]):
        self.bin_dir = bin_dir
        self.hosts = hosts
        self.calls: list[str] = []

    def run(self, host: str, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = 3600) -> ExecResult:
        self.calls.append(host)
        if self.hosts[host].get("STATE") == "gone":
            raise TemporaryError("container is not running", host=host)
        environ = {"PATH": f"{self.bin_dir}:{os.environ['PATH']}", **self.hosts[host]}
        proc = subprocess.run(list(argv), capture_output=True, text=True, env=environ, timeout=timeout)
        return ExecResult(proc.returncode, proc.stdout, proc.stderr)

    def fetch(self, host: str, remote: str, local: Path) -> None:
        raise NotImplementedError


@pytest.fixture()
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    for name, text in (("psql", PSQL), ("pgbackrest", PGBACKREST)):
        (path / name).write_text(text)
        (path / name).chmod(0o755)
    return path


def access_with(bin_dir: Path, tmp_path: Path, hosts: Mapping[str, Mapping[str, str]]) -> BackupAccess:
    fleet = load_fleet(REPO / "fleet.example.yaml")
    return BackupAccess(fleet.cluster("pg-main"), LocalHosts(bin_dir, hosts), LocalStorage(tmp_path / "target"))


def test_probe_skips_a_stopped_host_and_a_replica_and_reads_version_and_rows(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "gone"}, "pg-2": {"STATE": "t"},
                                             "pg-3": {"STATE": "f", "ROWS": "42"}})
    assert probe_primary(access) == ("pg-3", "pgBackRest 2.45", 42)
    assert access.executor.calls == ["pg-1", "pg-2", "pg-3"]  # type: ignore[attr-defined]


def test_probe_stops_at_the_first_primary(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "f", "ROWS": "0"}, "pg-2": {"STATE": "t"},
                                             "pg-3": {"STATE": "t"}})
    assert probe_primary(access) == ("pg-1", "pgBackRest 2.45", 0)
    assert access.executor.calls == ["pg-1"]  # type: ignore[attr-defined]


def test_probe_says_an_absent_canary_table_is_none(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "f", "ROWS": "absent"}, "pg-2": {}, "pg-3": {}})
    assert probe_primary(access) == ("pg-1", "pgBackRest 2.45", None)


def test_no_primary_is_a_temporary_error_naming_every_host(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "down"}, "pg-2": {"STATE": "t"},
                                             "pg-3": {"STATE": "gone"}})
    with pytest.raises(TemporaryError) as err:
        probe_primary(access)
    text = err.value.render()
    assert "pg-1: psql: connection refused" in text and "pg-2: replica" in text and "pg-3: container" in text


def test_info_and_rows_in_one_call(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"ROWS": "7"}})
    stanza, rows = info_and_rows(access, "pg-1")
    assert stanza["backup"][0]["label"] == "20261129-000000F" and rows == 7
    assert access.executor.calls == ["pg-1"]  # type: ignore[attr-defined]


def test_info_failing_raises_with_pgbackrests_message(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"INFO": "fail", "ROWS": "7"}})
    with pytest.raises(CommandFailed, match="stanza missing"):
        info_and_rows(access, "pg-1")


def test_the_label_pgbackrest_logs_at_info() -> None:
    out = ("2026-11-29 20:15:01.123 P00   INFO: backup command begin 2.45: --annotation=dbfleet-id=full-1 ...\n"
           "2026-11-29 20:15:04.456 P00   INFO: new backup label = 20261129-201501F\n"
           "2026-11-29 20:15:04.460 P00   INFO: full backup size = 22.5MB, file total = 1262\n")
    assert backup_label(out) == "20261129-201501F"
    assert backup_label("") is None
