"""The operator's Patroni side without a server: GET /cluster as a topology, the switchover plan, the DSNs."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from dbfleet.engines.access import FleetAccess
from dbfleet.engines.endpoints import endpoint_dsn
from dbfleet.engines.patroni import dynamic_config, parse_cluster
from dbfleet.engines.postgres import patroni_members
from dbfleet.errors import PermanentError
from dbfleet.reconcile.switchover import plan_switchover
from dbfleet.spec import PostgresCluster, load_fleet

REPO = Path(__file__).resolve().parents[2]
PG = load_fleet(REPO / "fleet.example.yaml").cluster("pg-main")
assert isinstance(PG, PostgresCluster)
ADDRESSES = {"pg-1": "10.0.0.1", "pg-2": "10.0.0.2", "pg-3": "10.0.0.3"}
ACCESS = FleetAccess(ADDRESSES, {}, Path("/fleet/inventories/local/lab/hosts.yml"))

CLUSTER_JSON: dict[str, Any] = {"members": [
    {"name": "pg-1", "role": "leader", "state": "running", "api_url": "https://10.0.0.1:8008/patroni",
     "host": "10.0.0.1", "port": 5432, "timeline": 4},
    {"name": "pg-2", "role": "sync_standby", "state": "streaming", "host": "10.0.0.2", "port": 5432,
     "timeline": 4, "lag": 0},
    {"name": "pg-3", "role": "replica", "state": "streaming", "host": "10.0.0.3", "port": 5432, "timeline": 4,
     "lag": 4096},
]}


def test_get_cluster_becomes_members_with_the_leader_as_primary() -> None:
    state = parse_cluster(CLUSTER_JSON, "pg-2")
    assert state.leader is not None and state.leader.name == "pg-1" and state.timeline == 4
    members = patroni_members(PG.host_names(), state)
    assert [(m.host, m.role, m.up) for m in members] == [("pg-1", "primary", True), ("pg-2", "replica", True),
                                                          ("pg-3", "replica", True)]
    assert "4096 bytes behind" in members[2].detail
    assert state.summary() == "patroni: leader pg-1 (running), timeline 4"


def test_a_host_patroni_does_not_list_is_down_and_a_stopped_member_too() -> None:
    data = {"members": [dict(CLUSTER_JSON["members"][0]), {**CLUSTER_JSON["members"][1], "state": "stopped"}]}
    members = patroni_members(PG.host_names(), parse_cluster(data, "pg-1"))
    assert [(m.host, m.up) for m in members] == [("pg-1", True), ("pg-2", False), ("pg-3", False)]
    assert "not in Patroni's member list" in members[2].detail


def test_switchover_goes_to_the_sync_standby_and_is_destructive() -> None:
    action = plan_switchover(PG, parse_cluster(CLUSTER_JSON, "pg-1"), "pg-2")
    assert (action.kind, action.target, action.destructive) == ("switchover", "pg-2", True)
    assert action.detail == {"leader": "pg-1", "candidate": "pg-2", "timeline": 4}
    assert action.render().startswith("! pg-main patroni switchover pg-2: leader pg-1 -> pg-2")


@pytest.mark.parametrize("to, words", [
    ("pg-1", "already leads"),
    ("pg-3", "not a synchronous standby"),
    ("pg-9", "not one of the cluster's hosts"),
])
def test_switchover_refusals_say_why(to: str, words: str) -> None:
    with pytest.raises(PermanentError, match=words):
        plan_switchover(PG, parse_cluster(CLUSTER_JSON, "pg-1"), to)


def test_switchover_needs_a_leader_and_a_running_candidate() -> None:
    no_leader = {"members": [{**m, "role": "replica"} for m in CLUSTER_JSON["members"]]}
    with pytest.raises(PermanentError, match="no member leads"):
        plan_switchover(PG, parse_cluster(no_leader, "pg-2"), "pg-2")
    stopped = {"members": [CLUSTER_JSON["members"][0], {**CLUSTER_JSON["members"][1], "state": "stopped"}]}
    with pytest.raises(PermanentError, match="not a running member"):
        plan_switchover(PG, parse_cluster(stopped, "pg-1"), "pg-2")


def test_dynamic_config_follows_the_spec() -> None:
    dcs = dynamic_config(PG)
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (PG.patroni.ttl, 1, 2)
    assert dcs["synchronous_mode"] is True and dcs["synchronous_node_count"] == 1
    assert dcs["postgresql"] == {"use_pg_rewind": True, "use_slots": True}
    strict = PG.model_copy(update={"synchronous": PG.synchronous.model_copy(update={"strict": True})})
    assert dynamic_config(strict)["synchronous_mode_strict"] is True


def test_endpoint_dsns_list_every_haproxy_host_and_no_password(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_text("a CA\n")
    access = FleetAccess(ADDRESSES, {}, tmp_path / "hosts.yml")
    rw = endpoint_dsn(PG, access)
    ro = endpoint_dsn(PG, access, read_only=True)
    assert rw.startswith("postgresql://app@10.0.0.1:5000,10.0.0.2:5000,10.0.0.3:5000/app?")
    assert ro.startswith("postgresql://app@10.0.0.1:5001,10.0.0.2:5001,10.0.0.3:5001/app?")
    assert f"sslmode=verify-full&sslrootcert={quote(str(tmp_path / 'pki' / 'ca.crt'), safe='')}" in rw
    assert "password" not in rw and "target_session_attrs" not in rw
    manual = PG.model_copy(update={"ha": "manual"})
    direct = endpoint_dsn(manual, access, read_only=True)
    assert ":5432," in direct and "target_session_attrs=standby" in direct


def test_connect_prints_a_dsn_verified_against_the_inventorys_ca_from_any_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from dbfleet.cli import main
    from dbfleet.inventory import HostAccess, build_inventory, host_roles, write_inventory

    fleet = load_fleet(REPO / "fleet.example.yaml")
    access = {h: HostAccess(f"10.0.0.{i}") for i, h in enumerate(host_roles(fleet), 1)}
    write_inventory(build_inventory(fleet, access), tmp_path / "lab")
    (tmp_path / "lab" / "pki").mkdir()
    (tmp_path / "lab" / "pki" / "ca.crt").write_text("a CA\n")
    monkeypatch.chdir(tmp_path)
    assert main(["--spec", str(REPO / "fleet.example.yaml"), "connect", "--cluster", "pg-main",
                 "--inventory", "lab/hosts.yml"]) == 0
    dsn = capsys.readouterr().out.strip()
    assert dsn.startswith("postgresql://app@10.0.0.")
    ca = quote(str(tmp_path / "lab" / "pki" / "ca.crt"), safe="")
    assert f"sslmode=verify-full&sslrootcert={ca}&require_auth=scram-sha-256" in dsn and "password" not in dsn


class _LostStatementConnection:
    """A kept connection whose server no longer knows a statement psycopg prepared on it."""

    closed = broken = False

    def cursor(self, **kw: Any) -> Any:
        import psycopg

        conn = self

        class Cursor:
            def __enter__(self) -> Cursor:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def execute(self, query: Any, params: Any = None, prepare: bool | None = None) -> None:
                assert prepare is True
                raise psycopg.errors.InvalidSqlStatementName('prepared statement "_pg3_0" does not exist')

        conn.kw = kw
        return Cursor()

    def close(self) -> None:
        self.closed = True


def test_a_prepared_statement_the_server_lost_drops_the_connection_and_is_retried() -> None:
    """Not a PermanentError that repeats every cycle on the kept connection: the connection is closed and
    forgotten, and the TemporaryError's retry reconnects and prepares again."""
    from dbfleet.engines.postgres import PostgresSession
    from dbfleet.errors import TemporaryError

    cluster = load_fleet(REPO / "fleet.example.yaml").cluster("pg-main")
    session = PostgresSession(cluster, FleetAccess({"pg-1": "10.0.0.1"}, {}))  # type: ignore[arg-type]
    lost = _LostStatementConnection()
    session._conns[("pg-1", "app", "")] = lost  # type: ignore[assignment]
    with pytest.raises(TemporaryError, match="does not exist; reconnecting"):
        session.run("pg-1", "app", "SELECT 1", prepare=True)
    assert lost.closed and ("pg-1", "app", "") not in session._conns
