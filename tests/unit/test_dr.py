"""Disaster recovery without servers: copies into the second target, what `plan` and `backup list` make of the two
targets, pgBackRest's second repository, and the spec's RPO reaching PostgreSQL's archive_timeout."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from dbfleet.backups.access import BackupAccess
from dbfleet.backups.dr import describe_holders, dr_cluster, holdings
from dbfleet.backups.engine import EngineBackups, Prepared
from dbfleet.backups.manifest import Check, DrillRecord, Manifest, iso, utcnow
from dbfleet.backups.plan import BackupObservation, missing_copies, planned_backup_actions
from dbfleet.backups.reconciler import backup_columns, backup_status
from dbfleet.backups.runner import absent_files, observe, take_backup
from dbfleet.backups.storage import InvalidRecord, LocalStorage
from dbfleet.engines import pgbackrest
from dbfleet.errors import PermanentError
from dbfleet.progress import Progress
from dbfleet.role_inputs import pgbackrest_inputs, postgres_server_inputs
from dbfleet.spec import PostgresCluster, load_fleet, parse_fleet

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = (REPO / "fleet.example.yaml").read_text()
FLEET = load_fleet(REPO / "fleet.example.yaml")
NOW = datetime(2026, 11, 30, 6, 1, tzinfo=UTC)  # pg-main's DR drill is due at 06:00


def m(id_: str, status: str = "verified", start: datetime | None = None, cluster: str = "pg-main",
      files: tuple[str, ...] = ()) -> Manifest:
    from dbfleet.backups.manifest import FileEntry

    when = start or NOW - timedelta(hours=3)
    return Manifest(cluster=cluster, engine="postgres", id=id_, kind="full", status=status, tool="pgbackrest",
                    tool_version="2.45", started_at=iso(when) or "", finished_at=iso(when + timedelta(minutes=1)),
                    files=tuple(FileEntry(k, 1, "0" * 64) for k in files))


def drill(backup: str, ok: bool = True, rpo: float | None = 30.0, finished: datetime | None = None) -> DrillRecord:
    end = iso(finished or NOW - timedelta(minutes=30)) or ""
    return DrillRecord(id="D1", cluster="pg-main", backup_id=backup, started_at=end, finished_at=end, ok=ok,
                       message="all checks passed" if ok else "checksums: pgbackrest/pg-main/x: missing",
                       rto_seconds=12.0, rpo_seconds=rpo)


def without_dr(cluster: str) -> str:
    """The example without the dr section of `cluster`."""
    data = yaml.safe_load(EXAMPLE)
    next(c for c in data["clusters"] if c["name"] == cluster).pop("dr")
    return str(yaml.safe_dump(data, sort_keys=False))


def kinds(actions: list, where: str = "dr") -> list[tuple[str, str]]:
    return [(a.kind, a.target) for a in actions if a.detail.get("target") == where]


# --------------------------------------------------------------------------- missing copies


def test_a_good_backup_the_second_target_lacks_or_holds_failed_is_missing() -> None:
    first = [m("A"), m("B", start=NOW - timedelta(hours=2)), m("C", "failed"), m("D", "orphaned")]
    second = [m("B", "failed")]
    found = {b.id: why for b, why in missing_copies(first, second, backing_up=False)}
    assert set(found) == {"A", "B"}, "only good backups of the first target need a copy"
    assert "holds no manifest" in found["A"] and "is failed" in found["B"]


def test_the_newest_backup_is_not_missing_while_a_backup_runs() -> None:
    first = [m("A", start=NOW - timedelta(hours=5)), m("B", "complete", start=NOW - timedelta(minutes=5))]
    assert [b.id for b, _ in missing_copies(first, [], backing_up=True)] == ["A"]
    assert [b.id for b, _ in missing_copies(first, [], backing_up=False)] == ["B", "A"]


def test_a_copy_whose_files_are_gone_is_missing_and_the_file_is_named(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    copy = m("A", files=("dbfleet/pg-main/A/one.age", "dbfleet/pg-main/A/two.age"))
    storage.put_bytes("dbfleet/pg-main/A/one.age", b"x")
    access = BackupAccess(FLEET.cluster("pg-main"), None, storage, second=True)  # type: ignore[arg-type]
    absent = absent_files(access, [copy])
    assert absent == {"A": ("dbfleet/pg-main/A/two.age",)}
    [(backup, why)] = missing_copies([m("A")], [copy], False, absent)
    assert "1 of its 2 files are gone" in why and "dbfleet/pg-main/A/two.age" in why


# --------------------------------------------------------------------------- the plan


def test_plan_reports_the_second_targets_findings_and_plans_its_drill_and_prune() -> None:
    second = BackupObservation([m("A", start=NOW - timedelta(days=30)), m("B", start=NOW - timedelta(days=20)),
                                m("C", start=NOW - timedelta(days=2))],
                               last_drill=drill("C", finished=NOW - timedelta(days=1)),
                               invalid=(InvalidRecord("dbfleet/pg-main/X/manifest.json", "not JSON"),))
    first = BackupObservation([m("C", start=NOW - timedelta(days=2)), m("E", start=NOW - timedelta(hours=1))],
                              dr=second)
    actions = planned_backup_actions(FLEET, {"pg-main": first}, NOW)
    found = kinds(actions)
    assert ("report-dr-copy-missing", "E") in found and ("report-dr-copy-missing", "C") not in found
    assert ("dr-drill", "C") in found, "dr.drill '0 6 * * *' is due and the last DR drill was yesterday"
    assert ("report-invalid-manifest", "dr:dbfleet/pg-main/X/manifest.json") in found
    prunes = [a for a in actions if a.kind == "prune" and a.detail.get("target") == "dr"]
    assert prunes and all(a.destructive and a.target.startswith("dr:") for a in prunes)
    assert not [a for a in actions if a.kind == "prune" and a.detail.get("target") != "dr"], \
        "the first target keeps its own two backups: retention is per target"


def test_a_failed_dr_drill_and_one_over_the_rpo_are_reported() -> None:
    failed = BackupObservation([m("A")], dr=BackupObservation([m("A")], last_drill=drill("A", ok=False)))
    found = kinds(planned_backup_actions(FLEET, {"pg-main": failed}, NOW - timedelta(hours=1)))
    assert ("report-dr-drill-failed", "A") in found
    slow = BackupObservation([m("A")], dr=BackupObservation([m("A")], last_drill=drill("A", rpo=61.0)))
    found = kinds(planned_backup_actions(FLEET, {"pg-main": slow}, NOW - timedelta(hours=1)))
    assert found == [("report-dr-rpo-exceeded", "A")], "pg-main's dr.rpo_seconds is 60"
    within = BackupObservation([m("A")], dr=BackupObservation([m("A")], last_drill=drill("A", rpo=59.0)))
    assert kinds(planned_backup_actions(FLEET, {"pg-main": within}, NOW - timedelta(hours=1))) == []


def test_no_dr_drill_while_one_runs_and_none_without_a_dr_section() -> None:
    from dbfleet.backups.jobs import DR_DRILL, RUNNING, JobRecord, JobView

    running = JobRecord("pg-main", DR_DRILL, "dr-drill-pg-main-x", "A", RUNNING, "op", "h", iso(NOW) or "",
                        iso(NOW) or "")
    busy = BackupObservation([m("A")], dr=BackupObservation([m("A")], jobs=(JobView(running, True),)))
    assert ("dr-drill", "A") not in kinds(planned_backup_actions(FLEET, {"pg-main": busy}, NOW))
    plain = parse_fleet(without_dr("pg-main"))
    assert plain.cluster("pg-main").dr is None
    obs = BackupObservation([m("A")], dr=BackupObservation([]))
    assert kinds(planned_backup_actions(plain, {"pg-main": obs}, NOW)) == []


def test_status_shows_the_second_target() -> None:
    obs = BackupObservation([m("A"), m("B", start=NOW - timedelta(hours=1))],
                            dr=BackupObservation([m("A")], last_drill=drill("A", rpo=42.0)))
    row = backup_columns(FLEET.cluster("pg-main"), {"backups": backup_status(obs)})
    assert row["dr"] == "1 copies missing; DR drill ok, RTO 12.0s, RPO 42s"
    plain = backup_status(BackupObservation([m("A")]))
    assert "dr" not in plain and plain["newest_good"] == "A", "no dr key without a second target"
    assert "dr" not in backup_columns(FLEET.cluster("pg-main"), {"backups": backup_status(BackupObservation())})


# --------------------------------------------------------------------------- backup list


def test_backup_list_says_which_targets_hold_each_backup() -> None:
    first = [m("A", start=NOW - timedelta(hours=3)), m("B", start=NOW - timedelta(hours=2))]
    second = [m("A"), m("B", "failed"), m("Z", start=NOW - timedelta(hours=1))]
    rows = [(b.id, held) for b, held in holdings(first, second)]
    assert rows == [("Z", {"primary": None, "dr": "verified"}), ("B", {"primary": "verified", "dr": "failed"}),
                    ("A", {"primary": "verified", "dr": "verified"})]
    assert [describe_holders(held) for _, held in rows] == ["dr (primary: missing)", "primary (dr: failed)",
                                                            "primary+dr"]
    assert [held for _, held in holdings(first, None)] == [{"primary": "verified"}] * 2


# --------------------------------------------------------------------------- copying into the second target


class OneFile(EngineBackups):
    """A stand-in tool writing one encrypted-looking file into the first target."""

    engine, tool = "redis", "cp"

    def tool_version(self, access: BackupAccess) -> str:
        return "1.0"

    def take(self, access: BackupAccess, pending: Manifest, prepared: Prepared | None = None) -> Manifest:
        key = f"dbfleet/cache/{pending.id}/dump.rdb.age"
        access.storage.put_bytes(key, b"age-encryption.org/v1 ...")
        return pending.completed(utcnow(), [access.storage.measure(key)])

    def restore(self, *a):  # type: ignore[override]
        raise NotImplementedError

    def verify(self, *a):  # type: ignore[override]
        raise NotImplementedError


class Broken(OneFile):
    def copy_to_dr(self, access: BackupAccess, dr: BackupAccess, pending: Manifest, done: Manifest,
                   prepared: Prepared) -> Manifest:
        raise PermanentError("the second region does not answer", cluster=access.name)


class Garbling(LocalStorage):
    """A second target that stores other bytes than it was given."""

    def put_file(self, key: str, source: Path) -> None:
        super().put_file(key, source)
        self.put_bytes(key, b"garbled")


def two_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second: type[LocalStorage] = LocalStorage
                ) -> BackupAccess:
    monkeypatch.setenv("DBFLEET_LOCK_DIR", str(tmp_path))
    cluster = FLEET.cluster("cache")
    quiet = Progress("test", quiet=True)
    access = BackupAccess(cluster, None, LocalStorage(tmp_path / "first"), progress=quiet)  # type: ignore[arg-type]
    access.dr = BackupAccess(dr_cluster(cluster), None, second(tmp_path / "second"),  # type: ignore[arg-type]
                             progress=quiet, second=True)
    return access


def test_a_dump_is_copied_to_the_second_target_with_a_manifest_there(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    access = two_targets(tmp_path, monkeypatch)
    assert access.dr is not None
    done = take_backup(access, "snapshot", OneFile())
    [copy] = access.dr.storage.manifests("cache")
    assert copy.id == done.id and copy.status == "complete" and copy.files == done.files
    assert copy.detail["copied_from"] == access.storage.description
    assert access.dr.storage.get_bytes(done.files[0].key) == b"age-encryption.org/v1 ..."
    assert missing_copies(access.storage.manifests("cache"), [copy], False) == []
    assert observe(access).dr is not None


def test_a_copy_that_fails_or_differs_leaves_the_backup_good_and_the_copy_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    access = two_targets(tmp_path, monkeypatch)
    assert access.dr is not None
    done = take_backup(access, "snapshot", Broken())
    assert done.status == "complete" and access.storage.manifests("cache") == [done]
    [copy] = access.dr.storage.manifests("cache")
    assert copy.status == "failed" and "the second region does not answer" in copy.error
    garbled = two_targets(tmp_path / "g", monkeypatch, Garbling)
    assert garbled.dr is not None
    done = take_backup(garbled, "snapshot", OneFile())
    [copy] = garbled.dr.storage.manifests("cache")
    assert copy.status == "failed" and done.files[0].key in copy.error and "sha256" in copy.error
    [(_, why)] = missing_copies(garbled.storage.manifests("cache"), [copy], False)
    assert done.files[0].key in why


# --------------------------------------------------------------------------- pgBackRest's second repository


def pg(text: str = EXAMPLE) -> PostgresCluster:
    cluster = parse_fleet(text).cluster("pg-main")
    assert isinstance(cluster, PostgresCluster)
    return cluster


def options(config: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in config.splitlines() if "=" in line and not line.startswith("#"))


def test_pgbackrest_writes_repo2_in_the_dr_target_and_archives_to_both_asynchronously() -> None:
    conf = options(pgbackrest.host_config(pg()))
    assert conf["repo1-path"] == "/var/lib/dbfleet/backups/pgbackrest/pg-main"
    assert conf["repo2-path"] == "/var/lib/dbfleet/dr-backups/pgbackrest/pg-main"
    assert conf["repo1-cipher-type"] == conf["repo2-cipher-type"] == "aes-256-cbc"
    assert conf["repo1-retention-full"] == conf["repo2-retention-full"], "each repository has its own retention"
    assert conf["archive-async"] == "y" and conf["spool-path"] == "/var/spool/pgbackrest"
    assert "archive-push-queue-max" in conf
    assert not any("cipher-pass" in key for key in conf), "the passphrase is in the include file, never here"
    inputs = pgbackrest_inputs(pg())
    assert inputs["pgbackrest_repos"] == [1, 2] and inputs["pgbackrest_spool_path"] == "/var/spool/pgbackrest"
    assert inputs["pgbackrest_local_repo_paths"] == [conf["repo1-path"], conf["repo2-path"]]


def test_without_dr_there_is_one_repository_archived_synchronously() -> None:
    text = without_dr("pg-main")
    conf = options(pgbackrest.host_config(pg(text)))
    assert not any(key.startswith("repo2-") for key in conf) and "archive-async" not in conf
    assert pgbackrest_inputs(pg(text))["pgbackrest_spool_path"] == ""
    assert "archive_timeout" not in postgres_server_inputs(pg(text))["postgres_server_parameters"]


def test_an_s3_dr_target_is_repo2_on_s3_with_the_instance_profile() -> None:
    text = EXAMPLE.replace("target: {kind: local, path: /var/lib/dbfleet/dr-backups}\n      rpo_seconds: 60",
                           "target: {kind: s3, bucket: acme-dr, prefix: fleet, region: us-west-2}\n"
                           "      rpo_seconds: 60", 1)
    conf = options(pgbackrest.host_config(pg(text)))
    assert conf["repo2-type"] == "s3" and conf["repo2-s3-bucket"] == "acme-dr"
    assert conf["repo2-s3-region"] == "us-west-2" and conf["repo2-path"] == "/fleet/pgbackrest/pg-main"
    assert conf["repo2-s3-key-type"] == "auto" and conf["repo1-path"] == "/var/lib/dbfleet/backups/pgbackrest/pg-main"
    assert pgbackrest_inputs(pg(text))["pgbackrest_local_repo_paths"] == [conf["repo1-path"]]


def test_a_restore_from_the_second_target_reads_repo2_as_its_only_repository() -> None:
    scratch = options(pgbackrest.scratch_config(dr_cluster(pg()), "/restore", "/tmp"))
    assert scratch["repo1-path"] == "/var/lib/dbfleet/dr-backups/pgbackrest/pg-main"
    assert not any(key.startswith("repo2-") for key in scratch)


def test_the_rpo_bounds_archive_timeout() -> None:
    assert postgres_server_inputs(pg())["postgres_server_parameters"]["archive_timeout"] == "30s"
    text = EXAMPLE.replace("      rpo_seconds: 60\n", "      rpo_seconds: 300\n", 1)
    assert postgres_server_inputs(pg(text))["postgres_server_parameters"]["archive_timeout"] == "150s"


def test_a_dr_access_is_the_cluster_with_the_second_target_as_its_own(tmp_path: Path) -> None:
    cluster = FLEET.cluster("cache")
    view = dr_cluster(cluster)
    assert cluster.dr is not None and view.backup.target == cluster.dr.target and view.dr is None
    assert view.backup.schedule == cluster.backup.schedule and view.backup.drill == cluster.backup.drill
    access = BackupAccess(view, None, LocalStorage(Path("/nonexistent")), second=True)  # type: ignore[arg-type]
    assert access.repo == 2 and access.label == "dr" and replace(access, second=False).repo == 1
    assert access.target_path == "/var/lib/dbfleet/dr-backups"
    plain = parse_fleet(without_dr("cache"))
    with pytest.raises(PermanentError, match="no dr section"):
        dr_cluster(plain.cluster("cache"))
    # The drill record type is shared by both targets: a DR drill's record, saved in the second target, is read
    # back there as the drill record a drill's is in the first.
    record = DrillRecord(id="D2", cluster="cache", backup_id="A", started_at=iso(NOW) or "",
                         finished_at=iso(NOW) or "", ok=True, message="ok", checks=(Check("x", True, "fine"),))
    second = replace(access, storage=LocalStorage(tmp_path / "second"))
    second.storage.save_drill(record)
    assert second.storage.last_drill("cache") == record and LocalStorage(tmp_path / "first").last_drill("cache") is None


# --------------------------------------------------------------------------- prunes held for restores and backups


def _job(kind: str, alive_host: str = "elsewhere") -> object:
    from dbfleet.backups.jobs import RUNNING, JobRecord, JobView

    record = JobRecord("pg-main", kind, f"{kind}-pg-main-x", "latest", RUNNING, "them:7", alive_host,
                       iso(NOW) or "", iso(NOW) or "")
    return JobView(record, True)


def _expiring(**second: object) -> BackupObservation:
    """Both targets hold backups the retention lets go (old fulls superseded by newer verified ones)."""
    old = [m(f"F{d}", start=NOW - timedelta(days=d)) for d in (30, 20, 10, 2)]
    return BackupObservation(old, dr=BackupObservation(old, **second))  # type: ignore[arg-type]


def test_a_restore_from_the_second_target_holds_prunes_in_both_targets() -> None:
    from dbfleet.backups.jobs import RESTORE

    idle = planned_backup_actions(FLEET, {"pg-main": _expiring()}, NOW)
    assert [a for a in idle if a.kind == "prune" and a.detail.get("target") == "dr"], "the fixture expires in dr"
    assert [a for a in idle if a.kind == "prune" and a.detail.get("target") != "dr"], "and in the first target"
    held = planned_backup_actions(FLEET, {"pg-main": _expiring(jobs=(_job(RESTORE),))}, NOW)
    assert not [a for a in held if a.kind == "prune"], "a restore reading the second target holds every prune"
    waits = [a for a in held if a.kind == "report-prune-waits"]
    assert {a.detail.get("target", "primary") for a in waits} == {"primary", "dr"}
    assert all("restore job restore-pg-main-x (them:7)" in a.reason for a in waits)
    primary = replace(_expiring(), jobs=(_job(RESTORE),))
    held = planned_backup_actions(FLEET, {"pg-main": primary}, NOW)
    assert not [a for a in held if a.kind == "prune"], "a restore reading the first target holds dr prunes too"
    assert {a.detail.get("target", "primary") for a in held if a.kind == "report-prune-waits"} == {"primary", "dr"}


def test_a_dr_prune_waits_while_a_backup_and_its_copy_run() -> None:
    from dbfleet.backups.jobs import BACKUP

    busy = replace(_expiring(), jobs=(_job(BACKUP),))
    actions = planned_backup_actions(FLEET, {"pg-main": busy}, NOW)
    assert not [a for a in actions if a.kind == "prune" and a.detail.get("target") == "dr"]
    waits = [a for a in actions if a.kind == "report-prune-waits" and a.detail.get("target") == "dr"]
    assert waits and all("backup job backup-pg-main-x" in a.reason for a in waits)
    locked = replace(_expiring(), running=True)
    assert not [a for a in planned_backup_actions(FLEET, {"pg-main": locked}, NOW)
                if a.kind == "prune" and a.detail.get("target") == "dr"]


def _restore_record(cluster: str, host: str = "elsewhere") -> object:
    from dbfleet.backups.jobs import RESTORE, RUNNING, JobRecord

    now = utcnow()
    return JobRecord(cluster, RESTORE, f"restore-{cluster}-x", "latest", RUNNING, "them:7", host, iso(now) or "",
                     iso(now) or "")


def test_the_prune_act_checks_restores_in_both_targets_and_the_backup_lock_right_before_deleting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dbfleet.actions import Action
    from dbfleet.backups.access import backup_lock
    from dbfleet.backups.reconciler import BackupReconciler
    from dbfleet.errors import Waiting

    access = two_targets(tmp_path, monkeypatch)
    assert access.dr is not None
    reconciler = BackupReconciler(lambda cluster, session: access)
    reconciler._access["cache"] = access
    for where in ({"target": "dr"}, {}):
        prune = Action("cache", "backups", "prune", "X", "retention", destructive=True,
                       detail={"backup": "X", "root": "X", **where})
        assert reconciler.act(prune, None) == "nothing to prune any more"  # type: ignore[arg-type]
        record = _restore_record("cache")
        access.dr.storage.put_bytes(record.key, record.to_json().encode())  # type: ignore[attr-defined]
        with pytest.raises(Waiting, match="restore job restore-cache-x \\(them:7\\)"):
            reconciler.act(prune, None)  # type: ignore[arg-type]
        access.dr.storage.delete_prefix("dbfleet/cache/jobs/")
        with backup_lock("cache"), pytest.raises(Waiting, match="a backup of cache runs"):
            reconciler.act(prune, None)  # type: ignore[arg-type]


def test_backup_prune_refuses_while_a_restore_reads_either_target(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from dbfleet.commands import backup as command
    from dbfleet.commands.common import WorkFailed

    access = two_targets(tmp_path, monkeypatch)
    assert access.dr is not None
    monkeypatch.setattr(command, "_clusters", lambda args: [access.cluster])
    monkeypatch.setattr(command, "_access", lambda args, cluster: access)
    trails: list[str] = []
    monkeypatch.setattr(command, "open_audit_trail", lambda *a: trails.append("opened") or None)
    args = argparse.Namespace(dry_run=False, json=True, cluster=None)
    for target in (access.dr, access):
        record = _restore_record("cache")
        target.storage.put_bytes(record.key, record.to_json().encode())  # type: ignore[attr-defined]
        for dry_run in (True, False):
            with pytest.raises(WorkFailed, match="restore job restore-cache-x \\(them:7\\) .*prune after it ends"):
                command.run_prune(argparse.Namespace(**{**vars(args), "dry_run": dry_run}))
        target.storage.delete_prefix("dbfleet/cache/jobs/")
    assert trails == [], "nothing was about to be deleted"
    assert command.run_prune(argparse.Namespace(**{**vars(args), "dry_run": True})) == 0


def test_status_notes_and_metrics_show_a_restore_from_the_second_target() -> None:
    from dbfleet.backups.jobs import RESTORE
    from dbfleet.backups.reconciler import BackupReconciler
    from dbfleet.monitoring import metrics

    obs = BackupObservation([m("A")], dr=BackupObservation([m("A")], jobs=(_job(RESTORE),)))
    reconciler = BackupReconciler(lambda cluster, session: None)  # type: ignore[arg-type,return-value]
    cluster = FLEET.cluster("pg-main")
    status = reconciler.status(cluster, (cluster, obs), [])
    assert [(j["kind"], j["id"]) for j in status["jobs"]] == [(RESTORE, "restore-pg-main-x")]
    assert any("restore-pg-main-x" in note for note in reconciler.notes((cluster, obs)))
    assert 'dbfleet_job_age_seconds{cluster="pg-main",kind="restore"}' in metrics.render().decode()
    metrics.set_observed_jobs("pg-main", [])


class ScriptOutput:
    """An executor whose one command (the backup script) prints what pgBackRest would: its log, then `info`."""

    def __init__(self, out: str):
        self.out = out
        self.ran: list[list[str]] = []

    def run(self, host: str, argv: list[str], **kwargs: object) -> object:
        from dbfleet.engines.executor import ExecResult

        self.ran.append(argv)
        return ExecResult(0, self.out, "")


def test_a_diff_pgbackrest_takes_as_full_in_repo2_is_a_full_in_the_second_targets_manifest(tmp_path: Path) -> None:
    import json

    from dbfleet.backups.engine import Prepared
    from dbfleet.backups.postgres import PostgresBackups

    cluster = FLEET.cluster("pg-main")
    when = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    pending = PostgresBackups().new_manifest(BackupAccess(cluster, None, None), "diff", when, "pgBackRest 2.45")  # type: ignore[arg-type]
    done = replace(pending, status="complete", kind="diff", detail={"type": "diff", "label": "20261130-020000F_D"})

    def entry(label: str, kind: str, repo: int) -> dict[str, object]:
        return {"label": label, "type": kind, "prior": None if kind == "full" else "20261129-020000F",
                "annotation": {"dbfleet-id": pending.id}, "database": {"id": 1, "repo-key": repo},
                "archive": {"start": "000000010000000000000005", "stop": "000000010000000000000005"},
                "lsn": {"start": "0/5000028", "stop": "0/5000100"},
                "timestamp": {"start": 1796004000, "stop": 1796004010},
                "info": {"size": 100, "repository": {"size": 10}}, "backrest": {"version": "2.45"}}

    # repo1 took the diff; repo2 had no full yet, so pgBackRest took a full there ("diff backup changed to full").
    info = [{"name": "pg-main", "archive": [],
             "backup": [entry("20261130-020000F_D", "diff", 1), entry("20261130-020005F", "full", 2)]}]
    executor = ScriptOutput("dbfleet-tool-ms: 5000\ndbfleet-info:\n" + json.dumps(info))
    storage = LocalStorage(tmp_path)
    storage.put_bytes("pgbackrest/pg-main/backup/pg-main/20261130-020005F/backup.manifest", b"x")
    dr = BackupAccess(dr_cluster(cluster), executor, storage, second=True)  # type: ignore[arg-type]
    copy = PostgresBackups().copy_to_dr(dr, dr, pending, done, Prepared("pgBackRest 2.45", {"host": "pg-1"}, ()))
    assert "--repo=2" in executor.ran[0] and "--type=diff" in executor.ran[0]
    assert copy.id == pending.id, "the same id in both targets"
    assert copy.kind == "full" and copy.detail["type"] == "full" and copy.detail["label"] == "20261130-020005F"
    assert copy.parent is None
