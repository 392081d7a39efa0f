"""The roles' own Ansible modules: ansible-doc reads each one's DOCUMENTATION, EXAMPLES and RETURN, the documented
options are the ones the module takes, and check mode changes nothing.

Check mode runs each module's main() in-process (ansible's patch_module_args). Against no server: the
Redis modules talk to an in-process fake of redis-py's client, the sharding module to a fake MongoClient, and
patroni_config and etcd_auth to fakes of their REST calls, which record every command, so a write in check mode
fails the test. redis_current_master is read-only and runs against closed ports, as on a first deployment.
pki_certificates' check mode is tested in test_pki_certificates.py.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted((REPO / "playbooks" / "roles").glob("*/library/*.py"))


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"dbfleet_test_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_roles_have_the_four_modules() -> None:
    assert {m.stem for m in MODULES} == {"mongodb_sharded_collection", "redis_current_master",
                                         "redis_sentinel_monitor", "redis_live_config", "etcd_auth",
                                         "patroni_config", "pki_certificates", "converge_state"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_ansible_doc_reads_documentation_examples_and_return(path: Path) -> None:
    done = subprocess.run(["ansible-doc", "-M", str(path.parent), "--json", path.stem], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)[path.stem]
    assert doc["doc"]["short_description"] and doc["doc"]["description"]
    assert all(o.get("description") for o in doc["doc"]["options"].values())
    assert doc["examples"] and yaml.safe_load(doc["examples"])[0][path.stem], "EXAMPLES use the module"
    assert doc["return"] and all(r.get("description") and r.get("returned") for r in doc["return"].values())
    plain = subprocess.run(["ansible-doc", "-M", str(path.parent), path.stem], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
    assert plain.returncode == 0 and "EXAMPLES" in plain.stdout and "RETURN VALUES" in plain.stdout, plain.stderr


class _Captured(Exception):
    pass


def argument_spec(module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The argument_spec main() gives AnsibleModule."""
    seen: dict[str, Any] = {}

    def capture(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise _Captured

    monkeypatch.setattr(module, "AnsibleModule", capture)
    with pytest.raises(_Captured):
        module.main()
    return dict(seen["argument_spec"])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_the_documented_options_are_the_ones_the_module_takes(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load(path)
    documented = yaml.safe_load(module.DOCUMENTATION)["options"]
    taken = argument_spec(module, monkeypatch)
    assert set(documented) == set(taken)
    for name, spec in taken.items():
        doc = documented[name]
        for key in ("type", "elements", "choices"):
            assert doc.get(key) == spec.get(key), f"{name}.{key}"
        assert bool(doc.get("required")) == bool(spec.get("required")), f"{name}.required"
        assert bool(doc.get("no_log")) == bool(spec.get("no_log")), f"{name}.no_log"
        assert doc.get("default") == spec.get("default"), f"{name}.default"


def run_main(module: ModuleType, args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """main() with these arguments in check mode; the JSON it exits with."""
    with patch_module_args({**args, "_ansible_check_mode": True}), pytest.raises(SystemExit):
        module.main()
    return dict(json.loads(capsys.readouterr().out))


class FakeRedis:
    """redis-py's Redis, answering from a table and recording each command."""

    answers: dict[tuple[str, ...], Any] = {}
    commands: list[tuple[Any, ...]] = []

    def __init__(self, **kwargs: Any) -> None:
        pass

    def execute_command(self, *args: Any) -> Any:
        FakeRedis.commands.append(args)
        answer = FakeRedis.answers.get(tuple(str(a) for a in args[:2]))
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        pass


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> type[FakeRedis]:
    FakeRedis.answers, FakeRedis.commands = {}, []
    return FakeRedis


def test_live_config_in_check_mode_reports_the_difference_and_sets_nothing(
        fake_redis: type[FakeRedis], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    module = load(REPO / "playbooks/roles/redis_server/library/redis_live_config.py")
    monkeypatch.setattr(module.redis, "Redis", fake_redis)
    fake_redis.answers[("CONFIG", "GET")] = ["maxmemory", "0", "appendonly", "yes", "masterauth", "old"]
    result = run_main(module, {"settings": {"maxmemory": "256mb", "appendonly": "yes"},
                               "secret_settings": {"masterauth": "new"}}, capsys)
    assert result["changed"] is True
    assert result["changes"] == {"maxmemory": ["0", str(256 * 1024**2)], "masterauth": ["(secret)", "(secret)"]}
    assert [c[:2] for c in fake_redis.commands] == [("CONFIG", "GET")]
    assert "new" not in json.dumps(result) and "old" not in json.dumps(result)


def test_sentinel_monitor_in_check_mode_neither_monitors_nor_sets(
        fake_redis: type[FakeRedis], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    module = load(REPO / "playbooks/roles/redis_sentinel/library/redis_sentinel_monitor.py")
    monkeypatch.setattr(module.redis, "Redis", fake_redis)
    args = {"name": "cache", "master_host": "10.0.3.11", "quorum": 2, "settings": {"parallel-syncs": 1},
            "auth_pass": "secret"}
    fake_redis.answers[("SENTINEL", "MASTER")] = module.redis.ResponseError("ERR No such master with that name")
    result = run_main(module, args, capsys)
    assert result["changed"] is True and result["created"] is True
    assert fake_redis.commands == [("SENTINEL", "MASTER", "cache")]

    fake_redis.commands.clear()
    fake_redis.answers[("SENTINEL", "MASTER")] = ["name", "cache", "ip", "10.0.3.12", "port", "6379",
                                                  "quorum", "2", "parallel-syncs", "2"]
    result = run_main(module, args, capsys)
    assert result["changed"] is True and result["created"] is False
    assert result["changes"] == {"parallel-syncs": ["2", "1"]} and result["master"] == ["10.0.3.12", "6379"]
    assert fake_redis.commands == [("SENTINEL", "MASTER", "cache")]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_current_master_with_nothing_answering_is_the_fallback_and_changes_nothing(
        capsys: pytest.CaptureFixture[str]) -> None:
    module = load(REPO / "playbooks/roles/redis_common/library/redis_current_master.py")
    port = _closed_port()
    result = run_main(module, {"name": "cache", "sentinels": ["127.0.0.1"], "sentinel_port": port,
                               "nodes": ["127.0.0.1"], "port": port, "fallback": "10.0.3.11", "timeout": 1},
                      capsys)
    assert result["changed"] is False
    assert (result["address"], result["source"]) == ("10.0.3.11", "spec")
    assert result["sentinel_answers"] == {"127.0.0.1": None} and result["node_roles"] == {}


class FakeMongo:
    """pymongo's MongoClient: config.collections answers from `sharded`; admin commands are recorded."""

    sharded: dict[str, dict[str, Any]] = {}
    commands: list[tuple[Any, ...]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.config = self
        self.collections = self
        self.admin = self

    def find_one(self, query: dict[str, Any]) -> dict[str, Any] | None:
        return FakeMongo.sharded.get(query["_id"])

    def command(self, *args: Any, **kwargs: Any) -> None:
        FakeMongo.commands.append(args)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("existing", "changed"), [(None, True), ({"user_id": "hashed"}, False)])
def test_sharding_in_check_mode_runs_no_command(existing: dict[str, Any] | None, changed: bool,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pymongo = pytest.importorskip("pymongo")
    monkeypatch.setattr(pymongo, "MongoClient", FakeMongo)
    FakeMongo.sharded = {"app.events": {"_id": "app.events", "key": existing}} if existing else {}
    FakeMongo.commands = []
    module = load(REPO / "playbooks/roles/mongos/library/mongodb_sharded_collection.py")
    result = run_main(module, {"namespace": "app.events", "key": {"user_id": "hashed"}, "login_user": "admin",
                               "login_password": "pw"}, capsys)
    assert result["changed"] is changed and result["key"] == {"user_id": "hashed"}
    assert FakeMongo.commands == []


@pytest.fixture
def no_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """The modules build an SSL context from their ca_file first; the fakes below need none."""
    import ssl

    monkeypatch.setattr(ssl, "create_default_context", lambda **kwargs: None)


@pytest.mark.parametrize("check", [True, False])
def test_patroni_config_in_check_mode_reads_and_sends_no_patch(check: bool, no_tls_context: None,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Check mode reports the PATCH it would send and sends only the GET; without it the PATCH goes out (so the fake
    would see a write)."""
    module = load(REPO / "playbooks/roles/patroni/library/patroni_config.py")
    sent: list[tuple[str, str, Any]] = []

    def call(url: str, context: Any, method: str = "GET", body: Any = None, auth: Any = None) -> Any:
        sent.append((method, url, body))
        return {"ttl": 30, "postgresql": {"parameters": {"max_connections": 100, "work_mem": "4MB"}}}

    monkeypatch.setattr(module, "call", call)
    args = {"url": "https://10.0.0.1:8008/", "ca_file": "/nonexistent/ca.crt", "user": "patroni", "password": "pw",
            "config": {"ttl": 30, "postgresql": {"parameters": {"max_connections": 200}}}}
    with patch_module_args({**args, "_ansible_check_mode": check}), pytest.raises(SystemExit):
        module.main()
    result = json.loads(capsys.readouterr().out)
    patch = {"postgresql": {"parameters": {"max_connections": 200, "work_mem": None}}}
    assert result["changed"] is True and result["patch"] == patch
    expected = [("GET", "https://10.0.0.1:8008/config", None)]
    if not check:
        expected.append(("PATCH", "https://10.0.0.1:8008/config", patch))
    assert sent == expected


@pytest.mark.parametrize("check", [True, False])
def test_etcd_auth_in_check_mode_reads_and_changes_nothing(check: bool, no_tls_context: None,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """On a fresh etcd (authentication off, no user, no role) check mode lists every change and makes none: only
    look-ups reach etcd. Without check mode the same changes are sent, secrets filled in."""
    module = load(REPO / "playbooks/roles/etcd/library/etcd_auth.py")
    sent: list[tuple[str, dict[str, Any]]] = []
    reads = {"auth/authenticate": module.NOT_ENABLED, "auth/user/get": "etcdserver: user name not found",
             "auth/role/get": "etcdserver: role name not found"}

    def call(self: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
        sent.append((path, body))
        if path in reads:
            raise module.EtcdError(reads[path])
        return {}

    monkeypatch.setattr(module.Gateway, "call", call)
    args = {"url": "https://10.0.0.1:2379", "ca_file": "/nonexistent/ca.crt", "root_password": "rootpw",
            "user": "patroni", "password": "userpw", "prefix": "/dbfleet/"}
    with patch_module_args({**args, "_ansible_check_mode": check}), pytest.raises(SystemExit):
        module.main()
    result = json.loads(capsys.readouterr().out)
    changes = ["user/add", "user/grant", "role/add", "role/grant", "user/add", "user/grant", "enable"]
    assert result["changed"] is True and result["changes"] == changes
    writes = [(path, body) for path, body in sent if path not in reads]
    if check:
        assert writes == []
    else:
        assert [path.removeprefix("auth/") for path, _ in writes] == changes
        assert {"name": "root", "password": "rootpw"} in [body for _, body in writes]
        assert {"name": "patroni", "password": "userpw"} in [body for _, body in writes]
