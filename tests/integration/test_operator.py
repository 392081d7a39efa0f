"""The operator process against the lab's PostgreSQL: one leader acts, --watch stops on SIGTERM, status.

Its leader lock here is the PostgreSQL advisory lock (operator.leader: postgres); the etcd lease, the default
for the example's Patroni cluster, is tested against a real etcd in test_etcd_leader.py and in the lab by
tests/faults/test_operator_faults.py."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from test_indexes import CLUSTER, REPO, PgEnv, changes, outcomes, scratch_database, target

from dbfleet.cli import main
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.postgres import PostgresSession, connect
from dbfleet.reconcile.leader import LOCK_KEY, AdvisoryLeaderLock

pytestmark = pytest.mark.lab

LOCK_HOLDERS = (f"SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                f"WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {LOCK_KEY >> 32} "
                f"AND l.objid = {LOCK_KEY & 0xFFFFFFFF}")


@pytest.fixture(scope="module")
def pgenv(configured: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgEnv]:
    for env in scratch_database(configured, tmp_path_factory.mktemp("operator")):
        env.operator = {"leader": "postgres"}  # this module is about the advisory lock; etcd's is test_etcd_leader
        yield env


def lock_holders(env: PgEnv) -> list[str]:
    return [row[0] for row in env.sql(LOCK_HOLDERS, dbname="postgres")]


def other_operator(env: PgEnv) -> AdvisoryLeaderLock:
    """A second operator's leader lock, on the primary the engine session finds."""
    access = FleetAccess.load(env.lab.inventory_path, env.lab.state.secrets)

    def lock_connection() -> psycopg.Connection[Any]:
        with PostgresSession(env.cluster, access) as session:
            host = session.primary()
        return connect(env.cluster, access, host, "postgres", "other-operator")

    return AdvisoryLeaderLock(lock_connection)


def test_only_the_lock_holder_acts(pgenv: PgEnv):
    pgenv.dbfleet("reconcile", "--once")
    pgenv.sql("DROP INDEX orders_open_idx")
    with other_operator(pgenv) as other:
        assert other.acquire()
        assert lock_holders(pgenv) == ["other-operator"]
        standby = pgenv.dbfleet("reconcile", "--once")
        assert standby["leader"].startswith("not leader, observed only: other-operator")
        assert changes(standby) == [("create-index", target("orders_open_idx"))] and outcomes(standby) == {}
        assert pgenv.index_valid("orders_open_idx") is None  # planned, not done
    assert lock_holders(pgenv) == []  # released on exit
    leader = pgenv.dbfleet("reconcile", "--once")
    assert leader["leader"] == "this process leads"
    assert outcomes(leader)[target("orders_open_idx")]["status"] == "done"
    assert lock_holders(pgenv) == []  # --once lets go of the lock when it is done


def test_watch_acts_each_cycle_and_stops_cleanly_on_sigterm(pgenv: PgEnv):
    spec = pgenv.write_spec()
    argv = [sys.executable, "-m", "dbfleet", "-v", "--spec", str(spec), "reconcile", "--watch", "--interval", "1",
            "--cluster", CLUSTER, "--reconciler", "indexes", "--no-metrics",
            "--inventory", str(pgenv.lab.inventory_path), "--secrets", str(pgenv.lab.state.secrets),
            "--state", str(pgenv.workdir / "watch-state.json")]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while not any(h.startswith("dbfleet-operator-leader") for h in lock_holders(pgenv)):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the watching operator never took the leader lock"
            time.sleep(0.5)
        pgenv.sql("DROP INDEX orders_ref_desc_idx")  # the next cycle puts it back
        while pgenv.index_valid("orders_ref_desc_idx") is not True:
            assert time.monotonic() < deadline, "the watching operator did not restore the index"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err[-3000:]
    assert "created idxtest/public.orders_ref_desc_idx" in out
    assert f"leader lock {LOCK_KEY} released" in err  # released by the operator, not by a dropped connection
    assert "create-index idxtest/public.orders_ref_desc_idx: declared in the spec and absent" in err  # logged
    assert lock_holders(pgenv) == []


def test_status_reports_the_cluster(pgenv: PgEnv):
    pgenv.dbfleet("reconcile", "--once")
    data = pgenv.dbfleet("status")
    (row,) = data["clusters"]
    members = len(pgenv.cluster.all_hosts())
    assert (row["cluster"], row["engine"], row["primary"]) == (CLUSTER, "postgres", pgenv.primary)
    assert row["members_up"] == f"{members}/{members}"
    assert row["declared"] == "4/4" and row["invalid"] == 0 and row["pending"] == 0
    assert row["last_reconcile"].startswith("ok ")


def test_plan_needs_no_lock_and_changes_nothing(pgenv: PgEnv):
    pgenv.sql("DROP INDEX orders_open_idx")
    with other_operator(pgenv) as other:
        assert other.acquire()
        plan = pgenv.dbfleet("plan")
        assert changes(plan) == [("create-index", target("orders_open_idx"))]
    assert pgenv.index_valid("orders_open_idx") is None
    pgenv.dbfleet("reconcile", "--once")
    assert pgenv.index_valid("orders_open_idx") is True


def test_the_audit_trail_records_what_the_leader_did_and_only_that(pgenv: PgEnv):
    trail = pgenv.workdir / "operator-audit.jsonl"
    pgenv.dbfleet("reconcile", "--once")
    before = trail.read_text().count("\n")
    pgenv.sql("DROP INDEX orders_open_idx")
    with other_operator(pgenv) as other:
        assert other.acquire()
        pgenv.dbfleet("reconcile", "--once")  # a standby observes and records nothing
    assert trail.read_text().count("\n") == before
    spec = pgenv.write_spec()
    pgenv.dbfleet("reconcile", "--once", spec=spec)
    lines = [json.loads(line) for line in trail.read_text().splitlines()[before:]]
    assert [(r["cluster"], r["action"]["kind"], r["action"]["target"], r["outcome"]) for r in lines] == [
        (CLUSTER, "create-index", target("orders_open_idx"), "done")]
    assert lines[0]["spec_sha256"] == hashlib.sha256(spec.read_bytes()).hexdigest()
    assert lines[0]["operator"].startswith("dbfleet-operator-leader ") and lines[0]["reason"]
    assert trail.stat().st_mode & 0o777 == 0o600
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["audit", "--state", str(pgenv.workdir / "state.json"), "--cluster", CLUSTER, "--since", "10m",
                     "--json"]) == 0
    assert target("orders_open_idx") in [r["action"]["target"] for r in json.loads(out.getvalue())["records"]]
