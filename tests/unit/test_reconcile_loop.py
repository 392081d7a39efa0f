"""The reconcile loop: retries, isolation between clusters, stopping, leadership, rendering. No servers:
reconcilers and sessions here are small in-process stand-ins for the engine interface."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from dbfleet.actions import Action, Outcome
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.base import EngineSession, Member, Topology
from dbfleet.errors import PermanentError, TemporaryError, Waiting
from dbfleet.monitoring import metrics
from dbfleet.reconcile.audit import AuditError, AuditTrail
from dbfleet.reconcile.leader import FileLeaderLock
from dbfleet.reconcile.loop import Operator, leadership, watch
from dbfleet.reconcile.retry import ClusterBackoff, RetryPolicy, call_with_retry
from dbfleet.reconcile.status import load_state, record_cycle, status_columns, status_rows
from dbfleet.spec import load_fleet
from dbfleet.wiring import status_providers

SPEC = Path(__file__).resolve().parents[2] / "fleet.example.yaml"
ACCESS = FleetAccess({h.name: "10.0.0.1" for c in load_fleet(SPEC).clusters for h in c.all_hosts()}, {})


class Session(EngineSession[Any]):
    engine = "test"
    topology_failures: ClassVar[dict[str, list[Exception]]] = {}

    def read_topology(self) -> Topology:
        self.queries += 1
        pending = self.topology_failures.get(self.cluster.name, [])
        if pending:
            raise pending.pop(0)
        return Topology(self.cluster.name, self.cluster.engine, "h1", (Member("h1", "primary", True),))

    def close(self) -> None:
        self.closed = True


class Recorder:
    """A reconciler that plans two changes and a report per cluster and records what it applied."""

    name = "test"

    def __init__(self, act_failures: dict[str, list[Exception]] | None = None, stop: threading.Event | None = None):
        self.applied: list[str] = []
        self.act_failures = act_failures or {}
        self.stop = stop

    def applies_to(self, cluster: Any) -> bool:
        return True

    def observe(self, cluster: Any, session: Any) -> dict[str, Any]:
        return {"cluster": cluster.name}

    def diff(self, cluster: Any, observed: Any) -> list[Action]:
        return [Action(cluster.name, self.name, "make", f"{cluster.name}/one", "wanted"),
                Action(cluster.name, self.name, "report-thing", f"{cluster.name}/r", "seen"),
                Action(cluster.name, self.name, "make", f"{cluster.name}/two", "wanted", destructive=True)]

    def act(self, action: Action, session: Any) -> str:
        pending = self.act_failures.get(action.target, [])
        if pending:
            raise pending.pop(0)
        self.applied.append(action.target)
        if self.stop is not None:
            self.stop.set()  # SIGTERM arrives while this action runs
        return f"made {action.target}"

    def notes(self, observed: Any) -> list[str]:
        return []

    def status(self, cluster: Any, observed: Any, actions: list[Action]) -> dict[str, Any]:
        return {"things": len(actions)}


def make_operator(reconciler: Recorder, **kw: Any) -> Operator:
    """One cluster at a time unless told (`parallel`): these tests follow one cycle's order across clusters."""
    kw.setdefault("parallel", 1)
    return Operator(load_fleet(SPEC), ACCESS, reconcilers=[reconciler], session_factory=Session,
                    sleep=lambda s: None, retry=RetryPolicy(attempts=3, base_delay=0.01), **kw)


@pytest.fixture(autouse=True)
def _reset_failures():
    Session.topology_failures = {}


def test_plan_acts_on_nothing_and_once_applies_every_change_in_order():
    rec = Recorder()
    plan = make_operator(rec).run_cycle(apply=False)
    assert rec.applied == [] and plan.ok
    once = make_operator(rec).run_cycle(apply=True)
    assert [a.target for a in once.actions()] == [a.target for a in plan.actions()]
    changes = [a.target for a in plan.actions() if a.changes]
    assert rec.applied == changes
    assert all(o.status == "done" for c in once.clusters for o in c.outcomes)


def test_a_temporary_failure_is_retried_then_succeeds():
    rec = Recorder({"pg-main/one": [TemporaryError("lock timeout"), TemporaryError("lock timeout")]})
    report = make_operator(rec).run_cycle(apply=True)
    outcome = next(o for o in report.clusters[0].outcomes if o.action.target == "pg-main/one")
    assert outcome.status == "done" and outcome.attempts == 3
    assert report.ok


def test_a_permanent_failure_is_recorded_once_and_the_rest_goes_on():
    rec = Recorder({"pg-main/one": [PermanentError("duplicate key"), PermanentError("never reached")]})
    report = make_operator(rec).run_cycle(apply=True)
    first = report.clusters[0]
    assert [(o.action.target, o.status, o.attempts) for o in first.outcomes] == [
        ("pg-main/one", "failed", 1), ("pg-main/two", "done", 1)]
    assert "cluster pg-main, action make pg-main/one: duplicate key" in first.outcomes[0].message
    assert not report.ok
    assert "mongo-main/one" in rec.applied and "cache/two" in rec.applied


def test_a_persistent_temporary_failure_skips_the_clusters_remaining_changes():
    rec = Recorder({"pg-main/one": [TemporaryError("down")] * 5})
    first = make_operator(rec).run_cycle(apply=True).clusters[0]
    assert [o.status for o in first.outcomes] == ["failed", "skipped"]
    assert "after a temporary failure: down" in first.outcomes[1].message


def test_one_unreachable_cluster_never_stops_the_others():
    Session.topology_failures = {"mongo-main": [TemporaryError("no mongos")] * 5}
    rec = Recorder()
    report = make_operator(rec).run_cycle(apply=True)
    by_name = {c.cluster: c for c in report.clusters}
    assert by_name["mongo-main"].error == "cluster mongo-main: no mongos"
    assert "FAILED" in by_name["mongo-main"].sentence()
    assert by_name["pg-main"].ok and by_name["cache"].ok
    assert "cache/one" in rec.applied


def test_a_cluster_whose_members_all_fail_to_answer_is_an_error_and_nothing_acts():
    class Silent(Session):
        def observe_topology(self) -> Topology:
            if self.cluster.name != "cache":
                return super().observe_topology()
            return Topology("cache", "redis", None, tuple(Member(h.name, "unknown", False, "timeout")
                                                          for h in self.cluster.all_hosts()))

    recorder = Recorder()
    operator = Operator(load_fleet(SPEC), ACCESS, reconcilers=[recorder], session_factory=Silent,
                        sleep=lambda s: None, retry=RetryPolicy(attempts=3, base_delay=0.01))
    report = operator.run_cycle(apply=True)
    errors = {c.cluster: c.error for c in report.clusters}
    assert errors["cache"].startswith("cluster cache, action observe: no member answers: redis-1: timeout")
    assert [t for t in recorder.applied if t.startswith("cache/")] == []
    assert "pg-main/one" in recorder.applied


def test_a_bug_in_a_reconciler_is_contained_to_its_cluster():
    class Buggy(Recorder):
        def observe(self, cluster, session):
            if cluster.name == "pg-main":
                raise KeyError("oops")
            return {}

    report = make_operator(Buggy()).run_cycle(apply=True)
    assert "unexpected KeyError" in report.clusters[0].error
    assert report.clusters[1].ok


def test_a_failing_cluster_backs_off_across_cycles():
    Session.topology_failures = {"cache": [TemporaryError("down")] * 10}
    op = make_operator(Recorder())
    assert op.run_cycle(apply=False, respect_backoff=True).clusters[2].error
    second = op.run_cycle(apply=False, respect_backoff=True).clusters[2]
    assert second.skipped and "retrying in" in second.skipped and second.ok


def test_stopping_finishes_the_action_in_flight_and_skips_the_rest():
    stop = threading.Event()
    rec = Recorder(stop=stop)
    report = make_operator(rec, stop=stop).run_cycle(apply=True)
    assert rec.applied == ["pg-main/one"]
    statuses = [o.status for c in report.clusters for o in c.outcomes]
    assert statuses[0] == "done" and set(statuses[1:]) == {"skipped"}


def test_a_cluster_with_no_host_in_the_inventory_is_skipped_not_failed():
    mongo_hosts = {h.name for h in load_fleet(SPEC).cluster("mongo-main").all_hosts()}
    access = FleetAccess({h: a for h, a in ACCESS.addresses.items() if h not in mongo_hosts}, {})
    rec = Recorder()
    report = Operator(load_fleet(SPEC), access, reconcilers=[rec], session_factory=Session).run_cycle(apply=True)
    mongo = report.clusters[1]
    assert mongo.skipped == "none of its hosts is in the inventory" and report.ok
    assert not any(t.startswith("mongo-main") for t in rec.applied)


def test_the_cluster_filter():
    report = make_operator(Recorder(), clusters={"cache"}).run_cycle(apply=False)
    assert [c.cluster for c in report.clusters] == ["cache"]


def test_render_shows_reasons_marks_and_outcomes():
    plan = make_operator(Recorder()).run_cycle(apply=False)
    text = plan.render()
    assert "pg-main (postgres): primary h1, 1/1 members up; 2 changes planned; 1 findings reported" in text
    assert "+ pg-main test make pg-main/one: wanted" in text
    assert "! pg-main test make pg-main/two: wanted" in text
    assert "- pg-main test report-thing pg-main/r: seen" in text
    once = make_operator(Recorder()).run_cycle(apply=True).render()
    assert "+ pg-main test make pg-main/one: wanted -> done (made pg-main/one)" in once
    data = make_operator(Recorder()).run_cycle(apply=True).as_dict()
    assert data["clusters"][0]["outcomes"][0]["status"] == "done"
    assert data["actions"][0] == {"cluster": "pg-main", "reconciler": "test", "kind": "make",
                                  "target": "pg-main/one", "reason": "wanted", "destructive": False,
                                  "changes": True, "detail": {}}


# --------------------------------------------------------------------------- watch and leadership


class Standby:
    backend = "postgres"
    where = "the primary of pg-main"
    held = False
    holder = "dbfleet-operator-leader other:1 from 10.0.0.9 (pid 42)"
    fault = ""

    def __init__(self) -> None:
        self.released = False

    def acquire(self) -> bool:
        return False

    def confirm(self) -> bool:
        return False

    def current_holder(self) -> str:
        return self.holder

    def release(self) -> None:
        self.released = True


class Cutoff(Standby):
    """A lock whose store does not answer: nobody is known to lead."""

    backend = "etcd"
    where = "the etcd of pg-main"
    holder = "nobody known (no etcd member answers lease/grant)"
    fault = "no etcd member answers lease/grant (https://10.0.0.1:2379: timed out)"


class Fading(Standby):
    """Leads at the start of the cycle; the store confirms `confirms` acts, then the lease is gone."""

    backend = "etcd"
    where = "the etcd of pg-main"
    holder = "this process"

    def __init__(self, confirms: int, fault: str = "") -> None:
        super().__init__()
        self.confirms = confirms
        self.checks = 0
        self.lost_fault = fault

    def acquire(self) -> bool:
        return True

    def confirm(self) -> bool:
        self.checks += 1
        if self.checks <= self.confirms:
            return True
        self.fault = self.lost_fault
        self.holder = "dbfleet-operator-leader other:7 (etcd lease 2a)"
        return False


def test_watch_without_the_lock_only_observes_and_releases_on_exit():
    rec, leader, reports = Recorder(), Standby(), []
    assert watch(make_operator(rec), leader, 0.01, reports.append, max_cycles=2) == 0
    assert rec.applied == [] and len(reports) == 2 and leader.released
    assert reports[0].leader.startswith("not leader, observed only: dbfleet-operator-leader other:1")
    assert metrics.NO_LEADER_CYCLES._value.get() == 0  # another operator leads: that is not "no leader"


def test_watch_with_the_lock_store_down_observes_counts_the_cycles_and_says_why():
    rec, reports = Recorder(), []
    assert watch(make_operator(rec), Cutoff(), 0.01, reports.append, max_cycles=3) == 0
    assert rec.applied == [] and all(not r.applied for r in reports)
    assert all(c.topology is not None for c in reports[-1].clusters)  # still observed
    assert metrics.NO_LEADER_CYCLES._value.get() == 3
    assert metrics.LEADER.labels("etcd")._value.get() == 0
    assert reports[2].leader.startswith("no leader known for 3 cycles, observed only, nothing acted on: the leader "
                                        "lock (etcd, the etcd of pg-main) did not answer: no etcd member answers")
    assert reports[2].as_dict()["leader_backend"] == "etcd"
    text = metrics.render().decode()
    assert "dbfleet_operator_cycles_without_leader 3.0" in text


def test_every_act_is_fenced_and_none_starts_once_leadership_is_lost():
    rec, leader = Recorder(), Fading(confirms=1)
    recorded: list[Outcome] = []
    operator = make_operator(rec, record=recorded.append)
    report = operator.run_cycle(apply=True, leader=leader)
    assert rec.applied == ["pg-main/one"]  # the first act was confirmed; the lease was gone before the second
    assert leader.checks == 2  # asked once more, then not again this cycle
    skipped = [o for c in report.clusters for o in c.outcomes if o.status == "skipped"]
    assert len(skipped) == 5 and all("not started: leadership not confirmed (this process no longer holds the lock; "
                                     "holder: dbfleet-operator-leader other:7" in o.message for o in skipped)
    assert [o.status for o in recorded] == ["done"] + ["skipped"] * 5  # the trail says what was not done too
    assert leadership(True, leader, lost=operator.unfenced).startswith(
        "this process led until the fencing check before an act failed: this process no longer holds the lock")


def test_a_fence_that_cannot_reach_the_store_refuses_the_act_with_the_store_s_reason():
    rec, leader = Recorder(), Fading(confirms=0, fault="no etcd member answers lease/keepalive")
    report = make_operator(rec).run_cycle(apply=True, leader=leader)
    assert rec.applied == []
    assert {o.message for c in report.clusters for o in c.outcomes} == {
        "not started: leadership not confirmed (no etcd member answers lease/keepalive)"}


def test_without_a_leader_given_acts_are_not_fenced():
    rec = Recorder()
    make_operator(rec).run_cycle(apply=True)
    assert len(rec.applied) == 6


def test_watch_as_leader_acts_and_stops_when_told(tmp_path):
    stop = threading.Event()
    rec, reports = Recorder(), []
    op = make_operator(rec, stop=stop)
    lock = FileLeaderLock(tmp_path / "leader.lock")

    def on_cycle(report):
        reports.append(report)
        stop.set()

    assert watch(op, lock, 60, on_cycle) == 0  # returns at once although the interval is a minute
    assert len(reports) == 1 and reports[0].leader == "this process leads" and reports[0].applied
    assert not lock.held


def test_the_file_lock_admits_one_holder(tmp_path):
    a, b = FileLeaderLock(tmp_path / "l"), FileLeaderLock(tmp_path / "l")
    assert b.current_holder() == "nobody"
    assert a.acquire() and a.acquire() and a.confirm()
    assert not b.acquire() and "holding" in b.holder and not b.fault
    assert b.current_holder() == f"the process holding {tmp_path / 'l'}" and a.current_holder() == "this process"
    a.release()
    assert not a.confirm() and b.current_holder() == "nobody"
    assert b.acquire()
    b.release()


# --------------------------------------------------------------------------- retry primitives


def test_call_with_retry_backs_off_exponentially():
    delays: list[float] = []
    calls = iter([TemporaryError("a"), TemporaryError("b"), "ok"])

    def fn():
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert call_with_retry(fn, "x", RetryPolicy(attempts=3, base_delay=1, max_delay=10), delays.append) == ("ok", 3)
    assert delays == [1, 2]


def test_call_with_retry_gives_up_and_never_retries_permanent():
    with pytest.raises(TemporaryError):
        call_with_retry(lambda: (_ for _ in ()).throw(TemporaryError("t")), "x", RetryPolicy(attempts=2),
                        lambda s: None)
    attempts = []

    def permanent():
        attempts.append(1)
        raise PermanentError("p")

    with pytest.raises(PermanentError):
        call_with_retry(permanent, "x", RetryPolicy(attempts=5), lambda s: None)
    assert attempts == [1]


def test_cluster_backoff_grows_and_resets():
    backoff = ClusterBackoff(RetryPolicy(base_delay=10, max_delay=40))
    assert [backoff.failed("c", 0) for _ in range(4)] == [10, 20, 40, 40]
    assert not backoff.ready("c", 39) and backoff.ready("c", 40)
    backoff.succeeded("c")
    assert backoff.ready("c", 0)


# --------------------------------------------------------------------------- status rows and state


def test_status_rows_come_from_providers_and_the_state_file(tmp_path):
    op = make_operator(Recorder())
    state = tmp_path / "state.json"
    record_cycle(state, op.run_cycle(apply=True))
    assert load_state(state)["pg-main"]["done"] == 2
    providers = [*status_providers(), lambda ctx: {"extra": f"x-{ctx.cluster.name}"}]
    rows = status_rows(op.fleet, op.run_cycle(apply=False), load_state(state), providers)
    assert [r["cluster"] for r in rows] == ["pg-main", "mongo-main", "cache"]
    assert rows[0]["primary"] == "h1" and rows[0]["members_up"] == "1/1" and rows[0]["pending"] == 2
    assert rows[0]["last_reconcile"].startswith("ok ") and rows[0]["extra"] == "x-pg-main"
    assert status_columns(rows)[:4] == ["cluster", "engine", "primary", "members_up"]
    assert status_columns(rows)[-1] == "extra"


def test_state_survives_a_corrupt_file(tmp_path):
    state = tmp_path / "state.json"
    state.write_text("{not json")
    assert load_state(state) == {}


# --------------------------------------------------------------------------- the audit trail


def test_every_applied_action_is_one_line_of_the_audit_trail(tmp_path):
    path = tmp_path / "operator-audit.jsonl"
    trail = AuditTrail(path, "dbfleet-operator-leader test:1", "cd" * 32)
    rec = Recorder({"pg-main/one": [PermanentError("duplicate key")], "cache/one": [TemporaryError("down")] * 5})
    report = make_operator(rec, record=trail.record).run_cycle(apply=True)
    outcomes = [o for c in report.clusters for o in c.outcomes]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(outcomes) == 6  # two changes per cluster; the reports are not actions taken
    # Clusters act side by side, so their lines interleave; each cluster's keep the order its actions ran in.
    for cluster in report.clusters:
        assert [(r["action"]["target"], r["outcome"]) for r in lines if r["cluster"] == cluster.cluster] == [
            (o.action.target, o.status) for o in cluster.outcomes]
    assert {r["outcome"] for r in lines} == {"done", "failed", "skipped"}
    failed = next(r for r in lines if r["outcome"] == "failed" and r["cluster"] == "pg-main")
    assert "duplicate key" in failed["message"] and failed["reason"] == "wanted"
    assert all(r["spec_sha256"] == "cd" * 32 and r["operator"] == "dbfleet-operator-leader test:1" for r in lines)


def test_a_plan_and_a_standby_record_nothing(tmp_path):
    lines: list[Outcome] = []
    make_operator(Recorder(), record=lines.append).run_cycle(apply=False)
    watch(make_operator(Recorder(), record=lines.append), Standby(), 0.01, max_cycles=1)
    assert lines == []


def test_a_stopped_operator_records_what_it_skipped():
    stop = threading.Event()
    lines: list[Outcome] = []
    report = make_operator(Recorder(stop=stop), stop=stop, record=lines.append).run_cycle(apply=True)
    assert lines == [o for c in report.clusters for o in c.outcomes]
    assert [o.status for o in lines][:2] == ["done", "skipped"]


def test_an_action_the_trail_cannot_record_stops_all_acting_this_cycle():
    rec, written = Recorder(), []

    def record(outcome: Outcome) -> None:
        if len(written) == 1:
            raise AuditError("operator-audit.jsonl: cannot append to the audit trail: No space left on device")
        written.append(outcome)

    operator = make_operator(rec, record=record)
    report = operator.run_cycle(apply=True)
    assert rec.applied == ["pg-main/one", "pg-main/two"]  # the second was done, then could not be recorded
    assert "the audit trail did not record make pg-main/two: " in report.clusters[0].error
    assert not report.ok
    skipped = [o for c in report.clusters[1:] for o in c.outcomes]
    assert skipped and all(o.status == "skipped" and "the audit trail failed" in o.message for o in skipped)
    written.clear()  # the next cycle tries again
    rec.applied.clear()
    operator.run_cycle(apply=True)
    assert rec.applied[:2] == ["pg-main/one", "pg-main/two"]


# --------------------------------------------------------------------------- clusters side by side


def test_clusters_are_observed_side_by_side_and_reported_in_spec_order():
    together = threading.Barrier(3, timeout=10)

    class Meeting(Recorder):
        def observe(self, cluster, session):
            together.wait()  # passes only when all three clusters observe at once
            return super().observe(cluster, session)

    report = make_operator(Meeting(), parallel=3).run_cycle(apply=True)
    assert [c.cluster for c in report.clusters] == [c.name for c in load_fleet(SPEC).clusters]
    assert report.ok and len(report.actions()) == 9


def test_one_at_a_time_the_same_meeting_never_happens():
    together = threading.Barrier(3, timeout=0.5)

    class Meeting(Recorder):
        def observe(self, cluster, session):
            together.wait()
            return super().observe(cluster, session)

    report = make_operator(Meeting(), parallel=1).run_cycle(apply=False)
    assert all("BrokenBarrierError" in (c.error or "") for c in report.clusters)


def test_a_hanging_cluster_is_cut_off_by_its_timeout_and_skipped_until_it_ends():
    release = threading.Event()

    class Hangs(Recorder):
        def observe(self, cluster, session):
            if cluster.name == "mongo-main":
                assert release.wait(30), "the test never released the hanging cluster"
            return super().observe(cluster, session)

    rec = Hangs()
    op = make_operator(rec, parallel=2, cluster_timeout=0.5)
    report = op.run_cycle(apply=True)
    by_name = {c.cluster: c for c in report.clusters}
    assert [c.cluster for c in report.clusters] == ["pg-main", "mongo-main", "cache"]
    assert "longer than the cluster timeout (0.5s)" in by_name["mongo-main"].error
    assert by_name["pg-main"].ok and by_name["cache"].ok and "cache/two" in rec.applied
    again = {c.cluster: c for c in op.run_cycle(apply=True).clusters}
    assert "earlier cycle still runs" in again["mongo-main"].skipped and again["cache"].ok
    release.set()
    for _ in range(100):  # its thread ends once released; bounded at ~10 s
        if "mongo-main" not in op._busy:
            break
        time.sleep(0.1)
    third = {c.cluster: c for c in op.run_cycle(apply=False).clusters}
    assert third["mongo-main"].ok and third["mongo-main"].skipped is None


def test_a_waiting_job_is_skipped_not_failed_and_planned_again():
    class Busy(Recorder):
        def act(self, action, session):
            if action.target == "cache/one":
                raise Waiting("waiting for a free slot: 2 of 2 backup jobs run fleet-wide", cluster="cache")
            return super().act(action, session)

    report = make_operator(Busy()).run_cycle(apply=True)
    cache = report.clusters[2]
    assert [(o.status, o.message) for o in cache.outcomes][0] == (
        "skipped", "waiting for a free slot: 2 of 2 backup jobs run fleet-wide")
    assert cache.outcomes[1].status == "done" and report.ok


def test_watch_drains_the_jobs_in_flight_before_it_lets_the_lock_go(tmp_path):
    stop = threading.Event()
    lock = FileLeaderLock(tmp_path / "leader.lock")
    seen: list[tuple[str, float, bool]] = []

    class Jobs:
        def begin_cycle(self) -> None:
            seen.append(("cycle", 0.0, lock.held))

        def drain(self, grace: float) -> list[Any]:
            seen.append(("drain", grace, lock.held))
            return []

    op = make_operator(Recorder(), stop=stop, jobs=Jobs())
    watch(op, lock, 60, lambda report: stop.set(), job_grace=7)
    assert seen == [("cycle", 0.0, True), ("drain", 7, True)] and not lock.held
