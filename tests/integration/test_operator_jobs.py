"""Long work never holds the operator's loop: backups and drills run as jobs beside the cycles.

A watching operator (the real CLI, in a subprocess) runs pg-main's full backup
and then its restore drill as jobs; the backup is made long honestly, by a
bulk table of BULK_ROWS rows in the scratch database. While they run, the
loop goes on: a dropped index on pg-main is back within the interval plus 2 s,
and a stopped Redis replica of `cache` is started and streams again before
both jobs are done. An
operator killed while its backup job runs is followed by one that reports the
job's true outcome and never takes the backup twice. A frozen cluster is cut
off by its cluster timeout while the other's cycles go on.

The two clusters are the lab's own (pg-main and cache): no cluster is added to
the lab for these tests. The index repaired while the job runs is on the
job's own cluster, which shows the same thing more strictly: not even the
cluster whose backup runs waits for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from backup_support import fresh_access
from test_indexes import CLUSTER, REPO, PgEnv, scratch_database

from dbfleet.backups.jobs import DONE, INTERRUPTED, RUNNING, JobRecord
from dbfleet.backups.storage import Storage
from redis_support import node as redis_node

pytestmark = pytest.mark.lab

INTERVAL = 1.0
BULK_ROWS = 4_000_000
"""Rows of about 100 bytes in idxtest.bulk: what makes pg-main's full backup take long enough to work beside."""
JOB_WAIT = 900
"""Upper bound, in seconds, on any one backup or drill job of the bulk data on a loaded 2-core machine."""


@pytest.fixture(scope="module")
def env(configured: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgEnv]:
    if not configured.has("redis"):
        pytest.skip("needs the lab's Redis cluster `cache` beside pg-main")
    for pgenv in scratch_database(configured, tmp_path_factory.mktemp("operator-jobs")):
        pgenv.operator = {"leader": "postgres"}
        pgenv.sql("CREATE TABLE IF NOT EXISTS canary (id bigserial PRIMARY KEY)")
        pgenv.sql("INSERT INTO canary DEFAULT VALUES")
        pgenv.sql(f"CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || md5((-g)::text) AS pad "
                  f"FROM generate_series(1, {BULK_ROWS}) g")
        fresh_access(configured, CLUSTER)  # pg-main's dbfleet manifests, drills and job records cleared
        yield pgenv


def storage(env: PgEnv) -> Storage:
    from dbfleet.wiring import open_access

    return open_access(env.cluster, env.lab.inventory_path).storage


def job(env: PgEnv, kind: str) -> JobRecord | None:
    return next((r for r in storage(env).jobs(CLUSTER) if r.kind == kind), None)


def wait_job(env: PgEnv, kind: str, state: str, timeout: float, proc: subprocess.Popen[str] | None = None,
             since: str = "") -> JobRecord:
    """Until pg-main's `kind` job record (one started after `since`) is in `state`; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        record = job(env, kind)
        if record is not None and record.state == state and record.started_at > since:
            return record
        if proc is not None:
            assert proc.poll() is None, f"the operator exited {proc.returncode}"
        assert time.monotonic() < deadline, f"no {kind} job {state} within {timeout:.0f}s; last: {record}"
        time.sleep(0.5)


def this_minute_after_the_last_backup(env: PgEnv) -> datetime:
    """The current minute, once it began after pg-main's newest backup started (waiting for the next if not): a
    daily cron at this minute makes a full backup due now, and only once."""
    starts = [m.started for m in storage(env).manifests(CLUSTER)]
    now = datetime.now(UTC)
    if starts and now.replace(second=0, microsecond=0) <= max(starts):
        time.sleep(61 - now.second)
        now = datetime.now(UTC)
    return now


def jobs_spec(env: PgEnv, backups: bool = True) -> Path:
    """The indexes spec on idxtest, with pg-main's full backup due now (its cron fires this minute, once a day)
    and cache's backups off, so the only jobs are pg-main's backup and then its drill; no backups at all unless
    `backups`."""
    data = yaml.safe_load(env.write_spec().read_text())
    fired = this_minute_after_the_last_backup(env)
    for cluster in data["clusters"]:
        if cluster["name"] == CLUSTER and not backups:
            cluster["backup"]["enabled"] = False
            cluster.pop("dr", None)  # dr needs backups to copy
        elif cluster["name"] == CLUSTER:
            cluster["backup"]["schedule"] = {"full": f"{fired.minute} {fired.hour} * * *"}
            cluster["backup"]["drill"]["schedule"] = f"{fired.minute} {fired.hour} * * *"
        elif cluster["name"] == "cache":
            cluster["backup"]["enabled"] = False
            cluster.pop("dr", None)
    path = env.workdir / f"jobs-spec-{len(list(env.workdir.glob('jobs-spec-*')))}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli_argv(env: PgEnv, spec: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "dbfleet", "--spec", str(spec), *args, "--cluster", CLUSTER, "--cluster", "cache",
            "--reconciler", "members", "--reconciler", "indexes", "--reconciler", "backups",
            "--inventory", str(env.lab.inventory_path), "--secrets", str(env.lab.state.secrets)]


@contextmanager
def watching(env: PgEnv, spec: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """`reconcile --watch` in a subprocess, its cycles (--json lines) in cycles.jsonl and its log in operator.log
    (files, not pipes, which would fill and stall it); killed at the end if the test did not stop it."""
    argv = cli_argv(env, spec, "reconcile", "--watch", "--interval", str(INTERVAL), "--no-metrics", "--json",
                    "--state", str(env.workdir / "jobs-state.json"), *extra)
    with (env.workdir / "cycles.jsonl").open("w") as out, (env.workdir / "operator.log").open("a") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=log, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def cycles(env: PgEnv) -> list[dict[str, Any]]:
    lines = (env.workdir / "cycles.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def run_once(env: PgEnv, spec: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(cli_argv(env, spec, *args, "--json"), cwd=REPO, capture_output=True, text=True,
                          timeout=JOB_WAIT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return done.returncode, json.loads(done.stdout)


def restored_after(env: PgEnv, index: str, timeout: float) -> float:
    """Drop `index` and measure how long the operator takes to have it valid again."""
    env.sql(f"DROP INDEX {index}")
    dropped = time.monotonic()
    while env.index_valid(index) is not True:
        assert time.monotonic() - dropped < timeout, f"{index} not back within {timeout:.0f}s"
        time.sleep(0.1)
    return time.monotonic() - dropped


def replica_streaming(env: PgEnv, host: str) -> bool:
    cache = env.lab.fleet.cluster("cache")
    try:
        info = redis_node(env.lab, host, cache).info("replication")
    except Exception:  # down, or refusing while it loads: not streaming yet
        return False
    return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")


def test_backup_and_drill_jobs_run_beside_the_loop(env: PgEnv) -> None:
    spec = jobs_spec(env)
    cache = env.lab.fleet.cluster("cache")
    replica = cache.data_hosts()[-1].name
    with watching(env, spec, "--job-grace", str(JOB_WAIT)) as proc:
        backup = wait_job(env, "backup", RUNNING, 120, proc)
        took = restored_after(env, "orders_open_idx", 60)
        still = job(env, "backup")
        assert still is not None and still.id == backup.id and still.state == RUNNING, \
            f"the backup job ended before the index came back ({took:.1f}s): nothing shown; {still}"
        assert took <= INTERVAL + 2, f"the dropped index came back after {took:.1f}s, not within {INTERVAL + 2}s"
        code, status = run_once(env, spec, "status", "--state", str(env.workdir / "jobs-state.json"))
        row = next(r for r in status["clusters"] if r["cluster"] == CLUSTER)
        assert row["jobs"].startswith("backup full"), row

        subprocess.run(["docker", "exec", env.lab.container(replica), "systemctl", "stop", "redis-server"],
                       check=True, timeout=60)
        stopped = time.monotonic()
        while not replica_streaming(env, replica):
            assert time.monotonic() - stopped < INTERVAL + 120, f"{replica} not streaming within {INTERVAL + 120}s"
            time.sleep(0.2)
        restarted = time.monotonic() - stopped
        during = [r for r in storage(env).jobs(CLUSTER) if r.state == RUNNING]
        assert during, f"both jobs ended before {replica} streamed again ({restarted:.1f}s): nothing shown"
        done = wait_job(env, "backup", DONE, JOB_WAIT, proc)
        drilled = wait_job(env, "drill", DONE, JOB_WAIT, proc, since=backup.started_at)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 0
    backup_s = (done.heartbeat - backup.started).total_seconds()
    drill_s = (drilled.heartbeat - drilled.started).total_seconds()
    print(f"\nwhile a {backup_s:.0f}s backup job ran, a dropped index was back in {took:.1f}s; while its "
          f"{during[0].kind} job ran, a stopped Redis replica streamed again after {restarted:.1f}s "
          f"(the drill job then took {drill_s:.0f}s)")


def test_an_operator_killed_mid_job_is_followed_by_its_true_outcome_and_no_second_backup(env: PgEnv) -> None:
    spec = jobs_spec(env)  # due again: its cron fired after the last test's backup
    before = {m.id: m.status for m in storage(env).manifests(CLUSTER)}
    last = job(env, "backup")
    with watching(env, spec) as proc:
        running = wait_job(env, "backup", RUNNING, 120, proc, since=last.started_at if last else "")
        deadline = time.monotonic() + 120
        while not running.result:  # the job names its pending backup once pgBackRest is about to start
            assert time.monotonic() < deadline, "the job never named its backup"
            time.sleep(0.2)
            running = job(env, "backup") or running
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    killed = running.result
    primary = env.lab.container(env.primary)
    deadline = time.monotonic() + JOB_WAIT  # the host's pgbackrest may still finish its part
    while subprocess.run(["docker", "exec", primary, "pgrep", "-f", "pgbackrest.* backup"], check=False,
                         capture_output=True, timeout=30).returncode == 0:
        assert time.monotonic() < deadline, "pgbackrest still running long after its operator died"
        time.sleep(1)
    assert job(env, "backup").state == RUNNING  # as the killed operator left it

    code, once = run_once(env, spec, "reconcile", "--once", "--state", str(env.workdir / "jobs-state.json"))
    outcomes = {(o["kind"], o["target"]): o for c in once["clusters"] for o in c["outcomes"]}
    settled = outcomes[("settle-job", running.id)]
    assert settled["status"] == "done" and f"{INTERRUPTED}:" in settled["message"], settled
    assert outcomes[("mark-orphaned", killed)]["status"] == "done"
    assert outcomes[("backup", "full")]["status"] == "done", outcomes
    assert code == 0, once
    after = {m.id: m.status for m in storage(env).manifests(CLUSTER)}
    new = {i: s for i, s in after.items() if i not in before}
    assert new.pop(killed) == "orphaned"
    # One backup taken again, by policy; the same cycle's drill may already have verified it.
    assert len(new) == 1 and list(new.values())[0] in ("complete", "verified"), new
    code, plan = run_once(env, spec, "plan")
    assert code == 0 and "backup" not in [a["kind"] for a in plan["actions"]], plan["actions"]  # never twice
    print(f"\nkilled mid-job: {running.id} settled '{settled['message']}'; backup {killed} orphaned, "
          f"{next(iter(new))} taken once")


def test_a_frozen_cluster_is_cut_off_by_its_timeout_and_the_others_go_on(env: PgEnv) -> None:
    spec = jobs_spec(env, backups=False)
    frozen = [env.lab.container(h) for h in env.lab.fleet.cluster("cache").host_names()]
    timeout = 5.0
    (env.workdir / "jobs-state.json").unlink(missing_ok=True)
    with watching(env, spec, "--cluster-timeout", str(timeout)) as proc:
        first_cycle = time.monotonic() + 60
        while not (env.workdir / "jobs-state.json").exists():
            assert time.monotonic() < first_cycle and proc.poll() is None, "no cycle recorded"
            time.sleep(0.2)
        subprocess.run(["docker", "pause", *frozen], check=True, timeout=60)
        try:
            time.sleep(timeout + INTERVAL)  # cache's cycle is past its timeout now
            took = restored_after(env, "orders_open_idx", 60)
        finally:
            subprocess.run(["docker", "unpause", *frozen], check=True, timeout=60)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    seen = cycles(env)
    cache = [c for cycle in seen for c in cycle["clusters"] if c["cluster"] == "cache"]
    assert any("cluster timeout" in (c["error"] or "") for c in cache), [c["sentence"] for c in cache][-5:]
    assert all(cycle["seconds"] < timeout + 3 for cycle in seen), [round(c["seconds"], 1) for c in seen]
    assert took <= INTERVAL + 2 + timeout, f"the index came back after {took:.1f}s"
    print(f"\nwith cache frozen, every cycle ended within {timeout:g}s + 3 s (longest "
          f"{max(c['seconds'] for c in seen):.1f}s) and pg-main's dropped index was back in {took:.1f}s")
