"""Disaster recovery: every backup written to the cluster's second target too (the spec's dr.target).

The second target is a complete backup target of its own: the same layout,
a manifest per backup (`dbfleet/<cluster>/<id>/manifest.json`, the same id as
in the first target), its own drill records and job records. So everything
that reads a target (list, drills, restores, retention) works on it through a
BackupAccess whose cluster has dr.target as its backup.target (dr_cluster).

How a backup gets there is the engine's (EngineBackups.copy_to_dr):
- PostgreSQL: pgBackRest backs up into its second repository (repo2) after the
  first, and archives WAL to both (pgbackrest.conf: archive-async);
- MongoDB and Redis: the dump, age-encrypted on its host already, is copied
  from the first target to the second, measured there and checked against the
  first target's checksums.

A copy that fails never fails the backup (the first target holds it): its
manifest in the second target says `failed` with the reason, and the planner
reports every good backup the second target lacks (report-dr-copy-missing).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path

from dbfleet.backups.access import BackupAccess
from dbfleet.backups.manifest import COMPLETE, GOOD, Check, Manifest, newest_first, utcnow
from dbfleet.engines import AnySession
from dbfleet.engines.base import AnyCluster
from dbfleet.engines.postgres import PostgresSession
from dbfleet.engines.standby import REPLAY_LAG_QUERY, replay_lag_check
from dbfleet.errors import PermanentError, ReconcileError, TemporaryError
from dbfleet.spec import PostgresCluster

log = logging.getLogger(__name__)


def dr_cluster(cluster: AnyCluster) -> AnyCluster:
    """The cluster as its second target sees it: backup.target is dr.target (and no dr of its own), so a restore
    or a drill reads the second target with the code that reads the first."""
    if cluster.dr is None:
        raise PermanentError("the spec gives this cluster no dr section", cluster=cluster.name)
    backup = cluster.backup.model_copy(update={"target": cluster.dr.target})
    return cluster.model_copy(update={"backup": backup, "dr": None})


def copy_files(access: BackupAccess, dr: BackupAccess, done: Manifest) -> Manifest:
    """Copy a finished backup's stored files (already encrypted) from the first target to the second, measure
    them there, and return the second target's manifest. Raises when a copy differs from the first."""
    with tempfile.TemporaryDirectory(prefix="dbfleet-dr-") as tmp:  # 0700, removed after
        for entry in done.files:
            local = Path(tmp) / "file"
            access.storage.get_file(entry.key, local)
            dr.storage.put_file(entry.key, local)
            local.unlink()
    copied = dr.storage.measure_many([entry.key for entry in done.files])
    for want, got in zip(done.files, copied, strict=True):
        if (got.size, got.sha256) != (want.size, want.sha256):
            raise PermanentError(f"{want.key} in {dr.storage.description}: size {got.size}, sha256 "
                                 f"{got.sha256[:12]}... after the copy; the first target has {want.size}, "
                                 f"{want.sha256[:12]}...", cluster=access.name, action="dr copy")
    return replace(done, status=COMPLETE, files=tuple(copied), verification=None, error="",
                   detail={**done.detail, "copied_from": access.storage.description})


def describe(exc: BaseException) -> str:
    return exc.render() if isinstance(exc, ReconcileError) else f"{type(exc).__name__}: {exc}"


def failed_copy(pending: Manifest, why: str) -> Manifest:
    """The second target's manifest of a backup that did not reach it: failed, never restorable."""
    return pending.aborted(f"not copied to the second target: {why}", utcnow())


def holdings(first: list[Manifest], second: list[Manifest] | None) -> list[tuple[Manifest, dict[str, str | None]]]:
    """Every backup either target holds, newest first: its manifest (the first target's when it has one) and each
    target's status of it ('primary', and 'dr' when the cluster has a second target; None: not there)."""
    by_target = {"primary": {m.id: m for m in first}}
    if second is not None:
        by_target["dr"] = {m.id: m for m in second}
    ids = {i: m for held in reversed(list(by_target.values())) for i, m in held.items()}
    rows = []
    for backup in newest_first(ids.values()):
        rows.append((backup, {name: (held[backup.id].status if backup.id in held else None)
                              for name, held in by_target.items()}))
    return rows


def describe_holders(statuses: dict[str, str | None]) -> str:
    """`backup list`'s targets column: the targets that hold a good copy, then what the others lack."""
    good = [name for name, status in statuses.items() if status in GOOD]
    other = [f"{name}: {status or 'missing'}" for name, status in statuses.items() if status not in GOOD]
    return "+".join(good or ["none"]) + (f" ({', '.join(other)})" if other else "")


def standby_checks(cluster: AnyCluster, session: AnySession) -> list[Check]:
    """The DR drill's check of a PostgreSQL standby site (dr.standby): its replay lag against dr.rpo_seconds, read
    from pg_stat_replication on every primary-site server that answers (the standby leader may stream from a
    replica). None for other clusters."""
    if not isinstance(cluster, PostgresCluster) or not isinstance(session, PostgresSession) \
            or not cluster.standby_hosts():
        return []
    names = [h.name for h in cluster.standby_hosts()]
    rows: list[dict[str, object]] = []
    unanswered = []
    for host in cluster.host_names():
        try:
            rows.extend(session.run(host, "postgres", REPLAY_LAG_QUERY, (names,)))
        except TemporaryError as exc:
            unanswered.append(f"{host}: {exc.message}")
    ok, detail = replay_lag_check(cluster, rows)
    if unanswered and not ok:
        detail += " (not asked: " + "; ".join(unanswered) + ")"
    return [Check("standby site replay lag", ok, detail)]
