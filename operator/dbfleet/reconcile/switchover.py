"""Planned switchover under Patroni: the pure check of a request against Patroni's view, and the act.

`plan_switchover` turns (spec, Patroni's state, wanted host) into one
destructive Action or a PermanentError saying why not; `dbfleet switchover
--dry-run` prints that action and stops. `switch_over` asks the leader's
Patroni (POST /switchover) and waits until the candidate leads and runs.
The operator's loop never switches over by itself: only this command does,
when a person asks for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dbfleet.actions import Action
from dbfleet.engines.patroni import PatroniApi, PatroniState
from dbfleet.errors import PermanentError, TemporaryError
from dbfleet.spec import PostgresCluster

RECONCILER = "patroni"


def plan_switchover(cluster: PostgresCluster, state: PatroniState, to: str) -> Action:
    """The switchover to `to`, or a PermanentError naming what stands in the way."""
    where = {"cluster": cluster.name, "action": f"switchover to {to}"}
    if to not in cluster.host_names():
        raise PermanentError(f"{to} is not one of the cluster's hosts ({', '.join(cluster.host_names())})", **where)
    leader = state.leader
    if leader is None:
        raise PermanentError("no member leads now; Patroni fails over by itself, a switchover needs a leader",
                             **where)
    if leader.name == to:
        raise PermanentError(f"{to} already leads (timeline {leader.timeline}): nothing to do", **where)
    if state.paused:
        raise PermanentError("Patroni is paused (maintenance mode): resume it first", **where)
    member = next((m for m in state.members if m.name == to), None)
    if member is None or not member.up:
        raise PermanentError(f"{to} is not a running member ({member.state if member else 'not listed'})", **where)
    if cluster.synchronous.enabled and member.role != "sync_standby":
        raise PermanentError(f"{to} is not a synchronous standby (it is {member.role}); with synchronous mode "
                             "Patroni promotes only one: choose "
                             + (", ".join(m.name for m in state.members if m.role == "sync_standby") or "none yet"),
                             **where)
    lag = f", {member.lag} bytes behind" if member.lag else ", caught up"
    return Action(cluster.name, RECONCILER, "switchover", to,
                  f"leader {leader.name} -> {to} ({member.role}{lag}); writes pause while the leader hands over "
                  "and clients reconnect through the read-write endpoint", destructive=True,
                  detail={"leader": leader.name, "candidate": to, "timeline": leader.timeline})


def switch_over(api: PatroniApi, action: Action, timeout: float = 60,
                clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str:
    """Ask Patroni for the planned switchover and wait until the candidate leads on a new timeline."""
    leader, candidate = action.detail["leader"], action.detail["candidate"]
    started = clock()
    answer = api.switchover(leader, candidate, timeout=timeout)
    while True:
        try:
            state = api.cluster_state()
        except TemporaryError:
            state = None
        now = state.leader if state else None
        before = action.detail.get("timeline") or 0
        if now is not None and now.name == candidate and now.up and (now.timeline or 0) > before:
            return (f"{candidate} leads on timeline {now.timeline} after {clock() - started:.1f}s "
                    f"(Patroni: {answer})")
        if clock() - started > timeout:
            raise TemporaryError(f"{candidate} did not lead within {timeout:.0f}s (Patroni said: {answer})",
                                 cluster=action.cluster, action="switchover")
        sleep(0.5)
