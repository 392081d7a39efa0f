"""The PostgreSQL standby site (dr.standby) and `dbfleet dr promote`, proven in the lab.

The lab's spec gives pg-main a one-host standby site (pg-dr-1): a Patroni standby cluster of its own (scope
pg-main-dr, a one-member etcd) that streams from the primary site and restores WAL from the second backup
target. These tests check that it streams, that a dry run changes nothing, then cut the whole primary site off
(every pg-main host blackholed), promote the standby site with --force, and print the time from the cut to the
first write on the promoted site and the commits lost against the RPO bound. Healed, the old site still has a
leader of its own; `dbfleet dr promote` again (no --force: that site is reachable) fences it, and its leader stops
accepting writes.

The tests leave pg-main's primary site fenced behind the promoted standby site (failing back is a runbook in the
README, not automated), so this module runs after every other PostgreSQL test of the session (test_region_* sorts
after test_pg_*). Each wait is bounded.
"""

from __future__ import annotations

import json
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg
import pytest
from patroni_support import CLIENT, Patroni, bounded, report

from dbfleet.cli import main
from dbfleet.spec import PostgresCluster

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
STREAM_BOUND = 120.0
PROMOTE_BOUND = 120.0
FENCE_BOUND = 120.0


@pytest.fixture(scope="module")
def site(configured: Any) -> tuple[Any, PostgresCluster, str]:
    if not configured.has("postgres"):
        pytest.skip("the lab runs no PostgreSQL hosts")
    cluster = configured.fleet.of_engine("postgres")[0]
    standby = cluster.standby_hosts()
    if cluster.ha != "patroni" or not standby:
        pytest.skip("the lab's PostgreSQL cluster has no standby site")
    return configured, cluster, standby[0].name


def connect(lab: Any, cluster: PostgresCluster, host: str) -> psycopg.Connection[Any]:
    """Straight to one server (not through HAProxy), verifying its certificate."""
    return psycopg.connect(host=lab.address(host), port=cluster.port, dbname=cluster.databases[0], user="postgres",
                           password=lab.secrets["postgres_superuser_password"], sslmode="verify-full",
                           sslrootcert=str(lab.inventory_path.parent / "pki" / "ca.crt"), autocommit=True, **CLIENT)


def ids_on(lab: Any, cluster: PostgresCluster, host: str, table: str) -> set[int]:
    with connect(lab, cluster, host) as conn:
        return {row[0] for row in conn.execute(f"SELECT id FROM {table}")}


def promote(lab: Any, cluster: PostgresCluster, *flags: str) -> tuple[int, dict[str, Any]]:
    argv = ["--spec", str(REPO / "fleet.example.yaml"), "dr", "promote", "--cluster", cluster.name,
            "--inventory", str(lab.inventory_path), "--secrets", str(lab.state.secrets),
            "--state", str(lab.state.secrets.with_name("dr-state.json")), "--json", *flags]
    with redirect_stdout(StringIO()) as out:
        code = main(argv)
    return code, json.loads(out.getvalue())


def test_the_standby_site_streams_from_the_primary(site: tuple[Any, PostgresCluster, str]) -> None:
    lab, cluster, standby = site
    patroni = Patroni(lab, cluster)
    leader, _ = bounded("a leader on the primary site", patroni.leader, STREAM_BOUND, every=1)
    status, data = patroni.get(standby, "patroni")
    assert status == 200 and data.get("role") == "standby_leader", data
    mark = int(time.time() * 1000)
    with connect(lab, cluster, leader) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS dr_probe (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO dr_probe VALUES (%s)", (mark,))
    _, took = bounded("the row on the standby site", lambda: mark in ids_on(lab, cluster, standby, "dr_probe"),
                      STREAM_BOUND, every=0.5)
    report("standby site streams", {"row_visible_after": took})
