"""Throwaway containers for restores and drills: the lab's ScratchProvider (backups.scratch).

Each is started from an engine's lab image and always removed after.

A scratch container joins the lab network, carries the lab's label (so
`lab down` removes it even if a drill was killed), and mounts the lab's
shared backup volume read-only at the target path, so a restore can read the
repository but never change it. It runs no systemd and no service: the
restore code starts exactly the server it needs, as the engine's own user.
"""

from __future__ import annotations

import io
import tarfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import NotFound

from dbfleet.backups.scratch import SCRATCH_HOST
from dbfleet.engines.executor import DockerExecutor
from dbfleet.lab.lifecycle import LABEL, LabError
from dbfleet.lab.topology import backup_volume_name, dr_volume_name, network_name

SCRATCH_LABEL = "dbfleet.scratch"


@dataclass
class Scratch:
    """A running scratch container and an executor whose one host, 'scratch', is it (a ScratchHost)."""

    name: str
    container: Any
    executor: DockerExecutor
    address: str

    def remove(self) -> None:
        try:
            self.container.remove(force=True, v=True)
        except NotFound:
            pass

    def put_file(self, source: Path, dest: str, owner: str | None = None, mode: int = 0o600) -> None:
        """Copy one local file into the container (its directory must exist)."""
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            info = tar.gettarinfo(str(source), arcname=Path(dest).name)
            info.mode = mode
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with source.open("rb") as handle:
                tar.addfile(info, handle)
        self.container.put_archive(str(Path(dest).parent), data.getvalue())
        if owner:
            self.executor.check(SCRATCH_HOST, ["chown", owner, dest])


def lab_image(client: docker.DockerClient, lab: str, engine: str) -> str:
    """The image id the lab's running hosts of `engine` use."""
    found = client.containers.list(filters={"label": [f"{LABEL}={lab}", f"dbfleet.engine={engine}"]})
    hosts = [c for c in found if SCRATCH_LABEL not in c.labels]
    if not hosts:
        raise LabError(f"lab {lab!r} runs no {engine} host to take a scratch image from; `dbfleet lab up` first")
    return str(hosts[0].image.id)


def backup_volume_mountpoint(lab: str, client: docker.DockerClient | None = None, dr: bool = False) -> Path:
    """Where this machine sees the lab's shared backup volume (the operator's view of a local target), or with
    `dr` its second one (the local dr.target)."""
    client = client or docker.from_env()
    volume = dr_volume_name(lab) if dr else backup_volume_name(lab)
    try:
        return Path(client.volumes.get(volume).attrs["Mountpoint"])
    except NotFound:
        raise LabError(f"lab {lab!r} has no backup volume {volume}; `dbfleet lab up` first") from None


@contextmanager
def scratch_container(lab: str, engine: str, purpose: str, backup_path: str | None = None,
                      env: dict[str, str] | None = None, client: docker.DockerClient | None = None,
                      keep: bool = False, dr: bool = False) -> Iterator[Scratch]:
    """A scratch container of `engine`'s lab image; removed on leaving the block, whatever happened,
    unless `keep` (a restore the user wants to inspect: `lab down` still removes it)."""
    client = client or docker.from_env()
    image = lab_image(client, lab, engine)
    name = f"dbfleet-{lab}-scratch-{purpose}-{uuid.uuid4().hex[:6]}"
    volume = dr_volume_name(lab) if dr else backup_volume_name(lab)
    volumes = {volume: {"bind": backup_path, "mode": "ro"}} if backup_path else {}
    container = client.containers.create(
        image, command=["sleep", "infinity"], name=name, hostname=f"scratch-{purpose}", detach=True,
        labels={LABEL: lab, SCRATCH_LABEL: purpose, "dbfleet.scratch.engine": engine},
        # No tmpfs: files are copied in with put_archive, which cannot see into a tmpfs.
        network=network_name(lab), volumes=volumes, environment=env or {}, shm_size="256m",
    )
    failed = True
    try:
        container.start()
        deadline = time.monotonic() + 30
        container.reload()
        while container.status != "running" and time.monotonic() < deadline:
            time.sleep(0.2)
            container.reload()
        if container.status != "running":
            raise LabError(f"scratch container {name} did not start (status {container.status})")
        nets = container.attrs["NetworkSettings"]["Networks"]
        address = next((n["IPAddress"] for n in nets.values() if n.get("IPAddress")), "")
        yield Scratch(name, container, DockerExecutor({SCRATCH_HOST: name}, client), address)
        failed = False
    finally:
        if failed or not keep:
            try:
                container.remove(force=True, v=True)
            except NotFound:
                pass


@dataclass(frozen=True)
class LabScratch:
    """The lab's ScratchProvider: containers on the lab network, the backup volume mounted read-only."""

    lab: str
    backup_path: str | None
    """Where the hosts see a local backup target (None for S3)."""
    client: Any = None
    dr: bool = False
    """Mount the second (DR) backup volume at backup_path instead of the first: restores from dr.target."""

    def scratch(self, engine: str, purpose: str, keep: bool = False) -> AbstractContextManager[Scratch]:
        return scratch_container(self.lab, engine, purpose, self.backup_path, client=self.client, keep=keep,
                                 dr=self.dr)


def leftover_scratch(lab: str, client: docker.DockerClient | None = None) -> list[str]:
    """Names of scratch containers of this lab still present (there should be none after a drill)."""
    client = client or docker.from_env()
    found = client.containers.list(all=True, filters={"label": [f"{LABEL}={lab}", SCRATCH_LABEL]})
    return sorted(c.name for c in found)
