"""PostgreSQL under Patroni, proven under faults: a writer logs every acknowledged commit through the
read-write endpoint while the primary is killed, crashed, cut off, or etcd loses a member or its quorum.

For each fault the test prints the outage (from the fault to the first write
acknowledged after it), the acknowledged commits lost (must be 0: synchronous
mode is on in the lab's spec) and how long the old primary took to rejoin as
a streaming replica, and records them in bench/results/pg_failover.json.
Each test is bounded (OUTAGE_BOUND, REJOIN_BOUND) and leaves a healthy
cluster for the next one. Traffic goes only to the lab's own containers.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import docker as docker_sdk
import pytest
from patroni_support import (
    TABLE,
    Partition,
    Patroni,
    Writer,
    bounded,
    docker,
    lost_commits,
    partition_possible,
    prepare_table,
    report,
    stored_ids,
)

from dbfleet import wiring
from dbfleet.cli import main
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.patroni import WAL_SEGMENT_BYTES, parse_history
from dbfleet.engines.postgres import connect, pg_paths
from dbfleet.lab.topology import network_name
from dbfleet.reconcile.leader import LOCK_KEY
from dbfleet.spec import OperatorSettings, PostgresCluster

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "pg_failover.json"
OUTAGE_BOUND = 60.0
REJOIN_BOUND = 120.0
HEALTHY_BOUND = 180.0


@pytest.fixture(scope="module")
def ha(configured: Any) -> tuple[Any, PostgresCluster, Patroni]:
    if not configured.has("postgres"):
        pytest.skip("the lab runs no PostgreSQL hosts")
    cluster = configured.fleet.of_engine("postgres")[0]
    if cluster.ha != "patroni":
        pytest.skip("the lab's PostgreSQL cluster is not ha: patroni")
    return configured, cluster, Patroni(configured, cluster)


HEALED: list[dict[str, Any]] = []
"""What the operator's members reconciler did while a test waited for a healthy cluster (rewinds of replicas
that replayed past the new leader's fork point), printed with the figures."""


def operator_heals(lab: Any, cluster: PostgresCluster) -> Callable[[], str]:
    """A check for `bounded` that, while the cluster is not healthy, runs the operator's members reconciler as
    its loop would (every 10 s): Patroni and dbfleet's operator together are what keeps the cluster whole."""
    patroni = Patroni(lab, cluster)
    last = [time.monotonic()]

    def check() -> str:
        leader = patroni.healthy()
        if leader or time.monotonic() - last[0] < 10:
            return leader
        last[0] = time.monotonic()
        argv = ["--spec", str(REPO / "fleet.example.yaml"), "reconcile", "--once", "--cluster", cluster.name,
                "--reconciler", "members", "--inventory", str(lab.inventory_path), "--secrets",
                str(lab.state.secrets), "--state", str(lab.state.secrets.with_name("failover-state.json")), "--json"]
        with redirect_stdout(StringIO()) as out:
            code = main(argv)
        assert code in (0, 1), f"dbfleet reconcile refused its arguments: {out.getvalue()}"
        report_ = json.loads(out.getvalue())
        for c in report_.get("clusters", []):
            HEALED.extend(o for o in c.get("outcomes", []) if o.get("kind") == "rewind")
        return ""

    return check


@pytest.fixture
def writer(ha: tuple[Any, PostgresCluster, Patroni]) -> Iterator[Writer]:
    lab, cluster, patroni = ha
    bounded("a healthy cluster before the fault", operator_heals(lab, cluster), HEALTHY_BOUND, every=1)
    while HEALED:
        print(f"\n  the operator rewound a diverged replica: {json.dumps(HEALED.pop(0))}")
    w = Writer(lab, cluster, lab.secrets["postgres_superuser_password"])
    prepare_table(w)
    w.start()
    w.wait_for_write_after(time.time(), 30)
    yield w
    w.finish()


def record(fault: str, figures: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[fault] = figures
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def finish_and_count(writer: Writer, since: float) -> dict[str, Any]:
    time.sleep(1)
    writer.finish()
    lost = lost_commits(writer)
    assert lost == [], f"acknowledged but missing after the fault: {lost[:20]}"
    return {"acked": len(writer.acked), "lost": len(lost), "longest_gap_s": round(writer.longest_gap(since), 2)}


def test_primary_container_killed(ha: tuple[Any, PostgresCluster, Patroni], writer: Writer) -> None:
    lab, cluster, patroni = ha
    old = patroni.leader()
    assert old
    container = docker_sdk.from_env().containers.get(lab.container(old))
    killed = time.time()
    container.kill()
    try:
        first = writer.wait_for_write_after(killed, OUTAGE_BOUND, not_on=lab.address(old))
        outage = first.at - killed
        new = bounded("a new leader", lambda: patroni.new_leader(old), OUTAGE_BOUND)[0]
        assert first.server == lab.address(new), (first, new)
    finally:
        container.start()
    started = time.time()
    _, rejoin = bounded(f"{old} streaming from {new}", lambda: patroni.replica_streams(old, new), REJOIN_BOUND, 0.5)
    figures = {"outage_s": round(outage, 2), "old_primary_rejoined_s": round(rejoin, 1), "old": old, "new": new,
               "ttl": cluster.patroni.ttl, "loop_wait": cluster.patroni.loop_wait,
               **finish_and_count(writer, killed)}
    report("primary container killed", figures)
    record("container_killed", {**figures, "rejoin_from": "docker start", "started": started})


def test_primary_postmaster_sigkilled_patroni_restarts_it(ha: tuple[Any, PostgresCluster, Patroni],
                                                          writer: Writer) -> None:
    lab, cluster, patroni = ha
    old = patroni.leader()
    assert old
    pid = postmaster_pid(lab, cluster, old)
    assert pid.isdigit(), pid
    killed = time.time()
    docker("exec", lab.container(old), "kill", "-KILL", pid)
    # The backends outlive their postmaster for a moment and may still acknowledge a commit or two: the outage
    # is the longest pause between acknowledged writes from the kill until the writes go on after the restart.
    _, restarted = bounded(f"PostgreSQL restarted on {old}", lambda: postmaster_pid(lab, cluster, old) not in
                           ("", pid), OUTAGE_BOUND)
    leader = bounded("a leader after the crash", patroni.leader, OUTAGE_BOUND)[0]
    first = writer.wait_for_write_after(killed + restarted, OUTAGE_BOUND)
    outage = writer.longest_gap(killed)
    # primary_start_timeout (300 s in the spec's defaults) lets Patroni restart PostgreSQL in place: no failover.
    assert leader == old and first.server == lab.address(old), (leader, first)
    # The crash can leave an asynchronous replica past the fork of a failover just before (it restores the old
    # timeline from the archive once its stream breaks): the operator's loop, running here, rewinds it.
    _, healthy = bounded("every member streaming again", operator_heals(lab, cluster), REJOIN_BOUND, 0.5)
    figures = {"outage_s": round(outage, 2), "restarted_in_place": leader == old,
               "primary_start_timeout": cluster.patroni.primary_start_timeout, "replicas_back_s": round(healthy, 1),
               **finish_and_count(writer, killed)}
    report("primary postmaster SIGKILLed", figures)
    record("postmaster_sigkilled", figures)


def postmaster_pid(lab: Any, cluster: PostgresCluster, host: str) -> str:
    return docker("exec", lab.container(host), "sh", "-c",
                  f"head -1 /var/lib/postgresql/{cluster.version}/main/postmaster.pid 2>/dev/null",
                  check=False).stdout.strip()


ISOLATED_WRITER = r"""
import sys, time, psycopg2
table, stop = sys.argv[1], time.time() + float(sys.argv[2])
n = 10_000_000
while time.time() < stop:
    try:
        conn = psycopg2.connect(dbname=sys.argv[3], host="/var/run/postgresql", port=sys.argv[4], connect_timeout=1)
        conn.autocommit = True
        cur = conn.cursor()
        while time.time() < stop:
            cur.execute(f"INSERT INTO {table} (id) VALUES (%s)", (n,))
            print(f"ack {n} {time.time():.3f}", flush=True)
            n += 1
            time.sleep(0.02)
    except Exception as exc:
        print(f"error {time.time():.3f} {type(exc).__name__}", flush=True)
        time.sleep(0.2)
"""


def test_primary_cut_off_stops_writing_within_ttl_and_rejoins(ha: tuple[Any, PostgresCluster, Patroni],
                                                              writer: Writer) -> None:
    lab, cluster, patroni = ha
    old = patroni.leader()
    assert old
    why = partition_possible()
    if why:
        pytest.skip(why)
    client = docker_sdk.from_env()
    container = client.containers.get(lab.container(old))
    subnet = client.networks.get(network_name(lab.name)).attrs["IPAM"]["Config"][0]["Subnet"]
    partition = Partition(container, subnet)
    budget = cluster.patroni.ttl + 30
    # A writer on the old primary itself, through its local socket: what it gets acknowledged after the cut
    # would be a write only that server has.
    local = subprocess.Popen(["docker", "exec", "-u", "postgres", lab.container(old), "python3", "-c",
                              ISOLATED_WRITER, TABLE, str(budget), cluster.databases[0], str(cluster.port)],
                             stdout=subprocess.PIPE, text=True)

    def read_only() -> bool:
        done = docker("exec", "-u", "postgres", lab.container(old), "psql", "-XAtc",
                      "SELECT pg_is_in_recovery()", "-p", str(cluster.port), check=False, timeout=10)
        return done.returncode != 0 or done.stdout.strip() == "t"

    time.sleep(1)
    cut = time.time()
    partition.cut()
    try:
        _, demoted = bounded(f"{old} refusing writes once cut off", read_only, budget, every=0.25)
        first = writer.wait_for_write_after(cut, OUTAGE_BOUND, not_on=lab.address(old))
        outage = first.at - cut
        new = bounded("a new leader", lambda: patroni.new_leader(old), OUTAGE_BOUND)[0]
    finally:
        partition.heal()
    reconnected = time.time()
    _, rejoin = bounded(f"{old} back as a replica of {new}", lambda: patroni.replica_streams(old, new), REJOIN_BOUND,
                        0.5)
    rejoin = time.time() - reconnected
    out, _ = local.communicate(timeout=budget + 30)  # it stops by itself `budget` seconds after it started
    acks = [(int(n), float(t)) for kind, n, t in (line.split()[:3] for line in out.splitlines()
                                                 if line.startswith("ack "))]
    isolated_acks = [n for n, t in acks if t > cut]
    new_first = writer.first_ack_after(cut, lab.address(new))
    assert new_first is not None
    overlap = [n for n, t in acks if t >= new_first.at]
    assert overlap == [], f"{old} acknowledged {len(overlap)} writes while {new} was primary"
    # A commit the synchronous standby had before the cut may still be acknowledged just after it; what must
    # never happen is an acknowledged write only the cut-off server has.
    missing = sorted(set(isolated_acks) - stored_ids(writer))
    assert missing == [], f"{old} acknowledged writes after the cut that {new} does not have: {missing[:10]}"
    figures = {"outage_s": round(outage, 2), "old_primary_read_only_s": round(demoted, 1),
               "ttl": cluster.patroni.ttl, "acks_on_isolated_primary_after_cut": len(isolated_acks),
               "acks_by_two_primaries_at_once": len(overlap), "old_primary_rejoined_s": round(rejoin, 1),
               "old": old, "new": new, **finish_and_count(writer, cut)}
    report("primary cut off the network", figures)
    assert demoted <= cluster.patroni.ttl + 5, f"{old} still took writes {demoted:.1f}s after the cut"
    record("network_cut", figures)


def _stop_etcd(lab: Any, host: str) -> None:
    docker("exec", lab.container(host), "systemctl", "stop", "etcd")


def _start_etcd(lab: Any, host: str) -> None:
    docker("exec", lab.container(host), "systemctl", "start", "etcd", check=False, timeout=120)


def test_one_etcd_member_lost_nothing_happens(ha: tuple[Any, PostgresCluster, Patroni], writer: Writer) -> None:
    lab, cluster, patroni = ha
    leader = patroni.leader()
    members = [h.name for h in cluster.etcd_hosts()]
    victim = next(h for h in members if h != leader)
    timeline = patroni.members()[leader]["timeline"]
    stopped = time.time()
    _stop_etcd(lab, victim)
    try:
        time.sleep(max(2 * cluster.patroni.ttl, 10))
        assert patroni.leader() == leader, "the primary changed while only one etcd member was down"
        assert patroni.members()[leader]["timeline"] == timeline
    finally:
        _start_etcd(lab, victim)
    gap = writer.longest_gap(stopped)
    figures = {"longest_write_gap_s": round(gap, 2), "leader_kept": leader, "timeline_kept": timeline,
               **finish_and_count(writer, stopped)}
    report("one etcd member lost", figures)
    # Nothing like a failover: the leader and timeline stay, and no pause as long as the leader lock's ttl.
    assert gap < cluster.patroni.ttl, f"writes paused {gap:.1f}s with one etcd member down"
    record("etcd_member_lost", figures)


def test_etcd_quorum_lost_the_primary_stays_in_failsafe_mode(ha: tuple[Any, PostgresCluster, Patroni],
                                                             writer: Writer) -> None:
    """With failsafe_mode (the lab's spec) Patroni keeps the primary while every member answers it."""
    lab, cluster, patroni = ha
    if not cluster.patroni.failsafe_mode:
        pytest.skip("the spec turns failsafe_mode off: the primary demotes instead")
    leader = patroni.leader()
    victims = [h.name for h in cluster.etcd_hosts() if h.name != leader][:2]
    if len(victims) < 2:
        victims = [h.name for h in cluster.etcd_hosts()][:2]
    lost = time.time()
    for host in victims:
        _stop_etcd(lab, host)
    try:
        window = 2 * cluster.patroni.ttl + 5
        time.sleep(window)
        status, data = patroni.get(leader, "patroni")
        assert status == 200 and data.get("role") in ("master", "primary"), data
        gap = writer.longest_gap(lost)
        written = len([a for a in writer.acked if a.at > lost])
    finally:
        for host in victims:
            _start_etcd(lab, host)
    bounded("etcd and Patroni healthy again", operator_heals(lab, cluster), HEALTHY_BOUND, every=1)
    figures = {"etcd_members_stopped": len(victims), "observed_s": window, "writes_during_quorum_loss": written,
               "longest_write_gap_s": round(gap, 2), "leader_kept": leader, **finish_and_count(writer, lost)}
    report("etcd quorum lost (failsafe mode)", figures)
    assert written > 0 and gap < cluster.patroni.ttl, figures
    record("etcd_quorum_lost", figures)


def test_switchover_under_load_through_patroni(ha: tuple[Any, PostgresCluster, Patroni], writer: Writer) -> None:
    """`dbfleet switchover` (after its --dry-run) hands the primary to the synchronous standby under load."""
    lab, cluster, patroni = ha
    old = patroni.leader()
    members = patroni.members()
    target = next(n for n, m in members.items() if m.get("role") == "sync_standby")
    argv = ["--spec", str(REPO / "fleet.example.yaml"), "switchover", "--cluster", cluster.name, "--to", target,
            "--inventory", str(lab.inventory_path), "--secrets", str(lab.state.secrets)]
    out = StringIO()
    with redirect_stdout(out):
        assert main([*argv, "--dry-run"]) == 0
    assert out.getvalue().startswith(f"! {cluster.name} patroni switchover {target}: leader {old} -> {target}")
    assert patroni.leader() == old, "a dry run changed the leader"
    access = FleetAccess.load(lab.inventory_path, lab.state.secrets)
    advisory = lab.fleet.model_copy(update={"operator": OperatorSettings(leader="postgres")})
    lock = wiring.leader_lock(advisory, access, Path("/nonexistent"), cluster.name)
    assert lock.acquire(), lock.holder
    started = time.time()
    with redirect_stdout(StringIO()) as done:
        code = main(argv)
    assert code == 0, done.getvalue()
    assert patroni.leader() == target
    # The operator's leader lock follows: the next cycle finds its server demoted and takes the lock on the new one.
    assert lock.acquire(), lock.holder
    with connect(cluster, access, target, "postgres") as conn:
        holders = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                               "objid = %s", [LOCK_KEY & 0xFFFFFFFF]).fetchone()
    assert holders == (1,), "the leader lock is not held on the new primary"
    lock.release()
    first = writer.wait_for_write_after(time.time(), OUTAGE_BOUND)
    assert first.server == lab.address(target)
    _, rejoin = bounded(f"{old} streaming from {target}", lambda: patroni.replica_streams(old, target),
                        REJOIN_BOUND, 0.5)
    figures = {"write_pause_s": round(writer.longest_gap(started), 2), "old_primary_rejoined_s": round(rejoin, 1),
               "old": old, "new": target, **finish_and_count(writer, started)}
    report("switchover under load", figures)
    record("switchover", figures)


def _sql(lab: Any, cluster: PostgresCluster, host: str, query: str) -> Any:
    access = FleetAccess.load(lab.inventory_path, lab.state.secrets)
    with connect(cluster, access, host, "postgres") as conn:
        return conn.execute(query).fetchone()


def _as_postgres(lab: Any, host: str, script: str) -> None:
    docker("exec", "-u", "postgres", lab.container(host), "sh", "-ec", script)


def _archiver(lab: Any, cluster: PostgresCluster, host: str) -> tuple[str | None, str | None, bool]:
    """(last archived, last failed, failing now) of the host's pg_stat_archiver."""
    return _sql(lab, cluster, host, "SELECT last_archived_wal, last_failed_wal, last_failed_time > "
                                    "coalesce(last_archived_time, '-infinity') FROM pg_stat_archiver")


def test_archiving_stuck_on_a_stale_segment_is_unblocked_by_the_operator(
        ha: tuple[Any, PostgresCluster, Patroni]) -> None:
    """The state a member reaches when Patroni rewound it and it leads later (README: Patroni, archiving after a
    rewind), made on purpose: a segment of the previous timeline, past where the current one forked, queued in the
    leader's pg_wal under a name the archive already holds with other bytes. pgBackRest refuses it and archives
    nothing behind it (`pgbackrest check` times out); the operator's members reconciler (`on_diverged: rewind`)
    marks it archived, and archiving works again."""
    lab, cluster, patroni = ha
    assert cluster.patroni.on_diverged == "rewind", "the lab's spec should let the operator act"
    leader, _ = bounded("a healthy cluster", operator_heals(lab, cluster), HEALTHY_BOUND, every=1)
    status, history = patroni.get(leader, "history")
    if status == 200 and not history:  # run alone on a fresh lab: a switchover makes the parent timeline
        # The synchronous standby when there is one: with synchronous mode Patroni promotes no other member.
        members = patroni.members()
        target = next((n for n, m in members.items() if m.get("role") == "sync_standby"),
                      next(n for n, m in members.items() if m.get("role") != "leader"))
        with redirect_stdout(StringIO()) as out:
            assert main(["--spec", str(REPO / "fleet.example.yaml"), "switchover", "--cluster", cluster.name, "--to",
                         target, "--inventory", str(lab.inventory_path), "--secrets", str(lab.state.secrets)]) == 0, \
                out.getvalue()
        leader, _ = bounded("a healthy cluster", operator_heals(lab, cluster), HEALTHY_BOUND, every=1)
        status, history = patroni.get(leader, "history")
    assert status == 200 and history, f"no timeline history on {leader}: {history}"
    parent, switch = parse_history(history)[-1]
    segno = switch // WAL_SEGMENT_BYTES  # the segment where the current timeline forked from its parent
    stale = f"{parent:08X}{segno >> 8:08X}{segno & 0xFF:08X}"
    wal = f"{pg_paths(cluster).data_dir}/pg_wal"
    # Two real segments of this server (so pgBackRest's header checks pass), with different bytes.
    first = _sql(lab, cluster, leader, "SELECT pg_walfile_name(pg_switch_wal())")[0]
    _sql(lab, cluster, leader, "SELECT txid_current()")
    second = _sql(lab, cluster, leader, "SELECT pg_walfile_name(pg_switch_wal())")[0]
    assert first != second

    def plant(source: str) -> None:
        status_dir = f"{wal}/archive_status"
        _as_postgres(lab, leader, f"cp {wal}/{source} {wal}/{stale}.tmp && mv {wal}/{stale}.tmp {wal}/{stale} && "
                                  f"rm -f {status_dir}/{stale}.done && touch {status_dir}/{stale}.ready")

    def archiver_took_or_refused() -> str:
        archived, failed, failing = _archiver(lab, cluster, leader)
        if failing and failed == stale:
            return "refused"
        return "archived" if archived == stale and not failing else ""

    plant(first)
    _sql(lab, cluster, leader, "SELECT pg_switch_wal()")  # wakes the archiver
    took, _ = bounded(f"the archiver handling {stale}", archiver_took_or_refused, 90, every=1)
    if took == "archived":  # the archive now holds the first bytes under that name: queue other bytes
        plant(second)
        _sql(lab, cluster, leader, "SELECT txid_current(), pg_switch_wal()")
        bounded(f"pgBackRest refusing {stale}", lambda: archiver_took_or_refused() == "refused", 150, every=1)
    check = docker("exec", "-u", "postgres", lab.container(leader), "pgbackrest", f"--stanza={cluster.name}",
                   "--archive-timeout=10", "check", check=False, timeout=120)
    assert check.returncode != 0, f"archiving should be stuck behind {stale}: {check.stdout}"

    argv = ["--spec", str(REPO / "fleet.example.yaml"), "reconcile", "--once", "--cluster", cluster.name,
            "--reconciler", "members", "--inventory", str(lab.inventory_path), "--secrets", str(lab.state.secrets),
            "--state", str(lab.state.secrets.with_name("failover-state.json")), "--json"]
    with redirect_stdout(StringIO()) as out:
        code = main(argv)
    outcomes = [o for c in json.loads(out.getvalue()).get("clusters", []) for o in c.get("outcomes", [])]
    skipped = [o for o in outcomes if o.get("kind") == "skip-stale-wal"]
    assert code == 0 and [(o["target"], o["status"]) for o in skipped] == [(leader, "done")], out.getvalue()
    _as_postgres(lab, leader, f"cd {wal}/archive_status && test -e {stale}.done && ! test -e {stale}.ready")

    started = time.monotonic()
    check = docker("exec", "-u", "postgres", lab.container(leader), "pgbackrest", f"--stanza={cluster.name}",
                   "--archive-timeout=90", "check", check=False, timeout=150)
    assert check.returncode == 0, f"archiving did not resume: {check.stdout[-2000:]}{check.stderr[-2000:]}"
    report("archiving stuck on a stale segment", {"segment": stale, "operator_marked_it_done": True,
                                                   "check_after_s": round(time.monotonic() - started, 1)})
    _as_postgres(lab, leader, f"rm -f {wal}/{stale} {wal}/archive_status/{stale}.done")
