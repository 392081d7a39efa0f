"""The command line as its users expect it (issue 19): global options anywhere, one line per expected error with
exit 2, --json failures as one object on stdout, a description for every command, a status that fits 100
characters, the default spec, and never a traceback.

No lab and no server: every command line here fails before anything connects, or its output is rendered
from made-up rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dbfleet import shipped
from dbfleet.cli import build_parser, main, subparsers
from dbfleet.commands import backup, status
from dbfleet.commands.common import settle_paths
from dbfleet.errors import PermanentError

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "fleet.example.yaml"


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DBFLEET_SPEC", raising=False)
    monkeypatch.delenv("DBFLEET_PROJECT", raising=False)
    monkeypatch.chdir(tmp_path)


def settled(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    settle_paths(args)
    return args


def write_inventory(path: Path, hosts: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"all": {"hosts": {h: {"dbfleet_address": a} for h, a in hosts.items()}}}))
    return path


# --------------------------------------------------------------------------- global options


@pytest.mark.parametrize("command", [["validate"], ["plan"], ["status", "--wide"], ["reconcile", "--once"],
                                     ["backup", "list"], ["backup", "run", "--cluster", "cache"], ["lab", "up"],
                                     ["lab", "status"], ["configure"], ["rules"], ["audit"], ["restore",
                                     "--cluster", "cache"], ["drill", "--cluster", "cache"], ["init"]])
def test_global_options_go_before_or_after_the_command(command: list[str], tmp_path: Path) -> None:
    spec, project = tmp_path / "mine.yaml", tmp_path / "proj"
    project.mkdir()
    before = settled(["--project", str(project), "--spec", str(spec), "-v", *command])
    after = settled([*command, "--project", str(project), "--spec", str(spec), "-v"])
    mixed = settled(["--project", str(project), *command, "--spec", str(spec)])
    for args in (before, after, mixed):
        assert (args.project, args.spec) == (project, spec)
    assert before.verbose == after.verbose == 1 and mixed.verbose == 0


def test_an_option_after_the_command_wins_and_one_not_repeated_keeps_the_first(tmp_path: Path) -> None:
    args = settled(["--spec", "a.yaml", "validate", "--spec", "b.yaml"])
    assert args.spec == tmp_path / "b.yaml"
    assert settled(["--spec", "a.yaml", "validate"]).spec == tmp_path / "a.yaml"


def test_validate_takes_spec_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--spec", str(SPEC)]) == 0
    assert f"{SPEC}: valid" in capsys.readouterr().out


# --------------------------------------------------------------------------- the default spec


def test_the_default_spec_is_fleet_yaml_then_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "elsewhere.yaml"
    monkeypatch.setenv("DBFLEET_SPEC", str(other))
    assert settled(["validate"]).spec == other
    (tmp_path / "fleet.yaml").write_text("")
    assert settled(["validate"]).spec == tmp_path / "fleet.yaml"  # ./fleet.yaml first, as issue 19 asks
    assert settled(["validate", "--spec", "x.yaml"]).spec == tmp_path / "x.yaml"
    monkeypatch.setenv("DBFLEET_SPEC", "relative.yaml")
    (tmp_path / "fleet.yaml").unlink()
    assert settled(["validate"]).spec == tmp_path / "relative.yaml"


def test_no_spec_is_one_line_naming_both_places(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["validate"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"dbfleet validate: no fleet spec: {tmp_path / 'fleet.yaml'} does not exist and "
                                "$DBFLEET_SPEC is not set; `dbfleet init` writes a starter fleet.yaml there, "
                                "or pass --spec FILE"]
    monkeypatch.setenv("DBFLEET_SPEC", "gone.yaml")
    assert main(["validate"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "fleet.yaml") in err and f"$DBFLEET_SPEC's {tmp_path / 'gone.yaml'}" in err


def test_the_lab_commands_keep_the_example_spec(tmp_path: Path) -> None:
    assert settled(["lab", "up"]).spec == shipped.example_spec()
    (tmp_path / "fleet.example.yaml").write_text("")
    assert settled(["lab", "status"]).spec == tmp_path / "fleet.example.yaml"
    (tmp_path / "fleet.yaml").write_text("")
    assert settled(["lab", "up"]).spec == tmp_path / "fleet.yaml"


# --------------------------------------------------------------------------- expected errors: one line, exit 2


def _cases(tmp: Path) -> list[tuple[list[str], str]]:
    """Command lines that must fail with exit 2 and one line on stderr containing the text given."""
    spec = ["--spec", str(SPEC)]
    no_pg = str(write_inventory(tmp / "web" / "hosts.yml", {"web-1": "10.0.0.9"}))
    return [
        (["backup", "list", *spec], "no such inventory"),
        (["backup", "run", "--cluster", "pg-main", *spec], "no such inventory"),
        (["backup", "run", "--cluster", "nope", *spec], "--cluster: no cluster named nope; the spec has pg-main"),
        (["backup", "run", "--cluster", "pg-main", "--inventory", no_pg, *spec], "has no host of cluster pg-main"),
        (["drill", "--cluster", "nope", *spec], "no cluster named nope"),
        (["restore", "--cluster", "pg-main", "--to-time", "garbage", *spec], "--to-time: 'garbage' is not"),
        (["backup", "mark", "--cluster", "cache", "--name", "x", *spec], "a PostgreSQL feature; cache is redis"),
        (["lab", "up", "--engines", "foo", *spec], "--engines: unknown foo; expected some of mongo, monitor"),
        (["lab", "up", "--engines", ",", *spec], "--engines: none given"),
        (["status", "--cluster", "nope", *spec], "no cluster named nope"),
        (["plan", *spec], "no such inventory"),
        (["validate"], "no fleet spec"),
        (["validate", "--spec", str(tmp / "missing.yaml")], "missing.yaml"),
        (["--project", str(tmp / "nope"), "validate"], "does not exist"),
        (["reconcile", *spec], "one of the arguments --once --watch is required"),
        (["backup"], "the following arguments are required: VERB"),
        (["backup", "run", *spec], "the following arguments are required: --cluster"),
        (["nope"], "invalid choice: 'nope'"),
        ([], "the following arguments are required: COMMAND"),
        (["validate", "--bogus"], "unrecognized arguments: --bogus"),
        (["audit", "--since", "last tuesday"], "--since"),
        (["audit"], "no audit trail"),
        (["configure", "--playbook", "nope.yml", *spec], "--playbook"),
    ]


def test_every_expected_error_is_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, text in _cases(tmp_path):
        code = main(argv)
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert code == 2, (argv, captured.err)
        assert len(lines) == 1 and text in lines[0] and lines[0].startswith("dbfleet"), (argv, captured.err)
        assert captured.out == "", argv
        assert "KeyError" not in lines[0] and "\"no cluster" not in lines[0], argv


def test_a_bad_spec_is_a_line_per_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.read_text().replace("engine: redis", "engine: memcached", 1))
    assert main(["validate", "--spec", str(bad)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith(f"dbfleet validate: {bad}:") for line in lines)
    assert any("expected 'postgres', 'mongo', 'redis', got 'memcached'" in line for line in lines)


# --------------------------------------------------------------------------- --json failures


def test_with_json_a_failure_is_one_object_on_stdout_and_the_exit_code_is_kept(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    without_json = {"lab", "configure", "rules", "init"}  # their output is for people only; --json is refused
    checked = 0
    for argv, text in _cases(tmp_path):
        if argv[:1] and argv[0] in without_json:
            continue
        checked += 1
        code = main([*argv, "--json"])
        captured = capsys.readouterr()
        assert code == 2, argv
        body = json.loads(captured.out)  # exactly one object: a second would not parse
        assert body["ok"] is False and text in body["error"] and body["location"], (argv, body)
    assert checked > 15
    assert main(["lab", "up", "--json"]) == 2
    body = json.loads(capsys.readouterr().out)
    assert body["error"] == "unrecognized arguments: --json (see `dbfleet lab up --help`)"
    assert body["location"] == "dbfleet lab up"


def test_json_failure_locations_say_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["backup", "run", "--cluster", "nope", "--spec", str(SPEC), "--json"])
    assert json.loads(capsys.readouterr().out)["location"] == "--cluster"
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.read_text().replace("engine: redis", "engine: memcached", 1))
    main(["validate", "--spec", str(bad), "--json"])
    location = json.loads(capsys.readouterr().out)["location"]
    assert location.startswith(f"{bad}:") and location.endswith(".engine")
    main(["backup", "--json"])
    assert json.loads(capsys.readouterr().out)["location"] == "dbfleet backup"


def test_with_json_a_failed_backup_is_an_object_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = write_inventory(tmp_path / "hosts.yml", {"pg-1": "10.0.0.1"})

    def failing(access: Any, kind: str) -> Any:
        raise PermanentError("repository full", cluster="pg-main", host="pg-1", action="backup")

    monkeypatch.setattr(backup, "open_access", lambda *a, **k: object())
    monkeypatch.setattr(backup, "take_backup", failing)
    argv = ["backup", "run", "--cluster", "pg-main", "--inventory", str(inventory), "--spec", str(SPEC)]
    assert main([*argv, "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"ok": False, "error": "cluster pg-main, host pg-1, action backup: "
                                        "repository full", "location": "cluster pg-main, host pg-1, action backup"}
    assert captured.err.splitlines() == ["dbfleet backup run: cluster pg-main, host pg-1, action backup: "
                                         "repository full"]
    assert main(argv) == 1
    assert capsys.readouterr().out == ""


def test_a_bug_is_not_an_expected_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19: every KeyError became exit 2, hiding real bugs. A KeyError in the work surfaces."""
    inventory = write_inventory(tmp_path / "hosts.yml", {"pg-1": "10.0.0.1"})
    monkeypatch.setattr(backup, "open_access", lambda *a, **k: object())

    def buggy(access: Any, kind: str) -> Any:
        return {}["oops"]

    monkeypatch.setattr(backup, "take_backup", buggy)
    with pytest.raises(KeyError):
        main(["backup", "run", "--cluster", "pg-main", "--inventory", str(inventory), "--spec", str(SPEC)])


# --------------------------------------------------------------------------- --help


def test_every_command_and_verb_has_a_description() -> None:
    parser = build_parser()
    children = subparsers(parser)
    names = {child.prog for child in children}
    assert {"dbfleet validate", "dbfleet backup", "dbfleet backup run", "dbfleet lab up", "dbfleet status",
            "dbfleet restore", "dbfleet drill", "dbfleet audit"} <= names
    for child in [parser, *children]:
        assert child.description and len(child.description) > 20, child.prog


@pytest.mark.parametrize("argv", [["--help"], ["validate", "--help"], ["backup", "--help"],
                                  ["backup", "run", "--help"], ["lab", "--help"]])
def test_help_prints_the_description_and_exits_0(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dbfleet") and "--spec" in out


# --------------------------------------------------------------------------- status width


def _rows() -> list[dict[str, Any]]:
    """Rows as the providers and Prometheus make them, with long values where they can be long."""
    return [
        {"cluster": "pg-main", "engine": "postgres", "primary": "pg-1", "members_up": "3/3", "observed": "ok",
         "indexes": 12, "declared": 10, "invalid": 0, "unused": 1, "duplicate": 0, "pending": 2, "findings": 1,
         "last_reconcile": "ok 12m ago (4 changes)", "last_backup": "full 2h ago", "last_drill": "ok",
         "rto": "41.2s", "rpo": "3m", "conn_used": "12%", "lag_max": "0.2s", "hit_ratio": "0.999",
         "p95_query": "3.1ms", "disk_used": "41%"},
        {"cluster": "mongo-main", "engine": "mongo", "primary": "-", "members_up": "-",
         "observed": "skipped: none of its hosts is in the inventory /home/me/fleet/inventories/local/lab/hosts.yml",
         "pending": 0, "findings": 0, "last_reconcile": "never", "last_backup": "none", "disk_used": "-"},
        {"cluster": "cache", "engine": "redis", "primary": "redis-1", "members_up": "3/3",
         "observed": "FAILED: cluster cache, host redis-2, action observe: connection refused by 10.0.3.12:6379",
         "pending": 0, "findings": 0, "last_reconcile": "FAILED 3d ago (0 changes)", "last_backup": "snapshot 5m ago",
         "last_drill": "FAILED (20261125T020000Z-snapshot)", "rto": "-", "rpo": "-", "memory_used": "50%",
         "evictions": "0", "disk_used": "7%"},
    ]


def test_status_fits_the_columns_that_matter_in_100_characters() -> None:
    text = status.render_status(_rows(), wide=False)
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines), max(len(line) for line in lines)
    assert lines[0].split() == ["CLUSTER", "ENGINE", "PRIMARY", "MEMBERS_UP", "OBSERVED", "PENDING",
                                "LAST_RECONCILE", "LAST_BACKUP"]
    assert [line.split()[0] for line in lines[1:]] == ["pg-main", "mongo-main", "cache"]  # names stay whole
    assert "pg-1" in lines[1] and "ok 12m ago (4 chang" in lines[1] and "full 2h ago" in lines[1]
    assert "skipped~" in lines[2] and "FAILED:~" in lines[3]  # long observations are cut first, visibly
    assert "CONN_USED" not in text and "RTO" not in text


def test_status_wide_shows_every_column_unfitted() -> None:
    text = status.render_status(_rows(), wide=True)
    head = text.splitlines()[0].split()
    assert {"INDEXES", "FINDINGS", "LAST_DRILL", "RTO", "RPO", "CONN_USED", "MEMORY_USED", "DISK_USED"} <= set(head)
    assert "connection refused by 10.0.3.12:6379" in text and "~" not in text


def test_status_takes_wide() -> None:
    assert build_parser().parse_args(["status", "--wide"]).wide
    assert not build_parser().parse_args(["status"]).wide


# --------------------------------------------------------------------------- never a traceback


def test_no_bad_command_line_raises_or_prints_a_traceback(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A traceback is always a bug. main() is what `dbfleet` and `python -m dbfleet` run: on each bad command line
    above and a few more it returns 1 or 2 with a message, never raises; three go through the real entry point."""
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "binary.yaml").write_bytes(b"\x00\xff\xfe garbage")
    (tmp_path / "afile").write_text("")
    extra = [(["validate", "--spec", str(tmp_path / "dir.yaml")], ""),
             (["validate", "--spec", str(tmp_path / "binary.yaml")], ""),
             (["init", str(tmp_path / "afile" / "sub")], ""),
             (["rules", "--spec", str(SPEC), "--write", "--output", str(tmp_path / "afile" / "x.yml")], ""),
             (["status", "--spec", str(SPEC), "--inventory", str(tmp_path / "dir.yaml")], ""),
             (["backup", "list", "--spec", str(SPEC), "--inventory", str(tmp_path / "binary.yaml")], ""),
             (["audit", "--state", str(tmp_path / "dir.yaml")], ""),
             (["--project", str(tmp_path / "afile"), "validate"], "")]
    lines = [argv for argv, _ in [*_cases(tmp_path), *extra]]
    for argv in lines:
        for tail in ([], ["--json"]):
            code = main([*argv, *tail])
            captured = capsys.readouterr()
            assert code in (1, 2), (argv, tail, code, captured.err)
            assert captured.err.strip() and "Traceback" not in captured.err + captured.out, (argv, tail)
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    env.pop("DBFLEET_SPEC", None)
    env.pop("DBFLEET_PROJECT", None)
    for argv in (lines[0], extra[0][0], ["restore", "--cluster", "pg-main", "--to-time", "x", "--spec", str(SPEC)]):
        done = subprocess.run([sys.executable, "-m", "dbfleet", *argv], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=120)
        assert "Traceback" not in done.stderr + done.stdout, (argv, done.stderr)
        assert done.returncode in (1, 2) and len(done.stderr.splitlines()) == 1, (argv, done.stderr)
