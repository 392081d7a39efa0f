"""The DR site reconciler's plan (pure): a standby site that could not take over is reported; after a promotion,
an old site back with a leader that accepts writes is fenced under dr.standby.old_site: fence and reported under
report; and the wiring runs it only for Patroni clusters with a standby site."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dbfleet.engines.standby import replay_lag_check
from dbfleet.reconcile.dr_promote import SiteView
from dbfleet.reconcile.dr_site import DrSiteReconciler, DrSites, planned_dr_actions
from dbfleet.spec import PostgresCluster, load_fleet
from dbfleet.wiring import reconcilers

REPO = Path(__file__).resolve().parents[2]
PRIMARY = SiteView(("pg-1", "pg-2", "pg-3"), True, "pg-1", writable=True)
STANDBY = SiteView(("pg-dr-1",), True, "pg-dr-1", writable=False, standby=True)
PROMOTED = replace(STANDBY, standby=False, writable=True)
FENCED = replace(PRIMARY, standby=True, writable=False)


def with_policy(cluster: PostgresCluster, old_site: str) -> PostgresCluster:
    assert cluster.dr is not None and cluster.dr.standby is not None
    standby = cluster.dr.standby.model_copy(update={"old_site": old_site})
    return cluster.model_copy(update={"dr": cluster.dr.model_copy(update={"standby": standby})})


@pytest.fixture(scope="module")
def cluster() -> PostgresCluster:
    c = load_fleet(REPO / "fleet.example.yaml").cluster("pg-main")
    assert isinstance(c, PostgresCluster) and c.standby_hosts()
    return c


def kinds(cluster: PostgresCluster, primary: SiteView, standby: SiteView) -> list[str]:
    return [a.kind for a in planned_dr_actions(cluster, DrSites(primary, standby))]


def test_a_following_standby_site_and_a_leading_primary_site_need_nothing(cluster: PostgresCluster) -> None:
    assert kinds(cluster, PRIMARY, STANDBY) == []
    assert kinds(cluster, replace(PRIMARY, reachable=False), STANDBY) == []


def test_a_standby_site_that_could_not_take_over_is_reported(cluster: PostgresCluster) -> None:
    assert kinds(cluster, PRIMARY, replace(STANDBY, reachable=False, leader=None, error="timed out")) == \
        ["report-standby-site-down"]
    assert kinds(cluster, PRIMARY, replace(STANDBY, leader=None)) == ["report-standby-site-unready"]


def test_an_old_site_back_unfenced_after_a_promotion_is_fenced_under_old_site_fence(cluster: PostgresCluster) -> None:
    fence = with_policy(cluster, "fence")
    actions = planned_dr_actions(fence, DrSites(PRIMARY, PROMOTED))
    assert [a.kind for a in actions] == ["fence-site"]
    assert actions[0].destructive and actions[0].target == "pg-1,pg-2,pg-3"
    assert actions[0].detail["follow"] == ["pg-dr-1"]
    # A demoted leader without a standby_cluster section takes writes again once its site elects it: fenced too.
    assert kinds(fence, replace(PRIMARY, writable=False), PROMOTED) == ["fence-site"]
    assert kinds(fence, FENCED, PROMOTED) == []
    assert kinds(fence, replace(PRIMARY, reachable=False), PROMOTED) == []


def test_under_old_site_report_the_old_site_is_only_reported(cluster: PostgresCluster) -> None:
    report = with_policy(cluster, "report")
    actions = planned_dr_actions(report, DrSites(PRIMARY, PROMOTED))
    assert [a.kind for a in actions] == ["report-old-site-unfenced"]
    assert not actions[0].destructive and "dbfleet dr promote --cluster pg-main" in actions[0].reason


def test_the_default_policy_is_report_and_the_example_fences(cluster: PostgresCluster) -> None:
    assert cluster.dr is not None and cluster.dr.standby is not None
    assert cluster.dr.standby.old_site == "fence"
    default = type(cluster.dr.standby).model_validate({"hosts": ["pg-dr-1"], "region": "us-west-2"})
    assert default.old_site == "report"


def test_the_loop_runs_it_only_for_patroni_clusters_with_a_standby_site(cluster: PostgresCluster) -> None:
    dr = next(r for r in reconcilers() if isinstance(r, DrSiteReconciler))
    fleet = load_fleet(REPO / "fleet.example.yaml")
    assert [c.name for c in fleet.clusters if dr.applies_to(c)] == ["pg-main"]
    assert cluster.dr is not None
    assert not dr.applies_to(cluster.model_copy(update={"dr": cluster.dr.model_copy(update={"standby": None})}))


def test_the_standby_replay_lag_check_holds_it_to_the_rpo(cluster: PostgresCluster) -> None:
    assert cluster.dr is not None
    rpo = cluster.dr.rpo_seconds
    caught_up = {"application_name": "pg-dr-1", "state": "streaming", "lag": None}
    ok, detail = replay_lag_check(cluster, [caught_up])
    assert ok and "pg-dr-1 replays 0.0s behind" in detail
    ok, detail = replay_lag_check(cluster, [{**caught_up, "lag": rpo - 1.0}])
    assert ok
    ok, detail = replay_lag_check(cluster, [{**caught_up, "lag": rpo + 0.5}])
    assert not ok and f"over dr.rpo_seconds {rpo}" in detail


def test_a_standby_site_that_streams_from_no_server_fails_the_check(cluster: PostgresCluster) -> None:
    ok, detail = replay_lag_check(cluster, [])
    assert not ok and "streams from no primary-site server (no walsender)" in detail
    ok, detail = replay_lag_check(cluster, [{"application_name": "pg-dr-1", "state": "catchup", "lag": 3.0}])
    assert not ok and "pg-dr-1 catchup" in detail


def test_the_standby_site_metrics_say_ready_and_old_site_unfenced() -> None:
    assert DrSites(PRIMARY, STANDBY).ready and not DrSites(PRIMARY, STANDBY).old_site_unfenced
    assert not DrSites(PRIMARY, replace(STANDBY, leader=None)).ready
    assert not DrSites(PRIMARY, replace(STANDBY, reachable=False, leader=None)).ready
    assert DrSites(PRIMARY, PROMOTED).ready and DrSites(PRIMARY, PROMOTED).old_site_unfenced
    assert not DrSites(FENCED, PROMOTED).old_site_unfenced
    assert not DrSites(replace(PRIMARY, reachable=False), PROMOTED).old_site_unfenced
