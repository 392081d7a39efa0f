"""What a converge costs: cold, and a no-op re-run of the whole lab and of one cluster, with where the time goes.

- cold `site.yml` on fresh containers (images cached);
- no-op `site.yml` (changed=0 checked), median of ROUNDS, against the cold run; then once without Mitogen
  (DBFLEET_MITOGEN=0, pipelining on) and once without either (what dbfleet ran before: Ansible's default);
- no-op `site.yml --limit <one cluster's hosts>` for each cluster of the lab, median of ROUNDS;
- the same no-ops on the fast path (`configure --fast`: a recording run, then ROUNDS runs that find every cluster in
  sync and skip its roles), of the fleet and of each cluster;
- each play's time, and per host the module runs on the host and the actions on the controller
  (bench/callback_plugins/dbfleet_counts.py);
- per-role and slowest-task time from ansible.posix's profile_roles and profile_tasks callbacks.

It prints, besides the table's rows, where the cold and the no-op runs spend their time: per play, per role, the
slowest tasks, and the module runs per host.

    python3 -m bench.run --only converge

DBFLEET_BENCH_LAB names the lab (default "bench"); DBFLEET_KEEP_LAB=1 keeps it; DBFLEET_BENCH_ROUNDS (default 3);
DBFLEET_BENCH_BASELINES=0 skips the two runs without Mitogen.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import REPO, SPEC, Result, timed
from dbfleet.converge_inputs import inputs_digest, parse_fast_report, site_vars
from dbfleet.lab import lifecycle
from dbfleet.playbook import PlaybookResult, run_playbook
from dbfleet.spec import load_fleet

LAB = os.environ.get("DBFLEET_BENCH_LAB", "bench")
ROUNDS = int(os.environ.get("DBFLEET_BENCH_ROUNDS", "3"))
BASELINES = os.environ.get("DBFLEET_BENCH_BASELINES", "1") != "0"  # 0: skip the runs without Mitogen (minutes each)
PROFILE = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_roles,ansible.posix.profile_tasks,dbfleet_counts",
           "ANSIBLE_CALLBACK_PLUGINS": str(Path(__file__).resolve().parent / "callback_plugins"),
           "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "15"}
SUMMARY = re.compile(r"^(?P<name>\S.*?) -{3,} (?P<seconds>\d+\.\d+)s$")


def profile(output: str) -> dict[str, dict[str, float]]:
    """The callbacks' summaries ('<role> ------ 1.23s' under ROLES RECAP, '<role> : <task> ------ 1.23s' under
    TASKS RECAP), as roles and tasks, each slowest first."""
    found: dict[str, dict[str, float]] = {"roles": {}, "tasks": {}}
    section = ""
    for line in output.splitlines():
        if line.startswith(("ROLES RECAP", "TASKS RECAP")):
            section = "roles" if line.startswith("ROLES") else "tasks"
            continue
        match = SUMMARY.match(line.strip())
        if section and match and not match["name"].startswith("total"):
            times = found[section]
            times[match["name"]] = max(times.get(match["name"], 0.0), float(match["seconds"]))  # a task of 2 plays
    return {kind: dict(sorted(times.items(), key=lambda kv: -kv[1])) for kind, times in found.items()}


def task_results(result: PlaybookResult) -> dict[str, int]:
    return {host: s.ok + s.failed for host, s in result.stats.items()}


def converge(state: Any, label: str, extra: list[str] | None = None,
             env: dict[str, str] | None = None) -> tuple[float, PlaybookResult, dict[str, Any]]:
    """One site.yml run: seconds, the result, and what the dbfleet_counts callback counted (plays, hosts)."""
    print(f"[bench] converge: {label} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="dbfleet-bench-") as tmp:
        counts_file = Path(tmp) / "counts.json"
        run_env = {**PROFILE, "DBFLEET_BENCH_COUNTS": str(counts_file), **(env or {})}
        with timed() as t:
            result = run_playbook("site.yml", state.inventory, extra, echo=False, env=run_env)
        counts = json.loads(counts_file.read_text()) if counts_file.exists() else {"plays": [], "hosts": {}}
    if not result.ok:
        raise RuntimeError(f"{label} failed:\n{result.failures() or result.output[-3000:]}")
    if label != "cold" and result.changed:
        raise RuntimeError(f"{label}: a re-run changed {result.changed}")
    print(f"[bench] converge: {label} {t.seconds:.1f}s", file=sys.stderr, flush=True)
    return t.seconds, result, counts


def report(label: str, seconds: float, result: PlaybookResult, counts: dict[str, Any]) -> str:
    """Where one run's time went: per play, per role, the slowest tasks, and module runs per host."""
    timing = profile(result.output)
    lines = [f"converge {label}: {seconds:.1f} s", "  per play (s):"]
    lines += [f"    {s:7.1f}  {name}" for name, s in counts["plays"] if s is not None and s >= 0.05]
    lines.append("  per role (s, profile_roles):")
    lines += [f"    {s:7.1f}  {name}" for name, s in list(timing["roles"].items())[:12]]
    lines.append("  slowest tasks (s, profile_tasks):")
    lines += [f"    {s:7.1f}  {name}" for name, s in list(timing["tasks"].items())[:8]]
    lines.append("  per host: module runs on the host / actions on the controller / skipped:")
    for host, n in sorted(counts["hosts"].items()):
        lines.append(f"    {host:<14} {n['on_host']:4d} / {n['on_controller']:4d} / {n['skipped']:4d}")
    return "\n".join(lines)


def fast_vars(inventory: Path, fast: bool) -> list[str]:
    """The extra vars `dbfleet configure` gives site.yml: its inputs' digest (a host's record is written after a full
    run) and, with `fast`, the fast path (bench/README: "Converge speed")."""
    return ["-e", json.dumps(site_vars(inputs_digest(inventory, {}), fast))]


def in_sync_hosts(result: PlaybookResult) -> int:
    """How many hosts site.yml's first play found in sync (its report line); a fast no-op must skip them all."""
    report = parse_fast_report(result.output)
    return len(report[0]) if report else 0


def runs_per_host(counts: dict[str, Any]) -> dict[str, int]:
    return {host: n["on_host"] for host, n in counts["hosts"].items()}


def run() -> list[Result]:
    fleet = load_fleet(SPEC)
    inventories = REPO / "inventories"
    lifecycle.down(LAB, inventories)
    try:
        with timed() as up:
            state = lifecycle.up(fleet, LAB, inventories)
        hosts = len(state.hosts)
        cold, first, first_counts = converge(state, "cold")
        noop_runs = [converge(state, f"no-op {i + 1}/{ROUNDS}") for i in range(ROUNDS)]
        noop = statistics.median(s for s, _, _ in noop_runs)
        if BASELINES:
            plain, _, _ = converge(state, "no-op, no Mitogen", env={"DBFLEET_MITOGEN": "0"})
            neither, _, _ = converge(state, "no-op, no Mitogen, no pipelining",
                                     env={"DBFLEET_MITOGEN": "0", "ANSIBLE_PIPELINING": "False"})
        running = {h.name for h in state.hosts}
        _, noop_result, noop_counts = noop_runs[0]
        print(report("cold", cold, first, first_counts))
        print(report(f"no-op (round 1 of {ROUNDS})", noop_runs[0][0], noop_result, noop_counts))
        results = [
            Result("converge", "lab up (containers, images cached)", up.seconds, "s", extra={"hosts": hosts}),
            Result("converge", "cold site.yml", cold, "s",
                   extra={"hosts": hosts, **profile(first.output), "task_results": task_results(first),
                          "plays": first_counts["plays"], "module_runs": runs_per_host(first_counts)}),
            Result("converge", f"no-op site.yml (median of {ROUNDS})", noop, "s", cold, "cold site.yml",
                   extra={"rounds": [round(s, 1) for s, _, _ in noop_runs], **profile(noop_result.output),
                          "task_results": task_results(noop_result), "plays": noop_counts["plays"],
                          "module_runs": runs_per_host(noop_counts)}),
            Result("converge", "no-op module runs, most on one host", max(runs_per_host(noop_counts).values()),
                   "runs", sum(runs_per_host(noop_counts).values()) / max(len(noop_counts["hosts"]), 1),
                   "mean per host"),
        ]
        if BASELINES:
            results += [
                Result("converge", "no-op site.yml, no Mitogen", plain, "s", noop, "no-op site.yml"),
                Result("converge", "no-op site.yml, no Mitogen, no pipelining", neither, "s", noop,
                       "no-op site.yml"),
            ]
        for cluster in fleet.clusters:
            members = [h for h in cluster.host_names() if h in running]
            if not members:
                continue
            limit = ["--limit", ",".join(members)]
            runs = [converge(state, f"no-op {cluster.name} {i + 1}/{ROUNDS}", limit)[0] for i in range(ROUNDS)]
            results.append(Result("converge", f"no-op site.yml --limit {cluster.name} (median)",
                                  statistics.median(runs), "s", cold, "cold site.yml",
                                  extra={"rounds": [round(s, 1) for s in runs], "hosts": len(members)}))
        results += fast_path(state, fleet, running, cold)
        return results
    finally:
        if os.environ.get("DBFLEET_KEEP_LAB") != "1":
            lifecycle.down(LAB, inventories)


def fast_path(state: Any, fleet: Any, running: set[str], cold: float) -> list[Result]:
    """`configure --fast`'s no-op: one recording run (a full no-op that writes each host's record), then ROUNDS runs
    of the fleet and of each cluster that find every host in sync."""
    recording, _, _ = converge(state, "no-op recording each host's state", fast_vars(state.inventory, False))
    fast = fast_vars(state.inventory, True)
    rounds = [converge(state, f"fast no-op {i + 1}/{ROUNDS}", fast) for i in range(ROUNDS)]
    for _, result, _ in rounds:
        if in_sync_hosts(result) != len(running):
            raise RuntimeError(f"a fast no-op found {in_sync_hosts(result)} of {len(running)} hosts in sync:\n"
                               f"{result.output[-3000:]}")
    seconds = statistics.median(s for s, _, _ in rounds)
    print(report(f"fast no-op (round 1 of {ROUNDS})", rounds[0][0], rounds[0][1], rounds[0][2]))
    results = [
        Result("converge", "no-op site.yml recording each host's state", recording, "s", cold, "cold site.yml"),
        Result("converge", f"fast no-op site.yml, every cluster in sync (median of {ROUNDS})", seconds, "s", cold,
               "cold site.yml", extra={"rounds": [round(s, 1) for s, _, _ in rounds],
                                       "module_runs": runs_per_host(rounds[0][2])}),
    ]
    for cluster in fleet.clusters:
        members = [h for h in cluster.host_names() if h in running]
        if not members:
            continue
        limit = [*fast, "--limit", ",".join(members)]
        runs = [converge(state, f"fast no-op {cluster.name} {i + 1}/{ROUNDS}", limit)[0] for i in range(ROUNDS)]
        results.append(Result("converge", f"fast no-op site.yml --limit {cluster.name} (median)",
                              statistics.median(runs), "s", cold, "cold site.yml",
                              extra={"rounds": [round(s, 1) for s in runs], "hosts": len(members)}))
    return results


if __name__ == "__main__":
    from bench.run import main

    sys.exit(main(["--only", "converge"]))
