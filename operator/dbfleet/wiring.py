"""How the operator is put together, written down in one place.

The reconcilers a cycle runs and their order, the columns `status` shows, how
backups reach a cluster (storage, scratch hosts), which lock makes one
operator the leader and where it records what it does. Commands and tests build operators from these; nothing
joins the loop by being imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from dbfleet.actions import Outcome
from dbfleet.backups.access import BackupAccess
from dbfleet.backups.dr import dr_cluster
from dbfleet.backups.job_runner import Job, JobRunner
from dbfleet.backups.jobs import DONE, JobRecord
from dbfleet.backups.reconciler import BackupReconciler, backup_columns, job_columns
from dbfleet.backups.storage import storage_for
from dbfleet.engines import AnySession, open_session
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.base import AnyCluster
from dbfleet.engines.etcd import operator_gateway
from dbfleet.engines.postgres import PostgresSession, connect
from dbfleet.lab.scratch import LabScratch, backup_volume_mountpoint
from dbfleet.progress import Progress
from dbfleet.reconcile.audit import AuditTrail
from dbfleet.reconcile.etcd_leader import EtcdLeaderLock
from dbfleet.reconcile.index_reconciler import IndexReconciler
from dbfleet.reconcile.leader import AdvisoryLeaderLock, FileLeaderLock, operator_identity
from dbfleet.reconcile.loop import ActionRecorder, Leader, Reconciler
from dbfleet.reconcile.maintenance_reconciler import MaintenanceReconciler
from dbfleet.reconcile.members import MemberReconciler
from dbfleet.reconcile.status import (
    StatusContext,
    StatusProvider,
    ha_columns,
    index_columns,
    last_reconcile_columns,
    maintenance_columns,
    pending_columns,
    topology_columns,
)
from dbfleet.spec import Fleet, PostgresCluster, S3Target


def reconcilers(jobs: JobRunner | None = None) -> list[Reconciler[Any]]:
    """What one cycle does to each cluster, in this order: members first (a stopped replica is started before
    anything reads from it), then indexes, then maintenance (bloat, vacuum, wraparound; it rebuilds only in its
    window), then backups, which start their backups and drills as jobs on `jobs` (default: run to their end
    inside the act)."""
    return [MemberReconciler(), IndexReconciler(), MaintenanceReconciler(), BackupReconciler(backup_access, jobs)]


def job_runner(fleet: Fleet, inline: bool, record: ActionRecorder | None = None) -> JobRunner:
    """The runner of the operator's long jobs, bounded by the spec's operator.jobs, naming this process as the
    leader lock does; how each job ends goes to the audit trail through `record`, as an action's outcome does."""

    def on_end(job: Job, ended: JobRecord) -> None:
        if record is not None and job.action is not None:
            status = "done" if ended.state == DONE else "failed"
            record(Outcome(job.action, status, f"job {ended.id} {ended.state}: {ended.message}"))

    return JobRunner(fleet.operator.jobs, inline=inline, owner=operator_identity(), on_end=None if inline else on_end)


def _backup_columns(ctx: StatusContext) -> dict[str, Any]:
    return backup_columns(ctx.cluster, ctx.report.status)


def _job_columns(ctx: StatusContext) -> dict[str, Any]:
    return job_columns(ctx.report.status)


def status_providers() -> list[StatusProvider]:
    """The columns of `dbfleet status`, left to right."""
    return [topology_columns, ha_columns, index_columns, maintenance_columns, pending_columns,
            last_reconcile_columns, _backup_columns, _job_columns]


def backup_access(cluster: AnyCluster, session: AnySession, progress: Progress | None = None,
                  s3_client: Any = None) -> BackupAccess:
    """A cluster's BackupAccess on the fleet's access and the cluster's engine session, with its second target's
    (`dr`) when the spec gives it one.

    In the lab a local target is seen by the operator at the shared volume's
    mountpoint (the second target at the second volume's) and restores run in
    scratch containers that mount it; elsewhere a local target is the share
    mounted at the same path, and there is no scratch provider yet.
    """
    progress = progress or Progress("backup")
    access = _target_access(cluster, session, progress, s3_client, second=False)
    if cluster.dr is not None:
        access.dr = _target_access(dr_cluster(cluster), session, progress, s3_client, second=True)
    return access


def _target_access(cluster: AnyCluster, session: AnySession, progress: Progress, s3_client: Any,
                   second: bool) -> BackupAccess:
    fleet = session.access
    target = cluster.backup.target
    local_root = None
    if fleet.lab and not isinstance(target, S3Target):
        local_root = backup_volume_mountpoint(fleet.lab, fleet.docker_client, dr=second)
    scratch = None
    if fleet.lab:
        scratch = LabScratch(fleet.lab, None if isinstance(target, S3Target) else target.path, fleet.docker_client,
                             dr=second)
    return BackupAccess(cluster, fleet.executor, storage_for(target, local_root, s3_client), fleet, session, scratch,
                        progress, second=second)


def open_access(cluster: AnyCluster, inventory: Path, secrets: Path | None = None, progress: Progress | None = None,
                docker_client: Any = None, s3_client: Any = None) -> BackupAccess:
    """backup_access for a command: the fleet's access from an inventory written by dbfleet, and a new session."""
    fleet = FleetAccess.load(inventory, secrets, docker_client)
    return backup_access(cluster, open_session(cluster, fleet), progress, s3_client)


def leader_candidates(fleet: Fleet) -> list[PostgresCluster]:
    """The clusters that can hold the leader lock the spec chooses: those running etcd for `etcd`, the PostgreSQL
    clusters for `postgres`, none for `file`."""
    backend = fleet.leader_backend()
    if backend == "etcd":
        return fleet.etcd_clusters()
    return [c for c in fleet.clusters if isinstance(c, PostgresCluster)] if backend == "postgres" else []


def leader_lock(fleet: Fleet, access: FleetAccess, lock_dir: Path, cluster_name: str | None = None) -> Leader:
    """The leader lock of the spec's operator.leader (Fleet.leader_backend): a lease in the etcd of the chosen
    (default: first) Patroni cluster, the advisory lock on the chosen (default: first) PostgreSQL cluster's primary,
    or a file lock in `lock_dir`.

    Raises KeyError when `cluster_name` is not among leader_candidates.
    """
    clusters = leader_candidates(fleet)
    if cluster_name:
        clusters = [c for c in clusters if c.name == cluster_name]
        if not clusters:
            raise KeyError(cluster_name)
    if not clusters:
        return FileLeaderLock(lock_dir / "operator-leader.lock")
    cluster = clusters[0]
    if fleet.leader_backend() == "etcd":
        return EtcdLeaderLock(lambda: operator_gateway(cluster, access), fleet.operator.lease_ttl,
                              where=f"the etcd of {cluster.name}")

    def lock_connection() -> psycopg.Connection[Any]:
        with PostgresSession(cluster, access) as session:
            host = session.primary()
        return connect(cluster, access, host, "postgres", operator_identity())

    return AdvisoryLeaderLock(lock_connection, where=f"the primary of {cluster.name}")


def audit_trail(path: Path, spec_sha256: str) -> AuditTrail:
    """The recorder of the operator's actions: JSON lines in `path` (beside the state file), naming this process
    as the leader lock does and the spec by its hash."""
    return AuditTrail(path, operator_identity(), spec_sha256)
