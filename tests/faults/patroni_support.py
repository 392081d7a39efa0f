"""What the Patroni fault tests share: a writer through the read-write endpoint, Patroni's view, timed waits.

The writer commits one numbered row per transaction through HAProxy's
read-write port and records every commit the server acknowledged, with the
server that took it (inet_server_addr()) and when. It tries the endpoint hosts
in turn, starting from the last one that worked, as a client given the DSN
of `dbfleet connect` would. It sets no statement_timeout: cancelling a
commit that waits for a synchronous standby would return success for a
commit no standby has, and the test would count a write the cluster never
promised. A session to a vanished server is noticed by TCP keepalives.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbfleet.errors import TemporaryError
from dbfleet.spec import PostgresCluster

TABLE = "failover_probe"
CAUGHT_UP_BYTES = 64 * 1024
"""A replica this close to the leader counts as caught up (Patroni's lag, in bytes). The check runs between
tests, with no writer: a streaming replica is at 0, one that stopped replaying falls behind the first write."""
WRITE_SECONDS_MAX = 600
CLIENT = {"connect_timeout": 2, "keepalives": 1, "keepalives_idle": 1, "keepalives_interval": 1,
          "keepalives_count": 2, "tcp_user_timeout": 3000}


@dataclass
class Ack:
    id: int
    at: float
    """time.time() when the commit returned."""
    server: str
    """The server behind the endpoint that acknowledged it (its address)."""


@dataclass
class Writer:
    lab: Any
    cluster: PostgresCluster
    password: str
    acked: list[Ack] = field(default_factory=list)
    failures: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    pause: float = 0.02

    @property
    def ca(self) -> Path:
        return Path(self.lab.inventory_path.parent / "pki" / "ca.crt")

    @property
    def endpoints(self) -> list[str]:
        return [self.lab.address(h.name) for h in self.cluster.endpoint_hosts()]

    def connect(self, address: str, port: int | None = None) -> psycopg.Connection[Any]:
        # As `dbfleet connect` prints it: the server behind any endpoint host is verified (its certificate names
        # the endpoint hosts' addresses too).
        return psycopg.connect(host=address, port=port or self.cluster.endpoints.rw_port,
                               dbname=self.cluster.databases[0], user="postgres", password=self.password,
                               sslmode="verify-full", sslrootcert=str(self.ca), autocommit=True, **CLIENT)

    def _open(self, preferred: int) -> tuple[int, psycopg.Connection[Any]] | None:
        endpoints = self.endpoints
        for k in range(len(endpoints)):
            i = (preferred + k) % len(endpoints)
            try:
                return i, self.connect(endpoints[i])
            except psycopg.Error:
                continue
        return None

    def run(self) -> None:
        deadline = time.monotonic() + WRITE_SECONDS_MAX
        current: tuple[int, psycopg.Connection[Any]] | None = None
        preferred, n = 0, len(self.acked)
        while not self.stop.is_set() and time.monotonic() < deadline:
            if current is None:
                current = self._open(preferred)
                if current is None:
                    self.failures.append(time.time())
                    time.sleep(0.1)
                    continue
                preferred = current[0]
            conn = current[1]
            try:
                row = conn.execute(f"INSERT INTO {TABLE} (id) VALUES (%s) RETURNING host(inet_server_addr())",
                                   (n,)).fetchone()
            except psycopg.Error:
                # Not acknowledged, but perhaps committed (the server went away after the commit): the next
                # write takes the next id, so an id that did land never blocks the writer.
                self.failures.append(time.time())
                conn.close()
                current = None
                n += 1
                continue
            self.acked.append(Ack(n, time.time(), str(row[0]) if row else "?"))
            n += 1
            time.sleep(self.pause)
        if current:
            current[1].close()

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join(timeout=60)

    def first_ack_after(self, moment: float, server: str | None = None, not_on: str | None = None) -> Ack | None:
        return next((a for a in self.acked if a.at > moment and (server is None or a.server == server)
                     and (not_on is None or a.server != not_on)), None)

    def wait_for_write_after(self, moment: float, bound: float, not_on: str | None = None) -> Ack:
        """The first write acknowledged after `moment` (by a server other than `not_on`: a commit in flight when
        the fault struck may still be acknowledged by the old primary a few milliseconds later)."""
        deadline = time.time() + bound
        while time.time() < deadline:
            ack = self.first_ack_after(moment, not_on=not_on)
            if ack:
                return ack
            time.sleep(0.05)
        pytest.fail(f"no write acknowledged through the read-write endpoint within {bound:.0f}s")

    def longest_gap(self, since: float) -> float:
        times = [since] + [a.at for a in self.acked if a.at >= since]
        return max((b - a for a, b in pairwise(times)), default=0.0)


def prepare_table(writer: Writer) -> None:
    deadline = time.time() + 60
    while True:
        try:
            with writer.connect(writer.endpoints[0]) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
                conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
            return
        except psycopg.Error:
            if time.time() > deadline:
                raise
            time.sleep(1)


def stored_ids(writer: Writer, bound: float = 60) -> set[int]:
    """The ids on the current primary, read through the first endpoint host that answers."""
    def read() -> list[set[int]]:  # a list, so an empty table still counts as an answer
        for address in writer.endpoints:
            try:
                with writer.connect(address) as conn:
                    return [{row[0] for row in conn.execute(f"SELECT id FROM {TABLE}")}]
            except psycopg.Error:
                continue
        return []

    found: list[set[int]] = bounded("the primary readable through an endpoint", read, bound)[0]
    return found[0]


def lost_commits(writer: Writer) -> list[int]:
    """Acknowledged ids missing from the current primary."""
    stored = stored_ids(writer)
    return [a.id for a in writer.acked if a.id not in stored]


class Patroni:
    """Patroni's REST API of one cluster in the lab, read as a client would (GET only; the fleet CA)."""

    def __init__(self, lab: Any, cluster: PostgresCluster):
        self.lab = lab
        self.cluster = cluster
        self.context = ssl.create_default_context(cafile=str(lab.inventory_path.parent / "pki" / "ca.crt"))

    def get(self, host: str, path: str, timeout: float = 2) -> tuple[int, Any]:
        url = f"https://{self.lab.address(host)}:{self.cluster.patroni.rest_api_port}/{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=self.context) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def members(self, exclude: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
        """GET /cluster from the first member that answers (leaving out `exclude`)."""
        for host in self.cluster.host_names():
            if host in exclude:
                continue
            try:
                status, data = self.get(host, "cluster")
            except OSError:
                continue
            if status == 200:
                return {m["name"]: m for m in data.get("members", [])}
        return {}

    def leader(self, exclude: tuple[str, ...] = ()) -> str | None:
        return next((n for n, m in self.members(exclude).items() if m.get("role") == "leader"
                     and m.get("state") == "running"), None)

    def new_leader(self, old: str) -> str | None:
        """The leader other members name once `old` no longer holds the lock (they keep naming `old` until its
        lock expires)."""
        leader = self.leader(exclude=(old,))
        return leader if leader != old else None

    def healthy(self) -> str:
        """The leader's name once every member runs on the leader's timeline, caught up, with a synchronous standby
        named when the spec asks for synchronous mode; '' before. (Right after a crash or a failover the
        replicas may still be on the old timeline and no standby is synchronous yet: Patroni would then promote
        nobody, rightly, and a fault injected in that window proves nothing.)"""
        members = self.members()
        leader = next((n for n, m in members.items() if m.get("role") == "leader" and m.get("state") == "running"),
                      None)
        if leader is None or set(members) != set(self.cluster.host_names()):
            return ""
        timeline = members[leader].get("timeline")
        replicas = [m for n, m in members.items() if n != leader]
        ok = all(m.get("state") in ("running", "streaming") and m.get("timeline") == timeline
                 and isinstance(m.get("lag"), int) and m["lag"] < CAUGHT_UP_BYTES for m in replicas)
        if self.cluster.synchronous.enabled:
            ok = ok and any(m.get("role") == "sync_standby" for m in replicas)
        return leader if ok else ""

    def replica_streams(self, host: str, leader: str) -> bool:
        members = self.members()
        m = members.get(host, {})
        return (members.get(leader, {}).get("role") == "leader" and m.get("role") in ("replica", "sync_standby")
                and m.get("state") in ("streaming", "running") and m.get("timeline") == members[leader].get("timeline"))


def bounded(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> tuple[Any, float]:
    """Poll `check` until truthy; return (value, seconds taken); fail after `timeout` seconds."""
    start = time.monotonic()
    last: Any = None
    while True:
        try:
            last = check()
        except (OSError, psycopg.Error, TemporaryError) as exc:  # a server busy or restarting: poll again
            last = exc
        else:
            if last:
                return last, time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout:.0f}s (last: {last!r})")
        time.sleep(every)


class Partition:
    """One lab host cut off from every other host of the lab network, its addresses kept.

    Blackhole routes for the two halves of the lab subnet, set inside the container's network namespace
    (nsenter, as root on the machine running the lab): nothing leaves it for a lab address, so nothing it
    is sent gets an answer. `docker network disconnect` would remove the address instead, and a PostgreSQL
    restarted meanwhile (the demotion) could not bind it again: a fault no real network makes."""

    def __init__(self, container: Any, subnet: str):
        network = ipaddress.ip_network(subnet)
        self.routes = [str(half) for half in network.subnets(prefixlen_diff=1)]
        container.reload()
        self.pid = str(container.attrs["State"]["Pid"])

    def _route(self, verb: str, route: str, check: bool = True) -> None:
        subprocess.run(["nsenter", "-t", self.pid, "-n", "ip", "route", verb, "blackhole", route],
                       check=check, capture_output=True, timeout=10)

    def cut(self) -> None:
        for route in self.routes:
            self._route("add", route)

    def heal(self) -> None:
        for route in self.routes:
            self._route("del", route, check=False)


def partition_possible() -> str | None:
    """Why a Partition cannot be made here, or None."""
    if os.geteuid() != 0:
        return "cutting a lab host off needs root (nsenter into its network namespace)"
    if not shutil.which("nsenter") or not shutil.which("ip"):
        return "nsenter (util-linux) and ip (iproute2) are needed to cut a lab host off"
    return None


def docker(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=timeout, check=check)


def report(fault: str, figures: dict[str, Any]) -> str:
    line = f"{fault}: " + ", ".join(f"{k} {v:.2f}s" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in figures.items())
    print("\n" + line)
    return line
