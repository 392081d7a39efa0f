"""`dbfleet dr promote`'s decisions and plan: every branch from the two sites' state, without a server; and the
act, against in-process fake sites."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dbfleet.engines.patroni import PatroniApi
from dbfleet.engines.standby import scope, standby_cluster
from dbfleet.errors import TemporaryError
from dbfleet.reconcile.dr_promote import (
    Sites,
    SiteView,
    caught_up,
    decide,
    first_answer,
    plan_promote,
    promote_site,
)
from dbfleet.spec import PostgresCluster, load_fleet

REPO = Path(__file__).resolve().parents[2]
PRIMARY = SiteView(("pg-1", "pg-2", "pg-3"), True, "pg-1", writable=True, position=0x5000060)
STANDBY = SiteView(("pg-dr-1",), True, "pg-dr-1", writable=False, standby=True, position=0x5000060)
UNREACHABLE = SiteView(("pg-1", "pg-2", "pg-3"), False, error="timed out")
FENCED = replace(PRIMARY, standby=True, writable=False)
PROMOTED = replace(STANDBY, standby=False, writable=True)


@pytest.fixture(scope="module")
def cluster() -> PostgresCluster:
    c = load_fleet(REPO / "fleet.example.yaml").cluster("pg-main")
    assert isinstance(c, PostgresCluster) and c.standby_hosts()
    return c


def kinds(cluster: PostgresCluster, primary: SiteView, standby: SiteView, force: bool) -> tuple[list[str], str]:
    steps, end = plan_promote(cluster, primary, standby, force)
    return [a.kind for a in steps], end.step


def test_a_reachable_primary_site_is_fenced_then_the_standby_promoted(cluster: PostgresCluster) -> None:
    assert kinds(cluster, PRIMARY, STANDBY, force=False) == (["fence-site", "promote-site"], "done")
    steps, _ = plan_promote(cluster, PRIMARY, STANDBY, False)
    assert all(a.destructive for a in steps)
    assert steps[0].target == "pg-1,pg-2,pg-3" and steps[0].detail["follow"] == ["pg-dr-1"]
    assert steps[1].target == "pg-dr-1"


def test_a_leader_that_does_not_demote_after_the_fence_refuses_without_force() -> None:
    decision = decide(PRIMARY, STANDBY, force=False, fence_tried=True)
    assert decision.step == "refuse" and "pg-1 still accepts writes" in decision.reason
    assert decide(PRIMARY, STANDBY, force=True, fence_tried=True).step == "promote"


def test_an_unreachable_primary_site_refuses_without_force(cluster: PostgresCluster) -> None:
    steps, end = plan_promote(cluster, UNREACHABLE, STANDBY, False)
    assert steps == [] and end.step == "refuse" and "cannot be known" in end.reason and "--force" in end.reason


def test_an_unreachable_primary_site_with_force_promotes_without_fencing(cluster: PostgresCluster) -> None:
    assert kinds(cluster, UNREACHABLE, STANDBY, force=True) == (["promote-site"], "done")


def test_an_already_fenced_primary_site_is_not_fenced_again(cluster: PostgresCluster) -> None:
    assert kinds(cluster, FENCED, STANDBY, force=False) == (["promote-site"], "done")


def test_an_already_promoted_standby_is_a_no_op(cluster: PostgresCluster) -> None:
    assert kinds(cluster, FENCED, PROMOTED, force=False) == ([], "done")
    steps, end = plan_promote(cluster, UNREACHABLE, PROMOTED, False)
    assert steps == [] and end.step == "done" and "run this again" in end.reason


def test_an_old_site_back_unfenced_is_fenced_after_the_promotion(cluster: PostgresCluster) -> None:
    assert kinds(cluster, PRIMARY, PROMOTED, force=False) == (["fence-site"], "done")
    assert decide(PRIMARY, PROMOTED, force=True, fence_tried=True).step == "refuse"
    # Demoted while cut off, but not following anyone: its site would make it a primary again.
    demoted = replace(PRIMARY, writable=False)
    assert kinds(cluster, demoted, PROMOTED, force=False) == (["fence-site"], "done")
    assert decide(demoted, PROMOTED, force=False, fence_tried=True).step == "refuse"


@pytest.mark.parametrize("standby", [replace(STANDBY, reachable=False, leader=None, error="refused"),
                                     replace(STANDBY, leader=None),
                                     replace(STANDBY, standby=False, writable=False)])
def test_a_standby_site_without_a_standby_leader_refuses(cluster: PostgresCluster, standby: SiteView) -> None:
    for force in (False, True):
        steps, end = plan_promote(cluster, PRIMARY, standby, force)
        assert steps == [] and end.step == "refuse"


def test_the_standby_cluster_section_follows_the_addresses_and_reads_repo2(cluster: PostgresCluster) -> None:
    section = standby_cluster(cluster, ["10.0.0.1", "10.0.0.2"])
    assert section["host"] == "10.0.0.1,10.0.0.2" and section["port"] == cluster.port
    assert section["restore_command"] == 'pgbackrest --stanza=pg-main --repo=2 archive-get %f "%p"'
    assert section["create_replica_methods"] == ["pgbackrest", "basebackup"]
    assert scope(cluster) == "pg-main-dr"


class FakeApi:
    """One site's REST API in memory: PATCH /config moves it as Patroni would, or not (`demotes`)."""

    def __init__(self, view: SiteView, demotes: bool = True, answers: bool = True):
        self.view, self.demotes, self.answers = view, demotes, answers
        self.hosts = list(view.hosts)
        self.patches: list[dict[str, Any]] = []


class FakeSites(Sites):
    def __init__(self, cluster: PostgresCluster, primary: FakeApi, standby: FakeApi):
        self.cluster, self.p, self.s = cluster, primary, standby

    def observe(self) -> tuple[SiteView, SiteView]:
        return self.p.view, self.s.view

    def fence(self, view: SiteView) -> None:
        self.p.patches.append({"standby_cluster": "follow the standby site"})
        self.p.view = replace(self.p.view, standby=True, writable=not self.p.demotes)

    def promote(self, view: SiteView) -> None:
        self.s.patches.append({"standby_cluster": None})
        self.s.view = replace(self.s.view, standby=False, writable=True)


def act(sites: FakeSites, force: bool) -> tuple[list[str], str, list[tuple[str, str]]]:
    trail: list[tuple[str, str]] = []
    import dbfleet.reconcile.dr_promote as module

    original = module.observe_site
    module.observe_site = lambda api: sites.p.view if api is sites.primary else sites.s.view  # type: ignore
    try:
        done, end = promote_site(sites, force, wait=5, record=lambda a, st, m, s: trail.append((a.kind, st)),
                                 clock=iter(range(1000)).__next__, sleep=lambda _: None)
    finally:
        module.observe_site = original
    return [d.action.kind for d in done], end.step, trail


def test_the_act_fences_then_promotes_and_records_each_step(cluster: PostgresCluster) -> None:
    sites = FakeSites(cluster, FakeApi(PRIMARY), FakeApi(STANDBY))
    sites.primary, sites.standby = sites.p, sites.s  # type: ignore[assignment]
    assert act(sites, force=False) == (["fence-site", "promote-site"], "done",
                                       [("fence-site", "done"), ("promote-site", "done")])
    assert sites.p.patches and sites.s.patches == [{"standby_cluster": None}]


def test_the_act_stops_when_the_fence_does_not_take(cluster: PostgresCluster) -> None:
    sites = FakeSites(cluster, FakeApi(PRIMARY, demotes=False), FakeApi(STANDBY))
    sites.primary, sites.standby = sites.p, sites.s  # type: ignore[assignment]
    kinds_done, end, _ = act(sites, force=False)
    assert kinds_done == ["fence-site"] and end == "refuse" and sites.s.patches == []
    sites = FakeSites(cluster, FakeApi(PRIMARY, demotes=False), FakeApi(STANDBY))
    sites.primary, sites.standby = sites.p, sites.s  # type: ignore[assignment]
    # --force promotes anyway, and the end still says that both sites accept writes (exit 1).
    assert act(sites, force=True)[:2] == (["fence-site", "promote-site"], "refuse")


def test_a_failback_names_the_sites_the_other_way_round(cluster: PostgresCluster) -> None:
    steps, end = plan_promote(cluster, replace(UNREACHABLE, hosts=("pg-dr-1",)), FENCED, False,
                              ("standby site", "primary site"))
    assert steps == [] and end.step == "refuse" and end.reason.startswith("the standby site does not answer")


class AnsweringApi:
    """GET /cluster answered by some members only; a member given None hangs until `release` is set, then times
    out; an int is the HTTP status it answers."""

    def __init__(self, answers: dict[str, Any]):
        self.hosts = list(answers)
        self.answers = answers
        self.cluster = load_fleet(REPO / "fleet.example.yaml").cluster("pg-main")
        self.release = threading.Event()
        self.hung_ended: list[str] = []

    def request(self, host: str, path: str) -> tuple[int, Any]:
        answer = self.answers[host]
        if answer is None:
            self.release.wait(10)
            self.hung_ended.append(host)
            raise TemporaryError("timed out", host=host)
        return answer if isinstance(answer, tuple) else (answer, {})


def test_the_first_member_that_answers_is_read_without_waiting_for_the_others() -> None:
    data = {"members": [{"name": "pg-2", "role": "leader", "state": "running", "timeline": 3}]}
    api = AnsweringApi({"pg-1": None, "pg-2": (200, data), "pg-3": 503})
    state = first_answer(api)  # type: ignore[arg-type]
    assert api.hung_ended == [], "first_answer waited for the member that hangs"
    api.release.set()
    assert state.source == "pg-2" and state.leader is not None and state.leader.name == "pg-2"
    down = AnsweringApi({"pg-1": None, "pg-3": 503})
    down.release.set()
    with pytest.raises(TemporaryError, match="pg-1: timed out; pg-3: HTTP 503"):
        first_answer(down)  # type: ignore[arg-type]


def test_a_patch_the_site_does_not_take_yet_is_sent_again_within_the_wait(cluster: PostgresCluster) -> None:
    class Flaky(FakeSites):
        refusals = 2

        def fence(self, view: SiteView) -> None:
            if self.refusals:
                self.refusals -= 1
                raise TemporaryError("PATCH /config: HTTP 503: DCS not accessible")
            super().fence(view)

    sites = Flaky(cluster, FakeApi(PRIMARY), FakeApi(STANDBY))
    sites.primary, sites.standby = sites.p, sites.s  # type: ignore[assignment]
    assert act(sites, force=False)[:2] == (["fence-site", "promote-site"], "done") and sites.refusals == 0


class Lagging(FakeSites):
    """The site to promote has received less than the fenced site wrote, and catches up after `behind` looks."""

    behind = 10**6

    def observe(self) -> tuple[SiteView, SiteView]:
        if self.behind:
            self.behind -= 1
            self.s.view = replace(self.s.view, position=0x5000000)
        else:
            self.s.view = replace(self.s.view, position=self.p.view.position)
        return super().observe()


def test_a_promotion_waits_until_the_site_to_promote_has_the_fenced_sites_wal(cluster: PostgresCluster) -> None:
    """A failback right after the old site was fenced lost a write made on the promoted site in the lab: the old
    site was still rewinding when it was promoted. The promotion now waits for it to catch up, and refuses when it
    does not within the wait (--force promotes anyway)."""
    sites = Lagging(cluster, FakeApi(PRIMARY), FakeApi(STANDBY))
    sites.primary, sites.standby = sites.p, sites.s  # type: ignore[assignment]
    sites.behind = 3
    assert act(sites, force=False)[:2] == (["fence-site", "promote-site"], "done") and sites.behind == 0
    never = Lagging(cluster, FakeApi(PRIMARY), FakeApi(STANDBY))
    never.primary, never.standby = never.p, never.s  # type: ignore[assignment]
    kinds_done, end, trail = act(never, force=False)
    assert kinds_done == ["fence-site"] and end == "refuse" and never.s.patches == []
    assert trail == [("fence-site", "done"), ("promote-site", "failed")]
    forced = Lagging(cluster, FakeApi(PRIMARY), FakeApi(STANDBY))
    forced.primary, forced.standby = forced.p, forced.s  # type: ignore[assignment]
    assert act(forced, force=True)[:2] == (["fence-site", "promote-site"], "done")


def test_an_unreachable_old_site_is_not_waited_for(cluster: PostgresCluster) -> None:
    sites = Lagging(cluster, FakeApi(UNREACHABLE), FakeApi(STANDBY))
    sites.primary, sites.standby = sites.p, sites.s  # type: ignore[assignment]
    assert act(sites, force=True)[:2] == (["promote-site"], "done")


def test_caught_up_compares_where_each_leaders_wal_ends() -> None:
    assert caught_up(PRIMARY, STANDBY)
    assert not caught_up(PRIMARY, replace(STANDBY, position=0x5000000))
    assert not caught_up(replace(PRIMARY, position=None), STANDBY)


class PatroniAnswers(PatroniApi):
    def __init__(self, answer: tuple[int, Any]):
        self.answer = answer

    def request(self, host: str, path: str, method: str = "GET", body: dict[str, Any] | None = None,
                timeout: float | None = None) -> tuple[int, Any]:
        assert (host, path, method) == ("pg-1", "patroni", "GET")
        return self.answer


def test_member_wal_reads_the_role_and_where_the_wal_ends() -> None:
    primary = {"role": "master", "xlog": {"location": 83886176}}
    replica = {"role": "standby_leader", "xlog": {"received_location": 83886176, "replayed_location": 83886000}}
    assert PatroniAnswers((200, primary)).member_wal("pg-1") == ("master", 83886176)
    assert PatroniAnswers((200, replica)).member_wal("pg-1") == ("standby_leader", 83886176)
    assert PatroniAnswers((200, {"role": "replica"})).member_wal("pg-1") == ("replica", None)
    assert PatroniAnswers((503, "")).member_wal("pg-1") == (None, None)
