"""`dbfleet configure --fast` (issue 21): a cluster whose hosts all still hold what their last full converge left
is skipped; drift in a file, in PostgreSQL's catalog or in Redis's live settings sends that cluster through the whole
converge, which repairs it, while the clusters without drift stay skipped.

Each drift is made by hand on a real host, and undone by hand in `finally` if the converge did not repair it, so a
failure here leaves the session lab as it found it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dbfleet.converge_inputs import parse_fast_report
from dbfleet.playbook import parse_recap
from dbfleet.spec import PostgresCluster, RedisCluster

pytestmark = pytest.mark.lab

SPEC = Path(__file__).resolve().parents[2] / "fleet.example.yaml"
MARKER = "# drift made by test_converge_fast"


def configure(lab: Any, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dbfleet", "--spec", str(SPEC), "configure", "--lab", lab.name,
                           "--inventories", str(lab.inventories), *args],
                          capture_output=True, text=True, timeout=900)
    return done, time.monotonic() - started


def fast_report(output: str) -> tuple[set[str], str]:
    """The hosts site.yml's first play found in sync (skipped), and what it says of the others."""
    report = parse_fast_report(output)
    assert report, f"no fast-path report in the output:\n{output[-3000:]}"
    return report


def psql(lab: Any, host: str, port: int, sql: str) -> str:
    out = lab.host(host).check_output(
        f"runuser -u postgres -- psql -XAtq -h /var/run/postgresql -p {port} -d postgres -c {sql!r}")
    return str(out).strip()


def redis_cli(lab: Any, host: str, cluster: RedisCluster, *command: str) -> str:
    secret = lab.secrets["redis_admin_password"]
    tls = "--tls --cacert /etc/dbfleet/redis-tls/ca.crt " if cluster.tls.enabled else ""
    out = lab.host(host).check_output(
        f"REDISCLI_AUTH={secret} redis-cli {tls}-p {cluster.port} --user dbfleet_admin --no-auth-warning "
        + " ".join(command))
    return str(out).strip()


def test_fast_skips_clusters_in_sync_and_converges_the_ones_that_drifted(configured: Any) -> None:
    lab = configured
    pg = next((c for c in lab.fleet.of_engine("postgres") if isinstance(c, PostgresCluster) and lab.has("postgres")),
              None)
    cache = next((c for c in lab.fleet.of_engine("redis") if isinstance(c, RedisCluster) and lab.has("redis")),
                 None)
    if pg is None or cache is None:
        pytest.skip("the lab runs no PostgreSQL or no Redis cluster")
    hosts = {h.name for h in lab.state.hosts}

    # A full run writes every host's record (the session's converges ran site.yml directly, which records nothing).
    first, _ = configure(lab, "--fast")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]

    second, seconds = configure(lab, "--fast")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    skipped, converging = fast_report(second.stdout + second.stderr)
    assert skipped == hosts and converging == "none", (skipped, converging)
    recap = parse_recap(second.stdout + second.stderr)
    assert all(s.changed == 0 for s in recap.values()), recap
    # The check play's few tasks, nothing of the roles: the no-op costs what it checks.
    assert max(s.ok for s in recap.values()) <= 4, recap
    assert "TASK [patroni :" not in second.stdout and "TASK [redis_server :" not in second.stdout
    print(f"configure --fast, every cluster in sync: {seconds:.1f}s")

    servers = [h if isinstance(h, str) else h.name for h in pg.hosts]  # not the standby site's
    primary = next(h for h in servers if psql(lab, h, pg.port, "select pg_is_in_recovery()") == "f")
    replica = next(h for h in servers if h != primary)
    redis_host = [h if isinstance(h, str) else h.name for h in cache.hosts][-1]  # a data node, not a Sentinel
    policy = redis_cli(lab, redis_host, cache, "CONFIG", "GET", "maxmemory-policy").splitlines()[-1]
    conf = "/etc/pgbackrest/pgbackrest.conf"
    try:
        assert lab.host(replica).run(f"echo {MARKER!r} >> {conf}").rc == 0
        psql(lab, primary, pg.port, "ALTER ROLE dbfleet_monitor NOLOGIN")
        other = "noeviction" if policy != "noeviction" else "allkeys-lru"
        redis_cli(lab, redis_host, cache, "CONFIG", "SET", "maxmemory-policy", other)

        third, _ = configure(lab, "--fast")
        assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-2000:]
        skipped, converging = fast_report(third.stdout + third.stderr)
        assert f"{replica} (" in converging and f"file:{conf}" in converging, converging
        assert f"{primary} (" in converging and "postgres:roles" in converging, converging
        assert f"{redis_host} (" in converging and "redis:config" in converging, converging
        # Only the clusters that drifted ran, whole (the cache's Sentinels with its data nodes); the hosts of no
        # cluster (monitoring) and the other clusters (the standby site) were skipped.
        groups = {lab.hostvars[servers[0]]["dbfleet_group"], lab.hostvars[redis_host]["dbfleet_group"]}
        ran = {h for h in hosts if lab.hostvars[h].get("dbfleet_group") in groups}
        assert ran >= set(servers) | {redis_host}, ran
        # A standby site of pg-main (dr.standby) replays the role change too, so it finds its catalog changed.
        standby = {h for h in hosts - ran if lab.hostvars[h].get("dbfleet_cluster") == pg.name}
        assert skipped == hosts - ran - standby, (skipped, converging)
        recap = parse_recap(third.stdout + third.stderr)
        assert recap[replica].changed > 0 and recap[redis_host].changed > 0, recap

        assert MARKER not in str(lab.host(replica).file(conf).content_string)
        assert psql(lab, primary, pg.port, "select rolcanlogin from pg_roles where rolname = 'dbfleet_monitor'") \
            == "t"
        assert redis_cli(lab, redis_host, cache, "CONFIG", "GET", "maxmemory-policy").splitlines()[-1] == policy

        fourth, _ = configure(lab, "--fast")
        assert fourth.returncode == 0, fourth.stdout[-3000:] + fourth.stderr[-2000:]
        skipped, converging = fast_report(fourth.stdout + fourth.stderr)
        assert skipped == hosts and converging == "none", (skipped, converging)
    finally:
        lab.host(replica).run(f"sed -i '/test_converge_fast/d' {conf}")
        psql(lab, primary, pg.port, "ALTER ROLE dbfleet_monitor LOGIN")
        redis_cli(lab, redis_host, cache, "CONFIG", "SET", "maxmemory-policy", policy)


def test_fast_with_a_changed_input_converges_everything(configured: Any, tmp_path: Path) -> None:
    """A spec, secret or playbook change changes the inputs' digest, so no host is in sync whatever it holds: here
    the inventory folder gains a file (an input like any other) and every host converges."""
    lab = configured
    extra = lab.inventory_path.parent / "group_vars" / "all" / "zz_test_converge_fast.yml"
    first, _ = configure(lab, "--fast")
    assert first.returncode == 0, first.stdout[-3000:]
    try:
        extra.write_text("dbfleet_test_converge_fast: 1\n")
        done, _ = configure(lab, "--fast", "--tags", "redis")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        skipped, converging = fast_report(done.stdout + done.stderr)
        assert skipped == set() and "inputs changed" in converging, (skipped, converging)
    finally:
        extra.unlink(missing_ok=True)
