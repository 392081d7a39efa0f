"""Run ansible-playbook from Python and read its PLAY RECAP, so callers can assert changed=0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)"
)
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class HostStats:
    ok: int
    changed: int
    unreachable: int
    failed: int
    skipped: int


@dataclass(frozen=True)
class PlaybookResult:
    returncode: int
    stats: dict[str, HostStats]
    output: str

    @property
    def changed(self) -> dict[str, int]:
        return {h: s.changed for h, s in self.stats.items() if s.changed}

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and all(not s.failed and not s.unreachable for s in self.stats.values())


def parse_recap(output: str) -> dict[str, HostStats]:
    stats: dict[str, HostStats] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        match = RECAP.match(line.strip()) if in_recap else None
        if match:
            counts = (int(match[k]) for k in ("ok", "changed", "unreachable", "failed", "skipped"))
            stats[match["host"]] = HostStats(*counts)
    return stats


def ansible_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every Ansible run gets: the project's ansible.cfg, no colour, unbuffered."""
    return {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
            "PYTHONUNBUFFERED": "1", **(extra or {})}


def run_shell(host: str, inventory: Path, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """One shell command on one inventory host through Ansible (its connection and become settings).

    Raises subprocess.TimeoutExpired after `timeout` seconds."""
    cmd = ["ansible", host, "-i", str(inventory), "-m", "ansible.builtin.shell", "-a", command]
    return subprocess.run(cmd, cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=timeout)


def run_playbook(playbook: str, inventory: Path, extra: list[str] | None = None, echo: bool = True,
                 env: dict[str, str] | None = None, timeout: float = 1800) -> PlaybookResult:
    """Run playbooks/<playbook> against `inventory`, streaming output when `echo`."""
    cmd = ["ansible-playbook", "-i", str(inventory), str(REPO / "playbooks" / playbook), *(extra or [])]
    full_env = ansible_env(env)
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if echo:
            sys.stderr.write(line)
    code = proc.wait(timeout=timeout)
    output = "".join(lines)
    return PlaybookResult(code, parse_recap(output), output)
