"""Make sure a Docker engine answers: install Debian's docker.io and start dockerd when none does."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import docker
from docker.errors import DockerException

from dbfleet.progress import Progress

DOCKERD_LOG = Path("/var/log/dbfleet-dockerd.log")


class EngineError(RuntimeError):
    """No Docker engine could be reached or started."""


def _client() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except DockerException:
        return None


def _apt_install(packages: list[str], progress: Progress) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with progress.step(f"installing {' '.join(packages)} from Debian"):
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env,
                       stdout=subprocess.DEVNULL)


def ensure_host_tools(progress: Progress) -> None:
    """debootstrap builds the base image; install it (and docker.io) when missing."""
    missing = [pkg for tool, pkg in (("dockerd", "docker.io"), ("debootstrap", "debootstrap"))
               if not shutil.which(tool)]
    if missing:
        if os.geteuid() != 0:
            raise EngineError(f"{', '.join(missing)} missing and not root: install them with apt-get")
        _apt_install(missing, progress)


# Each systemd container holds several inotify instances; Debian's default of 128
# per user stops new containers (exit 255) once a lab and a test lab run together.
KERNEL_MINIMUMS = {"fs/inotify/max_user_instances": 1024, "fs/inotify/max_user_watches": 524288}


def ensure_kernel_limits(progress: Progress) -> None:
    """Raise the inotify limits that systemd containers need, when below them and allowed to."""
    for key, minimum in KERNEL_MINIMUMS.items():
        path = Path("/proc/sys") / key
        try:
            if int(path.read_text()) >= minimum:
                continue
            path.write_text(str(minimum))
            progress.say(f"raised {key.replace('/', '.')} to {minimum} for systemd containers")
        except (OSError, ValueError) as exc:
            progress.say(f"could not raise {key.replace('/', '.')} to {minimum} ({exc}); "
                          "many lab containers may fail to start")


def ensure_engine(progress: Progress, wait_seconds: float = 90) -> docker.DockerClient:
    """Return a client to a running engine, starting dockerd in the background if needed."""
    ensure_kernel_limits(progress)
    client = _client()
    if client is not None:
        return client
    ensure_host_tools(progress)
    with progress.step("starting dockerd in the background"):
        log = DOCKERD_LOG.open("ab")
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            client = _client()
            if client is not None:
                return client
            time.sleep(1)
    raise EngineError(f"dockerd did not answer within {wait_seconds:.0f}s; see {DOCKERD_LOG}")
