"""Ansible callback for bench converge: each play's time, and per host the module runs it took.

Enabled by bench/bench_converge.py (ANSIBLE_CALLBACK_PLUGINS, ANSIBLE_CALLBACKS_ENABLED); writes JSON to the file
DBFLEET_BENCH_COUNTS names when the run ends:

    {"plays": [[name, seconds], ...],
     "hosts": {host: {"on_host": n, "on_controller": n, "skipped": n}}}

on_host counts each task result (each loop item of a loop) that ran a module on the host itself; on_controller
those run on the controller for the host: actions that run no module (set_fact, assert, include_role, the
argument checks, ...) and tasks delegated to localhost. A template or copy counts once, though Ansible runs a
stat and a copy or file module under it.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from typing import Any

from ansible.plugins.callback import CallbackBase

CONTROLLER_ONLY = {
    "set_fact", "assert", "debug", "fail", "meta", "include_role", "include_tasks", "import_role", "import_tasks",
    "include_vars", "add_host", "group_by", "validate_argument_spec", "set_stats", "pause", "noop",
}


def _short(action: str) -> str:
    return action.rsplit(".", 1)[-1]


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "dbfleet_counts"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.plays: list[list[Any]] = []
        self.started = 0.0
        self.hosts: dict[str, dict[str, int]] = defaultdict(lambda: {"on_host": 0, "on_controller": 0, "skipped": 0})

    def _close_play(self) -> None:
        if self.plays and self.plays[-1][1] is None:
            self.plays[-1][1] = round(time.monotonic() - self.started, 2)

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._close_play()
        self.started = time.monotonic()
        self.plays.append([play.get_name(), None])

    def _count(self, result: Any) -> None:
        host = result._host.get_name()
        task = result._task
        where = "on_controller" if (_short(task.action) in CONTROLLER_ONLY
                                    or task.delegate_to in ("localhost", "127.0.0.1")) else "on_host"
        items = result._result.get("results")
        if isinstance(items, list):
            ran = [i for i in items if isinstance(i, dict) and not i.get("skipped")]
            self.hosts[host][where] += len(ran)
            self.hosts[host]["skipped"] += len(items) - len(ran)
        else:
            self.hosts[host][where] += 1

    def v2_runner_on_ok(self, result: Any) -> None:
        self._count(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._count(result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self.hosts[result._host.get_name()]["skipped"] += 1

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._close_play()
        path = os.environ.get("DBFLEET_BENCH_COUNTS")
        if path:
            with open(path, "w", encoding="utf-8") as out:
                json.dump({"plays": self.plays, "hosts": dict(self.hosts)}, out)
