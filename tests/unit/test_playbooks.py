"""The playbooks as a user meets them: each passes --syntax-check with no extra vars, the switchover play's own
check speaks first, and the tags of playbooks/site.yml select one engine or concern.

No lab: ansible-playbook runs against a local inventory, and only as far as syntax, tag listing or a first assert.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = sorted((REPO / "playbooks").glob("*.yml"))
ENV = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
       "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
TAGS = {"postgres", "redis", "mongo", "monitoring", "backups", "pki"}
"""The tags site.yml offers (README "Configure with Ansible")."""
VALIDATION = "Validating arguments against arg spec"
"""The task Ansible puts first in a role with meta/argument_specs.yml. Ansible tags it `always`, so it runs for every
role of the playbook whatever --tags says (ansible/ansible#82505); it checks the role's inputs and changes nothing."""


def ansible_playbook(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ansible-playbook", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def test_there_are_playbooks_to_check() -> None:
    assert {"site.yml", "postgres.yml", "pg_switchover.yml"} <= {p.name for p in PLAYBOOKS}


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda p: p.name)
def test_every_playbook_passes_syntax_check_with_no_extra_vars(playbook: Path) -> None:
    done = ansible_playbook("--syntax-check", str(playbook))
    assert done.returncode == 0, done.stderr + done.stdout


def test_the_switchover_without_new_primary_stops_at_its_own_check(tmp_path: Path) -> None:
    """Issue 19: the play's name used new_primary, so Ansible failed on it before the assert could explain."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    postgres:\n      hosts:\n"
                         "        pg-1: {ansible_connection: local}\n        pg-2: {ansible_connection: local}\n")
    done = ansible_playbook("-i", str(inventory), str(REPO / "playbooks" / "pg_switchover.yml"))
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "give -e new_primary=<host>, one of pg-1, pg-2" in out
    assert "is undefined" not in out


def listed_tasks(*args: str) -> list[str]:
    """The task lines --list-tasks shows for site.yml, without the roles' argument validation (see VALIDATION)."""
    done = ansible_playbook("--list-tasks", *args, str(REPO / "playbooks" / "site.yml"))
    assert done.returncode == 0, done.stderr
    tasks = [line.strip() for line in done.stdout.splitlines() if "\tTAGS: [" in line and "play #" not in line]
    assert tasks, done.stdout
    return [task for task in tasks if VALIDATION not in task]


def listed_tags(playbook: Path) -> dict[str, set[str]]:
    """Play name -> the tags --list-tags shows for its tasks, but `always`, which only the roles' argument validation
    carries (test_only_the_argument_validation_is_tagged_always)."""
    done = ansible_playbook("--list-tags", str(playbook))
    assert done.returncode == 0, done.stderr
    plays = re.findall(r"play #\d+ \([^)]*\): (.+?)\tTAGS: \[[^]]*\]\n\s+TASK TAGS: \[([^]]*)\]", done.stdout)
    assert plays, done.stdout
    return {name: {t.strip() for t in tags.split(",") if t.strip()} - {"always"} for name, tags in plays}


FAST_PATH = ("converge_state : ", "Skip this host when its whole cluster is in sync",
             "Say which hosts are in sync and what the others found different",
             "Leave the play when configure --fast found this host's cluster in sync")
"""configure --fast's tasks (site.yml's first and last plays, and each play's skip): they hold under any --tags."""


def test_only_the_argument_validation_and_the_fast_path_are_tagged_always() -> None:
    tagged = [task for task in listed_tasks() if "always" in task.split("\tTAGS: ")[1]]
    assert tagged and all(task.startswith(FAST_PATH) for task in tagged), tagged


def test_site_tags_each_engine_and_concern() -> None:
    plays = listed_tags(REPO / "playbooks" / "site.yml")
    assert set().union(*plays.values()) == TAGS
    assert plays["PostgreSQL primary and streaming replicas (ha manual)"] == {"postgres", "backups", "pki"}
    assert plays["PostgreSQL owned by Patroni (ha patroni)"] == {"postgres", "backups", "pki"}
    assert plays["Patroni's DCS, etcd (ha patroni)"] == {"postgres", "pki"}
    assert plays["HAProxy endpoints that follow the primary (ha patroni)"] == {"postgres", "pki"}
    assert plays["Redis data nodes"] == plays["Redis Sentinels"] == {"redis", "pki"}
    assert plays["MongoDB routers"] == {"mongo", "pki"}
    assert plays["PostgreSQL exporter"] == {"postgres", "monitoring"}
    assert plays["Prometheus"] == {"monitoring", "pki"}


@pytest.mark.parametrize(("tag", "expected", "excluded"), [
    # pgbackrest.conf is included (dynamic, so --list-tasks names the include): the patroni role wrote it already.
    ("backups", ["pgbackrest : Directories and pgbackrest.conf", "pgbackrest : Create the stanza on the primary",
                 "Find the current primary for pgBackRest"],
     ["postgres_server :", "redis_server :", "prometheus :"]),
    ("redis", ["redis_server :", "redis_sentinel :", "redis_exporter :"], ["postgres_server :", "mongod :"]),
    ("monitoring", ["node_exporter :", "prometheus :"], ["postgres_server :", "redis_server :", "pgbackrest :"]),
    # The fleet PKI: every include of the pki role (which applies the tag to the role's own tasks), the PEM mongod
    # reads, and the operator's certificate with the CA Prometheus checks it against; nothing else of any role.
    ("pki", ["Install TLS material (fleet CA, this host's certificate and key)\tTAGS: [pki, postgres]",
             "Install TLS material for etcd", "Install the fleet CA (the health checks verify Patroni's REST API)",
             "Install the fleet CA and this host's certificate and key for TLS",
             "mongo_common : Combine the certificate and key into the PEM mongod reads",
             "Make the operator's certificate on the controller",
             "prometheus : Install the fleet CA for checking the operator's certificate"],
     ["postgres_server :", "redis_server :", "redis_sentinel :", "patroni :", "etcd :", "haproxy :", "pgbackrest :",
      "node_exporter :", "mongod :", "mongos :", "prometheus : Write"]),
])
def test_a_tag_selects_only_its_part(tag: str, expected: list[str], excluded: list[str]) -> None:
    listed = "\n".join(listed_tasks("--tags", tag))
    for task in expected:
        assert task in listed, f"--tags {tag} should run {task!r}"
    for task in excluded:
        assert task not in listed, f"--tags {tag} should not run {task!r}"


def test_configure_passes_tags_to_ansible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dbfleet.cli import main
    from dbfleet.commands import configure
    from dbfleet.playbook import PlaybookResult

    ran: list[list[str]] = []

    def run_playbook(playbook: str, inventory: Path, extra: list[str]) -> PlaybookResult:
        ran.append(extra)
        return PlaybookResult(returncode=0, stats={}, output="")

    monkeypatch.setattr(configure, "list_hosts", lambda *a: {"redis-1"})
    monkeypatch.setattr(configure, "run_playbook", run_playbook)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    main(["configure", "--spec", str(REPO / "fleet.example.yaml"), "--inventory", str(inventory), "--tags", "redis"])
    assert ran and ran[0][ran[0].index("--tags") + 1] == "redis"


def test_a_failed_converge_names_the_task_that_failed_not_only_the_recap() -> None:
    from dbfleet.playbook import PlaybookResult, parse_recap

    output = "\n".join([
        "TASK [pgbackrest : Create the stanza] ****",
        "ok: [pg-2]",
        'fatal: [pg-1]: FAILED! => {"msg": "archive-push timed out"}',
        "TASK [postgres_exporter : Install] ****",
        "ok: [pg-2]",
        "PLAY RECAP ****",
        "pg-1 : ok=3 changed=0 unreachable=0 failed=1 skipped=0 rescued=0 ignored=0",
    ])
    result = PlaybookResult(returncode=2, stats=parse_recap(output), output=output)
    assert not result.ok
    failures = result.failures()
    assert failures.startswith("TASK [pgbackrest : Create the stanza]")
    assert "archive-push timed out" in failures and "postgres_exporter" not in failures.split("\n")[0]


def test_mitogen_is_the_strategy_when_installed_and_not_turned_off(tmp_path: Path) -> None:
    from dbfleet.playbook import mitogen_strategy

    pytest.importorskip("ansible_mitogen")  # a test dependency (pyproject [test]); dbfleet[fast] for users
    chosen = mitogen_strategy({})
    assert chosen["ANSIBLE_STRATEGY"] == "mitogen_linear"
    assert (Path(chosen["ANSIBLE_STRATEGY_PLUGINS"]) / "mitogen_linear.py").is_file()
    assert mitogen_strategy({"DBFLEET_MITOGEN": "0"}) == {}
    assert mitogen_strategy({"ANSIBLE_STRATEGY": "free"}) == {}, "the user's own strategy is kept"


def test_a_play_runs_under_mitogen_with_the_shipped_config(tmp_path: Path) -> None:
    """The strategy dbfleet picks really runs the play's modules in Mitogen's interpreter (its process title is
    `python(mitogen:user@host:pid)`), and with DBFLEET_MITOGEN=0 in a plain interpreter: the check can fail."""
    from dbfleet.playbook import ansible_env, mitogen_strategy

    pytest.importorskip("ansible_mitogen")
    play = tmp_path / "play.yml"
    play.write_text("- hosts: all\n  gather_facts: false\n  tasks:\n"
                    "    - ansible.builtin.shell: tr '\\\\0' ' ' < /proc/$PPID/cmdline\n      register: parent\n"
                    "      changed_when: false\n    - ansible.builtin.debug: {var: parent.stdout}\n")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(f"all:\n  hosts:\n    here: {{ansible_connection: local, "
                         f"ansible_python_interpreter: {sys.executable}}}\n")
    plain = {k: v for k, v in ansible_env().items() if k not in ("ANSIBLE_STRATEGY", "ANSIBLE_STRATEGY_PLUGINS")}
    parents = {}
    for mitogen in ("1", "0"):
        env = plain | mitogen_strategy({"DBFLEET_MITOGEN": mitogen})
        done = subprocess.run(["ansible-playbook", "-i", str(inventory), str(play)], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        parents[mitogen] = done.stdout
    assert "(mitogen:" in parents["1"], parents["1"][-2000:]
    assert "(mitogen:" not in parents["0"] and sys.executable in parents["0"], parents["0"][-2000:]



def test_a_run_asked_without_mitogen_gets_ansible_s_own_strategy() -> None:
    from dbfleet.playbook import ansible_env

    pytest.importorskip("ansible_mitogen")
    assert "ANSIBLE_STRATEGY" not in ansible_env({"DBFLEET_MITOGEN": "0"})
    assert ansible_env({"DBFLEET_MITOGEN": "1"}).get("ANSIBLE_STRATEGY") == "mitogen_linear"


def test_every_include_of_the_pki_role_applies_the_pki_tag() -> None:
    """A tag on an include_role reaches only the include: without `apply`, --tags pki would run the include and
    skip every task of the role (its copies of the certificate, key and CA)."""
    import yaml

    def tasks(items: list[dict[str, object]], inherited: set[str]) -> list[tuple[dict[str, object], set[str]]]:
        found: list[tuple[dict[str, object], set[str]]] = []
        for task in items or []:
            tags = inherited | set(task.get("tags") or [])  # type: ignore[arg-type]
            found.append((task, tags))
            for key in ("block", "rescue", "always"):
                found += tasks(task.get(key) or [], tags)  # type: ignore[arg-type]
        return found

    includes = 0
    for path in sorted((REPO / "playbooks" / "roles").glob("*/tasks/*.yml")):
        for task, tags in tasks(yaml.safe_load(path.read_text()) or [], set()):
            include = task.get("ansible.builtin.include_role")
            if isinstance(include, dict) and include.get("name") == "pki":
                includes += 1
                assert "pki" in tags, f"{path}: {task.get('name')} is not tagged pki"
                assert "pki" in (include.get("apply") or {}).get("tags", []), f"{path}: {task.get('name')} lacks apply"
    assert includes >= 7  # postgres_server, patroni, etcd, haproxy, redis_common, mongo_common, prometheus


def tasks_in(node: object) -> list[dict[str, object]]:
    """Every task of a playbook or task file, nested blocks and plays included."""
    found: list[dict[str, object]] = []
    if isinstance(node, list):
        for item in node:
            found += tasks_in(item)
    elif isinstance(node, dict):
        found.append(node)
        for key in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always"):
            found += tasks_in(node.get(key))
    return found


def test_every_task_calling_pg_promote_is_skipped_in_check_mode() -> None:
    """postgresql_query's check mode rolls back a transaction, which cannot undo pg_promote(): `--check` promoted."""
    files = sorted((REPO / "playbooks").rglob("*.yml"))
    promoting = [(f.name, t) for f in files for t in tasks_in(yaml.safe_load(f.read_text()))
                 if "pg_promote(" in str(t.get("community.postgresql.postgresql_query") or "")]
    assert len(promoting) >= 2, promoting
    for name, task in promoting:
        when = task.get("when")
        conditions = when if isinstance(when, list) else [when]
        assert any("not ansible_check_mode" in str(c) for c in conditions), (name, task.get("name"))


def test_a_site_with_a_host_fenced_by_dr_promote_is_left_alone_whole(tmp_path: Path) -> None:
    """Regression: discover.yml ended only the fenced host's play; another host of the site (a replica promoted by
    hand, or re-cloned) then went on as the site's primary. Now every host of a site with a fenced host ends there.
    Run for real against local hosts whose data directories are temporary folders."""
    hosts = {}
    for name, files in {"pg-1": ["PG_VERSION", "standby.signal", "dbfleet.fenced"], "pg-2": ["PG_VERSION"],
                        "pg-3": ["PG_VERSION", "standby.signal"]}.items():
        data = tmp_path / name
        data.mkdir()
        for file in files:
            (data / file).write_text("")
        hosts[name] = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                       "postgres_data_dir": str(data), "dbfleet_group": "cluster_pg_x", "dbfleet_cluster": "pg-x",
                       "dbfleet_address": "127.0.0.1", "postgres_server_version": "15"}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts, "children": {
        "postgres": {"hosts": dict.fromkeys(hosts, {})}, "postgres_primary": {"hosts": {"pg-1": {}}},
        "cluster_pg_x": {"hosts": dict.fromkeys(hosts, {})}}}}))
    play = tmp_path / "discover.yml"
    play.write_text(yaml.safe_dump([{"name": "Discover", "hosts": "postgres", "gather_facts": False, "tasks": [
        {"name": "Discover", "ansible.builtin.include_role": {"name": "postgres_server", "tasks_from": "discover"}},
        {"name": "Past discover", "ansible.builtin.debug": {"msg": "went on"}}]}]))
    env = {**ENV, "ANSIBLE_ROLES_PATH": str(REPO / "playbooks" / "roles"), "ANSIBLE_STRATEGY": "linear"}
    done = subprocess.run(["ansible-playbook", "-i", str(inventory), str(play)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "went on" not in done.stdout, done.stdout[-3000:]
    assert "pg-2: pg-1 of its site was fenced by dr promote" in done.stdout, done.stdout[-3000:]
