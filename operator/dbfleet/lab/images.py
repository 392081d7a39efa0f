"""Lab images: a debootstrapped Debian base, then one image per engine, each tagged by a content hash.

A second run finds every tag present and builds nothing; editing a recipe
changes its hash and so rebuilds only what depends on it.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import ImageNotFound

from dbfleet.progress import Progress

RECIPES = Path(__file__).parent / "images"
SUITE = "bookworm"
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "python3-apt", "sudo", "ca-certificates",
    "iproute2", "procps", "gnupg", "curl", "less", "netbase",
)
LOCK_PATH = Path(os.environ.get("DBFLEET_LOCK_DIR", "/var/lock")) / "dbfleet-images.lock"
MONGO_IMAGE_ENV = "DBFLEET_MONGO_IMAGE"
MONGO_TARBALL_ENV = "DBFLEET_MONGO_TARBALL"


class ImageError(RuntimeError):
    """An image could not be built."""


@dataclass(frozen=True)
class Built:
    tag: str
    built: bool


def _mirror() -> str:
    return os.environ.get("DBFLEET_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:12]


def _dir_digest(path: Path, *extra: str) -> str:
    parts: list[bytes] = [e.encode() for e in extra]
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        parts.append(str(file.relative_to(path)).encode())
        parts.append(file.read_bytes())
    return _digest(*parts)


@contextmanager
def build_lock() -> Iterator[None]:
    """One image build at a time on this machine, across processes."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_PATH.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except ImageNotFound:
        return False


def _run_logged(cmd: list[str], log: Path, what: str) -> None:
    with log.open("ab") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise ImageError(f"{what} failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))


def _log_path(name: str) -> Path:
    d = Path(os.environ.get("DBFLEET_STATE_DIR", Path.home() / ".cache" / "dbfleet")) / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"build-{name}.log"


def ensure_rootfs(client: docker.DockerClient, progress: Progress) -> Built:
    """debootstrap minbase into a temp dir and `docker import` it."""
    tag = "dbfleet/rootfs:" + _digest(SUITE.encode(), ",".join(BASE_PACKAGES).encode())
    if _exists(client, tag):
        return Built(tag, False)
    log = _log_path("rootfs")
    with progress.step(f"debootstrap {SUITE} (about a minute) -> {tag}"), tempfile.TemporaryDirectory(
        prefix="dbfleet-rootfs-"
    ) as tmp:
        root = Path(tmp) / "root"
        _run_logged(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(root), _mirror()],
            log, "debootstrap",
        )
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout, capture_output=True)
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise ImageError(f"docker import failed: {imp.stderr.decode(errors='replace')}")
    return Built(tag, True)


def _build(client: docker.DockerClient, name: str, context: Path, args: dict[str, str], progress: Progress) -> Built:
    tag = f"dbfleet/{name}:" + _dir_digest(context, *(f"{k}={v}" for k, v in sorted(args.items())))
    if _exists(client, tag):
        return Built(tag, False)
    cmd = ["docker", "build", "-t", tag, "--label", "dbfleet.image=" + name]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    with progress.step(f"building image {tag}"):
        _run_logged(cmd + [str(context)], _log_path(name), f"docker build of {name}")
    return Built(tag, True)


def ensure_base(client: docker.DockerClient, progress: Progress) -> Built:
    rootfs = ensure_rootfs(client, progress)
    return _build(client, "base", RECIPES / "base", {"ROOTFS_IMAGE": rootfs.tag}, progress)


def mongo_source() -> tuple[str, str] | None:
    """Where the lab takes a real MongoDB from: ('image', name) or ('tarball', path), or None."""
    image = os.environ.get(MONGO_IMAGE_ENV)
    if image:
        return ("image", image)
    tarball = os.environ.get(MONGO_TARBALL_ENV)
    if tarball:
        return ("tarball", tarball)
    return None


def _binaries_from_image(client: docker.DockerClient, image: str, dest: Path) -> None:
    """Pack an image's mongod and mongos as a tarball laid out like the official one (<dir>/bin/...)."""
    container = client.containers.create(image, command="true")
    try:
        with tarfile.open(dest, "w:gz") as out:
            for binary in ("mongod", "mongos"):
                stream, _ = container.get_archive(f"/usr/bin/{binary}")
                with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as single:
                    member = single.getmember(binary)
                    content = single.extractfile(member)
                    member.name = f"mongodb-from-image/bin/{binary}"
                    out.addfile(member, content)
    finally:
        container.remove(force=True)


def _ensure_mongo(client: docker.DockerClient, base: str, progress: Progress) -> Built:
    source = mongo_source()
    assert source is not None
    kind, where = source
    recipe = RECIPES / "mongo"
    if not (recipe / "Dockerfile").exists():
        raise ImageError(f"no MongoDB image recipe at {recipe}/Dockerfile")
    with tempfile.TemporaryDirectory(prefix="dbfleet-mongo-ctx-") as tmp:
        ctx = Path(tmp)
        shutil.copytree(recipe, ctx, dirs_exist_ok=True)
        args = {"BASE_IMAGE": base}
        if kind == "tarball":
            if not Path(where).is_file():
                raise ImageError(f"{MONGO_TARBALL_ENV}={where}: no such file")
            shutil.copy(where, ctx / "mongodb.tgz")
        else:
            if not _exists(client, where):
                raise ImageError(f"{MONGO_IMAGE_ENV}={where}: no such local image (docker pull or load it first)")
            _binaries_from_image(client, where, ctx / "mongodb.tgz")
        return _build(client, "mongo", ctx, args, progress)


def ensure_images(client: docker.DockerClient, engines: set[str], progress: Progress) -> dict[str, str]:
    """Build (or find) the base and each requested engine's image; returns engine -> tag."""
    with build_lock():
        base = ensure_base(client, progress).tag
        tags: dict[str, str] = {"base": base}
        for engine in sorted(engines):
            if engine == "mongo":
                tags[engine] = _ensure_mongo(client, base, progress).tag
            else:
                tags[engine] = _build(client, engine, RECIPES / engine, {"BASE_IMAGE": base}, progress).tag
    return tags
