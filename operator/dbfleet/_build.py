"""Build hook (pyproject [tool.setuptools.cmdclass]): pack the Ansible files into the wheel as dbfleet/data/.

The repository keeps playbooks/, ansible.cfg and fleet.example.yaml at its top
level, where Ansible users and the checkout's commands expect them. A wheel has
no top level of its own, so build_py copies them into the built package, where
dbfleet.shipped finds them. Editable installs skip the copy and use the
checkout's files. This module is read by setuptools only and is left out of the
wheel.
"""

from __future__ import annotations

import shutil
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from setuptools.command.build_py import build_py

SHIPPED = ("playbooks", "ansible.cfg", "fleet.example.yaml")
"""Repository paths copied into dbfleet/data/."""
LEFT_OUT = ("__pycache__", "*.pyc", "collection")
"""Names not shipped below those paths: bytecode, and playbooks/collection (the Ansible collection's build files)."""


def shipped_files(root: Path) -> list[Path]:
    """The files of SHIPPED under `root`, relative to it, without what LEFT_OUT names."""
    found: list[Path] = []
    for name in SHIPPED:
        path = root / name
        if path.is_file():
            found.append(Path(name))
            continue
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(root)
            left_out = any(fnmatch(part, pattern) for part in rel.parts[1:] for pattern in LEFT_OUT)
            if file.is_file() and not left_out:
                found.append(rel)
    return found


class BuildPy(build_py):  # type: ignore[misc]  # setuptools' classes are untyped here
    """build_py that also copies the shipped files into <build>/dbfleet/data/."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path.cwd()
        files = shipped_files(root)
        if not (root / "playbooks" / "site.yml").is_file():
            raise RuntimeError(f"{root}: no playbooks/site.yml to ship; build from the repository's top level")
        target = Path(self.build_lib) / "dbfleet" / "data"
        if target.exists():
            shutil.rmtree(target)  # a file removed from playbooks/ must not linger from an earlier build
        for rel in files:
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, dest)

    def get_source_files(self) -> list[str]:
        # sdist lists these (and this hook), so a wheel built from the sdist has them too.
        hook = str(Path(self.get_package_dir("dbfleet")) / "_build.py")
        return [*super().get_source_files(), hook, *(str(p) for p in shipped_files(Path.cwd()))]

    def find_package_modules(self, package: str, package_dir: str) -> list[Any]:
        # The wheel leaves this hook out: it is for setuptools, not for a dbfleet user.
        modules: list[Any] = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) != ("dbfleet", "_build")]
