"""Shared fixtures: the lab is started once per test session and configured once with Ansible.

Environment:
- DBFLEET_TEST_LAB: lab name (default "test"), so a developer's own lab is left alone.
- DBFLEET_TEST_ENGINES: comma list of engines to start (default: all the spec has).
- DBFLEET_KEEP_LAB=1: leave the containers running after the session (faster reruns).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from dbfleet.engines.access import read_inventory_hosts
from dbfleet.lab import lifecycle
from dbfleet.lab.topology import container_name
from dbfleet.playbook import PlaybookResult, run_playbook
from dbfleet.secrets import load_secrets
from dbfleet.spec import Fleet, load_fleet

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "fleet.example.yaml"


@dataclass
class Lab:
    """A running lab: its spec, inventory, secrets and handles onto each host."""

    name: str
    fleet: Fleet
    state: lifecycle.LabState
    inventories: Path
    _converges: dict[str, PlaybookResult] = field(default_factory=dict)

    @property
    def inventory_path(self) -> Path:
        return self.state.inventory

    @cached_property
    def secrets(self) -> dict[str, str]:
        return load_secrets(self.state.secrets)

    @property
    def hostvars(self) -> dict[str, dict[str, Any]]:
        return read_inventory_hosts(self.inventory_path)

    def has(self, engine: str) -> bool:
        return any(h.engine == engine for h in self.state.hosts)

    def hosts_of(self, engine: str) -> list[str]:
        return [h.name for h in self.state.hosts if h.engine == engine]

    def container(self, host: str) -> str:
        return container_name(self.name, host)

    def address(self, host: str) -> str:
        return next(h.address for h in self.state.hosts if h.name == host)

    def host(self, host: str) -> Any:
        """A testinfra host over `docker exec`."""
        import testinfra

        return testinfra.get_host(f"docker://{self.container(host)}")

    def converge(self, playbook: str = "site.yml", extra: list[str] | None = None) -> PlaybookResult:
        return run_playbook(playbook, self.inventory_path, extra, echo=os.environ.get("DBFLEET_ECHO", "1") == "1")

    def converge_once(self, playbook: str = "site.yml") -> PlaybookResult:
        """The session's first converge of `playbook`, run once and shared."""
        if playbook not in self._converges:
            self._converges[playbook] = self.converge(playbook)
        return self._converges[playbook]


def _docker_possible() -> str | None:
    if os.geteuid() != 0 and not shutil.which("docker"):
        return "no docker client and not root to install docker.io"
    return None


@pytest.fixture(scope="session")
def lab() -> Lab:
    why = _docker_possible()
    if why:
        pytest.skip(f"lab unavailable: {why}")
    name = os.environ.get("DBFLEET_TEST_LAB", "test")
    engines_env = os.environ.get("DBFLEET_TEST_ENGINES")
    engines = {e.strip() for e in engines_env.split(",")} if engines_env else None
    fleet = load_fleet(SPEC)
    inventories = REPO / "inventories"
    state = lifecycle.up(fleet, name, inventories, engines)
    yield Lab(name, fleet, state, inventories)
    if os.environ.get("DBFLEET_KEEP_LAB") != "1":
        lifecycle.down(name, inventories)


@pytest.fixture(scope="session")
def configured(lab: Lab) -> Lab:
    """The lab after one full site.yml converge, which must succeed."""
    result = lab.converge_once("site.yml")
    assert result.ok, f"site.yml converge failed:\n{result.failures()}\n--- its last lines:\n{result.output[-3000:]}"
    return lab
