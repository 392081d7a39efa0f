"""The reconcile, plan and status commands: options, usage errors and exit codes, without servers."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from cli_support import empty_fleet_files

from dbfleet.cli import build_parser, main
from dbfleet.engines.postgres import classify
from dbfleet.errors import PermanentError, TemporaryError

SPEC = str(Path(__file__).resolve().parents[2] / "fleet.example.yaml")


def test_the_commands_are_registered_with_their_modes():
    parser = build_parser()
    args = parser.parse_args(["reconcile", "--once", "--json", "--cluster", "pg-main"])
    assert args.once and args.json and args.cluster == ["pg-main"]
    assert parser.parse_args(["reconcile", "--watch", "--interval", "5"]).interval == 5
    assert parser.parse_args(["plan", "--lab", "x"]).lab == "x"
    assert parser.parse_args(["status", "--json"]).json


def test_reconcile_needs_a_mode(capsys):
    assert main(["reconcile"]) == 2
    assert "--once" in capsys.readouterr().err


def test_an_unknown_cluster_is_a_usage_error(capsys, tmp_path):
    assert main(["--spec", SPEC, "plan", "--cluster", "nope", "--inventory", str(tmp_path / "h.yml")]) == 2
    assert "no cluster named nope" in capsys.readouterr().err


def test_an_unknown_reconciler_is_a_usage_error(capsys, tmp_path):
    assert main(["--spec", SPEC, "plan", "--reconciler", "nope", "--inventory", str(tmp_path / "h.yml")]) == 2
    assert "no reconciler named nope; there are members, dr, indexes" in capsys.readouterr().err


def test_a_missing_inventory_is_a_usage_error(capsys, tmp_path):
    assert main(["--spec", SPEC, "status", "--inventory", str(tmp_path / "none.yml")]) == 2
    assert "no such inventory" in capsys.readouterr().err


def test_a_missing_secrets_file_is_a_usage_error(capsys, tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    pg-1: {dbfleet_address: 127.0.0.1}\n")
    assert main(["--spec", SPEC, "plan", "--inventory", str(inventory)]) == 2
    assert "no such secrets file" in capsys.readouterr().err


def test_a_bad_interval_is_a_usage_error(capsys, tmp_path):
    assert main(["--spec", SPEC, "reconcile", "--watch", "--interval", "0"]) == 2


@pytest.mark.parametrize("exc, kind", [
    (psycopg.OperationalError("connection to server at \"10.0.0.1\", port 5432 failed: timeout expired"),
     TemporaryError),
    (psycopg.OperationalError('FATAL:  database "nodb" does not exist'), PermanentError),
    (psycopg.OperationalError('FATAL:  password authentication failed for user "postgres"'), PermanentError),
    (psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), TemporaryError),
    (psycopg.errors.ReadOnlySqlTransaction("cannot execute CREATE INDEX in a read-only transaction"),
     TemporaryError),
    (psycopg.errors.UniqueViolation("could not create unique index"), PermanentError),
    (psycopg.errors.SyntaxError("syntax error at or near"), PermanentError),
])
def test_postgres_errors_are_split_into_temporary_and_permanent(exc, kind):
    error = classify(exc, "pg-1", "database app")
    assert type(error) is kind
    assert error.host == "pg-1" and error.message.startswith("database app: ")


def test_reconcile_creates_its_audit_trail_0600_beside_the_state(tmp_path, capsys):
    inventory = empty_fleet_files(tmp_path)
    assert main(["--spec", SPEC, "reconcile", "--once", "--inventory", str(inventory)]) == 1  # no CA: no cluster
    trail = tmp_path / "operator-audit.jsonl"
    assert trail.exists() and trail.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "operator-state.json").exists()
    assert main(["audit", "--inventory", str(inventory)]) == 0
    assert "(no actions recorded)" in capsys.readouterr().out


def test_reconcile_refuses_to_start_when_its_audit_trail_is_a_link(tmp_path, capsys):
    inventory = empty_fleet_files(tmp_path)
    (tmp_path / "operator-audit.jsonl").symlink_to(tmp_path / "elsewhere")
    assert main(["--spec", SPEC, "reconcile", "--once", "--inventory", str(inventory)]) == 2
    err = capsys.readouterr().err
    assert f"dbfleet reconcile: {tmp_path / 'operator-audit.jsonl'}: is a symbolic link" in err
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "operator-state.json").exists()


def test_the_operator_records_with_the_hash_of_the_spec_it_read(tmp_path):
    import hashlib
    import json

    from dbfleet.actions import Action, Outcome
    from dbfleet.commands.reconcile import build_operator

    inventory = empty_fleet_files(tmp_path)
    args = build_parser().parse_args(["--spec", SPEC, "reconcile", "--once", "--inventory", str(inventory)])
    operator = build_operator(args, audit=True)
    assert operator.record is not None
    operator.record(Outcome(Action("pg-main", "members", "start", "pg-2", "does not answer"), "done", "started"))
    line = json.loads((tmp_path / "operator-audit.jsonl").read_text())
    assert line["spec_sha256"] == hashlib.sha256(Path(SPEC).read_bytes()).hexdigest()
    assert line["operator"].startswith("dbfleet-operator-leader ") and line["outcome"] == "done"
    assert build_operator(args).record is None  # plan and status never act, so they keep no trail


@pytest.mark.parametrize("option", [["--parallel", "0"], ["--cluster-timeout", "0"]])
def test_a_pool_of_no_thread_or_a_timeout_of_nothing_is_a_usage_error(option, capsys, tmp_path):
    assert main(["--spec", SPEC, "plan", *option, "--inventory", str(tmp_path / "h.yml")]) == 2
    assert "--parallel must be 1 or more, and --cluster-timeout positive" in capsys.readouterr().err


def test_parallel_and_the_cluster_timeout_reach_the_operator(tmp_path):
    from dbfleet.commands.reconcile import build_operator

    inventory = empty_fleet_files(tmp_path)
    args = build_parser().parse_args(["--spec", SPEC, "reconcile", "--watch", "--parallel", "8", "--cluster-timeout",
                                      "12", "--inventory", str(inventory)])
    operator = build_operator(args, background_jobs=True)
    assert (operator.parallel, operator.cluster_timeout) == (8, 12)
    assert operator.jobs is not None and not operator.jobs.inline  # --watch runs its jobs beside the cycles
    assert build_operator(build_parser().parse_args(["--spec", SPEC, "plan", "--inventory", str(inventory)])
                          ).jobs.inline
