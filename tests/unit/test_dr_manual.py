"""The standby site of an ha: manual cluster (dr.standby without Patroni): the inventory that builds it, the
playbook's decision (playbooks/filter_plugins/dbfleet_dr.py) checked against the operator's (dr_promote.decide),
the SQL observation's mapping to sites, and `dbfleet dr promote`'s plan, report and exit codes, without a server
(the sites' answers and the playbook's result are given in-process)."""

from __future__ import annotations

import importlib.util
import itertools
import json
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml

from dbfleet.addresses import check_address
from dbfleet.cli import main
from dbfleet.commands import dr as dr_command
from dbfleet.engines.access import FleetAccess
from dbfleet.errors import PermanentError
from dbfleet.inventory import HostAccess, build_inventory, standby_group
from dbfleet.inventory_format import inventory_yaml
from dbfleet.playbook import PlaybookResult, parse_recap
from dbfleet.reconcile import dr_manual
from dbfleet.reconcile.audit import AUDIT_FILE_NAME
from dbfleet.reconcile.dr_manual import Answer, ManualSites, site_from_answers
from dbfleet.reconcile.dr_promote import decide
from dbfleet.spec import PostgresCluster, parse_fleet

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = (REPO / "fleet.example.yaml").read_text()
PRIMARY = ["pg-1", "pg-2", "pg-3"]
STANDBY = ["pg-dr-1"]


def _load_filter() -> Any:
    path = REPO / "playbooks" / "filter_plugins" / "dbfleet_dr.py"
    spec = importlib.util.spec_from_file_location("dbfleet_dr_filter", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILTER = _load_filter()


def manual_spec_text(old_site: str = "report") -> str:
    """fleet.example.yaml with pg-main on ha: manual and its standby site kept."""
    data = yaml.safe_load(EXAMPLE)
    pg = next(c for c in data["clusters"] if c["name"] == "pg-main")
    pg["ha"] = "manual"
    pg.pop("patroni", None)
    pg.pop("endpoints", None)
    pg["dr"]["standby"]["old_site"] = old_site
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture(scope="module")
def manual() -> PostgresCluster:
    cluster = parse_fleet(manual_spec_text(), "fleet.yaml").cluster("pg-main")
    assert isinstance(cluster, PostgresCluster) and cluster.ha == "manual"
    return cluster


# --------------------------------------------------------------------------- inventory


def test_the_standby_hosts_are_hot_standbys_of_their_own_site_in_the_inventory() -> None:
    fleet = parse_fleet(manual_spec_text(), "fleet.yaml")
    hosts = PRIMARY + STANDBY
    access = {h: HostAccess(f"10.0.0.{i + 10}", {"ansible_connection": "docker"}) for i, h in enumerate(hosts)}
    children = build_inventory(fleet, access)["all"]["children"]
    assert set(children["postgres_standby"]["hosts"]) == {"pg-dr-1"}
    for group in ("postgres_primary", "postgres_replica", "patroni", "patroni_standby", "etcd"):
        assert "pg-dr-1" not in children.get(group, {}).get("hosts", {}), group
    assert "pg-dr-1" in children["postgres"]["hosts"]
    site = children[standby_group("pg-main")]
    assert set(site["hosts"]) == {"pg-dr-1"}
    assert site["vars"]["postgres_server_follow"] == "10.0.0.10,10.0.0.11,10.0.0.12"
    assert site["vars"]["postgres_server_restore_command"] == 'pgbackrest --stanza=pg-main --repo=2 archive-get %f "%p"'
    assert site["vars"]["postgres_server_synchronous_replicas"] == 0 and site["vars"]["pgbackrest_standby_site"]
    assert not any(k.startswith("patroni_") for k in site["vars"])
    primary_site = children["cluster_pg_main"]["vars"]
    assert "postgres_server_follow" not in primary_site and primary_site["postgres_server_synchronous_replicas"] == 1


def test_the_standby_sites_inputs_reach_ansible_as_data() -> None:
    fleet = parse_fleet(manual_spec_text(), "fleet.yaml")
    access = {h: HostAccess(f"10.0.0.{i + 10}") for i, h in enumerate(PRIMARY + STANDBY)}
    text = inventory_yaml(build_inventory(fleet, access))
    line = next(ln for ln in text.splitlines() if "postgres_server_restore_command" in ln)
    assert "!unsafe" in line, line


# --------------------------------------------------------------------------- the playbook's decision


def seen(primary: tuple[str, ...], standby: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per host: 'w' accepts writes, 'r' in recovery, '-' does not answer (Ansible does not reach it either), 's'
    does not answer SQL though Ansible reaches it, 'f' fenced by dr promote (stopped: it answers nothing). A host in
    recovery has replayed further the later it comes."""
    out = {}
    for i, (host, state) in enumerate([*zip(PRIMARY, primary, strict=False),
                                       *zip(STANDBY + ["pg-dr-2"], standby, strict=False)]):
        out[host] = {"answered": state in "wr", "in_recovery": state == "r", "fenced": state == "f",
                     "reached": state != "-", "replay_lsn": f"0/{i + 1}000000" if state == "r" else "",
                     "stop_lsn": "0/9000000" if state == "f" else "", "stop_state": "shut down" if state == "f" else ""}
    return out


def answers(primary: tuple[str, ...], standby: tuple[str, ...]) -> dict[str, Answer]:
    return {h: Answer(s["in_recovery"] if s["answered"] else None, "" if s["answered"] else "timed out",
                      bool(s["fenced"]), s["replay_lsn"])
            for h, s in seen(primary, standby).items()}


STATES = list(itertools.product(itertools.product("wrsf-", repeat=3), itertools.product("wr-", repeat=2)))


@pytest.mark.parametrize("force,fence_tried", [(False, False), (True, False), (False, True), (True, True)])
def test_the_playbooks_filter_takes_the_operators_step_in_every_state(force: bool, fence_tried: bool) -> None:
    """Same step, same host promoted, and the filter fences exactly the primary-site hosts that are not fenced and
    that Ansible reaches, fenced ones and silent writers included."""
    standby_hosts = STANDBY + ["pg-dr-2"]
    for primary_state, standby_state in STATES:
        observed = answers(primary_state, standby_state)
        primary_site = site_from_answers(PRIMARY, observed, strict=True)
        standby_site = site_from_answers(standby_hosts, observed)
        expected = decide(primary_site, standby_site, force, fence_tried)
        plan = FILTER.dr_promote_plan(seen(primary_state, standby_state), PRIMARY, standby_hosts, force, fence_tried)
        where = (primary_state, standby_state, plan, expected)
        assert plan["step"] == expected.step, where
        if plan["step"] == "promote":
            assert plan["promote"] == standby_site.leader, where
        if plan["step"] in ("fence", "promote", "done"):
            assert plan["fence"] == [h for h, st in zip(PRIMARY, primary_state, strict=True) if st in "wrs"], where
        assert set(plan["catch_up"]) == {h for h, st in zip(PRIMARY, primary_state, strict=True) if st == "f"}


def test_a_primary_site_host_that_does_not_answer_makes_the_site_unknown() -> None:
    """Regression: a replica answering in recovery beside a silent primary (max_connections, a pg_hba or TLS fault for
    the operator only) made the site look fenced, and the standby was promoted without fence or force."""
    observed = seen(("s", "r", "r"), ("r",))
    plan = FILTER.dr_promote_plan(observed, PRIMARY, STANDBY, False, False)
    assert plan["step"] == "refuse" and "pg-1 does not answer" in plan["reason"], plan
    site = site_from_answers(PRIMARY, answers(("-", "r", "r"), ("r",)), strict=True)
    assert not site.reachable and decide(site, site_from_answers(STANDBY, answers(("-",), ("r",))), False).step \
        == "refuse"
    forced = FILTER.dr_promote_plan(observed, PRIMARY, STANDBY, True, False)
    assert forced["step"] == "promote" and forced["fence"] == PRIMARY, forced


def test_the_fence_takes_every_unfenced_host_of_the_primary_site() -> None:
    plan = FILTER.dr_promote_plan(seen(("r", "w", "f"), ("r",)), PRIMARY, STANDBY, False, False)
    assert plan["step"] == "fence" and plan["fence"] == ["pg-1", "pg-2"], plan
    plan = FILTER.dr_promote_plan(seen(("r", "r", "r"), ("r",)), PRIMARY, STANDBY, False, False)
    assert plan["step"] == "fence" and plan["fence"] == PRIMARY, plan


def test_the_standby_host_that_replayed_furthest_is_promoted_and_the_others_repointed() -> None:
    hosts = ["pg-dr-1", "pg-dr-2"]
    observed = seen(("f", "f", "f"), ("r", "r"))
    observed["pg-dr-1"]["replay_lsn"] = "1/0"
    plan = FILTER.dr_promote_plan(observed, PRIMARY, hosts, False, False)
    assert plan["step"] == "promote" and plan["promote"] == "pg-dr-1" and plan["repoint"] == ["pg-dr-2"], plan
    observed["pg-dr-1"]["replay_lsn"] = "0/1"
    plan = FILTER.dr_promote_plan(observed, PRIMARY, hosts, False, False)
    assert plan["promote"] == "pg-dr-2" and plan["repoint"] == ["pg-dr-1"], plan
    assert FILTER.dr_promote_plan(seen(("-", "-", "-"), ("r",)), PRIMARY, STANDBY, "false")["step"] == "refuse"


def test_a_fenced_server_that_answers_nothing_is_known_fenced_and_caught_up_with() -> None:
    """Regression: a second run (the fence done by the first) skipped the catch-up; the stop LSN is read each run."""
    observed = seen(("f", "f", "f"), ("r",))
    plan = FILTER.dr_promote_plan(observed, PRIMARY, STANDBY, False, False)
    assert plan["step"] == "promote" and "pg-1, pg-2, pg-3 fenced" in plan["primary_site"], plan
    assert plan["catch_up"] == dict.fromkeys(PRIMARY, "0/9000000") and plan["unclean"] == []
    observed["pg-dr-1"] = {"answered": True, "in_recovery": False, "fenced": False}
    assert FILTER.dr_promote_plan(observed, PRIMARY, STANDBY)["step"] == "done"


def test_a_fenced_server_that_did_not_shut_down_cleanly_is_unclean() -> None:
    """Regression: after a crash or a stop cut short "Latest checkpoint location" is not the last record."""
    observed = seen(("f", "f", "f"), ("r",))
    observed["pg-1"]["stop_state"] = "in production"
    observed["pg-2"]["stop_state"] = "shut down in recovery"
    assert FILTER.dr_promote_plan(observed, PRIMARY, STANDBY)["unclean"] == ["pg-1"]


def test_the_playbook_waits_for_every_fenced_server_and_refuses_an_unclean_one() -> None:
    playbook = yaml.safe_load((REPO / "playbooks" / "pg_dr_promote.yml").read_text())
    tasks = {t["name"]: t for t in playbook[0]["tasks"]}
    wait = tasks["Wait until the host to promote has every record the fenced servers wrote (force does not wait)"]
    assert wait["loop"] == "{{ dr_plan.catch_up | dict2items }}" and "dr_fenced" not in str(wait["when"])
    unclean = tasks["Refuse to promote over a fenced server that did not stop cleanly"]
    assert "dr_plan.unclean" in unclean["ansible.builtin.assert"]["that"]
    observe = (REPO / "playbooks" / "tasks" / "dr_observe.yml").read_text()
    control = next(t for t in yaml.safe_load(observe) if "pg_controldata" in str(t))
    assert control["environment"] == {"LC_ALL": "C"} and control["ansible.builtin.command"]["argv"][0].endswith(
        "/pg_controldata")
    fence = yaml.safe_load((REPO / "playbooks" / "tasks" / "dr_fence.yml").read_text())
    stop = next(t for t in fence if t["name"].startswith("Stop the server"))
    assert stop["ansible.builtin.command"]["argv"][:2] == ["timeout", "{{ dr_stop_seconds }}"]


def test_the_filter_is_what_the_playbook_calls() -> None:
    assert FILTER.FilterModule().filters() == {"dbfleet_dr_promote_plan": FILTER.dr_promote_plan}
    playbook = (REPO / "playbooks" / "pg_dr_promote.yml").read_text()
    assert playbook.count("dbfleet_dr_promote_plan(") == 2


# --------------------------------------------------------------------------- the SQL observation


def test_a_site_is_what_its_servers_answer() -> None:
    site = site_from_answers(PRIMARY, {"pg-1": Answer(None, "timed out"), "pg-2": Answer(True),
                                       "pg-3": Answer(False)})
    assert site.reachable and site.writable and site.leader == "pg-3" and not site.fenced
    strict = site_from_answers(PRIMARY, {"pg-1": Answer(None, "refused"), "pg-2": Answer(True), "pg-3": Answer(True)},
                               strict=True)
    assert not strict.reachable and "pg-1: refused" in strict.error
    fenced = site_from_answers(PRIMARY, {"pg-1": Answer(None, "refused", True), "pg-2": Answer(True, "", True),
                                         "pg-3": Answer(None, "refused", True)}, strict=True)
    assert fenced.reachable and fenced.fenced and not fenced.writable
    gone = site_from_answers(PRIMARY, {h: Answer(None, "timed out") for h in PRIMARY})
    assert not gone.reachable and "pg-1: timed out" in gone.error


# --------------------------------------------------------------------------- the command


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    spec = tmp_path / "fleet.yaml"
    spec.write_text(manual_spec_text())
    inventory = tmp_path / "hosts.yml"
    hosts = {h: {"dbfleet_address": f"127.0.0.{i + 10}"} for i, h in enumerate(PRIMARY + STANDBY)}
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    secrets = tmp_path / "group_vars" / "all" / "secrets.yml"
    secrets.parent.mkdir(parents=True)
    secrets.write_text("dbfleet_secrets: {postgres_superuser_password: x}\n")
    return {"spec": spec, "inventory": inventory, "secrets": secrets, "state": tmp_path / "state.json"}


def run(files: dict[str, Path], *flags: str) -> tuple[int, dict[str, Any]]:
    argv = ["--spec", str(files["spec"]), "dr", "promote", "--cluster", "pg-main", "--inventory",
            str(files["inventory"]), "--secrets", str(files["secrets"]), "--state", str(files["state"]), "--json",
            "--timeout", "3", *flags]
    with redirect_stdout(StringIO()) as out:
        code = main(argv)
    return code, json.loads(out.getvalue())


class Servers:
    """What each server answers, changed by the fake playbook as the real one would change it."""

    def __init__(self, primary: tuple[str, ...], standby: tuple[str, ...]):
        self.state = answers(primary, standby)
        self.played: list[list[str]] = []

    def answers(self, sites: ManualSites) -> dict[str, Answer]:
        return {h: self.state[h] for h in sites.primary_hosts + sites.standby_hosts}


def recap(failed: bool) -> str:
    return ("TASK [Refuse as decided] ***\nfatal: [pg-1]: FAILED! => {\"msg\": \"dr promote refused: why\"}\n"
            if failed else "") + \
        f"PLAY RECAP ***\npg-1 : ok=3 changed=0 unreachable=0 failed={int(failed)} skipped=0 rescued=0 ignored=0\n"


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Servers:
    found = Servers(("w", "r", "r"), ("r",))
    monkeypatch.setattr(ManualSites, "answers", lambda self: found.answers(self))
    return found


def fake_playbook(servers: Servers, monkeypatch: pytest.MonkeyPatch, fails: bool = False) -> None:
    def play(playbook: str, inventory: Path, extra: list[str], echo: bool = True) -> PlaybookResult:
        servers.played.append([playbook, *extra])
        if not fails:
            for host in PRIMARY:
                servers.state[host] = Answer(None, "connection refused", fenced=True)
            servers.state["pg-dr-1"] = Answer(False)
        output = recap(fails)
        return PlaybookResult(2 if fails else 0, parse_recap(output), output)

    monkeypatch.setattr(dr_command, "run_playbook", play)


def test_a_dry_run_plans_fence_then_promote_and_changes_nothing(files: dict[str, Path], servers: Servers,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake_playbook(servers, monkeypatch)
    code, out = run(files, "--dry-run")
    assert code == 0 and out["dry_run"] and out["ha"] == "manual", out
    assert [(s["kind"], s["destructive"]) for s in out["steps"]] == [("fence-site", True), ("promote-site", True)]
    assert servers.played == [] and not files["state"].with_name(AUDIT_FILE_NAME).exists()


def test_promote_runs_the_playbook_then_observes_until_the_promotion_shows(
        files: dict[str, Path], servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_playbook(servers, monkeypatch)
    code, out = run(files)
    assert code == 0 and out["ok"] and out["end"] == "done", out
    playbook, flag, extra = servers.played[0]
    assert playbook == "pg_dr_promote.yml" and flag == "-e"
    assert json.loads(extra) == {"dr_cluster": "pg-main", "dr_force": False, "dr_unreachable": []}
    assert [s["status"] for s in out["steps"]] == ["done", "done"]


def test_a_cut_off_primary_site_refuses_without_force_and_is_left_alone_with_it(
        files: dict[str, Path], servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_playbook(servers, monkeypatch)
    for host in PRIMARY:
        servers.state[host] = Answer(None, "timed out")
    code, out = run(files)
    assert code == 1 and out["end"] == "refuse" and "does not answer" in out["reason"] and servers.played == []
    code, out = run(files, "--force")
    assert code == 0 and [s["kind"] for s in out["steps"]] == ["promote-site"], out
    assert "does not wait for the fenced servers' last records" in out["force"], out
    assert json.loads(servers.played[0][2])["dr_unreachable"] == PRIMARY


def test_a_failed_playbook_reaches_the_report_and_json(files: dict[str, Path], servers: Servers,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake_playbook(servers, monkeypatch, fails=True)
    code, out = run(files)
    assert code == 1 and not out["ok"] and out["playbook"]["returncode"] == 2, out
    assert "dr promote refused: why" in out["playbook_output"] and "TASK [Refuse as decided]" in out["playbook_output"]
    assert [s["status"] for s in out["steps"]] == ["failed", "failed"]
    trail = files["state"].with_name(AUDIT_FILE_NAME).read_text()
    assert trail.count('"failed"') == 2 and "fence-site" in trail and "promote-site" in trail, trail


def test_failback_is_refused_for_ha_manual_with_a_usage_error(files: dict[str, Path], servers: Servers) -> None:
    argv = ["--spec", str(files["spec"]), "dr", "promote", "--cluster", "pg-main", "--failback",
            "--inventory", str(files["inventory"]), "--secrets", str(files["secrets"])]
    with redirect_stdout(StringIO()):
        assert main(argv) == 2


def test_playbook_vars_are_json_data(manual: PostgresCluster) -> None:
    flag, extra = dr_manual.playbook_vars(manual, True, ["pg-1"])
    assert flag == "-e" and json.loads(extra) == {"dr_cluster": "pg-main", "dr_force": True,
                                                   "dr_unreachable": ["pg-1"]}


# --------------------------------------------------------------------------- addresses are data


@pytest.mark.parametrize("address", ["10.0.0.1' sslmode=disable host='evil", "10.0.0.1 host=evil", "a,b", "",
                                     "10.0.0.1;id", "-host"])
def test_an_address_that_is_not_an_ip_or_host_name_is_refused_where_the_inventory_is_built(address: str) -> None:
    """Regression: postgres_server_follow and the primary's address reached a shell command and libpq conninfo."""
    fleet = parse_fleet(manual_spec_text(), "fleet.yaml")
    access = {h: HostAccess(f"10.0.0.{i + 10}") for i, h in enumerate(PRIMARY + STANDBY)}
    access["pg-2"] = HostAccess(address)
    with pytest.raises(PermanentError, match="host pg-2: its address: .* is not an IP address or a DNS host name"):
        build_inventory(fleet, access)


@pytest.mark.parametrize("address", ["10.0.0.1' host=evil", "a b"])
def test_an_address_that_is_not_an_ip_or_host_name_is_refused_where_the_inventory_is_read(
        tmp_path: Path, address: str) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"pg-1": {"dbfleet_address": address}}}}))
    with pytest.raises(PermanentError, match=r"hosts.yml: host pg-1: dbfleet_address: .* is not an IP address"):
        FleetAccess.load(inventory, tmp_path / "none.yml")


@pytest.mark.parametrize("address", ["10.0.0.1", "fd00::1", "db-1.example.internal", "pg-1", "db.example.com."])
def test_ip_addresses_and_host_names_pass(address: str) -> None:
    assert check_address(address, "here") == address


# --------------------------------------------------------------------------- what is missing is a usage error


def test_a_missing_superuser_secret_is_a_usage_error_not_a_silent_site(files: dict[str, Path]) -> None:
    """Regression: a missing secret made every server 'not answer' (a cut-off primary site, promotable with
    --force) instead of naming what is missing."""
    files["secrets"].write_text("dbfleet_secrets: {postgres_replication_password: x}\n")
    argv = ["--spec", str(files["spec"]), "dr", "promote", "--cluster", "pg-main", "--force",
            "--inventory", str(files["inventory"]), "--secrets", str(files["secrets"])]
    with redirect_stdout(StringIO()), redirect_stderr(StringIO()) as err:
        assert main(argv) == 2
    assert "postgres_superuser_password" in err.getvalue(), err.getvalue()


def test_a_host_missing_from_the_inventory_is_a_usage_error(files: dict[str, Path]) -> None:
    files["inventory"].write_text(yaml.safe_dump({"all": {"hosts": {h: {"dbfleet_address": f"127.0.0.{i + 10}"}
                                                                    for i, h in enumerate(PRIMARY)}}}))
    argv = ["--spec", str(files["spec"]), "dr", "promote", "--cluster", "pg-main", "--force",
            "--inventory", str(files["inventory"]), "--secrets", str(files["secrets"])]
    with redirect_stdout(StringIO()), redirect_stderr(StringIO()) as err:
        assert main(argv) == 2
    assert "host pg-dr-1 is not in the inventory" in err.getvalue(), err.getvalue()


def test_each_step_is_reported_from_what_was_observed_after_the_playbook(
        files: dict[str, Path], servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: every planned step was reported done or failed with the playbook's exit, whatever it did: a
    playbook that fenced the primary site then refused to promote reported the fence failed too."""
    def play(playbook: str, inventory: Path, extra: list[str], echo: bool = True) -> PlaybookResult:
        for host in PRIMARY:
            servers.state[host] = Answer(None, "connection refused", fenced=True)
        output = recap(True)
        return PlaybookResult(2, parse_recap(output), output)

    monkeypatch.setattr(dr_command, "run_playbook", play)
    code, out = run(files)
    assert code == 1 and not out["ok"], out
    assert [(s["kind"], s["status"]) for s in out["steps"]] == [("fence-site", "done"), ("promote-site", "failed")]
    assert out["after"] == {"fenced": PRIMARY, "leader": None}, out
    trail = files["state"].with_name(AUDIT_FILE_NAME).read_text()
    assert trail.count('"failed"') == 1 and trail.count('"done"') == 1, trail
