"""The digest of everything a converge is made from, for `configure --fast` (README, "Converge speed").

The roles are pure functions of their inputs and of what they find on the hosts. The inputs are the shipped
playbooks and ansible.cfg, the inventory file with its folder's group and host vars (the secrets file among them) and
the controller's certificate folder, the alert rules rendered from the spec, and the versions of dbfleet,
ansible-core and the Ansible collections. A host's
record (playbooks/roles/converge_state) holds the digest of the inputs of the converge that wrote it, so a spec,
secret, role or version change makes every host out of sync, whatever the hosts hold.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from dbfleet import shipped

INVENTORY_PARTS = ("group_vars", "host_vars", "pki")
"""Beside the inventory file, what Ansible and the roles read from its folder: the group and host vars (the secrets
file is one), and the controller's certificates (pki_dir). Nothing else there is read, so nothing else is hashed."""
SKIPPED_DIRS = frozenset({"__pycache__", ".pytest_cache"})


class InputsError(Exception):
    """An input of the converge cannot be read."""


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


def collection_versions() -> dict[str, str]:
    """namespace.name -> version of each Ansible collection importable here (the `ansible` package bundles them; a
    collection upgrade changes what the roles do, so it is an input)."""
    found: dict[str, str] = {}
    spec = importlib.util.find_spec("ansible_collections")
    for base in (spec.submodule_search_locations or []) if spec else []:
        for manifest in sorted(Path(base).glob("*/*/MANIFEST.json")):
            try:
                info = json.loads(manifest.read_text(encoding="utf-8"))["collection_info"]
                found.setdefault(f"{info['namespace']}.{info['name']}", str(info["version"]))
            except (OSError, ValueError, KeyError, TypeError):
                found.setdefault(f"{manifest.parent.parent.name}.{manifest.parent.name}", "unreadable")
    return found


def inputs_digest(inventory: Path, rendered: dict[str, str]) -> str:
    """sha256 over the playbooks, ansible.cfg, the inventory file and what its folder holds for Ansible
    (INVENTORY_PARTS), `rendered` (name -> text: files made for this run, such as the alert rules), and the versions
    of dbfleet, ansible-core and the collections; each file is hashed with its path relative to its root.

    Raises InputsError naming a file that cannot be read."""
    sha = hashlib.sha256(b"dbfleet converge inputs 2\n")
    folder = inventory.absolute().parent
    roots = {"playbooks": shipped.playbooks_dir(), "ansible.cfg": shipped.ansible_cfg(),
             "inventory": inventory.absolute(), **{f"inventory/{part}": folder / part for part in INVENTORY_PARTS}}
    for label, root in roots.items():
        if not root.exists():  # as an empty folder: neither gives Ansible anything
            continue
        for path in _files(root):
            relative = path.relative_to(root).as_posix() if root.is_dir() else ""
            try:
                content = path.read_bytes()
            except OSError as exc:
                raise InputsError(f"cannot read {path}, an input of the converge: {exc.strerror}") from None
            sha.update(f"{label}/{relative}\0".encode())
            sha.update(hashlib.sha256(content).digest())
    for name in sorted(rendered):
        sha.update(f"rendered/{name}\0".encode())
        sha.update(hashlib.sha256(rendered[name].encode()).digest())
    versions = {"dbfleet": _version("dbfleet"), "ansible-core": _version("ansible-core"), **collection_versions()}
    for package, version in sorted(versions.items()):
        sha.update(f"version/{package}\0{version}\n".encode())
    return sha.hexdigest()


def site_vars(inputs: str, fast: bool) -> dict[str, str | bool]:
    """The extra vars site.yml's first and last plays read: the inputs' digest (a host's record is written after a
    full run) and whether to take the fast path."""
    return {"converge_state_inputs": inputs, "converge_state_fast": fast}


FAST_REPORT = re.compile(r"converge_state: in sync, skipped: (.*?); converging: ((?:[^']|'')*)'")
"""The line site.yml's first play prints (a YAML single-quoted scalar in Ansible's output, folded over lines)."""


def parse_fast_report(output: str) -> tuple[set[str], str] | None:
    """From a `--fast` run's output: the hosts found in sync (skipped), and what the play says of the others; None
    when the output has no such line."""
    found = FAST_REPORT.search(re.sub(r"\s+", " ", output))
    if not found:
        return None
    skipped = set() if found[1] == "none" else {host.strip() for host in found[1].split(",")}
    return skipped, found[2].replace("''", "'")
