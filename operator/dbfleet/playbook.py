"""Run ansible-playbook from Python and read its PLAY RECAP, so callers can assert changed=0.

The playbooks and ansible.cfg are the ones dbfleet ships (dbfleet.shipped); the
inventory is made absolute here, so Ansible finds it whatever its working folder.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dbfleet import shipped

RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)"
)


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

    def failures(self, limit: int = 4000) -> str:
        """Each failed or unreachable result with the TASK line above it, for an error message.

        A converge's tail shows only the recap; the failure that stopped a host is often thousands of
        lines earlier."""
        blocks: list[str] = []
        task = ""
        lines = self.output.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("TASK ["):
                task = line
            elif line.startswith(("fatal: [", "failed: [")) or "UNREACHABLE!" in line:
                blocks.append("\n".join([task, *lines[i:i + 8]]))
        return "\n".join(blocks)[-limit:]


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


MITOGEN_OFF = "DBFLEET_MITOGEN"
"""Set to 0 to run Ansible's own linear strategy even where Mitogen is installed."""


def mitogen_strategy(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Mitogen's linear strategy, when its package (dbfleet[fast]) is installed and neither DBFLEET_MITOGEN=0 nor
    the user's own ANSIBLE_STRATEGY says otherwise; {} when not.

    Mitogen keeps one Python interpreter per host for the whole run and sends modules to it, instead of a new
    interpreter and a module file per task (README, "Converge speed"). It takes over the `docker`, `ssh` and
    `local` connections; hosts on any other connection run as without it."""
    if environ.get(MITOGEN_OFF, "1") == "0" or environ.get("ANSIBLE_STRATEGY"):
        return {}
    found = importlib.util.find_spec("ansible_mitogen")
    if found is None or not found.submodule_search_locations:
        return {}
    plugins = Path(next(iter(found.submodule_search_locations))) / "plugins" / "strategy"
    if not (plugins / "mitogen_linear.py").is_file():
        return {}
    return {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_linear"}


def ansible_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every Ansible run gets: dbfleet's ansible.cfg, Mitogen where installed, no colour,
    unbuffered."""
    asked = {**os.environ, **(extra or {})}
    return {**os.environ, "ANSIBLE_CONFIG": str(shipped.ansible_cfg()), **mitogen_strategy(asked),
            "ANSIBLE_FORCE_COLOR": "0", "PYTHONUNBUFFERED": "1", **(extra or {})}


def run_shell(host: str, inventory: Path, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """One shell command on one inventory host through Ansible (its connection and become settings).

    Raises subprocess.TimeoutExpired after `timeout` seconds."""
    cmd = ["ansible", host, "-i", str(inventory.absolute()), "-m", "ansible.builtin.shell", "-a", command]
    return subprocess.run(cmd, env=ansible_env(), capture_output=True, text=True, timeout=timeout)


def run_playbook(playbook: str, inventory: Path, extra: list[str] | None = None, echo: bool = True,
                 env: dict[str, str] | None = None, timeout: float = 1800) -> PlaybookResult:
    """Run playbooks/<playbook> against `inventory`, streaming output when `echo`.

    Raises shipped.ShippedFilesError when dbfleet ships no such playbook."""
    cmd = ["ansible-playbook", "-i", str(inventory.absolute()), str(shipped.playbook(playbook)), *(extra or [])]
    full_env = ansible_env(env)
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if echo:
            sys.stderr.write(line)
    code = proc.wait(timeout=timeout)
    output = "".join(lines)
    return PlaybookResult(code, parse_recap(output), output)


class NoHostsError(Exception):
    """The inventory is missing, unparsable, or gives the playbook no host to run on."""


def _why_no_hosts(output: str) -> str:
    if "Unable to parse" in output or "Failed to parse" in output:
        return "could not be parsed as an inventory"
    if "Could not match supplied host pattern" in output and "no hosts to target" in output:
        return "has no host that the playbook and --limit select"
    return "has no host that the playbook runs on"


def list_hosts(playbook: str, inventory: Path, limit: str | None = None, timeout: float = 120) -> set[str]:
    """The hosts `playbook` would run on (ansible-playbook --list-hosts), or NoHostsError saying why none.

    Ansible itself only warns about a missing or unparsable inventory and then
    runs on no host at all, reporting success; this check makes that an error."""
    path = inventory.absolute()
    if not path.exists():
        raise NoHostsError(f"inventory {path} does not exist")
    cmd = ["ansible-playbook", "--list-hosts", "-i", str(path), str(shipped.playbook(playbook))]
    if limit:
        cmd += ["--limit", limit]
    done = subprocess.run(cmd, env=ansible_env(), capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    hosts: set[str] = set()
    listing = False
    for line in done.stdout.splitlines():
        if re.match(r"^\s+hosts \(\d+\):", line):
            listing = True
        elif listing and line.startswith(" " * 6) and line.strip():
            hosts.add(line.strip())
        else:
            listing = False
    if done.returncode != 0 and "no hosts to target" not in output:
        last = next((ln for ln in reversed(output.splitlines()) if ln.strip()), "no output")
        raise NoHostsError(f"ansible-playbook --list-hosts failed on inventory {path}: {last.strip()}")
    if not hosts:
        raise NoHostsError(f"inventory {path} {_why_no_hosts(output)}")
    return hosts
