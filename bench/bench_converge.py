"""What a converge costs: cold, and a no-op re-run of the whole lab and of one cluster, with where the time goes.

- cold `site.yml` on fresh containers (images cached);
- no-op `site.yml` (changed=0 checked), median of ROUNDS, against the cold run; then once without Mitogen
  (DBFLEET_MITOGEN=0, pipelining on) and once without either (what dbfleet ran before: Ansible's default);
- no-op `site.yml --limit <one cluster's hosts>` for each cluster of the lab, median of ROUNDS;
- task results per host (recap ok + failed: each is one module run, or one action on the controller);
- per-role and slowest-task time from ansible.posix's profile_roles and profile_tasks callbacks.

    python3 -m bench.run --only converge

DBFLEET_BENCH_LAB names the lab (default "bench"); DBFLEET_KEEP_LAB=1 keeps it.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
from typing import Any

from bench.common import REPO, SPEC, Result, timed
from dbfleet.lab import lifecycle
from dbfleet.playbook import PlaybookResult, run_playbook
from dbfleet.spec import load_fleet

LAB = os.environ.get("DBFLEET_BENCH_LAB", "bench")
ROUNDS = int(os.environ.get("DBFLEET_BENCH_ROUNDS", "3"))
PROFILE = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_roles,ansible.posix.profile_tasks",
           "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "15"}
SUMMARY = re.compile(r"^(?P<name>\S.*?) -{3,} (?P<seconds>\d+\.\d+)s$")


def profile(output: str) -> dict[str, dict[str, float]]:
    """The callbacks' summary lines ('<role> ------ 1.23s', '<role> : <task> ------ 1.23s'), as roles and tasks,
    each slowest first."""
    found: dict[str, dict[str, float]] = {"roles": {}, "tasks": {}}
    for line in output.splitlines():
        match = SUMMARY.match(line.strip())
        if match and not match["name"].startswith("total"):
            times = found["tasks" if " : " in match["name"] else "roles"]
            times[match["name"]] = max(times.get(match["name"], 0.0), float(match["seconds"]))  # a task of 2 plays
    return {kind: dict(sorted(times.items(), key=lambda kv: -kv[1])) for kind, times in found.items()}


def task_results(result: PlaybookResult) -> dict[str, int]:
    return {host: s.ok + s.failed for host, s in result.stats.items()}


def converge(state: Any, label: str, extra: list[str] | None = None,
             env: dict[str, str] | None = None) -> tuple[float, PlaybookResult]:
    print(f"[bench] converge: {label} ...", file=sys.stderr, flush=True)
    with timed() as t:
        result = run_playbook("site.yml", state.inventory, extra, echo=False, env={**PROFILE, **(env or {})})
    if not result.ok:
        raise RuntimeError(f"{label} failed:\n{result.failures() or result.output[-3000:]}")
    if label != "cold" and result.changed:
        raise RuntimeError(f"{label}: a re-run changed {result.changed}")
    print(f"[bench] converge: {label} {t.seconds:.1f}s", file=sys.stderr, flush=True)
    return t.seconds, result


def run() -> list[Result]:
    fleet = load_fleet(SPEC)
    inventories = REPO / "inventories"
    lifecycle.down(LAB, inventories)
    try:
        with timed() as up:
            state = lifecycle.up(fleet, LAB, inventories)
        hosts = len(state.hosts)
        cold, first = converge(state, "cold")
        noop_runs = [converge(state, f"no-op {i + 1}/{ROUNDS}") for i in range(ROUNDS)]
        noop = statistics.median(s for s, _ in noop_runs)
        plain, _ = converge(state, "no-op, no Mitogen", env={"DBFLEET_MITOGEN": "0"})
        neither, _ = converge(state, "no-op, no Mitogen, no pipelining",
                              env={"DBFLEET_MITOGEN": "0", "ANSIBLE_PIPELINING": "False"})
        running = {h.name for h in state.hosts}
        results = [
            Result("converge", "lab up (containers, images cached)", up.seconds, "s", extra={"hosts": hosts}),
            Result("converge", "cold site.yml", cold, "s",
                   extra={"hosts": hosts, **profile(first.output), "task_results": task_results(first)}),
            Result("converge", f"no-op site.yml (median of {ROUNDS})", noop, "s", cold, "cold site.yml",
                   extra={"rounds": [round(s, 1) for s, _ in noop_runs], **profile(noop_runs[0][1].output),
                          "task_results": task_results(noop_runs[0][1])}),
            Result("converge", "no-op site.yml, no Mitogen", plain, "s", noop, "no-op site.yml"),
            Result("converge", "no-op site.yml, no Mitogen, no pipelining", neither, "s", noop, "no-op site.yml"),
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
        return results
    finally:
        if os.environ.get("DBFLEET_KEEP_LAB") != "1":
            lifecycle.down(LAB, inventories)


if __name__ == "__main__":
    from bench.run import main

    sys.exit(main(["--only", "converge"]))
