"""Promoting a PostgreSQL standby site (dr.standby): the pure decision from both sites' state, the plan it gives,
and the act, step by step.

Each step is decided from what the two sites' Patroni REST APIs say (observe, decide, act, observe again, as
Patroni's own loop does):

- the primary site answers and is not fenced: fence it first. Its dynamic configuration gets a `standby_cluster`
  section that follows the standby site, so its leader demotes itself to a read-only standby leader (and, once
  the other site is promoted, streams from it). A fence that does not take refuses the promotion unless --force:
  two sites accepting writes is the one outcome a promotion must not cause by itself;
- the primary site does not answer: its state cannot be known (it may still accept writes where clients reach
  it), so the promotion is refused unless --force;
- then the standby site is promoted: `standby_cluster` is removed from its dynamic configuration and its standby
  leader becomes a primary on a new timeline;
- the standby site already promoted: nothing to do, except fencing the old site if it answers again and still
  accepts writes (run the command again once it is back).

`plan_promote` simulates the steps from the observed state (each step assumed to succeed) for --dry-run; the act
(`promote_site`) decides again from fresh observations before each step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

from dbfleet.actions import Action
from dbfleet.engines.patroni import PatroniApi, PatroniState, parse_cluster
from dbfleet.engines.standby import standby_cluster
from dbfleet.errors import PermanentError, TemporaryError
from dbfleet.spec import PostgresCluster

RECONCILER = "dr"
WRITABLE_ROLES = ("primary", "master")
"""GET /patroni's role of a member whose PostgreSQL accepts writes (Patroni 3.0 says master, later primary)."""
MAX_STEPS = 4
"""Fence, promote, and each decided once more after its act: a promotion never needs more."""


@dataclass(frozen=True)
class SiteView:
    """One site of a cluster as its members' Patroni REST APIs answer."""

    hosts: tuple[str, ...]
    reachable: bool
    """Some member's REST API answered GET /cluster; False: the site's state is unknown."""
    leader: str | None = None
    """The member holding the site's leader key (a primary, or a standby cluster's standby leader)."""
    writable: bool = False
    """The leader's PostgreSQL runs as a primary: it accepts writes."""
    standby: bool = False
    """The site's dynamic configuration has a standby_cluster section: it follows another site."""
    error: str = ""
    """Why the site is unreachable, when it is."""
    position: int | None = None
    """Where the leader's WAL ends (GET /patroni's xlog): written, for a leader that accepts writes; received or
    replayed, whichever is further, for a standby leader. None when unknown."""

    @property
    def fenced(self) -> bool:
        """It follows another site and its leader no longer accepts writes."""
        return self.standby and not self.writable

    @property
    def promoted(self) -> bool:
        """A standby site that leads on its own: no standby_cluster, and its leader accepts writes."""
        return self.reachable and not self.standby and self.writable

    def summary(self) -> str:
        if not self.reachable:
            return f"unreachable ({self.error})" if self.error else "unreachable"
        mode = "a standby cluster" if self.standby else "a primary cluster"
        leader = f"leader {self.leader} ({'accepts writes' if self.writable else 'read-only'})" if self.leader \
            else "no leader"
        return f"{mode}, {leader}"

    def as_dict(self) -> dict[str, Any]:
        return {"hosts": list(self.hosts), "reachable": self.reachable, "leader": self.leader,
                "writable": self.writable, "standby": self.standby, "error": self.error, "summary": self.summary()}


Step = Literal["fence", "promote", "done", "refuse"]


@dataclass(frozen=True)
class Decision:
    step: Step
    reason: str


SITE_NAMES = ("primary site", "standby site")
"""What the two sites are called in a promotion's reasons; a failback swaps them."""


def decide(primary: SiteView, standby: SiteView, force: bool, fence_tried: bool = False,
           names: tuple[str, str] = SITE_NAMES) -> Decision:
    """The next step of a promotion from both sites' state; `fence_tried`: a fence was sent and waited for.
    `primary` is the site to fence and `standby` the one to promote, called `names` in the reasons."""
    return _name_sites(_decide(primary, standby, force, fence_tried), names)


def _name_sites(decision: Decision, names: tuple[str, str]) -> Decision:
    if names == SITE_NAMES:
        return decision
    reason = decision.reason.replace("the primary site", "\0").replace("the standby site", "\1")
    return replace(decision, reason=reason.replace("\0", f"the {names[0]}").replace("\1", f"the {names[1]}"))


def _decide(primary: SiteView, standby: SiteView, force: bool, fence_tried: bool) -> Decision:
    if standby.promoted:
        if primary.reachable and not primary.fenced:
            # Even a leader that does not accept writes now (demoted while cut off) takes them again once its
            # site elects it: only a standby_cluster section keeps it read-only.
            if not fence_tried:
                return Decision("fence", f"the standby site leads, and the old site answers unfenced "
                                         f"({primary.summary()}): fence it")
            return Decision("refuse", f"the old site is not fenced after the fence ({primary.summary()}): it may "
                                      "accept writes beside the promoted site; stop its clients and Patroni there "
                                      "by hand")
        unknown = "" if primary.reachable else "; the old site does not answer: run this again once it does, " \
                                               "to fence it if it still accepts writes"
        return Decision("done", f"the standby site already leads (leader {standby.leader}){unknown}")
    if not standby.reachable:
        return Decision("refuse", f"the standby site does not answer ({standby.error or 'no member'}): "
                                  "nothing to promote")
    if standby.leader is None or not standby.standby:
        return Decision("refuse", f"the standby site is {standby.summary()}: it has no standby leader to promote")
    if not primary.reachable:
        if force:
            return Decision("promote", "the primary site does not answer and --force was given: promoting without "
                                       "fencing it (if it still runs, it may accept writes until fenced)")
        return Decision("refuse", "the primary site does not answer, so whether it still accepts writes cannot be "
                                  f"known ({primary.error or 'no member'}); promote with --force once it is surely "
                                  "down or cut off from its clients")
    if not primary.fenced:
        if not fence_tried:
            return Decision("fence", f"the primary site answers ({primary.summary()}): make it a standby cluster "
                                     "of the standby site first, so its leader stops accepting writes")
        if force:
            return Decision("promote", f"the primary site's leader {primary.leader} did not demote after the fence "
                                       "and --force was given: promoting anyway (two sites accept writes until it "
                                       "stops)")
        return Decision("refuse", f"the primary site's leader {primary.leader} still accepts writes after the "
                                  "fence; refusing to promote a second writer (--force promotes anyway)")
    return Decision("promote", f"the primary site is fenced ({primary.summary()}): promote the standby site "
                               f"(standby leader {standby.leader})")


def action_for(cluster: PostgresCluster, decision: Decision, primary: SiteView, standby: SiteView) -> Action:
    """The Action a fence or promote decision acts as (destructive: it changes which site accepts writes)."""
    if decision.step == "fence":
        return Action(cluster.name, RECONCILER, "fence-site", ",".join(primary.hosts), decision.reason,
                      destructive=True, detail={"leader": primary.leader, "follow": list(standby.hosts)})
    return Action(cluster.name, RECONCILER, "promote-site", ",".join(standby.hosts), decision.reason,
                  destructive=True, detail={"leader": standby.leader})


def plan_promote(cluster: PostgresCluster, primary: SiteView, standby: SiteView, force: bool,
                 names: tuple[str, str] = SITE_NAMES) -> tuple[list[Action], Decision]:
    """The steps a promotion would take from the observed state, each assumed to succeed, and how it ends
    ('done', or 'refuse' with why)."""
    actions: list[Action] = []
    fence_tried = False
    for _ in range(MAX_STEPS):
        decision = decide(primary, standby, force, fence_tried, names)
        if decision.step in ("done", "refuse"):
            return actions, decision
        actions.append(action_for(cluster, decision, primary, standby))
        if decision.step == "fence":
            primary, fence_tried = replace(primary, standby=True, writable=False), True
        else:
            standby = replace(standby, standby=False, writable=True)
    raise AssertionError("a promotion takes at most a fence and a promote")  # pragma: no cover


# --------------------------------------------------------------------------- observe and act


def first_answer(api: PatroniApi) -> PatroniState:
    """GET /cluster from the site's members all at once, the first good answer: a site cut off costs one
    connection timeout, not one per member."""
    failures: list[str] = []
    pool = ThreadPoolExecutor(max_workers=len(api.hosts) or 1)
    try:
        asked = {pool.submit(api.request, host, "cluster"): host for host in api.hosts}
        for done in as_completed(asked):
            host = asked[done]
            try:
                status, data = done.result()
            except TemporaryError as exc:
                failures.append(f"{host}: {exc.message}")
                continue
            if status == 200 and isinstance(data, dict):
                return parse_cluster(data, host)
            failures.append(f"{host}: HTTP {status}")
    finally:
        pool.shutdown(wait=False)  # a member still connecting ends by its own timeout, unwaited for
    raise TemporaryError("no member's Patroni REST API answers (" + "; ".join(sorted(failures)) + ")",
                         cluster=api.cluster.name, action="read Patroni state")


def observe_site(api: PatroniApi) -> SiteView:
    """One site's state: its leader, whether that accepts writes, whether the site follows another."""
    hosts = tuple(api.hosts)
    try:
        state = first_answer(api)
        config = api.dynamic_config(state.source)
    except TemporaryError as exc:
        return SiteView(hosts, False, error=exc.message)
    leader = next((m.name for m in state.members if m.role in ("leader", "standby_leader")), None)
    role, position = api.member_wal(leader) if leader else (None, None)
    return SiteView(hosts, True, leader, role in WRITABLE_ROLES, bool(config.get("standby_cluster")),
                    position=position)


def caught_up(fenced: SiteView, promoting: SiteView) -> bool:
    """The site to promote has every WAL record of the fenced site's leader (which, fenced, writes no more): a
    promotion now loses no write made there."""
    return fenced.position is not None and promoting.position is not None and promoting.position >= fenced.position


@dataclass
class Sites:
    """Both sites' REST APIs and the addresses a fence points the primary site at."""

    cluster: PostgresCluster
    primary: PatroniApi
    """The site to fence: the spec's hosts, or the standby site's for a failback."""
    standby: PatroniApi
    """The site to promote."""
    names: tuple[str, str] = SITE_NAMES

    def observe(self) -> tuple[SiteView, SiteView]:
        return observe_site(self.primary), observe_site(self.standby)

    def fence(self, view: SiteView) -> None:
        """Make the primary site a standby cluster of the standby site (through any member that answers)."""
        follow = [self.standby.access.address(h) for h in self.standby.hosts]
        self._patch(self.primary, view, {"standby_cluster": standby_cluster(self.cluster, follow)})

    def promote(self, view: SiteView) -> None:
        """Remove the standby site's standby_cluster: its standby leader becomes a primary."""
        self._patch(self.standby, view, {"standby_cluster": None})

    @staticmethod
    def _patch(api: PatroniApi, view: SiteView, patch: dict[str, Any]) -> None:
        failures = []
        for host in ([view.leader] if view.leader else []) + [h for h in view.hosts if h != view.leader]:
            try:
                api.patch_config(host, patch)
                return
            except TemporaryError as exc:
                failures.append(f"{host}: {exc.message}")
        raise TemporaryError("no member took PATCH /config (" + "; ".join(failures) + ")",
                             cluster=api.cluster.name, action="patch config")


@dataclass(frozen=True)
class StepDone:
    action: Action
    message: str
    seconds: float


def promote_site(sites: Sites, force: bool, wait: float = 90,
                 record: Callable[[Action, str, str, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 observed: tuple[SiteView, SiteView] | None = None) -> tuple[list[StepDone], Decision]:
    """Act: decide from fresh observations (the first step from `observed` when given, what the plan was made
    from), take the step, wait (at most `wait` seconds) until it shows, and decide again, until done or
    refused. `record(action, status, message, seconds)` sees every step."""
    done: list[StepDone] = []
    fence_tried = False
    for _ in range(MAX_STEPS):
        primary, standby = observed or sites.observe()
        observed = None
        decision = decide(primary, standby, force, fence_tried, sites.names)
        if decision.step in ("done", "refuse"):
            return done, decision
        action = action_for(sites.cluster, decision, primary, standby)
        started = clock()
        try:
            if decision.step == "fence":
                retry(partial(sites.fence, primary), wait, clock, sleep)
                fence_tried = True
                ok = until(lambda: observe_site(sites.primary).fenced, wait, clock, sleep)
                message = "its leader demoted" if ok else f"its leader still accepts writes after {wait:.0f}s"
            else:
                if primary.reachable and not _catch_up(sites, wait, clock, sleep):
                    fenced, promoting = sites.observe()
                    reason = (f"the {sites.names[1]}'s leader has WAL up to {_lsn(promoting.position)}, the fenced "
                              f"{sites.names[0]}'s ends at {_lsn(fenced.position)} after {wait:.0f}s: promoting now "
                              "would lose the writes made there")
                    if not force:
                        if record:
                            record(action, "failed", reason, clock() - started)
                        return done, Decision("refuse", reason + " (--force promotes anyway)")
                retry(partial(sites.promote, standby), wait, clock, sleep)
                ok = until(lambda: observe_site(sites.standby).promoted, wait, clock, sleep)
                if not ok:
                    raise TemporaryError(f"the standby site did not lead within {wait:.0f}s",
                                         cluster=sites.cluster.name, action="promote-site")
                message = f"{standby.leader} accepts writes"
        except (TemporaryError, PermanentError) as exc:
            if record:
                record(action, "failed", exc.render(), clock() - started)
            raise
        done.append(StepDone(action, message, clock() - started))
        if record:
            record(action, "done", message, clock() - started)
    raise AssertionError("a promotion takes at most a fence and a promote")  # pragma: no cover


def _catch_up(sites: Sites, wait: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> bool:
    """Wait (at most `wait` seconds) until the site to promote has the fenced site's WAL: a fenced leader shuts
    down cleanly and sends its last records to the site streaming from it, but that site may still be rewinding,
    restoring from the archive or reconnecting (a failback right after the old site was fenced)."""
    return until(lambda: caught_up(*sites.observe()), wait, clock, sleep)


def _lsn(position: int | None) -> str:
    return "unknown" if position is None else f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def retry(act: Callable[[], None], timeout: float, clock: Callable[[], float],
          sleep: Callable[[float], None]) -> None:
    """Run `act` again each second while it fails with a TemporaryError (a site just back may answer GET before
    its DCS takes a PATCH), for at most `timeout` seconds; then let the last error through."""
    started = clock()
    while True:
        try:
            act()
            return
        except TemporaryError:
            if clock() - started > timeout:
                raise
        sleep(1)


def until(check: Callable[[], bool], timeout: float, clock: Callable[[], float],
          sleep: Callable[[float], None]) -> bool:
    """Poll `check` every half second until it holds (True) or `timeout` seconds pass (False)."""
    started = clock()
    while True:
        if check():
            return True
        if clock() - started > timeout:
            return False
        sleep(0.5)
