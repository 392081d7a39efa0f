"""The local lab: containers for the example topology, reachable, idempotent, and cleaning up only its own."""

from __future__ import annotations

import io
import uuid

import docker
import pytest

from dbfleet.lab import lifecycle
from dbfleet.progress import Progress

pytestmark = pytest.mark.lab


def test_every_spec_host_runs_or_is_skipped_with_a_reason(lab) -> None:
    planned = {h.name for h in lab.state.hosts}
    for cluster in lab.fleet.clusters:
        for name in cluster.host_names():
            assert name in planned or cluster.engine in lab.state.skipped, name
    for why in lab.state.skipped.values():
        assert "DBFLEET_MONGO" in why, why


@pytest.mark.parametrize("engine", ["postgres", "redis", "monitor"])
def test_containers_are_reachable_systemd_hosts(lab, engine: str) -> None:
    names = lab.hosts_of(engine)
    if not names:
        pytest.skip(f"{engine} not started in this lab (DBFLEET_TEST_ENGINES)")
    for name in names:
        host = lab.host(name)
        assert host.run("true").rc == 0
        assert host.check_output("hostname") == name
        assert host.run("systemctl is-system-running").stdout.strip() in ("running", "degraded")
        assert host.exists("python3"), "Ansible needs python3 on every host"
        assert lab.address(name) in host.check_output("ip -4 -o addr show")
        assert lab.hostvars[name]["ansible_connection"] == "docker"


def test_second_up_changes_nothing(lab) -> None:
    out = io.StringIO()
    engines = {h.engine for h in lab.state.hosts}
    state = lifecycle.up(lab.fleet, lab.name, lab.inventories, engines, Progress("lab", out))
    log = out.getvalue()
    assert "building" not in log and "starting" not in log and "debootstrap" not in log, log
    assert [h.address for h in state.hosts] == [h.address for h in lab.state.hosts]


def test_down_removes_only_what_the_lab_made(tmp_path) -> None:
    client = docker.from_env()
    tag = uuid.uuid4().hex[:8]
    ours = client.volumes.create(f"dbfleet-scratch{tag}-v", labels={lifecycle.LABEL: f"scratch{tag}"})
    other_lab = client.volumes.create(f"dbfleet-other{tag}-v", labels={lifecycle.LABEL: f"other{tag}"})
    unlabelled = client.volumes.create(f"plain-{tag}")
    try:
        removed = lifecycle.down(f"scratch{tag}", tmp_path, progress=Progress("lab", io.StringIO()))
        names = {v.name for v in client.volumes.list()}
        assert removed == 1 and ours.name not in names
        assert other_lab.name in names and unlabelled.name in names
    finally:
        for vol in (other_lab, unlabelled):
            vol.remove(force=True)
