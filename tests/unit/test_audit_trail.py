"""The operator's audit trail: the writer (0600, append-only, never through a link or into someone else's file),
the reader (filters, damaged lines by number) and `dbfleet audit`. No servers."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dbfleet.actions import Action, Outcome
from dbfleet.cli import main
from dbfleet.commands.audit import parse_since
from dbfleet.commands.common import UsageError
from dbfleet.reconcile.audit import FIELDS, AuditError, AuditTrail, read_audit

SPEC_SHA = "ab" * 32
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()


def outcome(cluster: str = "pg-main", status: str = "done", target: str = "app/public.t_idx") -> Outcome:
    action = Action(cluster, "indexes", "create-index", target, "declared in the spec and absent",
                    detail={"statements": ["CREATE INDEX CONCURRENTLY ..."]})
    return Outcome(action, status, "created" if status == "done" else "lock timeout", 1, 0.25)


def trail(path: Path, at: float = T0) -> AuditTrail:
    return AuditTrail(path, "dbfleet-operator-leader ops-1:4242", SPEC_SHA, user="dbfleet", clock=lambda: at)


# --------------------------------------------------------------------------- writer


def test_the_file_is_created_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / "operator-audit.jsonl"
    old = os.umask(0)
    try:
        trail(path).check()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b""


def test_one_line_per_record_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "operator-audit.jsonl"
    trail(path).record(outcome())
    trail(path, T0 + 60).record(outcome("cache", "failed", "redis-2"))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert set(FIELDS) <= set(first)
    assert first["time"] == "2024-05-01T12:00:00.000+00:00"
    assert first["operator"] == "dbfleet-operator-leader ops-1:4242" and first["user"] == "dbfleet"
    assert (first["cluster"], first["reconciler"], first["outcome"]) == ("pg-main", "indexes", "done")
    assert first["action"] == {"kind": "create-index", "target": "app/public.t_idx", "destructive": False,
                               "detail": {"statements": ["CREATE INDEX CONCURRENTLY ..."]}}
    assert first["reason"] == "declared in the spec and absent" and first["message"] == "created"
    assert first["spec_sha256"] == SPEC_SHA
    assert json.loads(lines[1])["outcome"] == "failed"


def test_records_are_appended_never_truncated(tmp_path: Path) -> None:
    path = tmp_path / "operator-audit.jsonl"
    path.write_text('{"earlier": "line"}\n')
    path.chmod(0o600)
    trail(path).check()
    trail(path).record(outcome())
    lines = path.read_text().splitlines()
    assert lines[0] == '{"earlier": "line"}' and len(lines) == 2


def test_a_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    link = tmp_path / "operator-audit.jsonl"
    link.symlink_to(victim)
    for attempt in (trail(link).check, lambda: trail(link).record(outcome())):
        with pytest.raises(AuditError, match="symbolic link"):
            attempt()
    assert victim.read_text() == "precious\n"


def test_a_dangling_symlink_is_not_followed_to_create_a_file(tmp_path: Path) -> None:
    link = tmp_path / "operator-audit.jsonl"
    link.symlink_to(tmp_path / "planted")
    with pytest.raises(AuditError, match="symbolic link"):
        trail(link).record(outcome())
    assert not (tmp_path / "planted").exists()


@pytest.mark.parametrize("mode", [0o644, 0o620, 0o604, 0o660])
def test_an_existing_file_others_can_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "operator-audit.jsonl"
    path.write_text("")
    path.chmod(mode)
    with pytest.raises(AuditError, match=f"mode {mode:04o}"):
        trail(path).check()
    with pytest.raises(AuditError):
        trail(path).record(outcome())
    assert path.read_text() == ""


def test_a_second_hard_link_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.write_text("")
    other.chmod(0o600)
    path = tmp_path / "operator-audit.jsonl"
    os.link(other, path)
    with pytest.raises(AuditError, match="2 hard links"):
        trail(path).record(outcome())
    assert other.read_text() == ""


def test_a_directory_or_fifo_is_not_a_trail(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(AuditError):
        trail(tmp_path / "dir").check()
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(AuditError):  # and never blocks waiting for a reader
        trail(tmp_path / "fifo").check()


def test_the_directory_is_made_private_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "new" / "operator-audit.jsonl"
    trail(path).check()
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


# --------------------------------------------------------------------------- reader


def _write(path: Path, *records: tuple[str, float]) -> None:
    for cluster, at in records:
        trail(path, at).record(outcome(cluster))


def test_the_reader_filters_by_cluster_and_time(tmp_path: Path) -> None:
    path = tmp_path / "operator-audit.jsonl"
    _write(path, ("pg-main", T0), ("cache", T0 + 3600), ("pg-main", T0 + 7200))
    assert [r["cluster"] for r in read_audit(path).records] == ["pg-main", "cache", "pg-main"]
    assert len(read_audit(path, {"pg-main"}).records) == 2
    later = datetime.fromtimestamp(T0 + 3600, UTC)
    assert [r["cluster"] for r in read_audit(path, since=later).records] == ["cache", "pg-main"]
    assert [r["cluster"] for r in read_audit(path, {"pg-main"}, later).records] == ["pg-main"]


def test_a_damaged_line_is_reported_by_number_and_the_rest_still_read(tmp_path: Path) -> None:
    path = tmp_path / "operator-audit.jsonl"
    _write(path, ("pg-main", T0))
    with path.open("ab") as handle:
        handle.write(b'{"time": "2024-05-01T12:00:01+00:00", "cluster": "pg-ma\n')  # a torn write
        handle.write(b"[1, 2]\n\xff\xfe\n")
        handle.write(b'{"cluster": "pg-main"}\n')
        bad_action = {**json.loads(path.read_text().splitlines()[0]), "action": "create-index"}
        handle.write(json.dumps(bad_action).encode() + b"\n")
    _write(path, ("cache", T0 + 5))
    found = read_audit(path)
    assert [r["cluster"] for r in found.records] == ["pg-main", "cache"]
    assert [(p.line, p.message.split(" (")[0].split(":")[0]) for p in found.problems] == [
        (2, "not JSON"), (3, "expected a JSON object, got list"), (4, "not UTF-8 text"),
        (5, "not an audit record"), (6, "not an audit record")]
    assert "action is not an object" in found.problems[4].message
    assert found.problems[0].render(path) == f"{path}:2: " + found.problems[0].message


# --------------------------------------------------------------------------- --since


NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("text, expected", [
    ("2h", datetime(2024, 5, 2, 10, 0, tzinfo=UTC)),
    ("30m", datetime(2024, 5, 2, 11, 30, tzinfo=UTC)),
    ("7d", datetime(2024, 4, 25, 12, 0, tzinfo=UTC)),
    ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
    ("2024-05-01T12:00Z", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
    ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
])
def test_since_takes_a_time_or_a_duration(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-2h", "2024-13-01", "", "2 h"])
def test_a_bad_since_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--since: .* is neither an ISO 8601 time"):
        parse_since(text, NOW)


# --------------------------------------------------------------------------- the command


def _cli_trail(tmp_path: Path) -> Path:
    path = tmp_path / "operator-audit.jsonl"
    now = datetime.now(UTC).timestamp()
    _write(path, ("pg-main", now - 3 * 3600), ("cache", now - 600), ("pg-main", now - 60))
    return path


def test_the_audit_command_prints_filters_and_emits_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _cli_trail(tmp_path)
    state = ["--state", str(tmp_path / "operator-state.json")]
    assert main(["audit", *state]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "pg-main indexes create-index app/public.t_idx -> done (created); reason: declared in the spec" in lines[0]
    assert "by dbfleet-operator-leader ops-1:4242 as dbfleet, spec sha256 abababababab" in lines[0]
    assert main(["audit", *state, "--cluster", "pg-main", "--since", "2h"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["audit", *state, "--since", "2h", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["file"] == str(path) and data["problems"] == []
    assert [r["cluster"] for r in data["records"]] == ["cache", "pg-main"]


def test_the_trail_is_found_beside_the_inventory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _cli_trail(tmp_path)
    assert main(["audit", "--inventory", str(tmp_path / "hosts.yml"), "--cluster", "cache"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_a_damaged_trail_exits_1_naming_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _cli_trail(tmp_path)
    with path.open("ab") as handle:
        handle.write(b"{oops\n")
    assert main(["audit", "--state", str(tmp_path / "s.json")]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3
    assert err.strip().splitlines() == [f"dbfleet audit: {path}:4: not JSON (Expecting property name enclosed in "
                                        "double quotes at column 2)"]


def test_bad_options_exit_2_with_one_located_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--state", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dbfleet audit: no audit trail at {tmp_path / 'operator-audit.jsonl'}")
    assert len(err.strip().splitlines()) == 1
    _cli_trail(tmp_path)
    assert main(["audit", "--state", str(tmp_path / "s.json"), "--since", "last tuesday"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dbfleet audit: --since: 'last tuesday' is neither") and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- commands a person runs

SPEC = str(Path(__file__).resolve().parents[2] / "fleet.example.yaml")


def _hand_run_files(tmp_path: Path) -> tuple[Path, Path]:
    """An inventory (and secrets file) for the example's clusters; the trail the operator keeps beside it."""
    from cli_support import empty_fleet_files

    inventory = empty_fleet_files(tmp_path)
    return inventory, tmp_path / "operator-audit.jsonl"


def _spec_sha256() -> str:
    import hashlib

    return hashlib.sha256(Path(SPEC).read_bytes()).hexdigest()


class _Patroni:
    """Patroni's answer for pg-main: pg-1 leads, pg-2 is the synchronous standby."""

    def __init__(self, cluster: object, access: object) -> None:
        pass

    def cluster_state(self) -> object:
        from test_patroni_engine import CLUSTER_JSON

        from dbfleet.engines.patroni import parse_cluster

        return parse_cluster(CLUSTER_JSON, "pg-1")


@pytest.mark.parametrize("fails", [False, True], ids=["done", "failed"])
def test_a_switchover_run_by_hand_is_a_line_of_the_operators_trail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fails: bool) -> None:
    """Issue 17's audit: `dbfleet switchover` changed the primary and left no line in the trail."""
    from dbfleet.errors import TemporaryError

    inventory, path = _hand_run_files(tmp_path)

    def switch_over(api: object, action: Action, timeout: float) -> str:
        if fails:
            raise TemporaryError("pg-2 did not lead within 60s", cluster="pg-main", action="switchover")
        return "pg-2 leads on timeline 5 after 1.9s"

    monkeypatch.setattr("dbfleet.commands.switchover.FleetAccess.load", lambda *a: None)
    monkeypatch.setattr("dbfleet.commands.switchover.PatroniApi", _Patroni)
    monkeypatch.setattr("dbfleet.commands.switchover.switch_over", switch_over)
    argv = ["--spec", SPEC, "switchover", "--cluster", "pg-main", "--to", "pg-2", "--inventory", str(inventory)]
    assert main([*argv, "--dry-run"]) == 0
    assert not path.exists()  # a plan changes nothing, so it is no action of the trail
    assert main(argv) == (1 if fails else 0)
    (record,) = read_audit(path).records
    assert (record["cluster"], record["reconciler"], record["outcome"]) == (
        "pg-main", "patroni", "failed" if fails else "done")
    assert record["action"]["kind"] == "switchover" and record["action"]["target"] == "pg-2"
    assert record["action"]["destructive"] is True
    assert record["reason"].startswith("leader pg-1 -> pg-2 (sync_standby")
    assert ("did not lead" if fails else "leads on timeline 5") in record["message"]
    assert record["operator"].startswith("dbfleet switchover (by hand) ") and record["user"]
    assert record["spec_sha256"] == _spec_sha256()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_hand_run_switchover_does_not_act_when_its_trail_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory, path = _hand_run_files(tmp_path)
    path.symlink_to(tmp_path / "elsewhere")
    asked: list[Action] = []
    monkeypatch.setattr("dbfleet.commands.switchover.FleetAccess.load", lambda *a: None)
    monkeypatch.setattr("dbfleet.commands.switchover.PatroniApi", _Patroni)
    monkeypatch.setattr("dbfleet.commands.switchover.switch_over", lambda api, action, timeout: asked.append(action))
    assert main(["--spec", SPEC, "switchover", "--cluster", "pg-main", "--to", "pg-2",
                 "--inventory", str(inventory)]) == 2
    assert asked == [] and not (tmp_path / "elsewhere").exists()


def test_a_backup_prune_run_by_hand_records_each_backup_it_deletes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17's audit: `dbfleet backup prune` deleted backups and left no line in the trail. One line per
    backup, as the loop's prune actions are."""
    from datetime import timedelta

    from dbfleet.backups.access import BackupAccess
    from dbfleet.backups.manifest import Manifest, iso
    from dbfleet.progress import Progress
    from dbfleet.spec import load_fleet

    inventory, path = _hand_run_files(tmp_path)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    snapshots = [Manifest(cluster="cache", engine="redis", id=f"S{i}", kind="snapshot", status="verified",
                          tool="redis-cli", tool_version="7.0", started_at=iso(start + timedelta(days=i)) or "",
                          finished_at=iso(start + timedelta(days=i, minutes=1))) for i in range(6)]

    class Storage:
        def manifests(self, cluster: str) -> list[Manifest]:
            return list(snapshots)

        def jobs(self, cluster: str) -> list[Any]:
            return []  # no restore runs: the prune goes ahead

    deleted: list[str] = []

    class Adapter:
        def delete(self, access: BackupAccess, expiries: list[Any]) -> list[str]:
            deleted.extend(e.backup.id for e in expiries)
            return [f"{e.backup.id}: 1 files" for e in expiries]

    access = BackupAccess(load_fleet(SPEC).cluster("cache"), None, Storage(),  # type: ignore[arg-type]
                          progress=Progress("test", quiet=True))
    monkeypatch.setenv("DBFLEET_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr("dbfleet.commands.backup._access", lambda args, cluster: access)
    monkeypatch.setattr("dbfleet.backups.runner.adapter_for", lambda engine: Adapter())
    argv = ["--spec", SPEC, "backup", "prune", "--cluster", "cache", "--inventory", str(inventory)]
    assert main([*argv, "--dry-run"]) == 0 and deleted == [] and not path.exists()
    assert main(argv) == 0
    assert sorted(deleted) == ["S0", "S1"]  # the example keeps 4 snapshots
    records = read_audit(path).records
    assert sorted(r["action"]["target"] for r in records) == ["S0", "S1"]
    for record in records:
        assert (record["cluster"], record["reconciler"], record["action"]["kind"], record["outcome"]) == (
            "cache", "backups", "prune", "done")
        assert record["action"]["destructive"] is True and "superseded by verified" in record["reason"]
        assert record["message"] == f"{record['action']['target']}: 1 files"
        assert record["operator"].startswith("dbfleet backup prune (by hand) ")
        assert record["spec_sha256"] == _spec_sha256()
