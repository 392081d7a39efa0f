"""The digest of everything a converge is made from, for `configure --fast` (README, "Converge speed").

The roles are pure functions of their inputs and of what they find on the hosts. The inputs are the shipped
playbooks and ansible.cfg, the inventory folder (hosts.yml, group and host vars, the secrets file, the controller's
certificate folder), the alert rules rendered from the spec, and the versions of dbfleet and Ansible. A host's
record (playbooks/roles/converge_state) holds the digest of the inputs of the converge that wrote it, so a spec,
secret, role or version change makes every host out of sync, whatever the hosts hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from dbfleet import shipped

SKIPPED_DIRS = frozenset({"__pycache__", ".pytest_cache"})


def _files(root: Path) -> Iterable[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and not SKIPPED_DIRS & set(path.relative_to(root).parts):
            yield path


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def inputs_digest(inventory: Path, rendered: dict[str, str]) -> str:
    """sha256 over the playbooks, ansible.cfg, the inventory's folder, `rendered` (name -> text: files made for this
    run, such as the alert rules) and the versions; each file is hashed with its path relative to its root."""
    sha = hashlib.sha256(b"dbfleet converge inputs 1\n")
    roots = {"playbooks": shipped.playbooks_dir(), "ansible.cfg": shipped.ansible_cfg(),
             "inventory": inventory.absolute().parent}
    for label, root in roots.items():
        for path in _files(root):
            relative = path.relative_to(root).as_posix() if root.is_dir() else ""
            sha.update(f"{label}/{relative}\0".encode())
            sha.update(hashlib.sha256(path.read_bytes()).digest())
    for name in sorted(rendered):
        sha.update(f"rendered/{name}\0".encode())
        sha.update(hashlib.sha256(rendered[name].encode()).digest())
    for package in ("dbfleet", "ansible-core"):
        sha.update(f"version/{package}\0{_version(package)}\n".encode())
    return sha.hexdigest()
