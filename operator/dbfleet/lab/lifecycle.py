"""Bring a lab up, tear it down, report it: idempotent, and touching only what carries its label."""

from __future__ import annotations

import ipaddress
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.errors import NotFound
from docker.models.containers import Container

from dbfleet.inventory import HostAccess, build_inventory, write_inventory
from dbfleet.lab import images
from dbfleet.lab.dockerd import ensure_engine
from dbfleet.lab.topology import (
    LabHost,
    backup_volume_name,
    container_name,
    dr_volume_name,
    network_name,
    plan_hosts,
    subnet_candidates,
)
from dbfleet.progress import Progress
from dbfleet.secrets import ensure_secrets_file
from dbfleet.spec import Fleet, LocalTarget

LABEL = "dbfleet.lab"
ALL_ENGINES = {"postgres", "redis", "mongo", "monitor"}


class LabError(RuntimeError):
    """The lab could not be brought to the wanted state."""


@dataclass
class LabState:
    name: str
    inventory: Path
    secrets: Path
    network: str
    gateway: str
    hosts: list[LabHost]
    skipped: dict[str, str] = field(default_factory=dict)
    """Engine -> why it is not running."""


def inventory_dir(root: Path, lab: str) -> Path:
    return root / "local" / lab


def _used_subnets(client: docker.DockerClient) -> set[ipaddress.IPv4Network]:
    used: set[ipaddress.IPv4Network] = set()
    for net in client.networks.list():
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            if "Subnet" in cfg and ":" not in cfg["Subnet"]:
                used.add(ipaddress.IPv4Network(cfg["Subnet"]))
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    for line in routes.splitlines():
        dest = line.split()[0] if line else ""
        if "/" in dest:
            used.add(ipaddress.IPv4Network(dest, strict=False))
    return used


def ensure_network(client: docker.DockerClient, lab: str, progress: Progress) -> tuple[str, ipaddress.IPv4Network]:
    name = network_name(lab)
    try:
        net = client.networks.get(name)
        subnet = ipaddress.IPv4Network(net.attrs["IPAM"]["Config"][0]["Subnet"])
        return name, subnet
    except NotFound:
        pass
    used = _used_subnets(client)
    free = next((s for s in subnet_candidates(lab) if not any(s.overlaps(u) for u in used)), None)
    if free is None:
        raise LabError("no free /24 left in 172.28.0.0/14 for the lab network")
    subnet = free
    gateway = str(next(subnet.hosts()))
    with progress.step(f"creating network {name} ({subnet})"):
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=gateway)])
        client.networks.create(name, driver="bridge", ipam=ipam, labels={LABEL: lab})
    return name, subnet


def ensure_backup_volume(client: docker.DockerClient, lab: str, name: str | None = None) -> str:
    name = name or backup_volume_name(lab)
    try:
        client.volumes.get(name)
    except NotFound:
        client.volumes.create(name, labels={LABEL: lab})
    return name


def backup_mounts(fleet: Fleet, lab: str) -> dict[str, str]:
    """Volume name to the path the hosts see it at: the backup volume at the local backup.target path, the DR
    volume at the local dr.target path (one path each; the spec keeps the two apart)."""
    mounts = {backup_volume_name(lab): c.backup.target.path for c in fleet.clusters
              if isinstance(c.backup.target, LocalTarget)}
    mounts.update({dr_volume_name(lab): c.dr.target.path for c in fleet.clusters
                   if c.dr is not None and isinstance(c.dr.target, LocalTarget)})
    return mounts


def _run_container(client: docker.DockerClient, lab: str, host: LabHost, image: str, network: str,
                   mounts: dict[str, str]) -> Container:
    volumes = {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}}
    if host.engine != "monitor":
        for volume, path in mounts.items():
            volumes[volume] = {"bind": path, "mode": "rw"}
    container = client.containers.create(
        image,
        name=container_name(lab, host.name),
        hostname=host.name,
        detach=True,
        labels={LABEL: lab, "dbfleet.host": host.name, "dbfleet.cluster": host.cluster, "dbfleet.engine": host.engine},
        cgroupns="host",
        volumes=volumes,
        tmpfs={"/run": "rw,exec", "/run/lock": "rw", "/tmp": "rw,exec"},
        shm_size="256m",
        stop_signal="SIGRTMIN+3",
        network=network,
        networking_config={network: client.api.create_endpoint_config(ipv4_address=host.address,
                                                                       aliases=[host.name])},
    )
    container.start()
    return container


def _wait_systemd(container: Container, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        code, out = container.exec_run(["systemctl", "is-system-running"])
        state = out.decode().strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.5)
    raise LabError(f"{container.name}: systemd did not finish booting within {timeout:.0f}s (state {state!r})")


def ensure_container(client: docker.DockerClient, lab: str, host: LabHost, image: str, network: str,
                     mounts: dict[str, str], progress: Progress) -> Container:
    name = container_name(lab, host.name)
    try:
        container = client.containers.get(name)
    except NotFound:
        with progress.step(f"starting {host.name} ({host.engine}) at {host.address}"):
            container = _run_container(client, lab, host, image, network, mounts)
            _wait_systemd(container)
        return container
    if container.labels.get(LABEL) != lab:
        raise LabError(f"a container named {name} exists but was not made by lab {lab!r}; remove it by hand")
    if container.image.tags and image not in container.image.tags:
        progress.say(f"{host.name}: runs an older image; `dbfleet lab down` then `up` to rebuild it")
    if container.status != "running":
        with progress.step(f"restarting stopped {host.name}"):
            container.start()
            _wait_systemd(container)
    return container


def up(fleet: Fleet, lab: str, inventories: Path, engines: set[str] | None = None,
       progress: Progress | None = None) -> LabState:
    """Make the lab match the spec: images, network, volume, containers, inventory, secrets."""
    progress = progress or Progress("lab")
    wanted = set(engines or ALL_ENGINES)
    client = ensure_engine(progress)
    skipped: dict[str, str] = {}
    has_mongo = any(c.engine == "mongo" for c in fleet.clusters)
    if "mongo" in wanted and has_mongo and images.mongo_source() is None:
        wanted.discard("mongo")
        skipped["mongo"] = (f"no MongoDB server supplied: set {images.MONGO_IMAGE_ENV} to a local image "
                            f"(e.g. mongo:7.0) or {images.MONGO_TARBALL_ENV} to the official Linux tarball")
    network, subnet = ensure_network(client, lab, progress)
    hosts = plan_hosts(fleet, subnet, wanted)
    tags = images.ensure_images(client, {h.image for h in hosts}, progress)
    mounts = backup_mounts(fleet, lab)
    for volume in {backup_volume_name(lab), *mounts}:
        ensure_backup_volume(client, lab, volume)
    for host in hosts:
        ensure_container(client, lab, host, tags[host.image], network, mounts, progress)
    directory = inventory_dir(inventories, lab)
    secrets_path = directory / "group_vars" / "all" / "secrets.yml"
    ensure_secrets_file(secrets_path)
    gateway = str(next(subnet.hosts()))
    access = {
        h.name: HostAccess(h.address, {
            "ansible_connection": "docker",  # community.docker.docker; under Mitogen, its own docker connection
            "ansible_host": container_name(lab, h.name),
            "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
        })
        for h in hosts
    }
    # The lab's MongoDB image carries mongod and mongos already (see images.py).
    extra = {"dbfleet_lab": lab, "dbfleet_operator_address": gateway, "dbfleet_lab_subnet": str(subnet),
             "mongo_install_source": "present"}
    path = write_inventory(build_inventory(fleet, access, extra), directory)
    for engine, why in skipped.items():
        progress.say(f"{engine}: skipped — {why}")
    return LabState(lab, path, secrets_path, network, gateway, hosts, skipped)


def down(lab: str, inventories: Path, keep_volumes: bool = False, progress: Progress | None = None) -> int:
    """Remove the lab's containers, network and (unless kept) volumes. Returns how many objects went."""
    progress = progress or Progress("lab")
    client = ensure_engine(progress)
    removed = 0
    selector = {"label": f"{LABEL}={lab}"}
    for container in client.containers.list(all=True, filters=selector):
        with progress.step(f"removing {container.name}"):
            container.remove(force=True, v=True)
        removed += 1
    for net in client.networks.list(filters=selector):
        net.remove()
        removed += 1
    if not keep_volumes:
        for vol in client.volumes.list(filters=selector):
            vol.remove(force=True)
            removed += 1
    hosts_file = inventory_dir(inventories, lab) / "hosts.yml"
    if hosts_file.exists():
        hosts_file.unlink()
    return removed


def status(lab: str) -> list[dict[str, str]]:
    """One row per lab container: host, engine, state, address."""
    client = docker.from_env()
    rows = []
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}={lab}"}):
        nets = container.attrs["NetworkSettings"]["Networks"]
        address = next((n["IPAddress"] for n in nets.values() if n.get("IPAddress")), "")
        labels = container.labels
        rows.append({"host": labels.get("dbfleet.host", ""), "cluster": labels.get("dbfleet.cluster", ""),
                     "engine": labels.get("dbfleet.engine", ""), "state": container.status, "address": address})
    return sorted(rows, key=lambda r: r["host"])
