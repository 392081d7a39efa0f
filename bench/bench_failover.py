"""Unplanned failover and planned switchover under Patroni, as a client of the read-write endpoint sees them.

A writer commits one row per transaction through HAProxy's read-write port
(the DSN of `dbfleet connect`). Three times each:
- `docker kill` of the primary's container, after one cycle of the operator's
  members reconciler (as its loop runs every interval) and with the writer on
  HAProxy of a host that survives: the longest pause between two
  acknowledged writes around the kill, once another member leads, and the
  time until Patroni names the new leader (then the container is started
  again and the bench waits until it streams as a replica, with the members
  reconciler healing as the operator's loop would);
- `dbfleet switchover` to the synchronous standby: the longest pause between
  two acknowledged writes.
The medians are printed beside the spec's ttl and loop_wait; the failover's
baseline is ttl (a failover cannot start before the leader lock expires), the
switchover's the manual play's 4.5 s (README, "Planned switchover").

    python3 -m bench.bench_failover          # or: python3 -m bench.run --only failover

DBFLEET_BENCH_LAB names the lab (default "bench"); DBFLEET_KEEP_LAB=1 keeps it.
"""

from __future__ import annotations

import io
import json
import os
import ssl
import statistics
import sys
import threading
import time
import urllib.request
from contextlib import redirect_stdout
from itertools import pairwise
from typing import Any

import docker
import psycopg

from bench.common import SPEC, Result, converged_postgres_lab
from dbfleet.spec import PostgresCluster, load_fleet

LAB = os.environ.get("DBFLEET_BENCH_LAB", "bench")
CLUSTER = "pg-main"
ROUNDS = 3
LIMIT = 120.0
MANUAL_SWITCHOVER_SECONDS = 4.5
"""The write outage of playbooks/pg_switchover.yml (ha: manual) measured by tests/faults/test_pg_switchover.py."""
TABLE = "failover_bench"
CLIENT = {"connect_timeout": 2, "keepalives": 1, "keepalives_idle": 1, "keepalives_interval": 1,
          "keepalives_count": 2, "tcp_user_timeout": 3000}


class Writer(threading.Thread):
    """Commits numbered rows through the read-write endpoint hosts in turn; keeps each acknowledgement's time."""

    def __init__(self, addresses: list[str], port: int, dbname: str, password: str):
        super().__init__(daemon=True)
        self.addresses, self.port, self.dbname, self.password = addresses, port, dbname, password
        self.acked: list[float] = []
        self.halt = threading.Event()
        self.preferred = 0
        self.switch = threading.Event()

    def connect(self, address: str) -> psycopg.Connection[Any]:
        return psycopg.connect(host=address, port=self.port, dbname=self.dbname, user="postgres",
                               password=self.password, sslmode="require", autocommit=True, **CLIENT)

    def through(self, address: str) -> None:
        """Write through the endpoint on `address` from the next write on."""
        self.preferred = self.addresses.index(address)
        self.switch.set()

    def run(self) -> None:
        conn, n = None, 0
        while not self.halt.is_set():
            if self.switch.is_set() and conn is not None:
                conn.close()
                conn = None
            self.switch.clear()
            preferred = self.preferred
            if conn is None:
                for k in range(len(self.addresses)):
                    try:
                        conn = self.connect(self.addresses[(preferred + k) % len(self.addresses)])
                        self.preferred = (preferred + k) % len(self.addresses)
                        break
                    except psycopg.Error:
                        continue
                if conn is None:
                    time.sleep(0.1)
                    continue
            try:
                conn.execute(f"INSERT INTO {TABLE} (id) VALUES (%s)", (n,))
            except psycopg.Error:
                conn.close()
                conn = None
                n += 1  # the lost commit may have landed: never retry its id
                continue
            self.acked.append(time.time())
            n += 1
            time.sleep(0.02)
        if conn is not None:
            conn.close()

    def first_after(self, moment: float, limit: float = LIMIT) -> float:
        deadline = time.time() + limit
        while time.time() < deadline:
            later = [t for t in self.acked if t > moment]
            if later:
                return later[0]
            time.sleep(0.05)
        raise RuntimeError(f"no write acknowledged within {limit:.0f}s")

    def longest_gap(self, since: float, until: float) -> float:
        times = [t for t in self.acked if since <= t <= until]
        return max((b - a for a, b in pairwise(times)), default=0.0)


class Api:
    def __init__(self, addresses: dict[str, str], port: int, ca: str):
        self.addresses, self.port = addresses, port
        self.context = ssl.create_default_context(cafile=ca)

    def members(self) -> dict[str, dict[str, Any]]:
        for address in self.addresses.values():
            try:
                with urllib.request.urlopen(f"https://{address}:{self.port}/cluster", timeout=2,
                                            context=self.context) as response:
                    return {m["name"]: m for m in json.loads(response.read())["members"]}
            except OSError:
                continue
        return {}

    def healthy(self) -> str | None:
        members = self.members()
        leader = next((n for n, m in members.items() if m["role"] == "leader" and m["state"] == "running"), None)
        if leader is None or len(members) != len(self.addresses):
            return None
        timeline = members[leader].get("timeline")
        ok = all(m["state"] in ("running", "streaming") and m.get("timeline") == timeline for m in members.values())
        return leader if ok else None


def wait_for(what: str, check: Any, limit: float = LIMIT) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not within {limit:.0f}s")


def members_cycle(state: Any) -> list[dict[str, Any]]:
    """One cycle of the operator's members reconciler, as its loop runs every interval: it rewinds a replica left
    past the new leader's fork point (`patroni.on_diverged: rewind`) and keeps etcd's leader off the PostgreSQL
    leader's host (README, "High availability with Patroni"). Its outcomes."""
    from dbfleet.cli import main as dbfleet

    out = io.StringIO()
    with redirect_stdout(out):
        dbfleet(["--spec", str(SPEC), "reconcile", "--once", "--cluster", CLUSTER, "--reconciler", "members",
                 "--inventory", str(state.inventory), "--secrets", str(state.secrets), "--state",
                 str(state.secrets.with_name("bench-failover-state.json")), "--json"])
    return [o for c in json.loads(out.getvalue() or "{}").get("clusters", []) for o in c.get("outcomes", [])]


def healing(api: Api, state: Any, acts: list[str]) -> Any:
    """A check for wait_for that, while the cluster is not healthy, runs the members reconciler every 10 s, as
    the operator's loop would; `acts` collects what it did."""
    last = [time.monotonic()]

    def check() -> str | None:
        leader = api.healthy()
        if leader or time.monotonic() - last[0] < 10:
            return leader
        last[0] = time.monotonic()
        acts.extend(f"{o['kind']} {o['target']}" for o in members_cycle(state) if o.get("status") == "done")
        return None

    return check


def run() -> list[Result]:
    from dbfleet.cli import main as dbfleet

    pg = load_fleet(SPEC).cluster(CLUSTER)
    assert isinstance(pg, PostgresCluster)
    if pg.ha != "patroni":
        raise RuntimeError(f"{CLUSTER} is not ha: patroni in {SPEC}")
    client = docker.from_env()
    with converged_postgres_lab(LAB) as (state, access):
        addresses = {h: access.address(h) for h in pg.host_names()}
        api = Api(addresses, pg.patroni.rest_api_port, str(state.inventory.parent / "pki" / "ca.crt"))
        endpoints = [access.address(h.name) for h in pg.endpoint_hosts()]
        password = access.secret("postgres_superuser_password")
        acts: list[str] = []
        healthy = healing(api, state, acts)
        wait_for("a healthy cluster", healthy)
        with psycopg.connect(host=endpoints[0], port=pg.endpoints.rw_port, dbname=pg.databases[0], user="postgres",
                             password=password, sslmode="require", autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
            conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY)")
        writer = Writer(endpoints, pg.endpoints.rw_port, pg.databases[0], password)
        writer.start()
        failovers: list[float] = []
        promoted: list[float] = []
        """Seconds from the kill to Patroni naming another leader (polled every 0.2 s): the server's part."""
        switchovers: list[float] = []
        try:
            for _ in range(ROUNDS):
                leader = wait_for("a healthy cluster", healthy)
                # The operator's loop has run on the healthy cluster (every interval) before the fault strikes.
                acts.extend(f"{o['kind']} {o['target']}" for o in members_cycle(state) if o.get("status") == "done")
                # Through HAProxy on a host that survives (as with `endpoints.hosts` apart from the servers): the
                # figure is the failover's, not a client's wait on a load balancer that died with the primary.
                writer.through(next(a for h, a in addresses.items() if h != leader and a in endpoints))
                writer.first_after(time.time())
                container = client.containers.get(f"dbfleet-{LAB}-{leader}")
                killed = time.time()
                container.kill()
                try:
                    # A write can still be acknowledged in the instant the kill takes: the outage is the longest
                    # pause between acknowledged writes around the kill, once another leader takes them.
                    wait_for("a new leader", lambda old=leader: next(
                        (n for n, m in api.members().items() if m["role"] == "leader" and n != old), None))
                    promoted.append(time.time() - killed)
                    resumed = writer.first_after(time.time())
                    failovers.append(writer.longest_gap(killed - 5, resumed))
                finally:
                    container.start()
                print(f"[bench] failover: writes paused {failovers[-1]:.2f}s when {leader} was killed",
                      file=sys.stderr)
            for _ in range(ROUNDS):
                leader = wait_for("a healthy cluster", healthy)
                target = wait_for("a synchronous standby",
                                  lambda: next((n for n, m in api.members().items() if m["role"] == "sync_standby"),
                                               None))
                started = time.time()
                with redirect_stdout(io.StringIO()):
                    code = dbfleet(["--spec", str(SPEC), "switchover", "--cluster", CLUSTER, "--to", target,
                                    "--lab", LAB])
                if code != 0:
                    raise RuntimeError(f"dbfleet switchover to {target} exited {code}")
                writer.first_after(time.time())
                switchovers.append(writer.longest_gap(started, time.time()))
                print(f"[bench] switchover {leader} -> {target}: longest write pause {switchovers[-1]:.2f}s",
                      file=sys.stderr)
            wait_for("a healthy cluster", healthy)
        finally:
            writer.halt.set()
            writer.join(timeout=30)
    settings = {"ttl": pg.patroni.ttl, "loop_wait": pg.patroni.loop_wait, "retry_timeout": pg.patroni.retry_timeout,
                "operator_acts": acts}
    return [
        Result("failover", "kill primary: write pause (median of 3)", statistics.median(failovers), "s",
               float(pg.patroni.ttl), "ttl", {**settings, "rounds": [round(x, 2) for x in failovers],
                                               "new_leader_after_s": [round(x, 2) for x in promoted]}),
        Result("failover", "switchover write pause (median of 3)", statistics.median(switchovers), "s",
               MANUAL_SWITCHOVER_SECONDS, "pg_switchover.yml",
               {**settings, "rounds": [round(x, 2) for x in switchovers]}),
    ]


if __name__ == "__main__":
    for result in run():
        print(f"{result.metric}: {result.value:.2f} {result.unit} (ttl {result.extra['ttl']}s, loop_wait "
              f"{result.extra['loop_wait']}s; baseline {result.baseline_name} {result.baseline}; rounds "
              f"{result.extra['rounds']}, new leader after {result.extra.get('new_leader_after_s', '-')})")
