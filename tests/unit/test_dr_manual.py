"""The standby site of an ha: manual cluster (dr.standby without Patroni): the inventory that builds it, the
playbook's decision (playbooks/filter_plugins/dbfleet_dr.py) checked against the operator's (dr_promote.decide),
the SQL observation's mapping to sites, and `dbfleet dr promote`'s plan, report and exit codes, without a server
(the sites' answers and the playbook's result are given in-process)."""

from __future__ import annotations

import importlib.util
import itertools
import json
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml

from dbfleet.cli import main
from dbfleet.commands import dr as dr_command
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
    """Per host: 'w' accepts writes, 'r' in recovery, '-' does not answer."""
    out = {}
    for host, state in [*zip(PRIMARY, primary, strict=False), *zip(STANDBY + ["pg-dr-2"], standby, strict=False)]:
        out[host] = {"answered": state != "-", "in_recovery": state == "r", "fenced": False}
    return out


def answers(primary: tuple[str, ...], standby: tuple[str, ...]) -> dict[str, Answer]:
    return {h: Answer(None if s["answered"] is False else s["in_recovery"], "" if s["answered"] else "timed out")
            for h, s in seen(primary, standby).items()}


STATES = list(itertools.product(itertools.product("wr-", repeat=3), itertools.product("wr-", repeat=2)))


@pytest.mark.parametrize("force,fence_tried", [(False, False), (True, False), (False, True), (True, True)])
def test_the_playbooks_filter_takes_the_operators_step_in_every_state(force: bool, fence_tried: bool) -> None:
    standby_hosts = STANDBY + ["pg-dr-2"]
    for primary_state, standby_state in STATES:
        observed = answers(primary_state, standby_state)
        expected = decide(site_from_answers(PRIMARY, observed), site_from_answers(standby_hosts, observed), force,
                          fence_tried)
        plan = FILTER.dr_promote_plan(seen(primary_state, standby_state), PRIMARY, standby_hosts, force, fence_tried)
        assert plan["step"] == expected.step, (primary_state, standby_state, plan, expected)


def test_the_fence_takes_the_servers_that_accept_writes_not_the_spec_primary() -> None:
    plan = FILTER.dr_promote_plan(seen(("r", "w", "r"), ("r",)), PRIMARY, STANDBY, False, False)
    assert plan["step"] == "fence" and plan["fence"] == ["pg-2"]


def test_the_first_standby_host_in_recovery_is_promoted_and_the_others_repointed() -> None:
    plan = FILTER.dr_promote_plan(seen(("-", "-", "-"), ("-", "r")), PRIMARY, ["pg-dr-1", "pg-dr-2"], "True")
    assert plan["step"] == "promote" and plan["promote"] == "pg-dr-2" and plan["repoint"] == ["pg-dr-1"]
    assert FILTER.dr_promote_plan(seen(("-", "-", "-"), ("r",)), PRIMARY, STANDBY, "false")["step"] == "refuse"


def test_a_fenced_server_that_answers_nothing_is_known_fenced() -> None:
    observed = seen(("-", "-", "-"), ("r",))
    observed["pg-1"]["fenced"] = True
    plan = FILTER.dr_promote_plan(observed, PRIMARY, STANDBY, False, True)
    assert plan["step"] == "promote" and "pg-1 fenced" in plan["primary_site"]
    observed["pg-dr-1"] = {"answered": True, "in_recovery": False, "fenced": False}
    assert FILTER.dr_promote_plan(observed, PRIMARY, STANDBY)["step"] == "done"


def test_the_filter_is_what_the_playbook_calls() -> None:
    assert FILTER.FilterModule().filters() == {"dbfleet_dr_promote_plan": FILTER.dr_promote_plan}
    playbook = (REPO / "playbooks" / "pg_dr_promote.yml").read_text()
    assert playbook.count("dbfleet_dr_promote_plan(") == 2


# --------------------------------------------------------------------------- the SQL observation


def test_a_site_is_what_its_servers_answer() -> None:
    site = site_from_answers(PRIMARY, {"pg-1": Answer(None, "timed out"), "pg-2": Answer(True),
                                       "pg-3": Answer(False)})
    assert site.reachable and site.writable and site.leader == "pg-3" and not site.fenced
    fenced = site_from_answers(PRIMARY, {"pg-1": Answer(None, "refused"), "pg-2": Answer(True), "pg-3": Answer(True)})
    assert fenced.fenced and not fenced.writable and fenced.leader == "pg-2"
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
            servers.state["pg-1"] = Answer(None, "connection refused")
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
