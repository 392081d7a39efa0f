"""Which leader lock the operator takes (operator.leader), and how each says it cannot lead, without servers.

The etcd lock against a real etcd is tests/integration/test_etcd_leader.py.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.request
from pathlib import Path

import pytest
from cli_support import empty_fleet_files

from dbfleet import wiring
from dbfleet.cli import main
from dbfleet.commands.status import leader_line
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.credentials import ETCD_OPERATOR
from dbfleet.engines.etcd import EtcdGateway
from dbfleet.errors import TemporaryError
from dbfleet.reconcile.etcd_leader import EtcdLeaderLock
from dbfleet.reconcile.leader import AdvisoryLeaderLock, FileLeaderLock
from dbfleet.spec import parse_fleet

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "fleet.example.yaml"
EXAMPLE = SPEC.read_text()
OPERATOR_AT = "monitoring:\n  operator_metrics:"


def fleet_with(settings: str) -> str:
    return EXAMPLE.replace(OPERATOR_AT, f"operator: {settings}\n{OPERATOR_AT}", 1)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def access(tmp_path: Path, hosts: tuple[str, ...] = ("pg-1", "pg-2", "pg-3")) -> FleetAccess:
    """Addresses for `hosts`, no secrets, and no fleet CA beside the inventory."""
    return FleetAccess(dict.fromkeys(hosts, "127.0.0.1"), {}, tmp_path / "hosts.yml")


def test_the_spec_picks_the_lock(tmp_path: Path) -> None:
    fleet = parse_fleet(EXAMPLE)
    lock = wiring.leader_lock(fleet, access(tmp_path), tmp_path)
    assert isinstance(lock, EtcdLeaderLock) and lock.backend == "etcd" and lock.ttl == 60
    assert lock.where == "the etcd of pg-main"
    chosen = parse_fleet(fleet_with("{leader: postgres}"))
    lock = wiring.leader_lock(chosen, access(tmp_path), tmp_path)
    assert isinstance(lock, AdvisoryLeaderLock) and lock.where == "the primary of pg-main"
    lock = wiring.leader_lock(parse_fleet(fleet_with("{leader: file}")), access(tmp_path), tmp_path)
    assert isinstance(lock, FileLeaderLock) and lock.path == tmp_path / "operator-leader.lock"
    assert [c.name for c in wiring.leader_candidates(fleet)] == ["pg-main"]
    with pytest.raises(KeyError):
        wiring.leader_lock(fleet, access(tmp_path), tmp_path, "cache")


def test_an_etcd_lock_without_a_ca_does_not_lead_and_says_why(tmp_path: Path) -> None:
    lock = wiring.leader_lock(parse_fleet(EXAMPLE), access(tmp_path), tmp_path)
    assert not lock.acquire() and not lock.held
    assert f"the CA {tmp_path / 'pki' / 'ca.crt'} is not there" in lock.fault
    assert lock.holder.startswith("nobody known (") and not lock.confirm()
    assert lock.current_holder().startswith("nobody known (")
    lock.release()  # nothing held: nothing to do, and no error


def test_an_etcd_lock_with_no_member_in_the_inventory_says_so(tmp_path: Path) -> None:
    lock = wiring.leader_lock(parse_fleet(EXAMPLE), access(tmp_path, hosts=("redis-1",)), tmp_path)
    assert not lock.acquire()
    assert "none of the etcd members of pg-main (pg-1, pg-2, pg-3) is in the inventory" in lock.fault


def test_an_etcd_lock_whose_members_do_not_answer_names_each_and_never_raises(tmp_path: Path) -> None:
    ports = [closed_port(), closed_port()]
    gateway = EtcdGateway([f"https://127.0.0.1:{p}" for p in ports], ssl.create_default_context(), ETCD_OPERATOR,
                          "pw", timeout=2, where="the etcd of pg-main")
    lock = EtcdLeaderLock(lambda: gateway, 10, where="the etcd of pg-main")
    assert not lock.acquire()
    assert lock.fault.startswith("no etcd member answers auth/authenticate") or \
        lock.fault.startswith("no etcd member answers lease/grant"), lock.fault
    assert all(f"https://127.0.0.1:{p}: " in lock.fault for p in ports)


def test_watch_refuses_an_interval_the_lease_would_not_outlive(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
    inventory = empty_fleet_files(tmp_path)
    argv = ["--spec", str(SPEC), "reconcile", "--watch", "--interval", "60", "--inventory", str(inventory),
            "--no-metrics"]
    assert main(argv) == 2
    assert "--interval 60: the leader's etcd lease (operator.lease_ttl 60s) would expire between two cycles" in \
        capsys.readouterr().err


def test_a_leader_cluster_that_cannot_hold_the_lock_is_a_usage_error(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    inventory = empty_fleet_files(tmp_path)
    assert main(["--spec", str(SPEC), "reconcile", "--once", "--leader-cluster", "cache",
                 "--inventory", str(inventory)]) == 2
    assert ("--leader-cluster: cache cannot hold the leader lock, which is on etcd (operator.leader); the clusters "
            "that can: pg-main") in capsys.readouterr().err


def test_once_and_status_say_which_lock_and_why_nobody_leads(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """No fleet CA beside the inventory: the etcd lock cannot be checked, so nobody is known to lead; the
    cluster is not observed either (exit 1), and both commands say so."""
    inventory = empty_fleet_files(tmp_path)
    assert main(["--spec", str(SPEC), "reconcile", "--once", "--json", "--inventory", str(inventory)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["leader_backend"] == "etcd" and not report["applied"]
    assert report["leader"].startswith("no leader known, observed only, nothing acted on: the leader lock (etcd, "
                                       "the etcd of pg-main) did not answer: ")
    assert main(["--spec", str(SPEC), "status", "--json", "--inventory", str(inventory)]) == 1
    leader = json.loads(capsys.readouterr().out)["leader"]
    assert (leader["backend"], leader["where"]) == ("etcd", "the etcd of pg-main")
    assert leader["holder"].startswith("nobody known (")
    assert leader_line(leader).startswith("leader lock: etcd (the etcd of pg-main), held by nobody known (")


class _Answer:
    """What urlopen returns, for a canned JSON body."""

    def __init__(self, body: dict[str, object], status: int = 200):
        self.status = status
        self.body = json.dumps(body).encode()

    def read(self) -> bytes:
        return self.body

    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _scripted(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[dict[str, object]]]) -> list[str]:
    """urlopen answering each path from its list in turn; returns the URLs asked, in order."""
    asked: list[str] = []

    def urlopen(request: urllib.request.Request, timeout: float, context: ssl.SSLContext) -> _Answer:
        asked.append(request.full_url)
        return _Answer(answers[request.full_url.split("/v3/", 1)[1]].pop(0))

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


def _gateway(*endpoints: str) -> EtcdGateway:
    return EtcdGateway(list(endpoints), ssl.create_default_context(), ETCD_OPERATOR, "pw")


def test_an_error_inside_a_streamed_answer_is_an_error_not_an_expired_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """lease/keepalive is a stream: etcd's gateway answers 200 and puts the error in the body. A member without a
    raft leader (Unavailable) sends the call to the next member; an expired token is fetched again once."""
    asked = _scripted(monkeypatch, {
        "auth/authenticate": [{"token": "t1"}, {"token": "t2"}],
        "lease/keepalive": [{"error": {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader"}},
                            {"error": {"grpc_code": 16, "http_code": 401, "message": "etcdserver: invalid auth token"}},
                            {"result": {"ID": "42", "TTL": "9"}}],
    })
    assert _gateway("https://a:1", "https://b:2").keep_alive(42) == 9
    assert asked == ["https://a:1/v3/auth/authenticate", "https://a:1/v3/lease/keepalive",
                     "https://b:2/v3/lease/keepalive", "https://b:2/v3/auth/authenticate",
                     "https://b:2/v3/lease/keepalive"]


def test_a_keep_alive_answer_without_a_result_is_not_taken_for_an_expired_lease(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _scripted(monkeypatch, {"auth/authenticate": [{"token": "t"}], "lease/keepalive": [{"header": {}}]})
    with pytest.raises(TemporaryError, match="gave no keep-alive answer for lease 2a"):
        _gateway("https://a:1").keep_alive(42)
    _scripted(monkeypatch, {"auth/authenticate": [{"token": "t"}], "lease/keepalive": [{"result": {"ID": "42"}}]})
    assert _gateway("https://a:1").keep_alive(42) == 0  # etcd leaves TTL out once the lease is gone
