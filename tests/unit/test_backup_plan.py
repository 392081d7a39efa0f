"""Schedules and the backup plan: what is due, what is orphaned, what drills and prunes `plan` shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from dbfleet.backups.manifest import DrillRecord, Manifest, iso
from dbfleet.backups.plan import BackupObservation, planned_backup_actions
from dbfleet.backups.scheduler import due_backup
from dbfleet.spec import BackupPolicy, load_fleet

REPO = Path(__file__).resolve().parents[2]
FLEET = load_fleet(REPO / "fleet.example.yaml")
# pg-main: full "0 2 * * 0" (Sunday), diff "0 2 * * 1-6", incr "0 * * * *"; drill "30 4 * * *".
SUNDAY_0205 = datetime(2026, 11, 29, 2, 5, tzinfo=UTC)


def m(id_: str, kind: str, start: datetime, status: str = "verified", parent: str | None = None,
      cluster: str = "pg-main") -> Manifest:
    return Manifest(cluster=cluster, engine="postgres", id=id_, kind=kind, status=status, tool="pgbackrest",
                    tool_version="2.45", started_at=iso(start) or "", finished_at=iso(start + timedelta(minutes=1)),
                    parent=parent)


def test_the_biggest_due_kind_wins() -> None:
    policy = FLEET.cluster("pg-main").backup
    due = due_backup("postgres", policy, [], SUNDAY_0205)
    assert due is not None and due.kind == "full"
    monday = SUNDAY_0205 + timedelta(days=1)
    due = due_backup("postgres", policy, [m("F", "full", SUNDAY_0205 - timedelta(minutes=5))], monday)
    assert due is not None and due.kind == "diff"


def test_a_full_also_serves_as_the_hours_incr() -> None:
    policy = FLEET.cluster("pg-main").backup
    full = m("F", "full", SUNDAY_0205 - timedelta(minutes=5))
    assert due_backup("postgres", policy, [full], SUNDAY_0205) is None
    due = due_backup("postgres", policy, [full], SUNDAY_0205 + timedelta(hours=1))
    assert due is not None and due.kind == "incr"


def test_orphaned_runs_do_not_count_failed_ones_do() -> None:
    policy = BackupPolicy(schedule={"full": "0 2 * * *"})
    start = SUNDAY_0205 - timedelta(minutes=5)
    assert due_backup("postgres", policy, [m("F", "full", start, status="orphaned")], SUNDAY_0205) is not None
    assert due_backup("postgres", policy, [m("F", "full", start, status="failed")], SUNDAY_0205) is None


def test_redis_and_mongo_take_their_own_kind() -> None:
    due = due_backup("redis", FLEET.cluster("cache").backup, [], SUNDAY_0205.replace(minute=20))
    assert due is not None and due.kind == "snapshot"


def test_plan_lists_orphans_backup_drill_and_prune() -> None:
    now = SUNDAY_0205.replace(hour=4, minute=31)
    manifests = [m("F1", "full", now - timedelta(days=21)), m("F2", "full", now - timedelta(days=14)),
                 m("F3", "full", now - timedelta(hours=2, minutes=31), status="complete"),
                 m("P", "incr", now - timedelta(minutes=50), status="pending", parent="F3")]
    obs = {"pg-main": BackupObservation(manifests)}
    actions = planned_backup_actions(FLEET, obs, now)
    kinds = [(a.kind, a.target) for a in actions]
    assert ("mark-orphaned", "P") in kinds
    assert ("backup", "incr") in kinds
    assert ("drill", "F3") in kinds
    # full_count=2 allows F1, and F2 is a newer verified full; F2 itself is protected (F3 is not verified).
    prunes = [a for a in actions if a.kind == "prune"]
    assert [a.target for a in prunes] == ["F1"] and prunes[0].destructive
    assert "F2" in prunes[0].reason


def test_running_backup_hides_orphans_and_new_backups() -> None:
    pend = m("P", "full", SUNDAY_0205 - timedelta(minutes=3), status="pending")
    actions = planned_backup_actions(FLEET, {"pg-main": BackupObservation([pend], running=True)}, SUNDAY_0205)
    assert not [a for a in actions if a.kind in ("mark-orphaned", "backup")]


def test_a_failed_drill_is_reported_and_not_redrilled() -> None:
    now = SUNDAY_0205.replace(hour=4, minute=31)
    failed = m("F3", "full", now - timedelta(hours=2), status="failed")
    drill = DrillRecord(id="d1", cluster="pg-main", backup_id="F3", started_at=iso(now - timedelta(days=1)) or "",
                        finished_at=iso(now - timedelta(days=1)) or "", ok=False, message="base/1/1259: checksum")
    actions = planned_backup_actions(FLEET, {"pg-main": BackupObservation([failed], drill)}, now)
    kinds = [a.kind for a in actions]
    assert "drill" not in kinds
    assert kinds.count("report-drill-failed") == 2 and all(not a.changes for a in actions
                                                           if a.kind == "report-drill-failed")
    assert any("base/1/1259" in a.reason for a in actions)


def test_clusters_without_observation_or_disabled_are_skipped() -> None:
    assert planned_backup_actions(FLEET, {}, SUNDAY_0205) == []


def test_the_loop_reconciler_plans_and_reports_status() -> None:
    from dbfleet.backups.reconciler import BackupReconciler
    from dbfleet.wiring import reconcilers

    cluster = FLEET.cluster("pg-main")
    reconciler = BackupReconciler(lambda cluster, session: None)  # type: ignore[arg-type,return-value]
    assert reconciler.applies_to(cluster)
    obs = BackupObservation([m("F1", "full", SUNDAY_0205 - timedelta(days=1))])
    actions = reconciler.diff(cluster, (cluster, obs))
    assert actions and all(a.reconciler == "backups" and a.cluster == "pg-main" for a in actions)
    status = reconciler.status(cluster, (cluster, obs), actions)["backups"]
    assert status["newest_good"] == "F1" and status["last_drill"] is None
    assert [r.name for r in reconcilers()] == ["members", "dr", "indexes", "maintenance", "backups"]


def test_status_shows_the_newest_good_backup_and_the_last_drill() -> None:
    from dbfleet.backups.reconciler import backup_columns, backup_status

    cluster = FLEET.cluster("pg-main")
    full = m("F1", "full", datetime.now(UTC) - timedelta(hours=3))
    drill = DrillRecord(id="d1", cluster="pg-main", backup_id="F1", started_at=iso(SUNDAY_0205) or "",
                        finished_at=iso(SUNDAY_0205) or "", ok=True, message="", rto_seconds=12.34,
                        rpo_seconds=7200)
    status = {"backups": backup_status(BackupObservation([full], drill))}
    row = backup_columns(cluster, status)
    assert row == {"last_backup": "full 3h ago", "last_drill": "ok", "rto": "12.3s", "rpo": "2h"}
    failed = DrillRecord(id="d2", cluster="pg-main", backup_id="F1", started_at=iso(SUNDAY_0205) or "",
                         finished_at=iso(SUNDAY_0205) or "", ok=False, message="checksum")
    row = backup_columns(cluster, {"backups": backup_status(BackupObservation([], failed))})
    assert row["last_backup"] == "none" and row["last_drill"] == "FAILED (F1)"


def test_an_invalid_manifest_in_the_target_is_reported_and_planning_goes_on() -> None:
    from dbfleet.backups.storage import InvalidRecord

    now = SUNDAY_0205.replace(hour=4, minute=31)
    bad = InvalidRecord("dbfleet/pg-main/x/manifest.json", "started_at: 'x' is not an ISO time")
    obs = {"pg-main": BackupObservation([m("F3", "full", now - timedelta(hours=2))], invalid=(bad,))}
    actions = planned_backup_actions(FLEET, obs, now)
    report = [a for a in actions if a.kind == "report-invalid-manifest"]
    assert [(a.target, a.reason, a.destructive) for a in report] == [(bad.key, bad.reason, False)]
    assert any(a.kind == "drill" for a in actions), "the cluster's other backups go on"
