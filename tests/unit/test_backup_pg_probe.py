"""The PostgreSQL backup's round trips: the primary from the engine session, the script that backs up.

The backup script runs for real in a local `sh`, with `psql` and `pgbackrest`
on PATH replaced by small scripts that answer as each host would (down,
replica, primary with or without the canary table; a host's state is its
environment and a directory). The engine session is a stand-in whose topology
reads the same states, the way the real one asks each member
pg_is_in_recovery(). What is tested is the control flow and the parsing of
what the script prints, not a server: the real runs are in tests/integration.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dbfleet.backups.access import BackupAccess
from dbfleet.backups.postgres import PostgresBackups, backup_on_primary, probe_primary
from dbfleet.backups.storage import LocalStorage
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.base import EngineSession, Member, Topology
from dbfleet.engines.executor import CommandFailed, ExecResult, Executor
from dbfleet.errors import TemporaryError
from dbfleet.spec import PostgresCluster, load_fleet

REPO = Path(__file__).resolve().parents[2]

PSQL = """#!/bin/sh
[ "$STATE" = down ] && { echo "psql: connection refused" >&2; exit 2; }
case " $* " in *" -d $NODB "*) echo "FATAL: database \"$NODB\" does not exist" >&2; exit 2 ;; esac
while [ $# -gt 0 ]; do
  if [ "$1" = -c ]; then
    case "$2" in
      *pg_is_in_recovery*) echo "$STATE" ;;
      *"create table if not exists public.canary"*) [ "$CREATE" = fail ] && { echo "permission denied" >&2; exit 1; }
                                                  echo 1 > "$HOSTDIR/canary" ;;
      *"count(*) from public.canary"*) [ -f "$HOSTDIR/canary" ] || { echo 'relation does not exist' >&2; exit 1; }
                                       cat "$HOSTDIR/canary" ;;
      *) echo "unexpected psql $2" >&2; exit 9 ;;
    esac
    shift
  fi
  shift
done
"""
PGBACKREST = """#!/bin/sh
case "$*" in
  version) echo "pgBackRest 2.45" ;;
  *" backup") echo "$*" > "$HOSTDIR/backup-args"; [ "$BACKUP" = fail ] && { echo "ERROR: [082]: WAL timeout" >&2
              exit 82; }
              [ -f "$HOSTDIR/canary" ] && echo $(( $(cat "$HOSTDIR/canary") + 1 )) > "$HOSTDIR/canary"; true ;;
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
        for host, state in hosts.items():
            self.dir(host).mkdir()
            if state.get("ROWS", "absent") != "absent":
                (self.dir(host) / "canary").write_text(state["ROWS"] + "\n")

    def dir(self, host: str) -> Path:
        return self.bin_dir.parent / host

    def run(self, host: str, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = 3600) -> ExecResult:
        self.calls.append(host)
        if self.hosts[host].get("STATE") == "gone":
            raise TemporaryError("container is not running", host=host)
        environ = {"PATH": f"{self.bin_dir}:{os.environ['PATH']}", "HOSTDIR": str(self.dir(host)),
                   **self.hosts[host]}
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


class StateSession(EngineSession[PostgresCluster]):
    """The engine session's topology from the hosts' STATE: f is the primary, t a replica, down or gone down."""

    engine = "postgres"

    def __init__(self, cluster: PostgresCluster, hosts: Mapping[str, Mapping[str, str]]):
        super().__init__(cluster, FleetAccess({}, {}))
        self.hosts = hosts
        self.reads = 0

    def read_topology(self) -> Topology:
        self.reads += 1
        members = []
        for host in self.cluster.host_names():
            state = self.hosts[host].get("STATE")
            if state in ("down", "gone"):
                members.append(Member(host, "unknown", False, f"{state}"))
            else:
                members.append(Member(host, "primary" if state == "f" else "replica", True))
        primaries = [m.host for m in members if m.role == "primary"]
        return Topology(self.cluster.name, self.engine, primaries[0] if len(primaries) == 1 else None, tuple(members))

    def close(self) -> None:
        pass


def access_with(bin_dir: Path, tmp_path: Path, hosts: Mapping[str, Mapping[str, str]]) -> BackupAccess:
    cluster = load_fleet(REPO / "fleet.example.yaml").cluster("pg-main")
    assert isinstance(cluster, PostgresCluster)
    return BackupAccess(cluster, LocalHosts(bin_dir, hosts), LocalStorage(tmp_path / "target"),
                        session=StateSession(cluster, hosts))


def topology_reads(access: BackupAccess) -> int:
    return access.session.reads  # type: ignore[union-attr]


def test_the_primary_is_the_sessions_and_only_it_is_asked_for_the_version(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "gone"}, "pg-2": {"STATE": "t"},
                                             "pg-3": {"STATE": "f"}})
    assert probe_primary(access) == ("pg-3", "pgBackRest 2.45")
    assert access.executor.calls == ["pg-3"]  # type: ignore[attr-defined]
    assert topology_reads(access) == 1


def test_no_primary_is_a_temporary_error_naming_the_hosts_down(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "down"}, "pg-2": {"STATE": "t"},
                                             "pg-3": {"STATE": "gone"}})
    with pytest.raises(TemporaryError) as err:
        probe_primary(access)
    text = err.value.render()
    assert "no primary answers" in text and "pg-1: down" in text and "pg-3: gone" in text
    assert access.executor.calls == []  # type: ignore[attr-defined]


ARGS = ["--type=full", "--annotation=dbfleet-id=full-1", "backup"]


def ran_on(bin_dir: Path, host: str) -> list[str] | None:
    path = bin_dir.parent / host / "backup-args"
    return path.read_text().split() if path.exists() else None


def test_backup_on_the_last_primary_is_one_call(bin_dir: Path, tmp_path: Path) -> None:
    """Rows before and after (the fake backup adds one), pgbackrest info, and the tool's own time."""
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "f", "ROWS": "42"}, "pg-2": {"STATE": "t"},
                                             "pg-3": {"STATE": "t"}})
    run = backup_on_primary(access, "pg-1", ARGS)
    assert (run.host, run.rows_before, run.rows_after) == ("pg-1", 42, 43)
    assert run.stanza["backup"][0]["label"] == "20261129-000000F" and 0 <= run.tool_seconds < 5
    assert access.executor.calls == ["pg-1"]  # type: ignore[attr-defined]
    assert ran_on(bin_dir, "pg-1") == ["--stanza=pg-main", *ARGS]


def test_backup_moves_to_the_new_primary_after_a_switchover(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "t"}, "pg-2": {"STATE": "f", "ROWS": "3"},
                                             "pg-3": {"STATE": "t"}})
    run = backup_on_primary(access, "pg-1", ARGS)
    assert (run.host, run.rows_before) == ("pg-2", 3)
    assert ran_on(bin_dir, "pg-1") is None  # never ran pgbackrest on the replica
    assert access.executor.calls == ["pg-1", "pg-2"]  # type: ignore[attr-defined]
    assert topology_reads(access) == 1  # read again once the script refused


def test_backup_moves_on_from_a_stopped_container(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "gone"}, "pg-2": {"STATE": "t"},
                                             "pg-3": {"STATE": "f", "ROWS": "0"}})
    run = backup_on_primary(access, "pg-1", ARGS)
    assert (run.host, run.rows_before) == ("pg-3", 0)


def test_a_missing_canary_is_created_before_the_backup(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "f"}, "pg-2": {}, "pg-3": {}})
    run = backup_on_primary(access, "pg-1", ARGS)
    assert (run.host, run.rows_before, run.rows_after) == ("pg-1", 1, 2)


def test_a_canary_that_cannot_be_made_does_not_stop_the_backup(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "f", "CREATE": "fail"}, "pg-2": {}, "pg-3": {}})
    run = backup_on_primary(access, "pg-1", ARGS)
    assert (run.rows_before, run.rows_after) == (None, None) and ran_on(bin_dir, "pg-1") is not None


def test_a_missing_canary_database_backs_up_without_the_canary(bin_dir: Path, tmp_path: Path) -> None:
    """The spec's database is not there yet: the backup still runs, and its drill will say the canary is missing."""
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "f", "NODB": "app"}, "pg-2": {}, "pg-3": {}})
    run = backup_on_primary(access, "pg-1", ARGS)
    assert (run.host, run.rows_before, run.rows_after) == ("pg-1", None, None)
    assert ran_on(bin_dir, "pg-1") == ["--stanza=pg-main", *ARGS]


def test_a_failing_backup_raises_with_pgbackrests_error_and_is_not_retried(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "f", "ROWS": "1", "BACKUP": "fail"}, "pg-2": {},
                                             "pg-3": {}})
    with pytest.raises(CommandFailed, match=r"pgbackrest backup exited 82: ERROR: \[082\]: WAL timeout"):
        backup_on_primary(access, "pg-1", ARGS)
    assert access.executor.calls == ["pg-1"]  # type: ignore[attr-defined]


def test_a_failing_info_after_the_backup_is_named(bin_dir: Path, tmp_path: Path) -> None:
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "f", "ROWS": "1", "INFO": "fail"}, "pg-2": {},
                                             "pg-3": {}})
    with pytest.raises(CommandFailed, match="pgbackrest info exited 55: stanza missing"):
        backup_on_primary(access, "pg-1", ARGS)


def test_prepare_asks_the_version_only_before_the_first_backup(bin_dir: Path, tmp_path: Path) -> None:
    """Later backups take the last good backup's version; the primary is the session's, read once a cycle."""
    access = access_with(bin_dir, tmp_path, {"pg-1": {"STATE": "t"}, "pg-2": {"STATE": "f"}, "pg-3": {}})
    adapter = PostgresBackups()
    first = adapter.prepare(access)
    assert (first.tool_version, first.facts["host"]) == ("pgBackRest 2.45", "pg-2")
    assert access.executor.calls == ["pg-2"]  # type: ignore[attr-defined]
    pending = adapter.new_manifest(access, "full", datetime(2026, 11, 29, tzinfo=UTC), first.tool_version)
    access.storage.save_manifest(pending)
    assert adapter.prepare(access).facts["host"] == "pg-2"  # a pending backup is no evidence: asked again
    assert access.executor.calls == ["pg-2"] * 2  # type: ignore[attr-defined]
    assert topology_reads(access) == 1
    access.storage.save_manifest(replace(pending.completed(datetime(2026, 11, 29, 0, 1, tzinfo=UTC), []),
                                         host="pg-2", tool_version="pgBackRest 2.46"))
    calls = len(access.executor.calls)  # type: ignore[attr-defined]
    later = adapter.prepare(access)
    assert (later.tool_version, later.facts["host"]) == ("pgBackRest 2.46", "pg-2")
    assert len(access.executor.calls) == calls  # type: ignore[attr-defined]
