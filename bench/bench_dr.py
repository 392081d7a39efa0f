"""Disaster recovery of a PostgreSQL cluster with a standby site (dr.standby): region loss, promotion, failback,
and what the second backup repository costs.

Three rounds, each as tests/faults/test_region_loss.py does once:
- a writer commits one numbered row per transaction through HAProxy on the primary site (the Writer of the
  Patroni fault tests), for some seconds;
- every primary-site host is cut off from the lab network (blackhole routes, their `Partition`);
- `dbfleet dr promote --force`, then a write straight to the standby site's server until one is acknowledged:
  the RTO is from the cut to that write;
- the commits acknowledged before the cut that the promoted site lacks, and the age at the cut of the oldest
  of them: the observed RPO, against the spec's dr.rpo_seconds;
- healed, the operator's DR site reconciler (`reconcile --once --reconciler dr`, dr.standby.old_site: fence)
  fences the old site once `plan` shows the fence; then, once the old site follows the promoted one (its standby
  leader runs: the README's runbook), `dbfleet dr promote --failback` until the primary site is healthy and the
  standby site follows it again. A run that stopped with the standby site leading is failed back first.
Medians of the 3 rounds; the observed RPO is the worst round's (a bound is about the worst case).

Then the second repository's cost: the operator's full backup of the cluster (a pgbench database of scale
DBFLEET_BENCH_DR_SCALE, 10 by default) into both targets against the same into one, the median of
DBFLEET_BENCH_DR_ROUNDS (3) each (bench/bench_backup.py's measure_dr). It runs first, on the healthy cluster.

    python3 -m bench.bench_dr          # or: python3 -m bench.run --only dr

DBFLEET_BENCH_LAB names the lab (default "benchdr"; PostgreSQL hosts only), DBFLEET_KEEP_LAB=1 keeps it,
DBFLEET_BENCH_NO_CONVERGE=1 skips the converge of a kept lab. Cutting hosts off needs root (nsenter).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from bench.common import REPO, SPEC, Result, converged_postgres_lab

LAB = os.environ.get("DBFLEET_BENCH_LAB", "benchdr")
SCALE = int(os.environ.get("DBFLEET_BENCH_DR_SCALE", "10"))
ROUNDS = 3
CLUSTER = "pg-main"
WRITE_BEFORE_CUT = 5.0
"""Seconds of acknowledged commits before each cut."""
STREAM_BOUND = PROMOTE_BOUND = FENCE_BOUND = 120.0
HEALTHY_BOUND = 300.0


class Acked(Protocol):
    id: int
    at: float


@dataclass(frozen=True)
class Loss:
    """The commits acknowledged before the cut that the promoted site lacks."""

    acked: int
    """Commits acknowledged before the cut."""
    lost: list[int]
    oldest_age: float
    """Seconds from the oldest lost commit's acknowledgement to the cut: the observed RPO (0 when none is lost)."""


def loss_at_cut(acked: Iterable[Acked], stored: set[int], cut_at: float) -> Loss:
    """What a cut at `cut_at` lost: of the commits acknowledged by then, those whose id is not in `stored`."""
    before = [a for a in acked if a.at <= cut_at]
    lost = [a for a in before if a.id not in stored]
    return Loss(len(before), [a.id for a in lost], max((cut_at - a.at for a in lost), default=0.0))


def say(text: str) -> None:
    print(f"[bench dr] {text}", file=sys.stderr, flush=True)


@dataclass
class Round:
    rto: float
    """Cut to the first write acknowledged by the promoted site."""
    promote: float
    """The `dr promote --force` command alone."""
    loss: Loss
    fenced: float
    """The old site's Patroni answering again to the operator's fence done and no old-site member writable."""
    failback: float
    """`dr promote --failback` to a healthy primary site with the standby site following it."""


def run() -> list[Result]:
    # The fault tests' helpers (tests/faults) and their Lab (tests/conftest.py), as pytest puts them on the path.
    for folder in (REPO / "tests", REPO / "tests" / "faults"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    import pytest

    from bench.bench_backup import measure_dr, pgbench_database
    from conftest import Lab
    from dbfleet.progress import Progress
    from dbfleet.spec import PostgresCluster, load_fleet
    from dbfleet.wiring import open_access

    fleet = load_fleet(SPEC)
    cluster = fleet.cluster(CLUSTER)
    assert isinstance(cluster, PostgresCluster)
    if cluster.ha != "patroni" or cluster.dr is None or cluster.dr.standby is None:
        raise RuntimeError(f"{CLUSTER} in {SPEC} has no standby site (dr.standby with ha: patroni)")
    with converged_postgres_lab(LAB) as (state, _):
        lab = Lab(LAB, fleet, state, REPO / "inventories")
        try:
            failed_back_first(lab, cluster)
            both = open_access(cluster, state.inventory, progress=Progress("bench", quiet=True))
            db_bytes = pgbench_database(both, SCALE)
            cost = measure_dr(replace(both, dr=None), both, {"scale": SCALE, "database_bytes": db_bytes}, bench="dr")
            rounds = []
            for n in range(ROUNDS):
                rounds.append(region_loss_round(lab, cluster))
                r = rounds[-1]
                say(f"round {n + 1}: cut to first write {r.rto:.2f}s (promote --force {r.promote:.2f}s), "
                    f"{len(r.loss.lost)} of {r.loss.acked} acknowledged commits lost (oldest {r.loss.oldest_age:.2f}s"
                    f" before the cut; bound {cluster.dr.rpo_seconds}s), fenced {r.fenced:.2f}s after the heal, "
                    f"failback {r.failback:.2f}s")
        except pytest.fail.Exception as exc:  # a bounded wait of the fault helpers ran out
            raise RuntimeError(str(exc)) from None
    return figures(cluster, rounds) + cost


def figures(cluster: Any, rounds: list[Round]) -> list[Result]:
    bound = float(cluster.dr.rpo_seconds)
    ttl = float(cluster.patroni.ttl)
    detail = {"rounds": ROUNDS, "rto_s": [round(r.rto, 2) for r in rounds],
              "promote_s": [round(r.promote, 2) for r in rounds],
              "lost": [len(r.loss.lost) for r in rounds], "acked_before_cut": [r.loss.acked for r in rounds],
              "oldest_lost_age_s": [round(r.loss.oldest_age, 2) for r in rounds],
              "heal_to_fenced_s": [round(r.fenced, 2) for r in rounds],
              "failback_s": [round(r.failback, 2) for r in rounds], "rpo_seconds": bound, "ttl": ttl}
    return [
        Result("dr", "promote RTO: cut to first write (median of 3)", statistics.median(r.rto for r in rounds), "s",
               ttl, "ttl (in-site failover)", detail),
        Result("dr", "dr promote --force command (median of 3)", statistics.median(r.promote for r in rounds), "s",
               statistics.median(r.rto for r in rounds), "the RTO", detail),
        Result("dr", "observed RPO: oldest lost commit (worst of 3)", max(r.loss.oldest_age for r in rounds), "s",
               bound, "dr.rpo_seconds (bound)", detail),
        Result("dr", "commits lost (all 3 rounds)", float(sum(len(r.loss.lost) for r in rounds)), "n",
               float(sum(r.loss.acked for r in rounds)), "acknowledged before the cuts", detail),
        Result("dr", "heal to old site fenced (median of 3)", statistics.median(r.fenced for r in rounds), "s",
               None, "", detail),
        Result("dr", "failback to healthy, following (median of 3)", statistics.median(r.failback for r in rounds),
               "s", None, "", detail),
    ]


def region_loss_round(lab: Any, cluster: Any) -> Round:
    """One cut of the whole primary site, `dr promote --force`, the old site fenced by the operator, failback."""
    from dr_support import connect, ids_on, operator, partitions, promote, site_roles, writing
    from patroni_support import Patroni, bounded, partition_possible

    why = partition_possible()
    if why:
        raise RuntimeError(why)
    standby = cluster.standby_hosts()[0].name
    bounded("a healthy primary site", Patroni(lab, cluster).healthy, HEALTHY_BOUND, every=1)
    bounded("the standby site following", lambda: site_roles(lab, cluster, [standby])[standby] == "standby_leader",
            FENCE_BOUND, every=1)
    writer = writing(lab, cluster, standby, WRITE_BEFORE_CUT, STREAM_BOUND)
    cuts = partitions(lab, cluster.host_names())
    cut_at = time.time()
    try:
        for cut in cuts:
            cut.cut()
        writer.stop.set()  # joined after the first write: its wait on a vanished server is no part of the RTO
        started = time.monotonic()
        code, out = promote(lab, cluster, "--force")
        if code != 0:
            raise RuntimeError(f"dr promote --force exited {code}: {out}")
        forced = time.monotonic() - started

        def write_on_standby() -> bool:
            with connect(lab, cluster, standby) as conn:
                conn.execute("INSERT INTO failover_probe (id) VALUES (-1)")
            return True

        bounded("a write on the promoted site", write_on_standby, PROMOTE_BOUND, every=0.5)
        rto = time.time() - cut_at
        writer.finish()
        loss = loss_at_cut(writer.acked, ids_on(lab, cluster, standby, "failover_probe"), cut_at)
    finally:
        for cut in cuts:
            cut.heal()

    # Healed, the old site's leader accepts writes again; the operator's next cycle fences it.
    bounded("the old site's Patroni answering again",
            lambda: any(role is not None for role in site_roles(lab, cluster, cluster.host_names()).values()),
            FENCE_BOUND, every=1)
    healed = time.monotonic()

    def planned_fence() -> bool:
        _, plan = operator(lab, cluster, "plan")
        return any(a["kind"] == "fence-site" for a in plan.get("actions", []))

    bounded("the operator's plan to fence the old site", planned_fence, FENCE_BOUND, every=1)
    _, out = operator(lab, cluster, "reconcile", "--once")
    if ("fence-site", "done") not in [(o["kind"], o["status"]) for c in out["clusters"] for o in c["outcomes"]]:
        raise RuntimeError(f"reconcile --once --reconciler dr did not fence the old site: {out}")
    bounded("no old-site member accepting writes", lambda: all(
        role not in ("master", "primary") for role in site_roles(lab, cluster, cluster.host_names()).values()),
        FENCE_BOUND, every=1)
    fenced = time.monotonic() - healed
    return Round(rto, forced, loss, fenced, fail_back(lab, cluster))


def fail_back(lab: Any, cluster: Any) -> float:
    """The runbook's failback: once the primary site follows the promoted one (its standby leader runs),
    `dr promote --failback`; seconds from the command to a healthy primary site with the standby site following."""
    from dr_support import promote, site_follows, site_roles
    from patroni_support import Patroni, bounded

    standby = cluster.standby_hosts()[0].name
    bounded("the primary site following the promoted one", lambda: site_follows(lab, cluster), FENCE_BOUND, every=1)
    started = time.monotonic()
    code, out = promote(lab, cluster, "--failback")
    if code != 0:
        raise RuntimeError(f"dr promote --failback exited {code}: {out}")
    bounded("a healthy primary site after the failback", Patroni(lab, cluster).healthy, HEALTHY_BOUND, every=1)
    bounded("the standby site following again",
            lambda: site_roles(lab, cluster, [standby])[standby] == "standby_leader", FENCE_BOUND, every=1)
    return time.monotonic() - started


def failed_back_first(lab: Any, cluster: Any) -> None:
    """A run before that stopped with the standby site leading (and the primary site fenced) is failed back first,
    untimed."""
    from dr_support import site_roles

    standby = cluster.standby_hosts()[0].name
    if site_roles(lab, cluster, [standby])[standby] in ("master", "primary"):
        say("the standby site leads (left by a run before): failing back first")
        fail_back(lab, cluster)


if __name__ == "__main__":
    from bench.run import render

    print(render(run()))
