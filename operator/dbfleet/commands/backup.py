"""`dbfleet backup run|list|prune|mark`, `dbfleet restore` and `dbfleet drill`: backups on demand.

A restore runs under a `restore` job record (dbfleet.backups.jobs) in the target it reads (the backup target, or
the second one with --from dr), written when it starts, every heartbeat and when it ends: `status` and the
operator's metrics show it, neither target is pruned while it runs (by the operator or `backup prune`, which
exits 1), and a second restore of the same cluster, from either target, is refused.

Exit codes: 0 ok, 1 the backup, restore or drill failed, 2 bad options or spec, or another restore of the
cluster runs.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

from dbfleet.backups.access import BackupAccess
from dbfleet.backups.adapters import adapter_for
from dbfleet.backups.dr import describe_holders, holdings, standby_checks
from dbfleet.backups.drills import restore, run_drill
from dbfleet.backups.engine import RestoreTarget
from dbfleet.backups.job_runner import Job, JobContext, JobRunner
from dbfleet.backups.jobs import RESTORE
from dbfleet.backups.manifest import Check, parse_time
from dbfleet.backups.runner import plan_prune, prune, restore_running, take_backup, targets
from dbfleet.backups.scheduler import engine_kind
from dbfleet.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    WorkFailed,
    add_inventory_option,
    add_json_option,
    add_lab_options,
    emit,
    fleet_of,
    inventory_asked,
    inventory_path,
    one_line,
    spec_of,
    table,
)
from dbfleet.commands.reconcile import open_audit_trail
from dbfleet.engines.access import read_inventory_hosts
from dbfleet.errors import PermanentError, ReconcileError, Waiting
from dbfleet.progress import Progress
from dbfleet.reconcile.leader import operator_identity
from dbfleet.secrets import SecretsError
from dbfleet.wiring import open_access


def _common(p: argparse.ArgumentParser, cluster_required: bool = True) -> None:
    add_lab_options(p)
    add_inventory_option(p)
    p.add_argument("--secrets", type=Path, help="secrets file (default: beside the inventory)")
    p.add_argument("--cluster", required=cluster_required, help="cluster name from the spec"
                   + ("" if cluster_required else " (default: every cluster with backups enabled)"))
    add_json_option(p)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("backup", help="take, list and prune backups",
                       description="Backups on demand, into the cluster's backup target, each with a verified "
                                   "manifest. Exit 1 if the work failed, 2 for bad options, spec or inventory.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    run_p = verbs.add_parser("run", help="take a backup now (pgBackRest, mongodump or redis-cli --rdb)",
                             description="Take one backup of --cluster now with its engine's tool and record "
                                         "its manifest in the backup target.")
    _common(run_p)
    run_p.add_argument("--type", choices=["full", "diff", "incr", "snapshot"],
                       help="backup kind (default: full; Redis always takes a snapshot)")
    run_p.add_argument("--dry-run", action="store_true", help="say what would be taken, take nothing")
    run_p.set_defaults(handler=lambda a: _guard(run_backup, a))
    list_p = verbs.add_parser("list", help="backups in the target with their manifest status",
                              description="List the valid backups in each cluster's target, newest first.")
    _common(list_p, cluster_required=False)
    list_p.set_defaults(handler=lambda a: _guard(run_list, a))
    prune_p = verbs.add_parser("prune", help="delete what retention allows and a newer verified backup supersedes",
                               description="Delete the backups the spec's retention allows to go, never one "
                                           "without a newer verified backup. Each deletion goes to the "
                                           "operator's audit trail (`dbfleet audit`), as the loop's do.")
    _common(prune_p, cluster_required=False)
    prune_p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    prune_p.add_argument("--state", type=Path, help="the reconcile state file; the audit trail is beside it "
                                                    "(default: operator-state.json beside the inventory)")
    prune_p.set_defaults(handler=lambda a: _guard(run_prune, a))
    mark_p = verbs.add_parser("mark", help="PostgreSQL: create a named restore point for `restore --to-name`",
                              description="Create a named restore point on a PostgreSQL cluster's primary, "
                                          "for `dbfleet restore --to-name`.")
    _common(mark_p)
    mark_p.add_argument("--name", required=True, help="restore point name")
    mark_p.set_defaults(handler=lambda a: _guard(run_mark, a))

    r = sub.add_parser("restore", help="restore a backup into a scratch container (the live cluster is untouched)",
                       description="Restore a backup of --cluster into a scratch container, to the latest point, "
                                   "a time or a named restore point, and check it. The live cluster is untouched. "
                                   "Exit 1 if a check fails.")
    _common(r)
    to = r.add_mutually_exclusive_group()
    to.add_argument("--to-time", metavar="TS", help="recover to this time (ISO 8601, e.g. 2026-11-25T02:00:00Z)")
    to.add_argument("--to-name", metavar="NAME", help="recover to this named restore point")
    r.add_argument("--backup", metavar="ID", help="start from this backup (id or pgBackRest label)")
    r.add_argument("--keep", action="store_true", help="leave the scratch container running for inspection")
    r.add_argument("--dry-run", action="store_true", help="say which backup would be restored, restore nothing")
    _from_option(r)
    r.set_defaults(handler=lambda a: _guard(run_restore, a))

    d = sub.add_parser("drill", help="restore the newest backup into scratch and verify it; records RTO and RPO",
                       description="A restore drill: restore the newest backup of --cluster into scratch, verify "
                                   "it and record the drill with its RTO and RPO. Exit 1 if it fails.")
    _common(d)
    _from_option(d)
    d.set_defaults(handler=lambda a: _guard(run_drill_command, a))


def _from_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", choices=["primary", "dr"], default="primary",
                   help="the target to read: the backup target (default), or the second one (the spec's "
                        "dr.target): a drill from it is the DR drill")


def _guard(handler: Any, args: argparse.Namespace) -> int:
    """Secrets missing: a usage error (exit 2). A located failure of the work itself: exit 1, one line."""
    try:
        return int(handler(args))
    except SecretsError as exc:
        raise UsageError(one_line(str(exc)), location="--secrets") from None
    except ReconcileError as exc:
        where = ", ".join(f"{k} {v}" for k, v in (("cluster", exc.cluster), ("host", exc.host),
                                                   ("action", exc.action)) if v)
        raise WorkFailed(one_line(exc.render()), location=where or None) from None


def _clusters(args: argparse.Namespace) -> list[Any]:
    fleet = fleet_of(args)
    if args.cluster:
        names = [c.name for c in fleet.clusters]
        if args.cluster not in names:
            raise UsageError(f"--cluster: no cluster named {args.cluster}; the spec has {', '.join(names)}",
                             location="--cluster")
        return [fleet.cluster(args.cluster)]
    return [c for c in fleet.clusters if c.backup.enabled]


def _access(args: argparse.Namespace, cluster: Any) -> BackupAccess:
    """The cluster's backup access (of the target --from names); UsageError when the inventory is missing or
    unreadable, or has no host of a cluster named by --cluster."""
    return _accesses(args, cluster)[1]


def _accesses(args: argparse.Namespace, cluster: Any) -> tuple[BackupAccess, BackupAccess]:
    """(the cluster's access, whose `dr` is its second target's; the access of the target --from names)."""
    try:
        hosts = read_inventory_hosts(inventory_path(args))
    except ReconcileError as exc:
        raise UsageError(one_line(exc.render()), location=str(inventory_path(args))) from None
    if args.cluster and not any(h in hosts for h in cluster.host_names()):
        raise UsageError(f"inventory {inventory_asked(args)} has no host of cluster {cluster.name}",
                         location=str(inventory_path(args)))
    access = open_access(cluster, inventory_path(args), args.secrets, Progress("backup", quiet=args.json))
    if getattr(args, "source", "primary") == "dr":
        if access.dr is None:
            raise UsageError(f"--from dr: the spec gives cluster {cluster.name} no dr section", location="--from")
        return access, access.dr
    return access, access


def run_backup(args: argparse.Namespace) -> int:
    cluster = _clusters(args)[0]
    kind = engine_kind(cluster.engine, args.type or "full")
    tool = adapter_for(cluster.engine).tool
    if args.dry_run:
        target = cluster.backup.target
        where = getattr(target, "path", None) or f"s3://{getattr(target, 'bucket', '')}"
        emit(args, {"cluster": cluster.name, "kind": kind, "tool": tool, "target": where, "dry_run": True},
             f"would take one {kind} backup of {cluster.name} with {tool} into {where}")
        return EXIT_OK
    done = take_backup(_access(args, cluster), kind)
    emit(args, done.summary(), f"{cluster.name}: {done.kind} backup {done.id} {done.status}: "
                               f"{done.size_bytes} bytes in {len(done.files)} files")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    rows = []
    for cluster in _clusters(args):
        access = _access(args, cluster)
        second = access.dr.storage.manifests(cluster.name) if access.dr is not None else None
        for backup, statuses in holdings(access.storage.manifests(cluster.name), second):
            rows.append(backup.summary() | {"status": statuses["primary"] or "missing", "held_by": statuses,
                                            "targets": describe_holders(statuses)})
    emit(args, rows, table(rows, ["cluster", "id", "kind", "status", "started", "finished", "size", "files",
                                  "verified", "targets"]))
    return EXIT_OK


def run_prune(args: argparse.Namespace) -> int:
    """Exit 1, deleting nothing, while a restore of a cluster is recorded running in either of its targets."""
    rows: list[dict[str, Any]] = []
    chosen = [(cluster, _access(args, cluster)) for cluster in _clusters(args)]
    for cluster, access in chosen:
        restoring = restore_running(targets(access))
        if restoring is not None:
            raise WorkFailed(f"{cluster.name}: restore job {restoring.id} ({restoring.owner}) runs since "
                             f"{restoring.started_at} and reads the backups; prune after it ends",
                             location=f"cluster {cluster.name}")
    trail = None if args.dry_run else open_audit_trail(args, spec_of(args).sha256, "backup prune")
    for cluster, access in chosen:
        if trail is None:
            rows += [{"cluster": cluster.name, "backup": e.backup.id, "why": e.describe()}
                     for e in plan_prune(access)]
        else:
            rows += [{"cluster": cluster.name, "deleted": line} for line in prune(access, record=trail.record)]
    columns = ["cluster", "backup", "why"] if args.dry_run else ["cluster", "deleted"]
    emit(args, rows, table(rows, columns))
    return EXIT_OK


def run_mark(args: argparse.Namespace) -> int:
    cluster = _clusters(args)[0]
    adapter = adapter_for(cluster.engine)
    if not hasattr(adapter, "create_restore_point"):
        raise UsageError(f"named restore points are a PostgreSQL feature; {cluster.name} is {cluster.engine}",
                         location="--cluster")
    lsn = adapter.create_restore_point(_access(args, cluster), args.name)
    emit(args, {"cluster": cluster.name, "name": args.name, "lsn": lsn}, f"{cluster.name}: restore point "
                                                                          f"{args.name!r} at {lsn}")
    return EXIT_OK


def run_restore(args: argparse.Namespace) -> int:
    cluster = _clusters(args)[0]
    if args.to_time:
        try:
            parse_time(args.to_time)
        except ValueError:
            raise UsageError(f"--to-time: {args.to_time!r} is not an ISO 8601 time such as 2026-11-25T02:00:00Z",
                             location="--to-time") from None
        target = RestoreTarget("time", args.to_time)
    elif args.to_name:
        target = RestoreTarget("name", args.to_name)
    else:
        target = RestoreTarget("latest")
    root, access = _accesses(args, cluster)
    if args.dry_run:
        from dbfleet.backups.drills import choose_backup

        manifests = access.storage.manifests(cluster.name)
        chosen = [m for m in manifests if m.id == args.backup] if args.backup else \
            [choose_backup(adapter_for(cluster.engine), manifests, target)]
        emit(args, {"cluster": cluster.name, "backup": chosen[0].id if chosen else None,
                    "target": target.describe(), "dry_run": True},
             f"would restore {cluster.name} from {chosen[0].id if chosen else '?'} to {target.describe()} "
             "into a scratch container")
        return EXIT_OK
    backup, restored, checks, kept = restore_as_job(access, target, args.backup, args.keep,
                                                    others=[t for t in targets(root) if t is not access])
    ok = all(c.ok for c in checks)
    data = {"cluster": cluster.name, "backup": backup.id, "target": target.describe(), "ok": ok,
            "recovered_to": restored.recovered_to.isoformat() if restored.recovered_to else None,
            "checks": [c.__dict__ for c in checks], "container": kept or None}
    lines = [f"{cluster.name}: restored {backup.id} to {target.describe()} in scratch"
             + (f" (kept: {kept})" if kept else " (removed)")]
    lines += [f"  {'ok' if c.ok else 'FAILED'}  {c.name}: {c.detail}" for c in checks]
    emit(args, data, "\n".join(lines))
    return EXIT_OK if ok else EXIT_FAILED


def restore_as_job(access: BackupAccess, target: RestoreTarget, backup_id: str | None, keep: bool,
                   others: list[BackupAccess] | None = None) -> tuple[Any, Any, list[Check], str]:
    """`restore` under the cluster's restore job record (in the target it reads); UsageError (exit 2) when another
    restore of the cluster runs, from this target or one of `others` (the cluster's other target), here or on
    another machine (its record's heartbeat fresh). Backups, drills and rewrites of the cluster do not conflict:
    the restore reads finished backups into a scratch server of its own and the live cluster is untouched; what
    would (a prune expiring what it reads) the operator holds in both targets while the record says it runs."""
    name = access.name
    record = restore_running([access, *(others or [])])
    if record is not None:
        raise UsageError(f"{name}: restore job {record.id} ({record.owner}) runs since {record.started_at}; "
                         "one restore of a cluster at a time", location="--cluster")
    done: dict[str, Any] = {}

    def work(context: JobContext) -> str:
        access.progress = context.progress
        backup, restored, checks, kept = restore(access, target, backup_id, keep=keep)
        context.result(backup.id)
        done["result"] = (backup, restored, checks, kept)
        failed = [c.name for c in checks if not c.ok]
        if failed:
            raise PermanentError(f"restored {backup.id} to {target.describe()}, but checks failed: "
                                 f"{', '.join(failed)}", cluster=name, action="restore")
        return f"restored {backup.id} to {target.describe()}; {len(checks)} checks ok"

    runner = JobRunner(inline=True, owner=operator_identity())
    try:
        runner.start(Job(name, RESTORE, backup_id or target.kind, access.storage, work))
    except Waiting as exc:
        raise UsageError(f"{name}: {exc.message}; one restore of a cluster at a time", location="--cluster") from None
    except PermanentError:
        if "result" not in done:  # the restore itself failed; a failed check is reported with the checks
            raise
    result: tuple[Any, Any, list[Check], str] = done["result"]
    return result


def run_drill_command(args: argparse.Namespace) -> int:
    cluster = _clusters(args)[0]
    root, access = _accesses(args, cluster)
    live = None
    if args.source == "dr" and root.session is not None:
        live = partial(standby_checks, cluster, root.session)
    record = run_drill(access, extra=live)
    what = "DR drill (second target)" if args.source == "dr" else "drill"
    lines = [f"{cluster.name}: {what} {record.id} of {record.backup_id}: {'ok' if record.ok else 'FAILED'}; "
             f"RTO {record.rto_seconds}s, RPO {record.rpo_seconds}s"]
    lines += [f"  {'ok' if c.ok else 'FAILED'}  {c.name}: {c.detail}" for c in record.checks]
    emit(args, record.summary() | {"checks": [c.__dict__ for c in record.checks]}, "\n".join(lines))
    return EXIT_OK if record.ok else EXIT_FAILED
