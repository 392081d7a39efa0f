"""The DR site reconciler: watches a PostgreSQL cluster's standby site (dr.standby) and, after a promotion, the old
site that comes back.

observe reads both sites' Patroni REST APIs (dbfleet.reconcile.dr_promote.observe_site: one call per site that
answers, one connection timeout for a site cut off); diff is pure; act fences.

- Normal: the spec's hosts lead and the standby site follows them (a standby cluster with a standby leader).
  A standby site that does not answer, or has no standby leader, is reported: it could not take over.
- After `dbfleet dr promote`: the standby site leads on its own. An old site cut off during the promotion keeps
  its leader, and once it is reachable again that leader accepts writes beside the promoted site. With
  `dr.standby.old_site: fence` the operator fences it in its next cycle (a destructive `fence-site`, shown in
  `plan` first: the old site becomes a standby cluster of the promoted one, the step `dr promote` takes when the
  old site answers); with `report` (the default) it is reported, and `dbfleet dr promote` run again fences it.

The act decides again from fresh observations before it patches anything (the loop's observation may be a cycle
old), and fences only while the standby site still leads on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from dbfleet.actions import Action
from dbfleet.engines import AnySession
from dbfleet.engines.base import AnyCluster
from dbfleet.engines.patroni import PatroniApi
from dbfleet.errors import PermanentError, TemporaryError
from dbfleet.monitoring.metrics import record_standby_site
from dbfleet.reconcile.dr_promote import (
    RECONCILER,
    Decision,
    Sites,
    SiteView,
    action_for,
    decide,
    observe_site,
    until,
)
from dbfleet.spec import PostgresCluster

FENCE_WAIT = 30.0
"""Seconds the act waits for the fenced leader to stop accepting writes (Patroni demotes within a loop_wait)."""


@dataclass(frozen=True)
class DrSites:
    """Both sites as observed: `primary` the spec's hosts, `standby` the dr.standby hosts."""

    primary: SiteView
    standby: SiteView

    @property
    def ready(self) -> bool:
        """The standby site could take over: it follows with a standby leader, or leads after a promotion."""
        return self.standby.promoted or (self.standby.reachable and self.standby.standby
                                         and self.standby.leader is not None)

    @property
    def old_site_unfenced(self) -> bool:
        """After a promotion, the old site answers and is not fenced: `dr promote`'s decision would fence it."""
        return self.standby.promoted and self.fence_decision.step == "fence"

    @property
    def fence_decision(self) -> Decision:
        """`dr promote`'s next step from these two views (no --force)."""
        return decide(self.primary, self.standby, force=False)


def sites_of(cluster: PostgresCluster, session: AnySession) -> Sites:
    standby = [h.name for h in cluster.standby_hosts()]
    return Sites(cluster, PatroniApi(cluster, session.access), PatroniApi(cluster, session.access, hosts=standby))


def planned_dr_actions(cluster: PostgresCluster, observed: DrSites) -> list[Action]:
    """What the standby site's state asks for (pure)."""
    primary, standby = observed.primary, observed.standby
    policy = cluster.dr.standby.old_site if cluster.dr and cluster.dr.standby else "report"
    where = ",".join(standby.hosts)
    if standby.promoted:
        if not observed.old_site_unfenced:
            return []
        decision = observed.fence_decision
        if policy == "fence":
            return [action_for(cluster, decision, primary, standby)]
        return [Action(cluster.name, RECONCILER, "report-old-site-unfenced", ",".join(primary.hosts),
                       f"{decision.reason}; dr.standby.old_site is report: run `dbfleet dr promote --cluster "
                       f"{cluster.name}` to fence it, or set old_site: fence")]
    if observed.ready:
        return []
    if not standby.reachable:
        return [Action(cluster.name, RECONCILER, "report-standby-site-down", where,
                       f"the standby site does not answer ({standby.error or 'no member'}): it could not take over")]
    return [Action(cluster.name, RECONCILER, "report-standby-site-unready", where,
                   f"the standby site is {standby.summary()}: it could not take over")]


class DrSiteReconciler:
    """Reports a standby site that could not take over, and fences an old site back after a promotion."""

    name = RECONCILER

    def applies_to(self, cluster: AnyCluster) -> bool:
        return isinstance(cluster, PostgresCluster) and cluster.ha == "patroni" and bool(cluster.standby_hosts())

    def observe(self, cluster: AnyCluster, session: AnySession) -> DrSites:
        assert isinstance(cluster, PostgresCluster)
        primary, standby = sites_of(cluster, session).observe()
        observed = DrSites(primary, standby)
        record_standby_site(cluster.name, observed.ready, observed.old_site_unfenced)
        return observed

    def diff(self, cluster: AnyCluster, observed: DrSites) -> list[Action]:
        assert isinstance(cluster, PostgresCluster)
        return planned_dr_actions(cluster, observed)

    def act(self, action: Action, session: AnySession) -> str:
        cluster = session.cluster
        if action.kind != "fence-site" or not isinstance(cluster, PostgresCluster):
            raise PermanentError(f"the dr reconciler does not act on {action.kind}", cluster=action.cluster)
        sites = sites_of(cluster, session)
        primary, standby = sites.observe()
        now = planned_dr_actions(cluster, DrSites(primary, standby))
        if [a.kind for a in now] != ["fence-site"]:
            return f"no fence needed any more (old site: {primary.summary()}; standby site: {standby.summary()})"
        sites.fence(primary)
        if until(lambda: observe_site(sites.primary).fenced, FENCE_WAIT, time.monotonic, time.sleep):
            return f"old site fenced: it follows {','.join(standby.hosts)} and its leader accepts no writes"
        raise TemporaryError(f"the old site's leader still accepts writes {FENCE_WAIT:.0f}s after the fence",
                             cluster=action.cluster, action="fence-site")

    def notes(self, observed: DrSites) -> list[str]:
        return [f"standby site: {observed.standby.summary()}"]

    def status(self, cluster: AnyCluster, observed: DrSites, actions: list[Action]) -> dict[str, Any]:
        return {"standby_site": observed.standby.summary(),
                "standby_site_promoted": observed.standby.promoted}
