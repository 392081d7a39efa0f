"""`dbfleet dr promote`: make a PostgreSQL cluster's standby site (dr.standby) its primary site.

Both sites are observed first (their Patroni REST APIs) and the steps decided
from that (dbfleet.reconcile.dr_promote): fence the primary site when it
answers, then promote the standby site. --dry-run prints the steps (marked `!`,
destructive) and changes nothing. A primary site that does not answer, or
whose leader still accepts writes after the fence, refuses the promotion
unless --force. Every step and how it ended goes to the operator's audit trail
(`dbfleet audit`). Exit codes: 0 promoted (or nothing to do, or a dry run that
would promote), 1 refused or failed, 2 bad options or a cluster without a
standby site. --failback takes the same steps the other way round: the
standby site is fenced (it follows the spec's hosts again) and the primary
site promoted.

An ha: manual cluster has no Patroni: both sites are observed by SQL
(pg_is_in_recovery() over verify-full TLS, dbfleet.reconcile.dr_manual), the
same steps decided, and playbooks/pg_dr_promote.yml takes them (fence: the old
primary stopped, masked and marked; promote: pg_promote()); then both sites are
observed again until the promotion shows, within --timeout. A failed playbook's
failures and last lines are in the report and in --json (`playbook_output`).
--failback is not built for ha: manual.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dbfleet.actions import Action, Outcome
from dbfleet.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_inventory_option,
    add_json_option,
    add_lab_options,
    emit,
    inventory_path,
    postgres_cluster,
    spec_of,
)
from dbfleet.commands.reconcile import open_audit_trail, secrets_path
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.patroni import PatroniApi
from dbfleet.errors import ReconcileError
from dbfleet.playbook import PlaybookResult, run_playbook
from dbfleet.reconcile.dr_manual import ManualSites, output_tail, promote_manual
from dbfleet.reconcile.dr_promote import Sites, plan_promote, promote_site
from dbfleet.secrets import SecretsError
from dbfleet.spec import PostgresCluster


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dr", help="disaster recovery: promote a PostgreSQL standby site",
                       description="Disaster recovery commands (README \"Disaster recovery\").")
    dr = p.add_subparsers(dest="dr_command", required=True, metavar="COMMAND")
    q = dr.add_parser("promote", help="make a cluster's standby site (dr.standby) its primary site",
                      description="Observe both sites, fence the primary site when it answers (it becomes a "
                                  "standby cluster of the standby site), then promote the standby site. Refused "
                                  "when the primary site does not answer or its leader does not demote, unless "
                                  "--force. --dry-run prints the steps only. Exit 0 promoted or nothing to do, "
                                  "1 refused or failed, 2 bad options.")
    q.add_argument("--cluster", required=True, help="PostgreSQL cluster with dr.standby")
    q.add_argument("--dry-run", action="store_true", help="print the planned steps and change nothing")
    q.add_argument("--force", action="store_true",
                   help="promote even when the primary site cannot be fenced or does not answer: two sites may "
                        "then accept writes until the old one is stopped")
    q.add_argument("--failback", action="store_true",
                   help="the other way round: make the spec's hosts (the primary site) lead again, fencing the "
                        "standby site first")
    q.add_argument("--timeout", type=float, default=90,
                   help="seconds to wait for each step to show (default 90)")
    add_lab_options(q)
    add_inventory_option(q)
    q.add_argument("--secrets", type=Path,
                   help="secrets file (default: group_vars/all/secrets.yml beside the inventory)")
    q.add_argument("--state", type=Path, help="the reconcile state file; the audit trail is beside it (default: "
                                              "operator-state.json beside the inventory)")
    add_json_option(q)
    q.set_defaults(handler=run_promote)


def run_promote(args: argparse.Namespace) -> int:
    spec = spec_of(args)
    cluster = postgres_cluster(spec.fleet, args.cluster, "dr promote is for PostgreSQL")
    standby_hosts = [h.name for h in cluster.standby_hosts()]
    if not standby_hosts:
        raise UsageError(f"{cluster.name} has no standby site to promote (dr.standby)")
    if cluster.ha == "manual":
        return run_manual_promote(args, spec.sha256, cluster)
    try:
        access = FleetAccess.load(inventory_path(args), secrets_path(args))
        home, away = PatroniApi(cluster, access), PatroniApi(cluster, access, hosts=standby_hosts)
        sites = Sites(cluster, away, home, ("standby site", "primary site")) if args.failback \
            else Sites(cluster, home, away)
    except (ReconcileError, SecretsError) as exc:
        raise UsageError(str(exc)) from None
    primary, standby = sites.observe()
    # With --failback the spec's hosts are the site to promote and the standby site the one to fence.
    names = sites.names
    observed = {"failback": args.failback, "to_fence": {"site": names[0], **primary.as_dict()},
                "to_promote": {"site": names[1], **standby.as_dict()}}
    seen = f"{names[0]} (to fence): {primary.summary()}\n{names[1]} (to promote): {standby.summary()}"
    steps, end = plan_promote(cluster, primary, standby, args.force, names)
    if args.dry_run:
        lines = [seen, *(a.render() for a in steps), f"then: {end.step} ({end.reason})",
                 "(dry run: nothing changed; ! destructive change)"]
        emit(args, {"cluster": cluster.name, "dry_run": True, "observed": observed,
                    "steps": [a.as_dict() for a in steps], "end": end.step, "reason": end.reason,
                    "ok": end.step == "done"}, "\n".join(lines))
        return EXIT_OK if end.step == "done" else EXIT_FAILED
    if not steps:
        emit(args, {"cluster": cluster.name, "observed": observed, "steps": [], "end": end.step,
                    "reason": end.reason, "ok": end.step == "done"}, f"{seen}\n{end.step}: {end.reason}")
        return EXIT_OK if end.step == "done" else EXIT_FAILED
    trail = open_audit_trail(args, spec.sha256, "dr promote")

    def record(action: Action, status: str, message: str, seconds: float) -> None:
        trail.record(Outcome(action, status, message, 1, seconds))

    started = time.monotonic()
    try:
        done, end = promote_site(sites, args.force, args.timeout, record, observed=(primary, standby))
    except ReconcileError as exc:
        emit(args, {"cluster": cluster.name, "observed": observed, "ok": False, "error": exc.render()},
                 f"{seen}\nfailed: {exc}")
        return EXIT_FAILED
    lines = [seen, *(f"{d.action.render()} -> done ({d.message}, {d.seconds:.1f}s)" for d in done),
             f"{end.step}: {end.reason}"]
    emit(args, {"cluster": cluster.name, "observed": observed, "ok": end.step == "done",
                "steps": [{**d.action.as_dict(), "message": d.message, "seconds": round(d.seconds, 3)}
                          for d in done],
                "end": end.step, "reason": end.reason, "seconds": round(time.monotonic() - started, 3)},
         "\n".join(lines))
    return EXIT_OK if end.step == "done" else EXIT_FAILED


FORCE_SKIPS = ("--force: the promoted host does not wait for the fenced servers' last records, nor are they checked "
               "to have stopped cleanly; writes made there may be lost")


def run_manual_promote(args: argparse.Namespace, spec_sha256: str, cluster: PostgresCluster) -> int:
    """`dr promote` of an ha: manual cluster: observe by SQL, plan with the same decision, act through
    playbooks/pg_dr_promote.yml, observe until the promotion shows."""
    if args.failback:
        raise UsageError(f"{cluster.name} has ha: manual: --failback is not built for it (README, \"The standby site "
                         "with ha: manual\")")
    try:
        sites = ManualSites(cluster, FleetAccess.load(inventory_path(args), secrets_path(args)))
        sites.check_access()
    except (ReconcileError, SecretsError) as exc:
        raise UsageError(str(exc)) from None
    primary, standby, silent = sites.observe()
    observed = {"failback": False, "to_fence": {"site": sites.names[0], **primary.as_dict()},
                "to_promote": {"site": sites.names[1], **standby.as_dict()}, "unanswered": silent}
    seen = f"{sites.names[0]} (to fence): {primary.summary()}\n{sites.names[1]} (to promote): {standby.summary()}"
    steps, end = plan_promote(cluster, primary, standby, args.force, sites.names)
    base = {"cluster": cluster.name, "ha": "manual", "observed": observed}
    if args.dry_run or not steps:
        lines = [seen, *(a.render() for a in steps), f"then: {end.step} ({end.reason})"]
        if args.dry_run:
            lines.append("(dry run: nothing changed; ! destructive change)")
        emit(args, {**base, "dry_run": args.dry_run, "steps": [a.as_dict() for a in steps], "end": end.step,
                    "reason": end.reason, "ok": end.step == "done"}, "\n".join(lines))
        return EXIT_OK if end.step == "done" else EXIT_FAILED
    trail = open_audit_trail(args, spec_sha256, "dr promote")

    def record(action: Action, status: str, message: str, seconds: float) -> None:
        trail.record(Outcome(action, status, message, 1, seconds))

    def run(playbook: str, inventory: Path, extra: list[str]) -> PlaybookResult:
        return run_playbook(playbook, inventory, extra, echo=not args.json)

    done = promote_manual(sites, args.force, inventory_path(args), silent, args.timeout, run, record, steps)
    lines = [seen, *(f"{a.render()} -> {done.step_status(a)}" for a in steps),
             f"after: fenced {', '.join(done.fenced) or 'none'}; leading {done.leader or 'none'}",
             f"{done.decision.step}: {done.decision.reason} ({done.seconds:.1f}s)"]
    if args.force:
        lines.insert(1, FORCE_SKIPS)
        base["force"] = FORCE_SKIPS
    data = {**base, "steps": [{**a.as_dict(), "status": done.step_status(a)} for a in steps],
            "after": {"fenced": list(done.fenced), "leader": done.leader},
            "end": done.decision.step, "reason": done.decision.reason, "ok": done.ok,
            "seconds": round(done.seconds, 3), "playbook": {"returncode": done.played.returncode,
                                                            "changed": done.played.changed}}
    if not done.played.ok:
        tail = output_tail(done.played)
        data["playbook_output"] = tail
        lines += ["pg_dr_promote.yml failed; its failures and last lines:", tail]
    emit(args, data, "\n".join(lines))
    return EXIT_OK if done.ok else EXIT_FAILED
