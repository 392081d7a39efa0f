"""requirements.yml lists every collection the playbooks and the lab name, with ranges the installed ones satisfy,
and the collection dbfleet.fleet declares the same ranges."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from ansible.utils.version import SemanticVersion

REPO = Path(__file__).resolve().parents[2]
FQCN = re.compile(r"\b([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)\.[a-z][a-z0-9_]*\b")
BUILTIN = {"ansible.builtin", "ansible.module_utils", "ansible.legacy", "dbfleet.fleet"}
WHERE = [(REPO / "playbooks", ("*.yml", "*.yaml", "*.j2", "*.py")),
         (REPO / "operator" / "dbfleet" / "lab", ("*.py",)), (REPO / "inventories", ("*.py", "*.yml"))]


def requirements() -> dict[str, str]:
    data = yaml.safe_load((REPO / "requirements.yml").read_text())
    return {c["name"]: c["version"] for c in data["collections"]}


def referenced() -> set[str]:
    """namespace.collection of every FQCN in the playbooks, their roles and plugins, and the lab's inventory."""
    found = set()
    for root, patterns in WHERE:
        for pattern in patterns:
            for file in root.rglob(pattern):
                if "collection" in file.relative_to(REPO).parts[:2]:
                    continue  # the collection's own build script names dbfleet.fleet
                for namespace, name in FQCN.findall(file.read_text(encoding="utf-8")):
                    if namespace in {"community", "ansible", "amazon", "containers", "kubernetes", "cloud"}:
                        found.add(f"{namespace}.{name}")
    return found - BUILTIN


def satisfies(version: str, ranges: str) -> bool:
    have = SemanticVersion(version)
    for clause in ranges.split(","):
        op, value = re.fullmatch(r"\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*", clause).groups()  # type: ignore[union-attr]
        want = SemanticVersion(value)
        if not {">=": have >= want, "<=": have <= want, "==": have == want, "!=": have != want,
                ">": have > want, "<": have < want}[op]:
            return False
    return True


def test_every_collection_the_playbooks_name_is_required() -> None:
    used = referenced()
    assert {"community.postgresql", "community.mongodb", "community.general", "community.docker"} <= used
    assert used - set(requirements()) == set()


def test_each_required_collection_has_a_range_the_installed_one_satisfies() -> None:
    listed = subprocess.run(["ansible-galaxy", "collection", "list", "--format", "json"], capture_output=True,
                            text=True, check=True, cwd=REPO)
    installed: dict[str, str] = {}
    for collections in json.loads(listed.stdout).values():
        for name, info in collections.items():
            installed.setdefault(name, info["version"])  # the first path wins, as Ansible loads it
    for name, ranges in requirements().items():
        assert re.fullmatch(r">=\d+\.\d+\.\d+,<\d+\.\d+\.\d+", ranges), f"{name}: {ranges}"
        assert name in installed, f"{name} is not installed"
        assert satisfies(installed[name], ranges), f"{name} {installed[name]} is outside {ranges}"


def test_the_range_check_itself_refuses_a_version_outside() -> None:
    assert satisfies("4.2.0", ">=4.2.0,<5.0.0") and not satisfies("5.0.0", ">=4.2.0,<5.0.0")
    assert not satisfies("4.1.9", ">=4.2.0,<5.0.0")


def test_the_collection_declares_the_same_ranges() -> None:
    galaxy = yaml.safe_load((REPO / "playbooks" / "collection" / "galaxy.template.yml").read_text())
    wanted = requirements()
    assert galaxy["dependencies"] == {name: wanted[name] for name in galaxy["dependencies"]}
    assert set(wanted) - set(galaxy["dependencies"]) == {"community.docker"}  # the lab's, not the roles'
