"""Back up and restore one pgbench database (scale 50 by default) with the operator and with the plain tools.

    python3 -m bench.run --only backup

Compares, on the PostgreSQL primary of the lab and into the same backup volume:
- `dbfleet` full backup (pgBackRest driven by the operator, manifest with sha256)
  against the same `pgbackrest backup` run by hand: the operator's overhead,
  which should stay under 5%;
- `pg_dump -Fd -j2` and `pg_basebackup -Ft -z` (time and size);
- the operator's restore into a scratch container (RTO) against `pg_restore -j2`;
- the cost of disaster recovery's second repository (the spec's dr.target): the operator's full backup into
  both targets (repo1, then repo2) against the same into one, the median of DBFLEET_BENCH_DR_ROUNDS (3) each.

Environment: DBFLEET_BENCH_LAB (default "benchbk"), DBFLEET_BENCH_SCALE (50), DBFLEET_BENCH_ROUNDS (4),
DBFLEET_BENCH_NO_CONVERGE=1 to use a lab already configured, DBFLEET_KEEP_LAB=1
to leave the lab up, DBFLEET_BENCH_ONLY_DR=1 to measure only the second repository's cost.
The lab needs playbooks/postgres.yml with pgBackRest.
"""

from __future__ import annotations

import os
import statistics
import sys
from dataclasses import replace
from typing import Any

from bench.common import REPO, SPEC, Result, timed
from dbfleet.backups.drills import scratch_for
from dbfleet.backups.engine import RestoreTarget
from dbfleet.backups.postgres import PostgresBackups, find_primary, psql
from dbfleet.backups.runner import take_backup
from dbfleet.lab import lifecycle
from dbfleet.playbook import run_playbook
from dbfleet.progress import Progress
from dbfleet.spec import load_fleet
from dbfleet.wiring import open_access

LAB = os.environ.get("DBFLEET_BENCH_LAB", "benchbk")
SCALE = int(os.environ.get("DBFLEET_BENCH_SCALE", "50"))
ROUNDS = int(os.environ.get("DBFLEET_BENCH_ROUNDS", "4"))
DR_ROUNDS = int(os.environ.get("DBFLEET_BENCH_DR_ROUNDS", "3"))
CLUSTER = "pg-main"
DB = "bench"


def say(text: str) -> None:
    print(f"[bench backup] {text}", file=sys.stderr, flush=True)


def run() -> list[Result]:
    fleet = load_fleet(SPEC)
    inventories = REPO / "inventories"
    state = lifecycle.up(fleet, LAB, inventories, {"postgres"})
    try:
        if os.environ.get("DBFLEET_BENCH_NO_CONVERGE") != "1":
            result = run_playbook("postgres.yml", state.inventory, echo=False)
            if not result.ok:
                raise RuntimeError("postgres.yml converge failed:\n" + result.output[-3000:])
        return measure(fleet, state.inventory)
    finally:
        if os.environ.get("DBFLEET_KEEP_LAB") != "1":
            lifecycle.down(LAB, inventories)


def measure(fleet, inventory) -> list[Result]:
    both = open_access(fleet.cluster(CLUSTER), inventory, progress=Progress("bench", quiet=True))
    # The comparisons with the tools by hand are of one repository: the second (dr) is measured apart.
    access = replace(both, dr=None)
    ex = access.executor
    host = find_primary(access)
    port = str(access.cluster.port)
    base = access.target_path.rstrip("/") + "/bench"  # type: ignore[union-attr]

    def sh(script: str, user: str | None = "postgres", timeout: float = 7200) -> str:
        return ex.check(host, ["sh", "-c", script], user=user, timeout=timeout, action="bench").out.strip()

    db_bytes = pgbench_database(access, SCALE)
    sh(f"rm -rf {base} && mkdir -p {base} && chown postgres {base}", user=None)
    dr = measure_dr(access, both, {"scale": SCALE, "database_bytes": db_bytes}) if both.dr is not None else []
    if os.environ.get("DBFLEET_BENCH_ONLY_DR") == "1":
        return dr

    # Alternate tool and operator, so neither always runs on a warm cache; the fastest of each is compared
    # (a few seconds' runs on a shared machine differ by more than the 5% being measured).
    tool_times, op_times, op_size = [], [], 0
    in_run: list[float] = []
    for round_ in range(ROUNDS):
        say(f"round {round_ + 1}: pgbackrest full backup by hand")
        with timed() as t:
            sh(f"pgbackrest --stanza={CLUSTER} --type=full --no-expire-auto backup")
        tool_times.append(t.seconds)
        say(f"round {round_ + 1}: the operator's full backup")
        with timed() as t:
            manifest = take_backup(access, "full")
        op_times.append(t.seconds)
        # The same run's own split: the whole call against pgBackRest's own seconds, timed on the host (immune to
        # load from others; an upper bound, since it also counts the docker exec round trip a run by hand pays).
        in_run.append(t.seconds / manifest.detail["tool_seconds"] - 1)
        op_size = manifest.size_bytes
    tool_s, op_s = min(tool_times), min(op_times)

    say("pg_dump -Fd -j2")
    with timed() as dump:
        sh(f"pg_dump -p {port} -Fd -j2 -f {base}/dump {DB}")
    dump_bytes = int(sh(f"du -sb {base}/dump | cut -f1"))
    say("pg_basebackup -Ft -z")
    with timed() as basebackup:
        sh(f"pg_basebackup -p {port} -D {base}/base -Ft -z -X stream -c fast")
    base_bytes = int(sh(f"du -sb {base}/base | cut -f1"))

    say("pg_restore -j2 into a new database")
    sh(f"dropdb -p {port} --if-exists {DB}_restore && createdb -p {port} {DB}_restore")
    with timed() as pg_restore:
        sh(f"pg_restore -p {port} -j2 -d {DB}_restore {base}/dump")
    sh(f"dropdb -p {port} {DB}_restore")
    say("the operator's restore into a scratch container (until the server answers)")
    with scratch_for(access, "bench") as scratch:
        with timed() as op_restore:
            PostgresBackups().restore(access, manifest, scratch, RestoreTarget("latest"))
    sh(f"rm -rf {base}", user=None)
    overhead = op_s / tool_s - 1
    say(f"operator overhead over pgbackrest: {overhead * 100:+.1f}% between runs, "
        f"{min(in_run) * 100:+.1f}% within a run (target < 5%)")
    extra = {"scale": SCALE, "database_bytes": db_bytes}
    return dr + [
        Result("backup", "operator full backup (pgBackRest)", op_s, "s", tool_s, "pgbackrest backup by hand",
               extra={**extra, "overhead_percent": round(overhead * 100, 2), "runs": [tool_times, op_times],
                      "in_run_overhead_percent": [round(x * 100, 2) for x in in_run]}),
        Result("backup", "pg_dump -Fd -j2", dump.seconds, "s", op_s, "operator full backup", extra=extra),
        Result("backup", "pg_basebackup -Ft -z", basebackup.seconds, "s", op_s, "operator full backup", extra=extra),
        Result("backup", "size: operator backup (repo)", op_size / 2**20, "MiB", db_bytes / 2**20, "database size"),
        Result("backup", "size: pg_dump -Fd", dump_bytes / 2**20, "MiB", op_size / 2**20, "operator backup"),
        Result("backup", "size: pg_basebackup -Ft -z", base_bytes / 2**20, "MiB", op_size / 2**20, "operator backup"),
        Result("backup", "operator restore to scratch (RTO)", op_restore.seconds, "s", pg_restore.seconds,
               "pg_restore -j2", extra=extra),
    ]


def pgbench_database(access: Any, scale: int) -> int:
    """The pgbench database DB on the primary, initialised at `scale` the first time (once per lab); its bytes."""
    host = find_primary(access)
    port = access.cluster.port
    if psql(access, host, f"select 1 from pg_database where datname = '{DB}'", port=port).out.strip() != "1":
        say(f"pgbench -i -s {scale} (once per lab)")
        access.executor.check(host, ["sh", "-c", f"createdb -p {port} {DB} && pgbench -p {port} -i -q -s {scale} {DB}"],
                              user="postgres", timeout=7200, action="bench")
    return int(psql(access, host, f"select pg_database_size('{DB}')", port=port).out.strip())


def measure_dr(one: Any, both: Any, extra: dict[str, Any], bench: str = "backup") -> list[Result]:
    """The operator's full backup into both targets (pgBackRest repo1, then repo2, each measured) against the same
    into one, alternating, the median of DR_ROUNDS each; the row is `bench`'s."""
    single, double = [], []
    for round_ in range(DR_ROUNDS):
        say(f"dr round {round_ + 1}: the operator's full backup into one target")
        with timed() as t:
            take_backup(one, "full")
        single.append(t.seconds)
        say(f"dr round {round_ + 1}: the operator's full backup into both targets (repo1 + repo2)")
        with timed() as t:
            take_backup(both, "full")
        double.append(t.seconds)
    one_s, two_s = statistics.median(single), statistics.median(double)
    say(f"second repository: {two_s:.2f}s for both against {one_s:.2f}s for one ({two_s / one_s:.2f}x)")
    return [Result(bench, "operator full backup into both targets (dr: repo1 + repo2)", two_s, "s", one_s,
                   "operator full backup into one target", extra={**extra, "runs": [single, double],
                                                                   "rounds": DR_ROUNDS, "statistic": "median"})]
