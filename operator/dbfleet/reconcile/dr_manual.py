"""Promoting the standby site of an ha: manual PostgreSQL cluster (dr.standby): both sites observed by SQL, the steps
decided by dr_promote.decide (the same decision as for Patroni's sites), the act done by playbooks/pg_dr_promote.yml,
then the sites observed again until the promotion shows.

Without Patroni a site has no REST API and no dynamic configuration: a site is what its servers answer to
`pg_is_in_recovery()` over verify-full TLS. A site with a server that accepts writes is a primary site; a site whose
answering servers are all in recovery follows another (for the primary site: it is fenced, or its writer is down).
The playbook observes again from each host and decides with the same steps (its filter,
playbooks/filter_plugins/dbfleet_dr.py; tests/unit/test_dr_manual.py checks the two agree), since it can run alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg

from dbfleet.actions import Action
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.postgres import classify, connect
from dbfleet.errors import ReconcileError
from dbfleet.playbook import PlaybookResult
from dbfleet.reconcile.dr_promote import SITE_NAMES, Decision, SiteView, decide
from dbfleet.spec import PostgresCluster

PLAYBOOK = "pg_dr_promote.yml"
IN_RECOVERY_QUERY = "SELECT pg_is_in_recovery() AS in_recovery"
OUTPUT_TAIL_LINES = 60
"""How much of a failed playbook's output the report carries (its failures first, then this many last lines)."""


@dataclass(frozen=True)
class Answer:
    """What one server answered: in recovery or not, or why it did not answer."""

    in_recovery: bool | None
    error: str = ""

    @property
    def answered(self) -> bool:
        return self.in_recovery is not None


def site_from_answers(hosts: Sequence[str], answers: dict[str, Answer]) -> SiteView:
    """A site as dr_promote.decide reads it, from its servers' answers: reachable when one answered; writable when
    one accepts writes (its leader; else the first in recovery leads, the one a promotion promotes); `standby` (it
    follows another site) when none that answered accepts writes."""
    answered = [h for h in hosts if h in answers and answers[h].answered]
    writable = [h for h in answered if answers[h].in_recovery is False]
    recovering = [h for h in answered if answers[h].in_recovery]
    errors = "; ".join(f"{h}: {answers[h].error}" for h in hosts if h in answers and not answers[h].answered)
    if not answered:
        return SiteView(tuple(hosts), False, error=errors or "no server answers")
    leader = (writable or recovering)[0]
    return SiteView(tuple(hosts), True, leader, bool(writable), not writable, error=errors)


def ask(cluster: PostgresCluster, access: FleetAccess, host: str) -> Answer:
    """pg_is_in_recovery() on one server, over the operator's verify-full TLS connection."""
    try:
        with connect(cluster, access, host, "postgres") as conn:
            row = conn.execute(IN_RECOVERY_QUERY).fetchone()
    except ReconcileError as exc:
        return Answer(None, exc.message)
    except psycopg.Error as exc:  # the server went down between the connection and the query
        return Answer(None, classify(exc, host, "pg_is_in_recovery()").message)
    return Answer(bool(row[0]) if row else None, "" if row else "no row")


@dataclass
class ManualSites:
    """Both sites of an ha: manual cluster, observed by SQL from the operator."""

    cluster: PostgresCluster
    access: FleetAccess
    names: tuple[str, str] = SITE_NAMES

    @property
    def primary_hosts(self) -> list[str]:
        return self.cluster.host_names()

    @property
    def standby_hosts(self) -> list[str]:
        return [h.name for h in self.cluster.standby_hosts()]

    def answers(self) -> dict[str, Answer]:
        """Every server of both sites at once: a site cut off costs one connection timeout, not one per server."""
        hosts = self.primary_hosts + self.standby_hosts
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            return dict(zip(hosts, pool.map(lambda h: ask(self.cluster, self.access, h), hosts), strict=True))

    def observe(self) -> tuple[SiteView, SiteView, list[str]]:
        """(primary site, standby site, the servers that did not answer)."""
        answers = self.answers()
        silent = [h for h, a in answers.items() if not a.answered]
        return (site_from_answers(self.primary_hosts, answers), site_from_answers(self.standby_hosts, answers),
                silent)


def playbook_vars(cluster: PostgresCluster, force: bool, unreachable: Sequence[str]) -> list[str]:
    """pg_dr_promote.yml's extra vars: the cluster, force, and the servers the operator could not reach by SQL (the
    playbook does not act on them even where Ansible reaches them: they are cut off from the clients too)."""
    return ["-e", json.dumps({"dr_cluster": cluster.name, "dr_force": force, "dr_unreachable": list(unreachable)})]


def output_tail(result: PlaybookResult, lines: int = OUTPUT_TAIL_LINES) -> str:
    """What a failed playbook said: its failed tasks with their TASK lines, then its last `lines` lines."""
    last = "\n".join(result.output.splitlines()[-lines:])
    failures = result.failures()
    return f"{failures}\n...\n{last}" if failures else last


@dataclass(frozen=True)
class ManualPromotion:
    """How a promotion through the playbook ended."""

    played: PlaybookResult
    decision: Decision
    """decide() on the sites observed after the playbook: 'done' once the standby site leads and the old site is
    fenced or silent."""
    seconds: float
    settled: bool

    @property
    def ok(self) -> bool:
        return self.played.ok and self.decision.step == "done"


def promote_manual(sites: ManualSites, force: bool, inventory: Path, unreachable: Sequence[str], timeout: float,
                   run: Callable[[str, Path, list[str]], PlaybookResult],
                   record: Callable[[Action, str, str, float], None] | None = None,
                   steps: Sequence[Action] = (),
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> ManualPromotion:
    """Run pg_dr_promote.yml (`run(playbook, inventory, extra)`), then observe both sites until decide() says the
    promotion is done or refused (at most `timeout` seconds). `record` sees each planned step, done or failed."""
    started = clock()
    played = run(PLAYBOOK, inventory, playbook_vars(sites.cluster, force, unreachable))
    decision = Decision("refuse", f"{PLAYBOOK} failed (exit {played.returncode})")
    settled = False
    if played.ok:
        while True:
            primary, standby, _ = sites.observe()
            decision = decide(primary, standby, force, True, sites.names)
            settled = decision.step in ("done", "refuse")
            if settled or clock() - started > timeout:
                break
            sleep(1)
        if not settled:
            decision = Decision("refuse", f"not settled within {timeout:.0f}s: {decision.reason}")
    seconds = clock() - started
    if record:
        message = decision.reason if played.ok else output_tail(played, 12)
        for action in steps:
            record(action, "done" if played.ok and decision.step == "done" else "failed", message, seconds)
    return ManualPromotion(played, decision, seconds, settled)
