#!/usr/bin/env python3
"""Build the Ansible collection dbfleet.fleet from playbooks/roles: `ansible-galaxy collection build` on a staged tree.

    python3 playbooks/collection/build.py --output dist/
    ansible-galaxy collection install dist/dbfleet-fleet-<version>.tar.gz

This is the way to build it: `ansible-galaxy collection build playbooks/collection` fails (this folder has no
galaxy.yml; the metadata is galaxy.template.yml, staged as galaxy.yml).

The roles stay in playbooks/roles, where the plays of playbooks/ find them
with their modules in each role's library/ and the filters in
playbooks/filter_plugins/. A collection cannot keep plugins inside its roles,
so the staged tree moves them where collections keep them: plugins/modules/ and
plugins/filter/. A role inside a collection looks in its own collection first
for modules and roles, so `redis_current_master:` and `include_role: pki` resolve
unchanged; filters it does not (ansible-core 2.19 says "No filter named"), so the
staged roles call ours by their full names, `dbfleet.fleet.dbfleet_mongo_topology`.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLAYBOOKS = HERE.parent
GALAXY_TEMPLATE = "galaxy.template.yml"
"""The collection's galaxy.yml, staged under that name. Not galaxy.yml here: `ansible-galaxy collection build`
run on this folder would make a collection with no role in it; without a galaxy.yml it fails."""
STAGED_FILES = {GALAXY_TEMPLATE: "galaxy.yml", "README.md": "README.md", "CHANGELOG.md": "CHANGELOG.md",
                "meta/runtime.yml": "meta/runtime.yml"}
COLLECTION = "dbfleet.fleet"
TEMPLATED = ("*.yml", "*.yaml", "*.j2")
"""Role files where a filter may be called."""


def filter_names(plugin: Path) -> list[str]:
    """The filters a filter plugin file defines (its FilterModule().filters())."""
    spec = importlib.util.spec_from_file_location(f"dbfleet_filter_{plugin.stem}", plugin)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return sorted(module.FilterModule().filters())


def qualify_filters(roles: Path, names: list[str]) -> None:
    """Call our filters by their full names in the staged roles; refuse a use this does not recognise."""
    for file in sorted(f for pattern in TEMPLATED for f in roles.rglob(pattern)):
        text = file.read_text(encoding="utf-8")
        for name in names:
            text = re.sub(rf"(\|\s*){name}\b", rf"\g<1>{COLLECTION}.{name}", text)
            bare = re.search(rf"(?<!{re.escape(COLLECTION)}\.)\b{name}\b", text)
            if bare:
                raise SystemExit(f"{file.relative_to(roles)}: {name} is used other than as `| {name}`; "
                                 f"teach build.py to qualify it")
        file.write_text(text, encoding="utf-8")


def stage(tree: Path) -> Path:
    """Lay out the collection in `tree` (namespace/name), return its folder."""
    root = tree / "dbfleet" / "fleet"
    for source, staged in STAGED_FILES.items():
        (root / staged).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(HERE / source, root / staged)
    shutil.copytree(PLAYBOOKS / "roles", root / "roles", ignore=shutil.ignore_patterns("library", "__pycache__"))
    modules = root / "plugins" / "modules"
    modules.mkdir(parents=True)
    for module in sorted(PLAYBOOKS.glob("roles/*/library/*.py")):
        if (modules / module.name).exists():
            raise SystemExit(f"two roles ship a module named {module.stem}: a collection has one namespace")
        shutil.copy2(module, modules / module.name)
    filters = root / "plugins" / "filter"
    filters.mkdir(parents=True)
    names: list[str] = []
    for plugin in sorted(PLAYBOOKS.glob("filter_plugins/*.py")):
        shutil.copy2(plugin, filters / plugin.name)
        names += filter_names(plugin)
    qualify_filters(root / "roles", names)
    return root


def build(output: Path) -> Path:
    """Build the collection tarball into `output`; returns its path."""
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dbfleet-collection-") as tmp:
        root = stage(Path(tmp))
        try:
            done = subprocess.run(["ansible-galaxy", "collection", "build", str(root), "--output-path", str(output),
                                   "--force"], capture_output=True, text=True)
        except FileNotFoundError:
            raise SystemExit("ansible-galaxy is not on PATH: install Ansible (pip install 'ansible>=12,<13')") from None
        if done.returncode != 0:
            raise SystemExit(f"ansible-galaxy collection build failed:\n{done.stdout}{done.stderr}")
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("Created collection")), "")
    return Path(line.split(" at ", 1)[1].strip()) if " at " in line else output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("dist"), help="folder for the tarball (default: dist)")
    args = parser.parse_args()
    print(build(args.output.absolute()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
