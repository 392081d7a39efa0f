"""How the operator is put together, written down in one place.

The reconcilers a cycle runs and their order, the columns `status` shows, how
backups reach a cluster (storage, scratch hosts), which lock makes one
operator the leader and where it records what it does. Commands and tests build operators from these; nothing
joins the loop by being imported.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from dbfleet.actions import Action, Outcome
from dbfleet.backups.access import BackupAccess
from dbfleet.backups.dr import dr_cluster
from dbfleet.backups.job_runner import Job, JobContext, JobRunner, job_lock_held
from dbfleet.backups.jobs import DONE, REWRITE, JobRecord, job_alive
from dbfleet.backups.manifest import utcnow
from dbfleet.backups.reconciler import BackupReconciler, backup_columns, job_columns
from dbfleet.backups.storage import Storage, storage_for
from dbfleet.engines import AnySession, open_session
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.base import AnyCluster
from dbfleet.engines.etcd import operator_gateway
from dbfleet.engines.postgres import PostgresSession, connect
from dbfleet.lab.scratch import LabScratch, backup_volume_mountpoint
from dbfleet.progress import Progress
from dbfleet.reconcile.audit import AuditTrail, command_identity
from dbfleet.reconcile.dr_site import DrSiteReconciler
from dbfleet.reconcile.etcd_leader import EtcdLeaderLock
from dbfleet.reconcile.index_reconciler import IndexReconciler
from dbfleet.reconcile.leader import AdvisoryLeaderLock, FileLeaderLock, operator_identity
from dbfleet.reconcile.loop import ActionRecorder, Leader, Reconciler
from dbfleet.reconcile.maintenance_observation import RewriteJob
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
    anything reads from it), then the DR site (a standby site that could not take over; an old site back after a
    promotion, fenced), then indexes, then maintenance (bloat, vacuum, wraparound; it rebuilds only in its
    window, as a rewrite job), then backups, which start their backups and drills as jobs; all jobs on `jobs`
    (default: run to their end inside the act)."""
    runner = jobs or JobRunner(inline=True)
    return [MemberReconciler(), DrSiteReconciler(), IndexReconciler(), MaintenanceReconciler(jobs=RewriteJobs(runner)),
            BackupReconciler(backup_access, runner)]


class RewriteJobs:
    """The maintenance reconciler's rewrites as jobs on the operator's runner, their records kept where every job
    record is: dbfleet/<cluster>/jobs/rewrite.json in the cluster's backup target (backup.target, which has a
    default whether or not backups are enabled)."""

    def __init__(self, runner: JobRunner, storage: Callable[[AnyCluster, AnySession], Storage] | None = None):
        self.runner = runner
        self._storage_for = storage or (lambda cluster, session: backup_access(cluster, session).storage)
        self._storage: dict[str, Storage] = {}

    def storage(self, cluster: AnyCluster, session: AnySession) -> Storage:
        if cluster.name not in self._storage:
            self._storage[cluster.name] = self._storage_for(cluster, session)
        return self._storage[cluster.name]

    def _record(self, cluster: AnyCluster, session: AnySession) -> tuple[JobRecord, bool] | None:
        record = next((r for r in self.storage(cluster, session).jobs(cluster.name) if r.kind == REWRITE), None)
        if record is None:
            return None
        alive = self.runner.is_running(cluster.name, REWRITE) or \
            job_alive(record, utcnow(), socket.gethostname(), job_lock_held(cluster.name, REWRITE))
        return record, alive

    def observe(self, cluster: AnyCluster, session: AnySession) -> RewriteJob | None:
        found = self._record(cluster, session)
        if found is None:
            return None
        record, alive = found
        action, _, before = record.before.partition(" ")
        apart = (record.database, record.schema, record.relation) if record.schema and record.relation else None
        return RewriteJob(record.id, action, record.target, record.state, alive, record.owner, record.heartbeat_at,
                          before, record.describe(utcnow()), apart)

    def start(self, action: Action, session: AnySession, before: str, work: Callable[[], str]) -> str:
        def job(context: JobContext) -> str:
            context.step(f"{action.kind} {action.target}")
            return work()

        # The relation's parts, apart, are in its record from the first write on; a record without them (older
        # operators) is read by its target, and refused where a '.' or '/' in a name makes that ambiguous.
        d = action.detail
        relation = (str(d.get("database", "")), str(d.get("schema", "")), str(d.get("name", "")))
        return self.runner.start(Job(action.cluster, REWRITE, action.target, self.storage(session.cluster, session),
                                     job, action, before=f"{action.kind} {before}", settled_after=True,
                                     relation=relation))

    def settle(self, cluster: AnyCluster, session: AnySession, job_id: str, state: str, message: str) -> str:
        found = self._record(cluster, session)
        if found is None or found[0].id != job_id or found[0].state != "running" or found[1]:
            return f"job {job_id} needs no settling any more"
        record = found[0].ended(state, message, utcnow())
        self.storage(cluster, session).put_bytes(record.key, record.to_json().encode())
        return f"rewrite job {job_id}: {state}: {message}"


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


def audit_trail(path: Path, spec_sha256: str, command: str | None = None) -> AuditTrail:
    """The recorder of the operator's actions: JSON lines in `path` (beside the state file), naming this process
    as the leader lock does and the spec by its hash. With `command`, the recorder of a command a person ran
    (`dbfleet switchover`, `dbfleet backup prune`): the same file, this process named by that command."""
    if command is None:
        return AuditTrail(path, operator_identity(), spec_sha256)
    return AuditTrail(path, command_identity(command), spec_sha256)
