"""The Mongo backup always starts the balancer again: a unit test of control flow with a stand-in client.

The stand-in is only the pymongo client object (it records admin commands);
no server is imitated. Real dumps are in tests/integration (mongo_server).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dbfleet.age_keys import new_identity
from dbfleet.backups.access import BackupAccess
from dbfleet.backups.mongo import MongoBackups, stop_balancer, with_balancer_stopped
from dbfleet.backups.spool import WORK_ROOT, WORKDIR_SCRIPT
from dbfleet.backups.storage import LocalStorage
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.executor import CommandFailed, ExecResult
from dbfleet.errors import TemporaryError
from dbfleet.secrets import BACKUP_AGE_IDENTITY
from dbfleet.spec import load_fleet


class RecordingAdmin:
    def __init__(self, rounds_in_progress: int = 0, fail_on: str | None = None):
        self.calls: list[str] = []
        self.rounds = rounds_in_progress
        self.fail_on = fail_on

    def command(self, name: str, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(name)
        if name == self.fail_on:
            raise RuntimeError(f"{name} refused")
        if name == "balancerStatus":
            self.rounds -= 1
            return {"mode": "off", "inBalancerRound": self.rounds >= 0}
        return {"ok": 1}


class RecordingClient:
    def __init__(self, admin: RecordingAdmin):
        self.admin = admin


def test_balancer_restarted_after_success() -> None:
    client = RecordingClient(RecordingAdmin())
    assert with_balancer_stopped(client, lambda: "dumped", sleep=lambda s: None) == "dumped"
    assert client.admin.calls == ["balancerStop", "balancerStatus", "balancerStart"]


@pytest.mark.parametrize("error", [RuntimeError("mongodump exited 1"), KeyboardInterrupt()])
def test_balancer_restarted_when_the_dump_is_interrupted(error: BaseException) -> None:
    client = RecordingClient(RecordingAdmin())

    def dump() -> None:
        raise error

    with pytest.raises(type(error)):
        with_balancer_stopped(client, dump, sleep=lambda s: None)
    assert client.admin.calls[-1] == "balancerStart"


def test_balancer_restarted_when_stopping_it_times_out() -> None:
    client = RecordingClient(RecordingAdmin(rounds_in_progress=10**6))
    ticks = iter(range(1000))
    with pytest.raises(TemporaryError, match="still in a round"):
        with_balancer_stopped(client, lambda: None, sleep=lambda s: None, clock=lambda: float(next(ticks)),
                              timeout=5)
    assert client.admin.calls[-1] == "balancerStart"


def test_a_failing_shard_dump_still_restarts_the_balancer(tmp_path: Path) -> None:
    """MongoBackups.take with the client stand-in; the second mongodump fails on its host."""
    fleet = load_fleet(Path(__file__).resolve().parents[2] / "fleet.example.yaml")
    admin = RecordingAdmin()
    client = RecordingClient(admin)
    client.list_database_names = lambda: []  # type: ignore[attr-defined]
    client.close = lambda: None  # type: ignore[attr-defined]
    dumps: list[str] = []

    class Hosts:
        def run(self, host: str, argv: list[str], **kw: Any) -> ExecResult:
            return ExecResult(0, "", "")

        def write_text(self, host: str, path: str, text: str, **kw: Any) -> None:
            assert "password" in text

        def check(self, host: str, argv: list[str], **kw: Any) -> ExecResult:
            if argv[:3] == ["sh", "-c", WORKDIR_SCRIPT]:
                return ExecResult(0, f"{WORK_ROOT}/work.test\n", "")
            if argv[0] == "mongodump":
                dumps.append(host)
                if len(dumps) == 2:
                    raise CommandFailed("mongodump exited 1", host=host)
            return ExecResult(0, "", "")

    access = BackupAccess(fleet.cluster("mongo-main"), Hosts(), LocalStorage(tmp_path),  # type: ignore[arg-type]
                          FleetAccess({}, {"mongo_admin_password": "pw", BACKUP_AGE_IDENTITY: new_identity()}))
    adapter = MongoBackups()
    adapter.client_factory = lambda a: client  # type: ignore[method-assign]
    pending = adapter.new_manifest(access, "full", datetime(2026, 11, 25, tzinfo=UTC), "100.9")
    with pytest.raises(CommandFailed):
        adapter.take(access, pending)
    assert dumps == ["mongo-cfg-1", "mongo-a-1"]
    assert admin.calls[0] == "balancerStop" and admin.calls[-1] == "balancerStart"


def test_waits_for_the_running_round() -> None:
    admin = RecordingAdmin(rounds_in_progress=2)
    stop_balancer(RecordingClient(admin), sleep=lambda s: None)
    assert admin.calls == ["balancerStop", "balancerStatus", "balancerStatus", "balancerStatus"]
