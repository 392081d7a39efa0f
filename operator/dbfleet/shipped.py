"""The files dbfleet ships beside its code: the playbooks and roles, ansible.cfg and the example spec.

A wheel carries them as package data in dbfleet/data/ (copied there at build
time by dbfleet._build from the repository's playbooks/, ansible.cfg and
fleet.example.yaml). Run from a source checkout (an editable install, or
PYTHONPATH=operator) there is no dbfleet/data/, and the checkout's own files
are used, so an edit to a role takes effect without a rebuild. Either way they
are found through the imported package, never through the current directory.
Nothing here ever writes: the user's state lives in the project folder.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DATA = "data"
"""The package data folder inside the installed package."""


class ShippedFilesError(RuntimeError):
    """dbfleet's own files are missing: a broken install."""


def _package_dir() -> Path:
    root = files("dbfleet")
    if not isinstance(root, Path):
        raise ShippedFilesError(f"dbfleet is imported from {root}, not a folder: Ansible needs real files")
    return root


def data_root() -> Path:
    """The folder holding ansible.cfg, playbooks/ and fleet.example.yaml."""
    package = _package_dir()
    installed = package / DATA
    if (installed / "playbooks").is_dir():
        return installed
    # A source checkout keeps the package in <checkout>/operator/dbfleet and the playbooks at the top.
    checkout = package.parent.parent
    if package.parent.name == "operator" and (checkout / "pyproject.toml").is_file() \
            and (checkout / "playbooks").is_dir():
        return checkout
    raise ShippedFilesError(f"dbfleet's playbooks are missing: neither {installed}/playbooks (an installed wheel) "
                            f"nor {checkout}/playbooks (a source checkout) exists; reinstall dbfleet")


def playbooks_dir() -> Path:
    return data_root() / "playbooks"


def ansible_cfg() -> Path:
    return data_root() / "ansible.cfg"


def example_spec() -> Path:
    return data_root() / "fleet.example.yaml"


def playbook(name: str) -> Path:
    """playbooks/<name>, or ShippedFilesError listing the playbooks there are."""
    folder = playbooks_dir()
    path = folder / name
    if "/" in name or not name.endswith((".yml", ".yaml")) or not path.is_file():
        there = ", ".join(sorted(p.name for p in folder.glob("*.yml")))
        raise ShippedFilesError(f"no playbook {name!r} in {folder}; there are {there}")
    return path
