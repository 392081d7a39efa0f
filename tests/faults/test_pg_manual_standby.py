"""The standby site of an ha: manual cluster (dr.standby without Patroni) and `dbfleet dr promote` through
playbooks/pg_dr_promote.yml, in a lab of its own (`<DBFLEET_TEST_LAB>s`; test_pg_manual_to_patroni.py's is
`<DBFLEET_TEST_LAB>m`), removed at the end even with DBFLEET_KEEP_LAB=1.

1. postgres.yml builds pg-main (ha: manual, pg-1..3) and its standby site pg-dr-1, a hot standby streaming from the
   primary site over verify-full TLS, restoring from repo2 when streaming is cut; a second converge changes nothing
   and --check works. A backup lands in repo2; the DR drill's replay-lag check passes.
2. The primary site reachable: a dry run plans fence then promote and changes nothing; `dr promote` (no --force)
   fences pg-1..3 and promotes pg-dr-1 with every acknowledged commit. The fence survives a restart of pg-1's
   container and a converge.
3. A fresh lab: a writer on pg-1, every primary-site host cut off (blackhole routes, addresses kept), `dr promote`
   refuses, `--force` promotes, fencing the cut hosts that Ansible still reaches (docker exec); commits lost and
   cut-to-first-write are printed. Healed, pg-1 accepts no writes and `dr promote` run again has nothing to do.

Each wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from dr_support import connect, ids_on, partitions
from patroni_support import bounded, docker, partition_possible, report
from test_pg_manual_to_patroni import ManualLab

from dbfleet.backups.dr import standby_checks
from dbfleet.cli import main
from dbfleet.engines.access import FleetAccess
from dbfleet.engines.postgres import PostgresSession
from dbfleet.lab import lifecycle
from dbfleet.secrets import load_secrets
from dbfleet.spec import load_fleet

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
TABLE = "dr_manual_probe"
STANDBY = "pg-dr-1"
STREAM_BOUND = 180.0
PROMOTE_BOUND = 300.0
WRITE_SECONDS_MAX = 900


def manual_spec(folder: Path) -> Path:
    """pg-main of the example alone, on ha: manual, its standby site kept (old_site: report: with ha: manual the
    operator does not watch the old site)."""
    data = yaml.safe_load((REPO / "fleet.example.yaml").read_text())
    data["clusters"] = [c for c in data["clusters"] if c["name"] == "pg-main"]
    pg = data["clusters"][0]
    pg["ha"] = "manual"
    pg.pop("patroni", None)
    pg.pop("endpoints", None)
    pg["dr"]["standby"]["old_site"] = "report"
    path = folder / "manual-standby.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class StandbyLab(ManualLab):
    """test_pg_manual_to_patroni's lab, with the spec it was made from."""

    spec: Path = Path()

    def promote(self, *flags: str) -> tuple[int, dict[str, Any]]:
        argv = ["--spec", str(self.spec), "dr", "promote", "--cluster", self.cluster.name,
                "--inventory", str(self.inventory_path), "--secrets", str(self.state.secrets),
                "--state", str(self.state.secrets.with_name("dr-manual-state.json")), "--json", *flags]
        with redirect_stdout(StringIO()) as out:
            code = main(argv)
        return code, json.loads(out.getvalue())

    def in_recovery(self, host: str) -> bool | None:
        """pg_is_in_recovery() on one server, None when it does not answer."""
        try:
            with connect(self, self.cluster, host) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                return bool(row[0]) if row else None
        except psycopg.OperationalError:
            return None

    def roles(self) -> dict[str, bool | None]:
        return {h: self.in_recovery(h) for h in [*self.cluster.host_names(), STANDBY]}

    def up(self) -> None:
        fleet = load_fleet(self.spec)
        self.state = lifecycle.up(fleet, self.name, REPO / "inventories", {"postgres"})
        self.cluster = fleet.of_engine("postgres")[0]
        self.secrets = load_secrets(self.state.secrets)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandbyLab]:
    engines = os.environ.get("DBFLEET_TEST_ENGINES")
    if engines and "postgres" not in {e.strip() for e in engines.split(",")}:
        pytest.skip("DBFLEET_TEST_ENGINES leaves PostgreSQL out")
    if not shutil.which("docker") and os.geteuid() != 0:
        pytest.skip("lab unavailable: no docker client and not root to install docker.io")
    spec = manual_spec(tmp_path_factory.mktemp("manual-standby"))
    name = os.environ.get("DBFLEET_TEST_LAB", "test") + "s"
    inventories = REPO / "inventories"
    lifecycle.down(name, inventories)  # nothing of an earlier run's containers or volumes is reused
    fleet = load_fleet(spec)
    state = lifecycle.up(fleet, name, inventories, {"postgres"})
    cluster = fleet.of_engine("postgres")[0]
    try:
        yield StandbyLab(name, state, cluster, load_secrets(state.secrets), spec)
    finally:
        if os.environ.get("DBFLEET_KEEP_STANDBY_LAB") != "1":  # to look at a failure; never set in CI
            lifecycle.down(name, inventories)


@dataclass
class Writer:
    """Commits numbered rows to one server and records each acknowledged commit (id, when)."""

    lab: StandbyLab
    host: str
    acked: list[tuple[int, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def run(self) -> None:
        deadline = time.monotonic() + WRITE_SECONDS_MAX
        i, conn = 0, None
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = connect(self.lab, self.lab.cluster, self.host)
                conn.execute(f"INSERT INTO {TABLE} (id) VALUES (%s)", (i,))
                self.acked.append((i, time.time()))
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
            i += 1  # an unacknowledged id is never retried
            time.sleep(0.02)
        if conn is not None:
            conn.close()

    def start(self) -> None:
        with connect(self.lab, self.lab.cluster, self.host) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
            conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        bounded("the probe table on the standby site", lambda: ids_on(self.lab, self.lab.cluster, STANDBY, TABLE)
                == set(), STREAM_BOUND, every=0.5)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        bounded("a first acknowledged commit", lambda: len(self.acked) > 0, 30)

    def finish(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join(timeout=30)


def write_on(lab: StandbyLab, host: str) -> bool:
    with connect(lab, lab.cluster, host) as conn:
        conn.execute(f"INSERT INTO {TABLE} (id) VALUES (-1) ON CONFLICT DO NOTHING")
    return True


def refuses_writes(lab: StandbyLab, host: str) -> str:
    """How `host` refuses a write: it does not answer, or it is read-only; AssertionError when it takes one."""
    try:
        with connect(lab, lab.cluster, host) as conn:
            conn.execute(f"INSERT INTO {TABLE} (id) VALUES (-2)")
    except psycopg.errors.ReadOnlySqlTransaction:
        return "read-only"
    except psycopg.OperationalError as exc:
        return f"not answering ({str(exc).splitlines()[0] if str(exc) else 'connection failed'})"
    raise AssertionError(f"{host} still accepts writes")


def assert_fence_holds(lab: StandbyLab, host: str) -> dict[str, str]:
    """The fence of `host` survives its container's restart and a converge of the same layout."""
    seen = {"after fence": refuses_writes(lab, host)}
    unit = f"postgresql@{lab.cluster.version}-main"
    enabled = docker("exec", lab.container(host), "systemctl", "is-enabled", unit, check=False).stdout.strip()
    assert enabled == "masked", f"{host}: {unit} is {enabled!r}, not masked"
    docker("restart", lab.container(host), timeout=120)
    bounded(f"{host}'s systemd running again", lambda: docker("exec", lab.container(host), "systemctl",
                                                                "is-system-running", check=False).stdout.strip()
            in ("running", "degraded"), 120, every=2)
    time.sleep(5)  # a unit started at boot would be up by now
    seen["after restart"] = refuses_writes(lab, host)
    again = lab.converge("postgres.yml")
    assert again.ok, "a converge after the promotion failed:\n" + again.failures()
    seen["after converge"] = refuses_writes(lab, host)
    assert lab.in_recovery(STANDBY) is False, "the promoted site must still lead after the converge"
    return seen


# --------------------------------------------------------------------------- 1. the standby site


def test_the_converge_builds_the_standby_site_idempotently(lab: StandbyLab) -> None:
    first = lab.converge("postgres.yml")
    assert first.ok, "converge failed:\n" + first.failures() + "\n" + first.output[-3000:]
    second = lab.converge("postgres.yml")
    assert second.ok, second.failures()
    assert second.changed == {}, f"a second converge changed {second.changed}"
    checked = lab.converge("postgres.yml", ["--check"])
    assert checked.ok, checked.failures()
    assert checked.changed == {}, f"--check after a converge would change {checked.changed}"


def test_the_standby_site_streams_over_verify_full_tls(lab: StandbyLab) -> None:
    assert lab.in_recovery("pg-1") is False and lab.in_recovery(STANDBY) is True
    query = ("SELECT r.application_name, r.state, r.sync_state, s.ssl FROM pg_stat_replication r "
             "JOIN pg_stat_ssl s USING (pid) WHERE r.application_name = %s")

    def streaming() -> dict[str, Any] | None:
        with connect(lab, lab.cluster, "pg-1") as conn:
            row = conn.execute(query, (STANDBY,)).fetchone()
        return {"state": row[1], "sync": row[2], "ssl": row[3]} if row and row[1] == "streaming" else None

    row, took = bounded("pg-dr-1 streaming from pg-1", streaming, STREAM_BOUND, every=1)
    assert row["ssl"] is True and row["sync"] == "async", row
    conninfo = docker("exec", lab.container(STANDBY), "grep", "-h", "^primary_conninfo\\|^primary_slot_name\\|"
                      "^restore_command", f"/etc/postgresql/{lab.cluster.version}/main/conf.d/dbfleet.conf").stdout
    assert "sslmode=verify-full" in conninfo and "primary_slot_name" not in conninfo, conninfo
    assert "--repo=2 archive-get" in conninfo, conninfo
    mark = int(time.time() * 1000)
    with connect(lab, lab.cluster, "pg-1") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS dr_probe (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO dr_probe VALUES (%s)", (mark,))
    _, seen_after = bounded("the row on the standby site", lambda: mark in ids_on(lab, lab.cluster, STANDBY,
                                                                                   "dr_probe"), STREAM_BOUND, 0.5)
    report("ha: manual standby site streams", {"streaming_after": took, "row_visible_after": seen_after})


def test_a_backup_lands_in_repo2_and_the_dr_drill_checks_the_replay_lag(lab: StandbyLab) -> None:
    stanza = lab.cluster.name
    done = docker("exec", lab.container("pg-1"), "runuser", "-u", "postgres", "--", "pgbackrest",
                  f"--stanza={stanza}", "--repo=2", "--type=full", "backup", check=False, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    info = docker("exec", lab.container(STANDBY), "runuser", "-u", "postgres", "--", "pgbackrest",
                  f"--stanza={stanza}", "--repo=2", "--output=json", "info", timeout=120)
    backups = json.loads(info.stdout)[0]["backup"]
    assert backups and backups[-1]["type"] == "full", info.stdout[-2000:]
    session = PostgresSession(lab.cluster, FleetAccess.load(lab.inventory_path, lab.state.secrets))
    try:
        checks = standby_checks(lab.cluster, session)
    finally:
        session.close()
    assert [c.name for c in checks] == ["standby site replay lag"] and checks[0].ok, checks


# --------------------------------------------------------------------------- 2. the primary site reachable


def test_a_dry_run_plans_the_fence_and_the_promotion_and_changes_nothing(lab: StandbyLab) -> None:
    before = lab.roles()
    code, out = lab.promote("--dry-run")
    assert code == 0 and out["dry_run"] is True and out["ha"] == "manual", out
    assert [(s["kind"], s["destructive"]) for s in out["steps"]] == [("fence-site", True), ("promote-site", True)]
    time.sleep(3)
    assert lab.roles() == before == {"pg-1": False, "pg-2": True, "pg-3": True, STANDBY: True}, before


def test_dr_promote_fences_the_reachable_primary_site_then_promotes(lab: StandbyLab) -> None:
    writer = Writer(lab, "pg-1")
    writer.start()
    time.sleep(3)
    started = time.time()
    try:
        code, out = lab.promote()
        promote_took = time.time() - started
    finally:
        writer.finish()
    assert code == 0 and out["ok"] and [s["kind"] for s in out["steps"]] == ["fence-site", "promote-site"], \
        json.dumps(out, indent=1)[-6000:]
    _, took = bounded("a write on the promoted site", lambda: write_on(lab, STANDBY), PROMOTE_BOUND, every=0.5)
    stored = ids_on(lab, lab.cluster, STANDBY, TABLE)
    lost = [i for i, _ in writer.acked if i not in stored]
    assert lost == [], f"the fence lost acknowledged commits: {lost[:20]}"
    fence = assert_fence_holds(lab, "pg-1")
    assert lab.in_recovery("pg-2") is not False and lab.in_recovery("pg-3") is not False
    code, out = lab.promote()
    assert code == 0 and out["steps"] == [] and out["end"] == "done", out
    report("dr promote, primary site reachable", {"acked": len(writer.acked), "lost_commits": len(lost),
                                                  "dr_promote_took": promote_took,
                                                  "first_write_after_promote": took, **fence})


# --------------------------------------------------------------------------- 3. the primary site cut off


def test_the_primary_site_cut_off_then_dr_promote_force_and_the_old_primary_fenced_when_back(
        lab: StandbyLab) -> None:
    why = partition_possible()
    if why:
        pytest.skip(why)
    assert lab.cluster.dr is not None
    lifecycle.down(lab.name, REPO / "inventories")  # a fresh lab: the last test promoted the standby site
    lab.up()
    built = lab.converge("postgres.yml")
    assert built.ok, "converge failed:\n" + built.failures()
    bounded("pg-dr-1 in recovery", lambda: lab.in_recovery(STANDBY) is True, STREAM_BOUND, every=1)
    writer = Writer(lab, "pg-1")
    writer.start()
    time.sleep(5)
    cuts = partitions(lab, lab.cluster.host_names())
    cut_at = time.time()
    try:
        for cut in cuts:
            cut.cut()
        time.sleep(1)
        writer.finish()
        acked = [a for a in writer.acked if a[1] <= cut_at]
        code, out = lab.promote()
        assert code == 1 and out["end"] == "refuse" and "does not answer" in out["reason"], out
        code, out = lab.promote("--force")
        assert code == 0 and [s["kind"] for s in out["steps"]] == ["promote-site"], json.dumps(out, indent=1)[-6000:]
        bounded("a write on the promoted site", lambda: write_on(lab, STANDBY), PROMOTE_BOUND, every=0.5)
        rto = time.time() - cut_at
        stored = ids_on(lab, lab.cluster, STANDBY, TABLE)
        lost = [i for i, at in acked if i not in stored]
        late = [i for i, at in acked if i not in stored and at < cut_at - lab.cluster.dr.rpo_seconds]
        assert late == [], f"commits acknowledged over {lab.cluster.dr.rpo_seconds}s before the cut are lost"
    finally:
        for cut in cuts:
            cut.heal()
    # The lab's Ansible reaches the cut containers (docker exec, not the cut network), so `dr promote --force` fenced
    # them though SQL could not reach them: back on the network pg-1 stays stopped, and `dr promote` run again finds
    # the old site fenced and has nothing to do. (On hosts Ansible cannot reach either, the old primary would run
    # on when back, and this second run would fence it.)
    code, out = lab.promote()
    assert code == 0 and out["steps"] == [] and out["end"] == "done", json.dumps(out, indent=1)[-6000:]
    fence = assert_fence_holds(lab, "pg-1")
    report("region loss, ha: manual, dr promote --force", {
        "acked_before_cut": len(acked), "lost_commits": len(lost), "cut_to_first_write": rto,
        "rpo_bound_seconds": lab.cluster.dr.rpo_seconds, **fence})
