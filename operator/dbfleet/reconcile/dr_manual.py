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
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg

from dbfleet.actions import Action
from dbfleet.engines.access import CONNECT_TIMEOUT, FleetAccess
from dbfleet.engines.credentials import POSTGRES_SUPERUSER
from dbfleet.engines.patroni import parse_lsn
from dbfleet.engines.postgres import classify, connect, pg_paths
from dbfleet.errors import ReconcileError
from dbfleet.playbook import PlaybookResult
from dbfleet.reconcile.dr_promote import SITE_NAMES, Decision, SiteView, decide
from dbfleet.spec import PostgresCluster

PLAYBOOK = "pg_dr_promote.yml"
IN_RECOVERY_QUERY = "SELECT pg_is_in_recovery() AS in_recovery, pg_last_wal_replay_lsn()::text AS replay_lsn"
FENCE_MARKER = "dbfleet.fenced"
"""The file dr promote's fence writes in a fenced server's data directory (playbooks/tasks/dr_fence.yml)."""
OUTPUT_TAIL_LINES = 60
"""How much of a failed playbook's output the report carries (its failures first, then this many last lines)."""


@dataclass(frozen=True)
class Answer:
    """What one server answered: in recovery or not (and how far it replayed), or why it did not answer; and
    whether dr promote fenced it (dbfleet.fenced in its data directory; a fenced server is stopped)."""

    in_recovery: bool | None
    error: str = ""
    fenced: bool = False
    replay_lsn: str = ""

    @property
    def answered(self) -> bool:
        return self.in_recovery is not None and not self.fenced


def lsn_number(lsn: str) -> int:
    """A PostgreSQL LSN ('16/B374D848') as a number to compare; -1 when unknown."""
    try:
        return parse_lsn(lsn)
    except ValueError:
        return -1


def site_from_answers(hosts: Sequence[str], answers: dict[str, Answer], strict: bool = False) -> SiteView:
    """A site as dr_promote.decide reads it, from its servers' answers: writable when one accepts writes (its
    leader; else the one in recovery that replayed furthest leads, the one a promotion promotes); `standby` (it
    follows another site) when none that answered accepts writes. `strict` (the site to fence): reachable only when
    every server answered or is fenced (a server that does not answer may still accept writes from its clients),
    and fenced (`standby`) only when every server is; otherwise reachable when one answered."""
    fenced = [h for h in hosts if h in answers and answers[h].fenced]
    answered = [h for h in hosts if h in answers and answers[h].answered]
    writable = [h for h in answered if answers[h].in_recovery is False]
    recovering = sorted((h for h in answered if answers[h].in_recovery),
                        key=lambda h: -lsn_number(answers[h].replay_lsn))
    silent = [h for h in hosts if h not in answered and h not in fenced]
    errors = "; ".join(f"{h}: {answers[h].error if h in answers else 'not asked'}" for h in silent)
    if strict:
        if silent or not hosts:
            return SiteView(tuple(hosts), False, error=errors or "no server answers")
        leader = (writable or recovering or fenced)[0]
        return SiteView(tuple(hosts), True, leader, bool(writable), len(fenced) == len(hosts), error=errors)
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
    if not row:
        return Answer(None, "no row")
    return Answer(bool(row[0]), "", False, str(row[1] or ""))


def is_fenced(cluster: PostgresCluster, access: FleetAccess, host: str) -> bool:
    """Whether dr promote's fence (dbfleet.fenced) is in the host's data directory; False when the host cannot be
    reached to look (its server then counts by what it answers)."""
    marker = f"{pg_paths(cluster).data_dir}/{FENCE_MARKER}"
    try:
        return access.executor.run(host, ["test", "-e", marker], user="postgres", timeout=CONNECT_TIMEOUT * 2).rc == 0
    except (ReconcileError, OSError):
        return False


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

    def check_access(self) -> None:
        """Every host of both sites in the inventory, and the superuser's password in the secrets file: a
        PermanentError naming what is missing, before anything is observed (missing, every server would count as
        not answering, and the primary site as cut off)."""
        for host in self.primary_hosts + self.standby_hosts:
            self.access.address(host)
        self.access.password(POSTGRES_SUPERUSER)

    def answers(self) -> dict[str, Answer]:
        """Every server of both sites at once: a site cut off costs one connection timeout, not one per server."""
        hosts = self.primary_hosts + self.standby_hosts
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            asked = dict(zip(hosts, pool.map(lambda h: ask(self.cluster, self.access, h), hosts), strict=True))
            fenced = dict(zip(self.primary_hosts, pool.map(lambda h: is_fenced(self.cluster, self.access, h),
                                                            self.primary_hosts), strict=True))
        return {h: replace(a, fenced=True) if fenced.get(h) else a for h, a in asked.items()}

    def observe(self) -> tuple[SiteView, SiteView, list[str]]:
        """(primary site, standby site, the servers that did not answer)."""
        answers = self.answers()
        silent = [h for h, a in answers.items() if not a.answered]
        return (site_from_answers(self.primary_hosts, answers, strict=True),
                site_from_answers(self.standby_hosts, answers), silent)


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
    fenced: tuple[str, ...] = ()
    """The primary-site hosts observed fenced after the playbook (dbfleet.fenced in their data directory)."""
    leader: str | None = None
    """The standby-site host observed accepting writes after the playbook, if any."""

    @property
    def ok(self) -> bool:
        return self.played.ok and self.decision.step == "done"

    def step_status(self, action: Action) -> str:
        """What became of a planned step, from what was observed after the playbook (not from the plan): a fence
        is done once every primary-site host is fenced, a promotion once a standby-site host accepts writes."""
        if action.kind == "fence-site":
            done = set(action.target.split(",")) <= set(self.fenced)
        elif action.kind == "promote-site":
            done = self.leader is not None
        else:
            done = self.ok
        return "done" if done else "failed" if not self.played.ok else "not done"


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
    while True:  # observed after a failed playbook too: the report says what it did before it failed
        answers = sites.answers()
        primary = site_from_answers(sites.primary_hosts, answers, strict=True)
        standby = site_from_answers(sites.standby_hosts, answers)
        if not played.ok:
            break
        decision = decide(primary, standby, force, True, sites.names)
        settled = decision.step in ("done", "refuse")
        if settled or clock() - started > timeout:
            break
        sleep(1)
    if played.ok and not settled:
        decision = Decision("refuse", f"not settled within {timeout:.0f}s: {decision.reason}")
    done = ManualPromotion(played, decision, clock() - started, settled,
                           tuple(h for h in sites.primary_hosts if answers[h].fenced),
                           standby.leader if standby.writable else None)
    if record:
        message = decision.reason if played.ok else output_tail(played, 12)
        for action in steps:
            record(action, done.step_status(action), message, done.seconds)
    return done
