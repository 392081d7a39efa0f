"""`dbfleet reconcile`: bring the fleet to its spec once (--once) or in a loop (--watch), as leader only.

Also holds what `plan` and `status` share: the options that say where the
inventory, secrets and state file are, and how the operator is built.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from dbfleet import wiring
from dbfleet.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_inventory_option,
    add_json_option,
    add_lab_options,
    emit,
    inventory_asked,
    inventory_path,
    inventory_source,
    one_line,
    spec_of,
)
from dbfleet.engines.access import FleetAccess, read_inventory, read_inventory_hosts
from dbfleet.errors import ReconcileError
from dbfleet.monitoring import endpoint
from dbfleet.reconcile.audit import AUDIT_FILE_NAME, AuditError, AuditTrail
from dbfleet.reconcile.loop import (
    DEFAULT_CLUSTER_TIMEOUT,
    DEFAULT_PARALLEL,
    CycleReport,
    Leader,
    Operator,
    leadership,
    watch,
)
from dbfleet.reconcile.status import record_cycle
from dbfleet.secrets import SecretsError
from dbfleet.spec import Fleet


def add_operator_options(parser: argparse.ArgumentParser) -> None:
    add_lab_options(parser)
    add_inventory_option(parser)
    parser.add_argument("--secrets", type=Path,
                        help="secrets file (default: group_vars/all/secrets.yml beside the inventory)")
    parser.add_argument("--cluster", action="append", metavar="NAME", help="only this cluster (repeatable)")
    parser.add_argument("--reconciler", action="append", metavar="NAME",
                        help="only this reconciler, say indexes or backups (repeatable; default: all)")
    parser.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N",
                        help=f"clusters observed and diffed at once (default {DEFAULT_PARALLEL})")
    parser.add_argument("--cluster-timeout", type=float, default=DEFAULT_CLUSTER_TIMEOUT, metavar="SECONDS",
                        help="one cluster's part of a cycle may take this long; then it is reported failed and the "
                             f"cycle goes on without it (default {DEFAULT_CLUSTER_TIMEOUT:g})")
    add_json_option(parser)


def secrets_path(args: argparse.Namespace) -> Path:
    return args.secrets or inventory_path(args).parent / "group_vars" / "all" / "secrets.yml"


def state_path(args: argparse.Namespace) -> Path:
    return getattr(args, "state", None) or inventory_path(args).parent / "operator-state.json"


def audit_path(args: argparse.Namespace) -> Path:
    """The operator's audit trail, beside the state file."""
    return state_path(args).parent / AUDIT_FILE_NAME


def open_audit_trail(args: argparse.Namespace, spec_sha256: str, command: str | None = None) -> AuditTrail:
    """The operator's audit trail for these options, checked before anything is done: UsageError if it cannot be
    written safely. `command` names a command a person runs (`switchover`, `backup prune`), which records its
    actions in the same trail."""
    trail = wiring.audit_trail(audit_path(args), spec_sha256, command)
    try:
        trail.check()
    except AuditError as exc:
        raise UsageError(str(exc)) from None
    return trail


def require_hosts(fleet: Fleet, args: argparse.Namespace) -> None:
    """UsageError unless the inventory exists, parses and holds a host of the clusters asked for."""
    try:
        hosts = read_inventory_hosts(inventory_path(args))
    except ReconcileError as exc:
        raise UsageError(f"{one_line(exc.render())} ({inventory_source(args)})") from None
    clusters = [c for c in fleet.clusters if not args.cluster or c.name in args.cluster]
    if not any(h in hosts for c in clusters for h in c.host_names()):
        which = f"clusters {', '.join(args.cluster)}" if args.cluster else f"the spec {args.spec}"
        raise UsageError(f"inventory {inventory_asked(args)} has no host of {which}")


def build_operator(args: argparse.Namespace, stop: threading.Event | None = None, audit: bool = False,
                   background_jobs: bool = False) -> Operator:
    """The operator for these options; with `audit`, one that records every action it applies, and refuses to
    start (UsageError) if its audit trail cannot be written safely. With `background_jobs` (--watch) backups and
    drills run as jobs beside the cycles; otherwise each runs to its end inside its act."""
    spec = spec_of(args)
    fleet = spec.fleet
    names = {c.name for c in fleet.clusters}
    unknown = sorted(set(args.cluster or ()) - names)
    if unknown:
        raise UsageError(f"--cluster: no cluster named {', '.join(unknown)}; the spec has {', '.join(sorted(names))}")
    parallel = getattr(args, "parallel", DEFAULT_PARALLEL)
    timeout = getattr(args, "cluster_timeout", DEFAULT_CLUSTER_TIMEOUT)
    if parallel < 1 or timeout <= 0:
        raise UsageError("--parallel must be 1 or more, and --cluster-timeout positive")
    record = open_audit_trail(args, spec.sha256).record if audit else None
    jobs = wiring.job_runner(fleet, inline=not background_jobs, record=record)
    reconcilers = wiring.reconcilers(jobs)
    if args.reconciler:
        known = [r.name for r in reconcilers]
        unknown = sorted(set(args.reconciler) - set(known))
        if unknown:
            raise UsageError(f"--reconciler: no reconciler named {', '.join(unknown)}; there are {', '.join(known)}")
        reconcilers = [r for r in reconcilers if r.name in args.reconciler]
    require_hosts(fleet, args)
    try:
        access = FleetAccess.load(inventory_path(args), secrets_path(args))
    except (ReconcileError, SecretsError) as exc:
        raise UsageError(str(exc)) from None
    return Operator(fleet, access, reconcilers=reconcilers, stop=stop,
                    clusters=set(args.cluster) if args.cluster else None, record=record, parallel=parallel,
                    cluster_timeout=timeout, jobs=jobs)


def leader_lock(operator: Operator, args: argparse.Namespace) -> Leader:
    """The leader lock for this operator (dbfleet.wiring.leader_lock), --leader-cluster checked."""
    fleet = operator.fleet
    try:
        return wiring.leader_lock(fleet, operator.access, state_path(args).parent, args.leader_cluster)
    except KeyError:
        names = ", ".join(c.name for c in wiring.leader_candidates(fleet)) or "none"
        raise UsageError(f"--leader-cluster: {args.leader_cluster} cannot hold the leader lock, which is on "
                         f"{fleet.leader_backend()} (operator.leader); the clusters that can: {names}") from None


def add_leader_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--leader-cluster", metavar="NAME",
                        help="the PostgreSQL cluster that holds the leader lock (operator.leader): in its etcd, or on "
                             "its primary (default: the first that can)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("reconcile", help="bring the fleet to its spec: once, or in a loop; acts only as leader",
                       description="Observe every cluster, diff it against the spec and apply the actions. "
                                   "Only the holder of the leader lock acts; others just observe.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--once", action="store_true", help="one cycle, then exit (1 if anything failed)")
    mode.add_argument("--watch", action="store_true", help="cycle until SIGTERM or SIGINT")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between cycles with --watch (default 30)")
    p.add_argument("--job-grace", type=float, default=30.0, metavar="SECONDS",
                   help="with --watch, on SIGTERM wait this long for backups and drills in flight to end; the rest "
                        "are recorded interrupted and retaken by policy (default 30). With --once every job "
                        "started runs to its end")
    add_leader_option(p)
    p.add_argument("--state", type=Path, help="state file for `status` (default: operator-state.json "
                                              "beside the inventory); the audit trail operator-audit.jsonl "
                                              "is written beside it")
    p.add_argument("--metrics-port", type=int, help="with --watch, serve /metrics here (default: the spec's "
                                                    "monitoring.operator_metrics_port; 0 picks a free port)")
    p.add_argument("--metrics-address",
                   help="address for /metrics (default: the inventory's dbfleet_operator_address, where the fleet's "
                        "Prometheus scrapes the operator; 127.0.0.1 when it names none)")
    p.add_argument("--no-metrics", action="store_true", help="with --watch, do not serve /metrics")
    add_operator_options(p)
    p.set_defaults(handler=run)


def metrics_endpoint(operator: Operator, args: argparse.Namespace) -> endpoint.Endpoint:
    """Where and how /metrics is served: --metrics-address and --metrics-port, else the inventory and the spec."""
    monitoring = operator.fleet.monitoring
    inventory = operator.access.inventory
    try:
        inventory_vars = (read_inventory(inventory)["all"].get("vars") or {}) if inventory else {}
        binding = endpoint.choose_binding(args.metrics_address, inventory_vars, inventory)
        port = monitoring.operator_metrics_port if args.metrics_port is None else args.metrics_port
        return endpoint.plan_endpoint(monitoring.operator_metrics, binding, port, inventory, operator.access.secrets)
    except ReconcileError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    stop = threading.Event()
    operator = build_operator(args, stop, audit=True, background_jobs=args.watch)
    operator.keep_sessions = args.watch  # a watching operator keeps its connections between cycles
    leader = leader_lock(operator, args)
    ttl = operator.fleet.operator.lease_ttl
    if args.watch and leader.backend == "etcd" and args.interval >= ttl:
        raise UsageError(f"--interval {args.interval:g}: the leader's etcd lease (operator.lease_ttl {ttl}s) would "
                         "expire between two cycles; choose a shorter interval or a longer lease_ttl")
    state = state_path(args)
    if args.once:
        try:
            is_leader = leader.acquire()
            report = operator.run_cycle(apply=is_leader, leader=leader)
        finally:
            leader.release()
        report.leader = leadership(is_leader, leader, lost=operator.unfenced)
        report.leader_backend = leader.backend
        record_cycle(state, report)
        emit(args, report.as_dict(), report.render())
        return EXIT_OK if report.ok else EXIT_FAILED

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()  # the action in flight finishes; the loop then releases the lock and returns

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def on_cycle(report: CycleReport) -> None:
        record_cycle(state, report)
        if args.json:
            print(json.dumps(report.as_dict(), default=str), flush=True)
        else:
            print(report.render(), flush=True)

    server = None
    if not args.no_metrics:
        planned = metrics_endpoint(operator, args)
        try:
            server = endpoint.serve(planned.port, planned.binding.address, planned.tls, planned.auth)
        except (OSError, ReconcileError) as exc:
            raise UsageError(f"cannot serve /metrics on {planned.binding.address}:{planned.port}: {exc}") from None
        planned = replace(planned, port=server.port)
        print(f"reconcile: /metrics on {planned.describe()}", file=sys.stderr, flush=True)
    try:
        return watch(operator, leader, args.interval, on_cycle, job_grace=args.job_grace)
    finally:
        if server is not None:
            server.stop()
