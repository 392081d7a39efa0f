"""The PostgreSQL standby site (dr.standby) and `dbfleet dr promote`, proven in the lab.

The lab's spec gives pg-main a one-host standby site (pg-dr-1): a Patroni standby cluster of its own (scope
pg-main-dr, a one-member etcd) that streams from the primary site and restores WAL from the second backup
target. These tests check that it streams, that a dry run changes nothing, then cut the whole primary site off
(every pg-main host blackholed), promote the standby site with --force, and print the time from the cut to the
first write on the promoted site and the commits lost against the RPO bound. Healed, the old site still has a
leader of its own; the operator's next cycle (dr.standby.old_site: fence) fences it, and its leader stops
accepting writes.

The tests leave pg-main's primary site fenced behind the promoted standby site (failing back is a runbook in the
README, not automated), so this module runs after every other PostgreSQL test of the session (test_region_* sorts
after test_pg_*). Each wait is bounded.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from dr_support import connect, ids_on, operator, partitions, promote, site_follows, site_roles, writing
from patroni_support import Patroni, bounded, partition_possible, report
from test_pg_failover import operator_heals

from dbfleet.spec import PostgresCluster

pytestmark = pytest.mark.lab

STREAM_BOUND = 120.0
PROMOTE_BOUND = 120.0
FENCE_BOUND = 120.0


@pytest.fixture(scope="module")
def site(configured: Any) -> tuple[Any, PostgresCluster, str]:
    if not configured.has("postgres"):
        pytest.skip("the lab runs no PostgreSQL hosts")
    cluster = configured.fleet.of_engine("postgres")[0]
    standby = cluster.standby_hosts()
    if cluster.ha != "patroni" or not standby:
        pytest.skip("the lab's PostgreSQL cluster has no standby site")
    return configured, cluster, standby[0].name


def test_the_standby_site_streams_from_the_primary(site: tuple[Any, PostgresCluster, str]) -> None:
    lab, cluster, standby = site
    patroni = Patroni(lab, cluster)
    leader, _ = bounded("a leader on the primary site", patroni.leader, STREAM_BOUND, every=1)
    status, data = patroni.get(standby, "patroni")
    assert status == 200 and data.get("role") == "standby_leader", data
    mark = int(time.time() * 1000)
    with connect(lab, cluster, leader) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS dr_probe (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO dr_probe VALUES (%s)", (mark,))
    _, took = bounded("the row on the standby site", lambda: mark in ids_on(lab, cluster, standby, "dr_probe"),
                      STREAM_BOUND, every=0.5)
    report("standby site streams", {"row_visible_after": took})


def test_a_dry_run_plans_the_fence_and_the_promotion_and_changes_nothing(
        site: tuple[Any, PostgresCluster, str]) -> None:
    lab, cluster, standby = site
    before = site_roles(lab, cluster, [*cluster.host_names(), standby])
    code, out = promote(lab, cluster, "--dry-run")
    assert code == 0 and out["dry_run"] is True, out
    assert [s["kind"] for s in out["steps"]] == ["fence-site", "promote-site"], out
    assert all(s["destructive"] for s in out["steps"])
    time.sleep(3)  # a change would show within Patroni's loop (loop_wait 1 s in the lab's spec)
    assert site_roles(lab, cluster, [*cluster.host_names(), standby]) == before
    assert before[standby] == "standby_leader" and "master" in before.values() or "primary" in before.values()


def test_the_primary_site_cut_off_then_dr_promote_force_and_the_old_site_fenced_when_back(
        site: tuple[Any, PostgresCluster, str]) -> None:
    why = partition_possible()
    if why:
        pytest.skip(why)
    lab, cluster, standby = site
    assert cluster.dr is not None
    patroni = Patroni(lab, cluster)
    bounded("a healthy primary site before the cut", patroni.healthy, 180, every=1)
    writer = writing(lab, cluster, standby, 5, STREAM_BOUND)  # some seconds of acknowledged commits before the cut
    cuts = partitions(lab, cluster.host_names())
    cut_at = time.time()
    try:
        for cut in cuts:
            cut.cut()
        writer.finish()
        acked = [a for a in writer.acked if a.at <= cut_at]

        started = time.monotonic()
        code, out = promote(lab, cluster)
        assert code == 1 and out["end"] == "refuse" and "does not answer" in out["reason"], out
        refused_in = time.monotonic() - started
        started = time.monotonic()
        code, out = promote(lab, cluster, "--force")
        assert code == 0 and [s["kind"] for s in out["steps"]] == ["promote-site"], out
        forced_in = time.monotonic() - started

        def write_on_standby() -> bool:
            with connect(lab, cluster, standby) as conn:
                conn.execute("INSERT INTO failover_probe (id) VALUES (-1)")
            return True

        _, _ = bounded("a write on the promoted site", write_on_standby, PROMOTE_BOUND, every=0.5)
        rto = time.time() - cut_at
        stored = ids_on(lab, cluster, standby, "failover_probe")
        lost = [a for a in acked if a.id not in stored]
        # Asynchronous shipping to the standby site: a commit acknowledged more than rpo_seconds before the cut
        # must be there (streaming keeps the standby site milliseconds behind; repo2 within archive_timeout).
        late = [a.id for a in lost if a.at < cut_at - cluster.dr.rpo_seconds]
        assert late == [], f"commits acknowledged over {cluster.dr.rpo_seconds}s before the cut are lost: {late[:20]}"
        lost_window = cut_at - min(a.at for a in lost) if lost else 0.0
    finally:
        for cut in cuts:
            cut.heal()
    report("region loss, dr promote --force", {"acked_before_cut": len(acked), "lost_commits": len(lost),
                                               "lost_window": lost_window, "cut_to_first_write": rto,
                                               "refusal_took": refused_in, "forced_promote_took": forced_in,
                                               "rpo_bound_seconds": cluster.dr.rpo_seconds})

    # Back on the network the old site has its etcd quorum again and its leader accepts writes beside the promoted
    # site. The operator's next cycle fences it (the lab's spec says dr.standby.old_site: fence): `plan` shows the
    # destructive fence-site first, then one `reconcile --once` makes the old site a standby cluster of the
    # promoted one, and none of its members accepts writes, for longer than its leader lock lives.
    def old_site_answers() -> bool:
        return any(role is not None for role in site_roles(lab, cluster, cluster.host_names()).values())

    bounded("the old site's Patroni answering again", old_site_answers, FENCE_BOUND, every=1)
    healed_at = time.time()
    assert cluster.dr.standby is not None and cluster.dr.standby.old_site == "fence"

    def planned_fence() -> dict[str, Any] | None:
        code, out = operator(lab, cluster, "plan")
        assert code in (0, 1), out
        return next((a for a in out["actions"] if a["kind"] == "fence-site"), None)

    planned, _ = bounded("the operator's plan to fence the old site", planned_fence, FENCE_BOUND, every=1)
    assert planned["destructive"] and planned["target"] == ",".join(cluster.host_names()), planned
    code, out = operator(lab, cluster, "reconcile", "--once")
    outcomes = [(o["kind"], o["status"]) for c in out["clusters"] for o in c["outcomes"]]
    assert ("fence-site", "done") in outcomes, out

    def old_site_read_only() -> bool:
        roles = site_roles(lab, cluster, cluster.host_names())
        return all(role not in ("master", "primary") for role in roles.values())

    bounded("no old-site member accepting writes", old_site_read_only, FENCE_BOUND, every=1)
    watch_until = time.monotonic() + 2 * cluster.patroni.ttl
    while time.monotonic() < watch_until:
        assert old_site_read_only(), site_roles(lab, cluster, cluster.host_names())
        time.sleep(1)
    for host in cluster.host_names():
        try:
            with connect(lab, cluster, host) as conn:
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    conn.execute("INSERT INTO failover_probe (id) VALUES (-2)")
        except psycopg.OperationalError:
            pass  # restarting as a standby: not accepting writes either
    report("old site fenced when back", {"heal_to_fenced": time.time() - healed_at})


def test_failback_makes_the_primary_site_lead_again_with_the_promoted_sites_writes(
        site: tuple[Any, PostgresCluster, str]) -> None:
    """Also what leaves the lab as the next tests expect it: pg-main led from its own hosts, the standby site
    following them."""
    lab, cluster, standby = site
    roles = site_roles(lab, cluster, [standby])
    if roles[standby] not in ("master", "primary"):
        pytest.skip(f"the standby site is not promoted ({roles[standby]}): nothing to fail back")
    with connect(lab, cluster, standby) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS dr_probe (id bigint PRIMARY KEY)")
        mark = int(time.time() * 1000)
        conn.execute("INSERT INTO dr_probe VALUES (%s)", (mark,))
    # The runbook: fail back once the primary site follows the promoted one (its standby leader runs).
    bounded("the primary site following the promoted one", lambda: site_follows(lab, cluster), FENCE_BOUND, every=1)
    started = time.time()
    code, out = promote(lab, cluster, "--failback")
    assert code == 0 and [s["kind"] for s in out["steps"]] == ["fence-site", "promote-site"], out
    # With the operator's members reconciler running as its loop would: a member of the old site that could not
    # start on the promoted site's timeline is rebuilt (reinit, under on_diverged: rewind), as bench dr saw once.
    leader, _ = bounded("a healthy primary site after the failback", operator_heals(lab, cluster), 300, every=1)
    assert mark in ids_on(lab, cluster, leader, "dr_probe"), "a write made on the promoted site is lost"
    bounded("the standby site following again", lambda: site_roles(lab, cluster, [standby])[standby]
            == "standby_leader", FENCE_BOUND, every=1)
    report("failback", {"to_healthy": time.time() - started})
