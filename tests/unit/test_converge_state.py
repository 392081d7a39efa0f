"""`configure --fast`'s parts without a lab (issue 21): the converge_state module's observation and comparison, the
digest of a converge's inputs, the playbooks' wiring (every engine and monitoring play can be skipped, the record is
written only after a full run), and that every file the roles write is observed or named as not observed, with why.

The lab test is tests/integration/test_converge_fast.py.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from role_support import role_module

from dbfleet import converge_inputs, shipped

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "playbooks" / "roles"
MODULE_PATH = ROLES / "converge_state" / "library" / "converge_state.py"
DEFAULTS = yaml.safe_load((ROLES / "converge_state" / "defaults" / "main.yml").read_text())


@pytest.fixture(scope="module")
def cs() -> Any:
    return role_module("converge_state", "converge_state")


# --------------------------------------------------------------------------- observing and comparing


def tree(root: Path) -> Path:
    (root / "conf.d").mkdir(parents=True)
    (root / "main.conf").write_text("port 6379\n")
    (root / "conf.d" / "extra.conf").write_text("maxmemory 1mb\n")
    (root / "rewritten.conf").write_text("epoch 1\n")
    (root / "link").symlink_to("main.conf")
    return root


def test_files_are_observed_by_content_mode_owner_and_target(cs: Any, tmp_path: Path) -> None:
    root = tree(tmp_path / "etc")
    before = cs.observe_files([str(root)], [str(root / "rewritten.conf")])
    assert f"file:{root / 'rewritten.conf'}" not in before, "an excluded path is not observed"
    assert before[f"file:{root / 'link'}"].startswith("l ") and before[f"file:{root / 'conf.d'}"].startswith("d ")
    assert cs.observe_files([str(root)], [str(root / "rewritten.conf")]) == before, "observing twice is stable"

    (root / "rewritten.conf").write_text("epoch 2\n")
    assert cs.observe_files([str(root)], [str(root / "rewritten.conf")]) == before

    def relink(r: Path) -> None:
        (r / "link").unlink()
        (r / "link").symlink_to("conf.d")

    changes = {"content": lambda r: (r / "conf.d" / "extra.conf").write_text("maxmemory 2mb\n"),
               "mode": lambda r: os.chmod(r / "main.conf", 0o666),
               "new file": lambda r: (r / "new.conf").write_text(""),
               "removed file": lambda r: (r / "conf.d" / "extra.conf").unlink(),
               "moved link": relink}
    for what, change in changes.items():
        fresh = tree(tmp_path / what.replace(" ", "-"))
        seen = cs.observe_files([str(fresh)], [])
        change(fresh)
        drift = cs.compare({"format": cs.FORMAT, "inputs": "i", "items": seen}, "i", cs.observe_files([str(fresh)], []))
        assert len(drift) == 1 and drift[0].startswith(f"file:{fresh}"), (what, drift)


def test_a_missing_root_is_observed_as_absent_not_as_unreadable(cs: Any, tmp_path: Path) -> None:
    seen = cs.observe_files([str(tmp_path / "nothing")], [])
    assert seen == {f"file:{tmp_path / 'nothing'}": "absent"}
    assert cs.compare({"format": cs.FORMAT, "inputs": "i", "items": seen}, "i", seen) == []


def test_compare_needs_a_record_of_the_same_inputs_and_equal_items(cs: Any) -> None:
    items = {"file:/etc/a": "f 644 0 0 x", "postgres:roles": "sha256:1"}
    record = {"format": cs.FORMAT, "inputs": "abc", "items": items}
    assert cs.compare(record, "abc", dict(items)) == []
    assert cs.compare(None, "abc", items) == ["no record of a full converge"]
    assert cs.compare({**record, "format": 0}, "abc", items) == ["no record of a full converge"]
    assert cs.compare(record, "abd", items) == ["the converge's inputs changed"]
    assert cs.compare(record, "abc", {**items, "postgres:roles": "sha256:2"}) == ["postgres:roles"]
    assert cs.compare(record, "abc", {"file:/etc/a": items["file:/etc/a"]}) == ["postgres:roles"]
    assert cs.compare(record, "abc", {**items, "redis:acl": "x"}) == ["redis:acl"]


def test_what_cannot_be_read_is_never_in_sync_even_when_it_was_unreadable_before(cs: Any) -> None:
    items = {"postgres:roles": cs.ERROR + "exit 2: could not connect"}
    assert cs.compare({"format": cs.FORMAT, "inputs": "i", "items": items}, "i", dict(items)) == \
        ["postgres:roles (unreadable)"]


def test_the_record_is_root_only_and_written_whole(cs: Any, tmp_path: Path) -> None:
    path = tmp_path / "state" / "converge-state.json"
    cs.write_record(str(path), "abc", {"file:/etc/a": "absent"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert cs.read_record(str(path)) == {"format": cs.FORMAT, "inputs": "abc", "items": {"file:/etc/a": "absent"}}
    path.write_text("{not json")
    assert cs.read_record(str(path)) is None
    assert not list(path.parent.glob("*.tmp"))


def test_engine_answers_are_kept_only_as_digests_and_values_never_reach_the_drift_list(cs: Any,
                                                                                       monkeypatch: Any) -> None:
    """CONFIG GET * holds masterauth: the record and the module's result keep a digest, never the answer."""
    monkeypatch.setattr(cs, "observe_system", lambda: {"packages": "p 1"})
    monkeypatch.setattr(cs, "observe_redis", lambda conf: {"redis:config": '["masterauth", "s3cret"]',
                                                          "redis:role": cs.ERROR + "ConnectionError"})
    found = cs.observe({"roots": [], "exclude": [], "redis": {"port": 6379}})
    assert "s3cret" not in json.dumps(found)
    assert found["redis:config"].startswith("sha256:") and len(found["redis:config"]) == 7 + 64
    assert found["redis:role"] == cs.ERROR + "ConnectionError", "unreadable stays recognisable"
    assert found["packages"].startswith("sha256:")
    drift = cs.compare({"format": cs.FORMAT, "inputs": "i", "items": {**found, "redis:config": "sha256:0"}}, "i",
                       found)
    assert drift == ["redis:config", "redis:role (unreadable)"], drift


def test_record_in_check_mode_writes_nothing_and_no_run_reports_a_change(cs: Any, tmp_path: Path, capsys: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cs, "observe_system", lambda: {"packages": "redis-server 7.0"})  # no systemd here
    path = tmp_path / "converge-state.json"
    args = {"mode": "record", "inputs": "abc", "path": str(path), "roots": [str(tmp_path)]}
    with patch_module_args({**args, "_ansible_check_mode": True}), pytest.raises(SystemExit):
        cs.main()
    assert json.loads(capsys.readouterr().out)["changed"] is False and not path.exists()
    for mode in ("record", "check", "check"):
        with patch_module_args({**args, "mode": mode}), pytest.raises(SystemExit):
            cs.main()
        result = json.loads(capsys.readouterr().out)
        assert result["changed"] is False, "the record is bookkeeping: a no-op converge stays changed=0"
    assert result["in_sync"] is True, result
    (tmp_path / "drifted").write_text("x")
    with patch_module_args({**args, "mode": "check"}), pytest.raises(SystemExit):
        cs.main()
    result = json.loads(capsys.readouterr().out)
    assert result["in_sync"] is False and result["drift"] == [f"file:{tmp_path / 'drifted'}"], result


def test_sentinel_is_observed_by_what_the_role_sets_not_by_its_counters(cs: Any) -> None:
    assert {"quorum", "down-after-milliseconds", "failover-timeout", "parallel-syncs"} <= set(cs.SENTINEL_SETTINGS)
    assert not {"runid", "config-epoch", "num-other-sentinels", "last-ping-reply"} & set(cs.SENTINEL_SETTINGS)


def test_a_database_name_never_reaches_psql_as_connection_syntax(cs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Security (review of issue 21's fast path): database names come from the catalog, and psql expands a `-d`
    value holding `=` as a connection string, so a role that may create or rename a database could send the
    module's psql (run as postgres, with its .pgpass) to a host of its choosing. The name travels in PGDATABASE."""
    calls: list[tuple[list[str], dict[str, str] | None]] = []
    evil = "host=evil.example user=replicator dbname=x"

    def fake_run(argv: list[str], env: dict[str, str] | None = None) -> str:
        calls.append((argv, env))
        return json.dumps([evil, "app"]) if "json_agg(datname" in argv[-1] else "row"

    monkeypatch.setattr(cs, "run", fake_run)
    found = cs.observe_postgres({"port": 5432})
    assert calls and all("-d" not in argv and not any(evil in a for a in argv) for argv, _ in calls)
    assert {env["PGDATABASE"] for _, env in calls if env} == {"postgres", evil, "app"}
    assert not any(evil in name for name in found), "catalog text never becomes an item name"


def certificate(tmp_path: Path, days: int, name: str) -> Path:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days)).sign(key, hashes.SHA256()))
    path = tmp_path / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_certificate_due_for_renewal_is_drift(cs: Any, tmp_path: Path) -> None:
    """Review of issue 21's fast path: the pki role signs a certificate again within renew_days of its end, which
    depends on the date, not on anything recorded; a cluster always in sync would keep its certificates until
    they expire. A certificate within renew_days (or unreadable) below a root is drift."""
    import time

    def due(at: float) -> list[str]:
        """What the check adds for the certificates among the files it observed below tmp_path."""
        return cs.certificates_due(cs.regular_files(cs.observe_files([str(tmp_path)], [])), 30, at)

    fresh = certificate(tmp_path, 400, "fresh")
    late = certificate(tmp_path, 9000, "after-2049")  # GeneralizedTime, not UTCTime
    assert due(time.time()) == []
    assert abs(cs.not_after(__import__("base64").b64decode(
        b"".join(fresh.read_bytes().split(b"\n")[1:-2]))) - (time.time() + 400 * 86400)) < 120
    assert due(time.time() + 380 * 86400) == [f"certificate:{fresh} (renewal due)"]
    soon = certificate(tmp_path, 10, "soon")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(fresh.read_bytes() + soon.read_bytes())
    assert due(time.time()) == [f"certificate:{bundle} (renewal due)", f"certificate:{soon} (renewal due)"]
    assert late.exists()
    (tmp_path / "broken.crt").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    assert f"certificate:{tmp_path / 'broken.crt'} (renewal due)" in due(time.time())


def test_renew_days_is_the_pki_roles(cs: Any) -> None:
    pki = (ROLES / "pki" / "library" / "pki_certificates.py").read_text()
    assert re.search(r'"renew_days": \{"type": "int", "default": 30\}', pki)
    assert re.search(r'"renew_days": \{"type": "int", "default": 30\}', MODULE_PATH.read_text())


# --------------------------------------------------------------------------- the inputs' digest


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    (tmp_path / "inv" / "group_vars" / "all").mkdir(parents=True)
    (tmp_path / "inv" / "group_vars" / "all" / "secrets.yml").write_text("dbfleet_secrets: {a: 1}\n")
    hosts = tmp_path / "inv" / "hosts.yml"
    hosts.write_text("all: {hosts: {pg-1: {}}}\n")
    return hosts


def test_the_inputs_digest_moves_with_the_inventory_folder_and_the_rendered_files(inventory: Path) -> None:
    base = converge_inputs.inputs_digest(inventory, {"fleet.rules.yml": "groups: []\n"})
    assert converge_inputs.inputs_digest(inventory, {"fleet.rules.yml": "groups: []\n"}) == base
    assert converge_inputs.inputs_digest(inventory, {"fleet.rules.yml": "groups: [x]\n"}) != base
    secrets = inventory.parent / "group_vars" / "all" / "secrets.yml"
    secrets.write_text("dbfleet_secrets: {a: 2}\n")
    assert converge_inputs.inputs_digest(inventory, {"fleet.rules.yml": "groups: []\n"}) != base
    secrets.write_text("dbfleet_secrets: {a: 1}\n")
    (inventory.parent / "notes.txt").write_text("not read by Ansible")
    (inventory.parent / "pki").mkdir()
    assert converge_inputs.inputs_digest(inventory, {"fleet.rules.yml": "groups: []\n"}) == base, \
        "only the inventory file, group_vars, host_vars and pki are inputs"
    (inventory.parent / "pki" / "ca.crt").write_text("a CA")
    assert converge_inputs.inputs_digest(inventory, {"fleet.rules.yml": "groups: []\n"}) != base


def test_an_unreadable_input_is_named_not_a_traceback(inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = inventory.parent / "group_vars" / "all" / "secrets.yml"
    real = Path.read_bytes

    def refuse(path: Path) -> bytes:
        if path == secrets:
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(converge_inputs.InputsError, match=r"cannot read .*secrets.yml.*Permission denied"):
        converge_inputs.inputs_digest(inventory, {})


def test_a_collection_upgrade_is_an_input() -> None:
    versions = converge_inputs.collection_versions()
    assert "community.postgresql" in versions and "community.general" in versions, sorted(versions)[:5]


def test_the_inputs_digest_moves_with_a_shipped_playbook(inventory: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "playbooks"
    (copy / "roles" / "x" / "tasks").mkdir(parents=True)
    task = copy / "roles" / "x" / "tasks" / "main.yml"
    task.write_text("- ansible.builtin.debug: {msg: one}\n")
    monkeypatch.setattr(shipped, "playbooks_dir", lambda: copy)
    base = converge_inputs.inputs_digest(inventory, {})
    task.write_text("- ansible.builtin.debug: {msg: two}\n")
    assert converge_inputs.inputs_digest(inventory, {}) != base


def test_the_fast_report_is_read_from_ansibles_folded_output() -> None:
    """The line site.yml's first play prints, as Ansible's YAML output folds and quotes it (from a lab run)."""
    output = ("TASK [Say which hosts are in sync and what the others found different] ****\n"
              "ok: [redis-1] => \n"
              "    msg: 'converge_state: in sync, skipped: s-1, m-1; converging: redis-1 (the converge''s\n"
              "        inputs changed), redis-2 (file:/etc/redis/dbfleet.conf)'\n\nPLAY [PostgreSQL] ***\n")
    assert converge_inputs.parse_fast_report(output) == (
        {"s-1", "m-1"}, "redis-1 (the converge's inputs changed), redis-2 (file:/etc/redis/dbfleet.conf)")
    assert converge_inputs.parse_fast_report("    msg: 'converge_state: in sync, skipped: none; converging: none'") \
        == (set(), "none")
    assert converge_inputs.parse_fast_report("PLAY RECAP ***") is None


def test_configure_gives_site_yml_the_inputs_and_the_fast_flag_as_data(tmp_path: Path) -> None:
    from dbfleet.commands.configure import write_extra_vars

    path = write_extra_vars(tmp_path, tmp_path / "rules {{ x }}.yml", "ab12", True)
    loaded = yaml.load(path.read_text(), Loader=_Unsafe)
    assert loaded == {"prometheus_rules_source": str(tmp_path / "rules {{ x }}.yml"),
                      **converge_inputs.site_vars("ab12", True)}
    assert loaded["converge_state_fast"] is True and "!unsafe" in path.read_text()


# --------------------------------------------------------------------------- the playbooks' wiring

ENGINE_PLAYBOOKS = ("postgres.yml", "redis.yml", "mongo.yml", "monitoring.yml")


@pytest.mark.parametrize("name", ENGINE_PLAYBOOKS)
def test_every_engine_and_monitoring_play_starts_with_the_skip(name: str) -> None:
    for play in yaml.safe_load((REPO / "playbooks" / name).read_text()):
        first = (play.get("pre_tasks") or [{}])[0]
        assert first.get("ansible.builtin.import_tasks") == "tasks/converge_skip.yml", play["name"]
        assert first.get("tags") == ["always"], f"{play['name']}: the skip must hold under --tags too"
        assert not play.get("gather_facts"), f"{play['name']}: facts are gathered after the skip, not before it"


def test_site_checks_first_and_records_last_only_after_a_full_run() -> None:
    plays = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())
    check, record = plays[0], plays[-1]
    assert check["tasks"][0]["ansible.builtin.import_role"] == {"name": "converge_state"}
    assert "converge_state_fast" in check["hosts"] and check["tags"] == ["always"]
    assert [p.get("import_playbook") for p in plays[1:-1]] == list(ENGINE_PLAYBOOKS)
    task = record["tasks"][0]
    assert task["ansible.builtin.import_role"] == {"name": "converge_state", "tasks_from": "record"}
    assert set(task["when"]) == {"not ansible_check_mode", "ansible_run_tags | list == ['all']",
                                 "ansible_skip_tags | length == 0", "ansible_limit is not defined",
                                 "not (converge_state_skip | default(false))"}
    skip = yaml.safe_load((REPO / "playbooks" / "tasks" / "converge_skip.yml").read_text())
    assert skip == [{"name": skip[0]["name"], "ansible.builtin.meta": "end_host",
                     "when": "converge_state_skip | default(false)"}]


def test_the_skip_is_decided_per_cluster_and_a_play_without_fast_has_no_host(tmp_path: Path) -> None:
    """site.yml's first play on localhost-only inventories: without converge_state_fast it matches no host; the skip
    expression holds a host back only when every host of its group in the run is in sync."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(shipped.ansible_cfg())}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {h: {"ansible_connection": "local",
                                                               "ansible_python_interpreter": sys.executable,
                                                               "dbfleet_group": "cluster_c"}
                                                           for h in ("a", "b")},
                                                 "children": {"cluster_c": {"hosts": {"a": {}, "b": {}}}}}}))
    plays = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())
    decide = plays[0]["tasks"][1]
    for in_sync, expected in (({"a": True, "b": True}, "True True"), ({"a": True, "b": False}, "False False")):
        playbook = tmp_path / "decide.yml"
        playbook.write_text(yaml.safe_dump([
            {"hosts": "all", "gather_facts": False, "tasks": [
                {"ansible.builtin.set_fact": {
                    "converge_state_check": {"in_sync": "{{ in_sync[inventory_hostname] }}"}}},
                decide,
                {"ansible.builtin.debug": {"msg": "SKIP {{ converge_state_skip }}"}}]}]))
        done = subprocess.run(["ansible-playbook", "-i", str(inventory), str(playbook), "-e",
                               json.dumps({"in_sync": in_sync})], capture_output=True, text=True, env=env,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert " ".join(re.findall(r"SKIP (\w+)", done.stdout)) == expected, done.stdout


# --------------------------------------------------------------------------- what is observed


class _Unsafe(yaml.SafeLoader):
    pass


_Unsafe.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))  # type: ignore[arg-type]


def role_defaults() -> dict[str, Any]:
    """Every role's defaults, then the example inventory's group vars (the values the roles are given)."""
    merged: dict[str, Any] = {}
    for path in sorted(ROLES.glob("*/defaults/main.yml")):
        merged.update(yaml.safe_load(path.read_text()) or {})
    inventory = yaml.load((REPO / "inventories" / "example" / "hosts.yml").read_text(), Loader=_Unsafe)
    for group in inventory["all"]["children"].values():
        merged.update({k: v for k, v in (group.get("vars") or {}).items() if isinstance(v, (str, int))})
    merged.setdefault("postgres_server_cluster_name", "main")
    return merged


def resolve(text: str, known: dict[str, Any]) -> str | None:
    """`text` with every `{{ name }}` (or `{{ name | dirname }}`) replaced from `known`; None if anything else is
    templated."""
    def one(match: re.Match[str]) -> str:
        value = known.get(match[1])
        if not isinstance(value, (str, int)):
            return match[0]
        return os.path.dirname(str(value).strip()) if match[2] else str(value).strip()

    for _ in range(6):
        text = re.sub(r"\{\{\s*(\w+)\s*(\|\s*dirname\s*)?\}\}", one, text)
    return None if "{{" in text else text.strip()


MONGO_ROLES = {"mongo_common", "mongod", "mongos", "mongodb_exporter"}
"""A MongoDB host never takes the fast path, so its roles' files need not be observed."""
UNRESOLVED = {"{{ item.path }}": "pgbackrest's directory loop: its log, repository and spool directories are listed "
                                "in converge_state_unwatched, /etc/pgbackrest and the include's folder are roots"}
"""Paths no default or inventory value resolves, each with where what it names is observed or why it is not."""


def test_every_file_the_roles_write_is_observed_or_named_as_not_observed() -> None:
    known = role_defaults()
    watched = [*DEFAULTS["converge_state_roots"], *DEFAULTS["converge_state_unwatched"]]
    resolved = 0
    for tasks in sorted(ROLES.glob("*/tasks/*.yml")):
        role = tasks.parts[-3]
        if role in MONGO_ROLES or role == "converge_state":
            continue
        for match in re.finditer(r"^\s+(?:dest|path): (.+)$", tasks.read_text(), re.MULTILINE):
            raw = match[1].strip().strip('"')
            if raw in UNRESOLVED:
                continue
            path = resolve(raw.replace("{{ item }}", "x").replace("{{ item.name }}", "x")
                           .replace("{{ item.dest }}", "x"), known)
            assert path is not None and path.startswith("/"), f"{tasks.relative_to(REPO)}: {raw} does not resolve"
            resolved += 1
            assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in watched), \
                f"{tasks.relative_to(REPO)}: {raw} ({path}) is neither below a converge_state root nor unwatched"
    assert resolved >= 40, f"only {resolved} paths resolved"
    for path in known["pgbackrest_log_path"], known["pgbackrest_spool_path"]:
        assert path in DEFAULTS["converge_state_unwatched"], path


def test_the_paths_and_user_converge_state_shares_with_the_engine_roles_are_theirs() -> None:
    known = role_defaults()
    assert DEFAULTS["converge_state_redis_ca"] == resolve("{{ redis_tls_ca }}", known)
    assert DEFAULTS["converge_state_postgres_ca"] == resolve("{{ postgres_tls_dir }}/ca.crt", known)
    assert DEFAULTS["converge_state_redis_user"] == known["redis_admin_user"]
    assert DEFAULTS["converge_state_exclude"] == [resolve("{{ redis_sentinel_config }}", known)]


# --------------------------------------------------------------------------- the CLI


def test_fast_is_refused_with_another_playbook(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "dbfleet", "--spec", str(REPO / "fleet.example.yaml"), "configure",
                           "--inventory", str(REPO / "inventories" / "example" / "hosts.yml"), "--playbook",
                           "postgres.yml", "--fast"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "operator")}, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--fast works with site.yml only" in done.stderr


# --------------------------------------------------------------------------- site.yml's plays, run


STUB_CHECK = """- name: Stub check
  ansible.builtin.set_fact:
    converge_state_check: {in_sync: "{{ inventory_hostname in stub_in_sync }}", drift: [stub]}
"""
STUB_RECORD = """- name: Stub record
  ansible.builtin.copy:
    content: recorded
    dest: "{{ stub_out }}/record-{{ inventory_hostname }}"
    mode: "0600"
  check_mode: false
"""


@pytest.fixture
def site_copy(tmp_path: Path) -> Path:
    """site.yml's first and last plays verbatim around one play that starts with the real skip and then marks the
    host (failing where asked), with converge_state replaced by a stub whose check reads `stub_in_sync`; hosts a, b
    (one cluster group) and c (another), all local."""
    plays = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())
    body = {"name": "Engine", "hosts": "all", "gather_facts": False,
            "pre_tasks": yaml.safe_load((REPO / "playbooks" / "postgres.yml").read_text())[0]["pre_tasks"][:1],
            "tasks": [{"name": "Mark", "ansible.builtin.copy": {"content": "ran", "mode": "0600",
                                                                "dest": "{{ stub_out }}/ran-{{ inventory_hostname }}"},
                       "check_mode": False},
                      {"name": "Fail where asked", "ansible.builtin.fail": {"msg": "asked"},
                       "when": "inventory_hostname in stub_fail"}]}
    (tmp_path / "site.yml").write_text(yaml.safe_dump([plays[0], body, plays[-1]], sort_keys=False))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "converge_skip.yml").write_text((REPO / "playbooks" / "tasks" / "converge_skip.yml")
                                                          .read_text())
    stub = tmp_path / "roles" / "converge_state" / "tasks"
    stub.mkdir(parents=True)
    (stub / "main.yml").write_text(STUB_CHECK)
    (stub / "record.yml").write_text(STUB_RECORD)
    hosts = {h: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "dbfleet_group": "cluster_d" if h == "c" else "cluster_c"} for h in ("a", "b", "c")}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts, "children": {
        "cluster_c": {"hosts": {"a": {}, "b": {}}}, "cluster_d": {"hosts": {"c": {}}}}}}))
    return tmp_path


def run_site(folder: Path, in_sync: list[str], *args: str, fast: bool = True,
             fail: tuple[str, ...] = ()) -> tuple[set[str], set[str]]:
    """(hosts that ran the engine play, hosts that recorded) for one run."""
    out = folder / "out"
    if out.exists():
        for path in out.iterdir():
            path.unlink()
    out.mkdir(exist_ok=True)
    extra = {"converge_state_inputs": "digest", "converge_state_fast": fast, "stub_in_sync": in_sync,
             "stub_out": str(out), "stub_fail": list(fail)}
    done = subprocess.run(["ansible-playbook", "-i", str(folder / "hosts.yml"), str(folder / "site.yml"),
                           "-e", json.dumps(extra), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ANSIBLE_CONFIG": str(shipped.ansible_cfg())})
    assert ("failed=1" in done.stdout) == bool(fail), done.stdout + done.stderr
    names = {p.name for p in out.iterdir()}
    return ({n.removeprefix("ran-") for n in names if n.startswith("ran-")},
            {n.removeprefix("record-") for n in names if n.startswith("record-")})


def test_fast_skips_a_cluster_only_when_all_its_hosts_are_in_sync(site_copy: Path) -> None:
    assert run_site(site_copy, ["a", "b", "c"]) == (set(), set()), "in sync: nothing runs, nothing is re-recorded"
    assert run_site(site_copy, ["a", "c"]) == ({"a", "b"}, {"a", "b"}), "b drifted: its whole cluster converges"
    assert run_site(site_copy, ["a", "b", "c"], fast=False) == ({"a", "b", "c"}, {"a", "b", "c"})


def test_only_a_full_run_that_succeeded_on_a_host_records_it(site_copy: Path) -> None:
    assert run_site(site_copy, [], fast=False, fail=("b",)) == ({"a", "b", "c"}, {"a", "c"})
    assert run_site(site_copy, [], "--check", fast=False)[1] == set()
    assert run_site(site_copy, [], "--tags", "always", fast=False)[1] == set()
    assert run_site(site_copy, [], "--skip-tags", "nothing", fast=False)[1] == set()
    assert run_site(site_copy, [], "--limit", "a,b,c", fast=False)[1] == set()
