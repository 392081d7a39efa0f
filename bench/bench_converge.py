"""Cold converge of the whole lab, then idempotent re-runs with and without pipelining."""

from __future__ import annotations

import os

from bench.common import REPO, SPEC, Result, timed
from dbfleet.lab import lifecycle
from dbfleet.playbook import run_playbook
from dbfleet.spec import load_fleet

LAB = os.environ.get("DBFLEET_BENCH_LAB", "bench")


def run() -> list[Result]:
    fleet = load_fleet(SPEC)
    inventories = REPO / "inventories"
    lifecycle.down(LAB, inventories)
    try:
        with timed() as up:
            state = lifecycle.up(fleet, LAB, inventories)
        with timed() as cold:
            first = run_playbook("site.yml", state.inventory, echo=False)
        if not first.ok:
            raise RuntimeError("cold converge failed:\n" + first.output[-3000:])
        with timed() as warm:
            second = run_playbook("site.yml", state.inventory, echo=False, env={"ANSIBLE_PIPELINING": "True"})
        with timed() as warm_nopipe:
            third = run_playbook("site.yml", state.inventory, echo=False, env={"ANSIBLE_PIPELINING": "False"})
        for result, label in ((second, "with pipelining"), (third, "without pipelining")):
            if result.changed:
                raise RuntimeError(f"idempotent re-run ({label}) changed {result.changed}")
        hosts = len(state.hosts)
        return [
            Result("converge", "lab up (containers, images cached)", up.seconds, "s", extra={"hosts": hosts}),
            Result("converge", "cold converge site.yml", cold.seconds, "s", extra={"hosts": hosts}),
            Result("converge", "re-run, pipelining (changed=0)", warm.seconds, "s", cold.seconds, "cold converge"),
            Result("converge", "re-run, no pipelining (changed=0)", warm_nopipe.seconds, "s", cold.seconds,
                   "cold converge"),
        ]
    finally:
        if os.environ.get("DBFLEET_KEEP_LAB") != "1":
            lifecycle.down(LAB, inventories)
