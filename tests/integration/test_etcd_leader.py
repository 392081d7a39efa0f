"""The operator's leader lock on a real etcd (operator.leader: etcd), on loopback: no lab needed.

etcd 3.4 from Debian, as the etcd role runs it: TLS checked against a CA made
here, v3 authentication, the operator's user allowed below its prefix only
(etcd_server.py). Leases are short and every wait is bounded.
"""

from __future__ import annotations

import importlib.util
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from etcd_server import TOKEN_TTL, EtcdServer, etcd_binaries, run_etcd

from dbfleet.actions import Action
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.base import EngineSession, Member, Topology
from dbfleet.engines.credentials import ETCD_OPERATOR, Login
from dbfleet.engines.etcd import LEADER_KEY, OPERATOR_PREFIX, EtcdGateway
from dbfleet.engines.tls import https_context
from dbfleet.errors import PermanentError
from dbfleet.reconcile.etcd_leader import EtcdLeaderLock
from dbfleet.reconcile.loop import Operator
from dbfleet.reconcile.retry import RetryPolicy
from dbfleet.spec import PostgresCluster, load_fleet

REPO = Path(__file__).resolve().parents[2]
FLEET = load_fleet(REPO / "fleet.example.yaml")
PG = FLEET.cluster("pg-main")
assert isinstance(PG, PostgresCluster)
SHORT_TTL = 2
"""Seconds: the shortest lease a one-member etcd with default timings grants (1.5 s, rounded up)."""


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    if etcd_binaries() is None:
        pytest.skip("no etcd binary: install Debian's etcd-server and etcd-client (apt-get install etcd-server "
                    "etcd-client), as scripts/bootstrap.sh does")
    yield from run_etcd(tmp_path_factory.mktemp("etcd"), OPERATOR_PREFIX)


def gateway(etcd: EtcdServer, *, password: str | None = None, ca: Path | None = None,
            endpoints: list[str] | None = None) -> EtcdGateway:
    """The operator's gateway as dbfleet.engines.etcd.operator_gateway builds it, onto the test's etcd."""
    context = https_context(PG, ca or etcd.ca_file)
    return EtcdGateway(endpoints or [etcd.endpoint], context, ETCD_OPERATOR,
                       etcd.operator_password if password is None else password, timeout=3, where="the test etcd")


def lock(etcd: EtcdServer, name: str, ttl: int = 10, **kw: Any) -> EtcdLeaderLock:
    key = kw.pop("key", LEADER_KEY)
    return EtcdLeaderLock(lambda: gateway(etcd, **kw), ttl, key=key, where="the test etcd",
                          identity=f"dbfleet-operator-leader {name}")


@pytest.fixture
def locks(etcd: EtcdServer) -> Iterator[list[EtcdLeaderLock]]:
    """Locks a test makes; released after it, so the next test finds the key free."""
    made: list[EtcdLeaderLock] = []
    yield made
    for each in made:
        each.release()


def until(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` holds, polled every 0.2 s; fails after `timeout`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.2)
    return time.monotonic() - start


def test_one_acquires_the_other_sees_who_and_takes_it_once_released(etcd: EtcdServer,
                                                                    locks: list[EtcdLeaderLock]) -> None:
    a, b = lock(etcd, "a:1"), lock(etcd, "b:2")
    locks += [a, b]
    assert a.acquire() and a.held and a.holder == "this process" and a.fault == ""
    assert a.acquire() and a.confirm()  # renewed, still ours
    assert not b.acquire() and not b.held and b.fault == ""
    assert b.holder.startswith("dbfleet-operator-leader a:1 (etcd lease ")
    assert b.current_holder() == b.holder and a.current_holder() == "this process"
    a.release()
    assert not a.held and b.current_holder() == "nobody"  # revoking the lease deleted the key at once
    assert b.acquire() and b.holder == "this process"


def race(racers: list[EtcdLeaderLock]) -> list[bool]:
    """Each racer's acquire, all released at once from a barrier, in threads."""
    start = threading.Barrier(len(racers))
    won = [False] * len(racers)

    def run(i: int) -> None:
        start.wait(10)
        won[i] = racers[i].acquire()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(racers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return won


def test_operators_racing_for_the_lock_exactly_one_wins(etcd: EtcdServer, locks: list[EtcdLeaderLock]) -> None:
    for round_ in range(5):
        racers = [lock(etcd, f"racer-{round_}-{i}") for i in range(4)]
        locks.extend(racers)
        won = race(racers)
        assert sum(won) == 1, f"round {round_}: {won}"
        winner = racers[won.index(True)]
        assert all(r.holder.startswith(f"{winner.identity} (etcd lease ") for r in racers if r is not winner)
        winner.release()


def test_a_lease_not_kept_alive_expires_and_the_other_takes_over(etcd: EtcdServer,
                                                                 locks: list[EtcdLeaderLock]) -> None:
    """The holder stops renewing (a paused or cut-off process); after the TTL another operator leads, and the
    old holder knows it has lost, without asking etcd (`held`) and when it asks (`confirm`, `acquire`)."""
    a, b = lock(etcd, "paused:1", ttl=SHORT_TTL), lock(etcd, "standby:2", ttl=SHORT_TTL)
    locks += [a, b]
    assert a.acquire()
    assert not b.acquire()
    waited = until("the standby takes the lock after the lease expires", b.acquire, timeout=SHORT_TTL + 10)
    assert waited >= 1.0, "the standby took the lock before the holder's lease could have expired"
    assert not a.held  # its own clock says the lease ran out
    assert not a.confirm() and a.holder.startswith("dbfleet-operator-leader standby:2 (etcd lease ")
    assert not a.acquire() and a.holder.startswith("dbfleet-operator-leader standby:2 (etcd lease ")
    assert b.confirm()


class _Session(EngineSession[Any]):
    engine = "test"

    def read_topology(self) -> Topology:
        return Topology(self.cluster.name, self.cluster.engine, "h1", (Member("h1", "primary", True),))

    def close(self) -> None:
        pass


class _OneChange:
    """A reconciler with one change per cluster, recording what it applied."""

    name = "test"

    def __init__(self) -> None:
        self.applied: list[str] = []

    def applies_to(self, cluster: Any) -> bool:
        return True

    def observe(self, cluster: Any, session: Any) -> None:
        return None

    def diff(self, cluster: Any, observed: Any) -> list[Action]:
        return [Action(cluster.name, self.name, "make", f"{cluster.name}/thing", "wanted")]

    def act(self, action: Action, session: Any) -> str:
        self.applied.append(action.target)
        return "made"

    def notes(self, observed: Any) -> list[str]:
        return []

    def status(self, cluster: Any, observed: Any, actions: list[Action]) -> dict[str, Any]:
        return {}


def test_a_holder_whose_lease_expired_is_fenced_off_every_act(etcd: EtcdServer, locks: list[EtcdLeaderLock]) -> None:
    holder, other = lock(etcd, "slow:1", ttl=SHORT_TTL), lock(etcd, "fast:2", ttl=SHORT_TTL)
    locks += [holder, other]
    assert holder.acquire()
    until("the lease expires and another operator leads", other.acquire, timeout=SHORT_TTL + 10)
    access = FleetAccess({h.name: "127.0.0.1" for c in FLEET.clusters for h in c.all_hosts()}, {})
    reconciler = _OneChange()
    operator = Operator(FLEET, access, reconcilers=[reconciler], session_factory=_Session, sleep=lambda s: None,
                        retry=RetryPolicy(attempts=1))
    # The cycle began as leader (say the acquire came just before a long pause): each act asks etcd first.
    report = operator.run_cycle(apply=True, leader=holder)
    assert reconciler.applied == []
    outcomes = [o for c in report.clusters for o in c.outcomes]
    assert outcomes and all(o.status == "skipped" for o in outcomes)
    assert all(o.message.startswith("not started: leadership not confirmed (this process no longer holds the lock; "
                                    "holder: dbfleet-operator-leader fast:2 (etcd lease ") for o in outcomes), \
        outcomes[0].message
    report = operator.run_cycle(apply=True, leader=other)  # the new leader's acts are confirmed and run
    assert len(reconciler.applied) == len(FLEET.clusters)


def test_an_expired_token_is_renewed_without_losing_the_lease(etcd: EtcdServer, locks: list[EtcdLeaderLock]) -> None:
    a = lock(etcd, "patient:1", ttl=30)
    locks.append(a)
    assert a.acquire()
    time.sleep(TOKEN_TTL + 2)  # etcd forgets the token; the next call authenticates again
    assert a.confirm() and a.acquire()


def test_a_wrong_password_is_refused_with_a_clear_reason(etcd: EtcdServer, locks: list[EtcdLeaderLock]) -> None:
    a = lock(etcd, "intruder:1", password="not-the-password")
    locks.append(a)
    assert not a.acquire() and not a.held
    assert "etcd (the test etcd) refused user dbfleet_operator: etcdserver: authentication failed" in a.fault
    assert a.holder.startswith("nobody known (")


def test_a_server_the_fleet_ca_did_not_sign_is_refused(etcd: EtcdServer, locks: list[EtcdLeaderLock]) -> None:
    a = lock(etcd, "misled:1", ca=etcd.other_ca_file)
    locks.append(a)
    assert not a.acquire()
    assert a.fault.startswith(f"no etcd member answers lease/grant ({etcd.endpoint}: ")
    assert "certificate verify failed" in a.fault  # and the password was never sent


def test_keys_outside_the_operator_s_prefix_are_refused(etcd: EtcdServer, locks: list[EtcdLeaderLock]) -> None:
    a = lock(etcd, "astray:1", key="/dbfleet/leader")  # Patroni's namespace
    locks.append(a)
    assert not a.acquire()
    assert "etcd (the test etcd) denies user dbfleet_operator kv/txn /dbfleet/leader: etcdserver: permission " \
           "denied" in a.fault
    with pytest.raises(PermanentError, match="permission denied"):
        gateway(etcd).get("/dbfleet/leader")
    with pytest.raises(PermanentError, match="permission denied"):
        gateway(etcd).get("/dbfleet-operator")  # the prefix without its slash is outside it too
    assert gateway(etcd).get(OPERATOR_PREFIX + "anything") is None  # inside: allowed, and absent


def test_a_member_that_does_not_answer_is_skipped(etcd: EtcdServer, locks: list[EtcdLeaderLock]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"https://127.0.0.1:{s.getsockname()[1]}"
    a = lock(etcd, "patient:2", endpoints=[dead, etcd.endpoint])
    locks.append(a)
    assert a.acquire(), a.fault
    assert a.confirm()


def _etcd_auth_module() -> Any:
    """The etcd role's own module (playbooks/roles/etcd/library/etcd_auth.py), loaded as the unit tests do."""
    spec = importlib.util.spec_from_file_location("etcd_auth", REPO / "playbooks/roles/etcd/library/etcd_auth.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_etcd_role_s_module_makes_a_user_confined_to_its_prefix(etcd: EtcdServer) -> None:
    """What the role runs for the operator's user, against a real etcd: it finds the user the fixture made as it
    would have made it (nothing to do), makes another the same way, and a second run changes nothing."""
    module = _etcd_auth_module()
    context = ssl.create_default_context(cafile=str(etcd.ca_file))
    admin = module.Gateway(etcd.endpoint, context)
    admin.token = module.authenticate(admin, "root", etcd.root_password)
    assert module.plan(admin, True, ETCD_OPERATOR.user, etcd.operator_password, OPERATOR_PREFIX) == []
    secrets = {"<root>": etcd.root_password, "<password>": "probe-password"}
    calls = module.plan(admin, True, "probe", "probe-password", "/probe/")
    assert [path for path, _ in calls] == ["auth/role/add", "auth/role/grant", "auth/user/add", "auth/user/grant"]
    for path, body in calls:
        admin.call(path, {k: secrets.get(v, v) if isinstance(v, str) else v for k, v in body.items()})
    assert module.plan(admin, True, "probe", "probe-password", "/probe/") == []
    probe = EtcdGateway([etcd.endpoint], context, Login("probe", "-"), "probe-password",
                        where="the test etcd")
    assert probe.get("/probe/x") is None
    with pytest.raises(PermanentError, match="denies user probe kv/range /dbfleet-operator/leader"):
        probe.get(LEADER_KEY)
