"""The backups reconciler for the operator loop: observe the target, plan (plan.py), and act.

dbfleet.wiring lists it among the reconcilers a cycle runs and tells it how
to build a cluster's BackupAccess from the cycle's engine session. A drill
that fails raises a PermanentError, so the loop reports it once and
never retries it into green; a backup whose host is unreachable raises a
TemporaryError and is retried by the loop's backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Any

from dbfleet.actions import Action
from dbfleet.backups.access import BackupAccess, backup_lock
from dbfleet.backups.adapters import adapter_for
from dbfleet.backups.drills import run_drill
from dbfleet.backups.manifest import PENDING, newest_good, utcnow
from dbfleet.backups.plan import RECONCILER, BackupObservation, planned_backup_actions
from dbfleet.backups.retention import expired_backups
from dbfleet.backups.runner import mark_orphans, observe, take_backup
from dbfleet.engines import AnySession
from dbfleet.engines.base import AnyCluster
from dbfleet.errors import PermanentError
from dbfleet.spec import Fleet
from dbfleet.units import age

AccessFactory = Callable[[AnyCluster, AnySession], BackupAccess]
"""Builds a cluster's BackupAccess from the cycle's engine session (see dbfleet.wiring)."""


class BackupReconciler:
    """Takes scheduled backups, runs due drills, prunes what retention allows, marks orphans."""

    name = RECONCILER

    def __init__(self, access_for: AccessFactory) -> None:
        self.access_for = access_for
        self._access: dict[str, BackupAccess] = {}

    def applies_to(self, cluster: AnyCluster) -> bool:
        return bool(cluster.backup.enabled)

    def observe(self, cluster: AnyCluster, session: AnySession) -> tuple[AnyCluster, BackupObservation]:
        access = self._access.get(cluster.name)
        if access is None or access.session is not session:
            access = self._access[cluster.name] = self.access_for(cluster, session)
        return cluster, observe(access)

    def diff(self, cluster: AnyCluster, observed: tuple[AnyCluster, BackupObservation]) -> list[Action]:
        _, obs = observed
        fleet = Fleet.model_construct(clusters=[cluster])
        return planned_backup_actions(fleet, {cluster.name: obs})

    def act(self, action: Action, session: AnySession) -> str:
        access = self._access[action.cluster]
        if action.kind == "backup":
            done = take_backup(access, action.detail["kind"])
            return f"{done.kind} backup {done.id} complete, {done.size_bytes} bytes"
        if action.kind == "drill":
            record = run_drill(access)
            if not record.ok:
                raise PermanentError(f"restore drill {record.id} of {record.backup_id} failed: {record.message}",
                                     cluster=action.cluster, action="drill")
            return f"drill {record.id}: RTO {record.rto_seconds}s, RPO {record.rpo_seconds}s"
        if action.kind == "mark-orphaned":
            with backup_lock(action.cluster):
                return f"marked {len(mark_orphans(access))} orphaned"
        if action.kind == "prune":
            # Re-plan under the current state: only the chosen backup, and only if still allowed.
            manifests = access.storage.manifests(access.name)
            expiries = [e for e in expired_backups(manifests, access.cluster.backup.retention, utcnow())
                        if e.root == action.detail.get("root")]
            if not expiries:
                return "nothing to prune any more"
            return "; ".join(adapter_for(access.cluster.engine).delete(access, expiries))
        raise PermanentError(f"unknown backup action {action.kind}", cluster=action.cluster)

    def notes(self, observed: tuple[AnyCluster, BackupObservation]) -> list[str]:
        _, obs = observed
        pending = [m.id for m in obs.manifests if m.status == PENDING]
        return [f"backup {', '.join(pending)} in progress"] if pending and obs.running else []

    def status(self, cluster: AnyCluster, observed: tuple[AnyCluster, BackupObservation],
               actions: list[Action]) -> dict[str, Any]:
        return {"backups": backup_status(observed[1])}


def backup_status(obs: BackupObservation) -> dict[str, Any]:
    """The figures `status` shows: newest good backup, last drill with RTO and RPO."""
    good = newest_good(obs.manifests)
    drill = obs.last_drill
    now = utcnow()
    return {
        "count": len(obs.manifests),
        "newest_good": good.id if good else None,
        "newest_good_kind": good.kind if good else None,
        "newest_good_age_s": round((now - (good.finished or good.started)).total_seconds())
        if good else None,
        "last_drill": None if drill is None else {
            "id": drill.id, "backup": drill.backup_id, "ok": drill.ok, "rto_s": drill.rto_seconds,
            "rpo_s": drill.rpo_seconds, "finished": drill.finished.astimezone(UTC).isoformat(),
            "message": drill.message},
    }


def backup_columns(cluster: AnyCluster, status: dict[str, Any]) -> dict[str, Any]:
    """`status` columns from `backup_status`: newest good backup and its age, the last drill with RTO and RPO."""
    figures = status.get("backups")
    if not cluster.backup.enabled:
        return {"last_backup": "disabled"}
    if figures is None:
        return {}
    row = {"last_backup": "none" if figures["newest_good"] is None
           else f"{figures['newest_good_kind']} {age(figures['newest_good_age_s'])} ago"}
    drill = figures["last_drill"]
    if drill is None:
        return {**row, "last_drill": "never", "rto": "-", "rpo": "-"}
    return {**row, "last_drill": "ok" if drill["ok"] else f"FAILED ({drill['backup']})",
            "rto": f"{drill['rto_s']:.1f}s" if drill["rto_s"] is not None else "-",
            "rpo": age(drill["rpo_s"]) if drill["rpo_s"] is not None else "-"}

