"""Install dbfleet the way users do: a wheel in a fresh virtual environment, and the roles as an Ansible collection.

The wheel is built from a copy of this checkout (pip wheel, as `pip install .`
would), installed into a new venv, and run from an empty folder with none of
the checkout in reach: no PYTHONPATH, another working folder. The venv sees the
machine's site-packages for the dependencies (--system-site-packages), so the
test asserts that `dbfleet` is the wheel's and not an editable install's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import dbfleet

REPO = Path(__file__).resolve().parents[2]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".dbfleet",
                                    ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", "local", "results")


def _run(cmd: list[str], timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@dataclass
class Venv:
    root: Path
    env: dict[str, str]
    package: Path
    """The installed dbfleet package folder."""

    def dbfleet(self, *argv: str, cwd: Path, expect: int = 0,
                timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.root / "bin" / "dbfleet"), *argv], cwd=cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == expect, f"dbfleet {' '.join(argv)} exited {done.returncode}:\n" \
                                          f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
        return done

    def package_files(self) -> dict[str, int]:
        """Every file of the installed package with its mtime, bytecode caches aside (those are Python's)."""
        return {str(p.relative_to(self.package)): p.stat().st_mtime_ns for p in self.package.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "dbfleet"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(source)])
    (built,) = out.glob("dbfleet-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(root)])
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("DBFLEET_")}
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(root)
    python = str(root / "bin" / "python")
    # The machine's site-packages may hold dbfleet 0.1.0 already (an editable install): reinstall into the venv,
    # then let pip add any dependency the machine lacks (none where bootstrap.sh found them all installed).
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], env=env)
    _run([python, "-m", "pip", "install", "-q", str(wheel)], env=env)
    where = _run([python, "-c", "import dbfleet, dbfleet.shipped as s; print(dbfleet.__file__); "
                                "print(s.data_root())"], env=env, cwd="/").stdout.split()
    package = Path(where[0]).parent
    assert package.is_relative_to(root), f"the venv imports dbfleet from {package}, not from the wheel"
    assert Path(where[1]) == package / "data", "the wheel's dbfleet does not find its own playbooks"
    return Venv(root, env, package)


def test_the_wheel_ships_its_playbooks_and_not_its_build_hook(venv: Venv) -> None:
    data = venv.package / "data"
    shipped = {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()}
    in_checkout = {str(p.relative_to(REPO)) for p in (REPO / "playbooks").rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and "collection" not in p.parts}
    assert in_checkout <= shipped
    assert {"ansible.cfg", "fleet.example.yaml"} <= shipped
    assert not (venv.package / "_build.py").exists()


def test_init_and_validate_from_an_empty_folder(venv: Venv, tmp_path: Path) -> None:
    before = venv.package_files()
    project = tmp_path / "fleet"
    project.mkdir()
    out = venv.dbfleet("init", cwd=project).stdout
    assert f"wrote {project / 'fleet.yaml'}" in out
    assert sorted(p.name for p in project.iterdir()) == [".gitignore", "README.md", "fleet.yaml"]
    out = venv.dbfleet("validate", cwd=project).stdout
    assert out.startswith(f"{project / 'fleet.yaml'}: valid") and "pg-main: postgres 15" in out
    # From anywhere else, through --project and through the environment:
    venv.dbfleet("--project", str(project), "validate", cwd=tmp_path)
    venv.env["DBFLEET_PROJECT"] = str(project)
    try:
        rules = venv.dbfleet("rules", cwd=Path("/")).stdout
    finally:
        del venv.env["DBFLEET_PROJECT"]
    assert rules == (REPO / "monitoring" / "rules" / "fleet.rules.yml").read_text(), "rules differ from the example's"
    err = venv.dbfleet("plan", "--lab", "none", cwd=project, expect=2).stderr
    assert f"{project}/inventories/local/none/hosts.yml: no such inventory" in err and "(lab none)" in err
    assert venv.package_files() == before, "a command wrote into the installed package"


def _project_inventory(lab: Any, project: Path) -> Path:
    """The lab's hosts in an inventory of the project's own: hosts, secrets and the fleet CA copied beside it."""
    folder = project / "inventories" / "wheel"
    shutil.copytree(lab.inventory_path.parent, folder, ignore=shutil.ignore_patterns("operator-state.json"))
    return folder / "hosts.yml"


@pytest.mark.lab
def test_configure_check_and_plan_against_the_lab_from_the_wheel(venv: Venv, configured: Any,
                                                                 tmp_path: Path) -> None:
    before = venv.package_files()
    project = tmp_path / "fleet"
    venv.dbfleet("init", str(project), cwd=tmp_path)
    inventory = _project_inventory(configured, project)
    assert (inventory.parent / "pki" / "ca.crt").exists(), "the lab has no fleet CA after site.yml"

    # One host of each kind the lab runs (PostgreSQL, Redis, monitoring...): every role's path through the wheel
    # is taken, at a fraction of a check of every host (which the session's converge already covers).
    one_of_each = sorted({configured.hosts_of(h.engine)[0] for h in configured.state.hosts})
    done = venv.dbfleet("configure", "--check", "--inventory", "inventories/wheel/hosts.yml",
                        "--limit", ",".join(one_of_each), cwd=project)
    assert "configure: ok;" in done.stdout
    ansible = done.stderr  # the command streams Ansible's output there
    ran = {line.split()[0] for line in ansible.splitlines() if " : ok=" in line}
    assert ran == set(one_of_each), "the check did not run on the hosts asked for"
    assert str(venv.package / "data" / "playbooks" / "roles") in ansible, "the roles did not come from the wheel"
    # Issue 17: `configure --check` (it adds --diff) prints no private key and no secret, on every kind of host.
    output = done.stdout + done.stderr
    assert "PRIVATE KEY" not in output
    secrets = {k: v for k, v in configured.secrets.items() if isinstance(v, str) and len(v) >= 16}
    leaks = [name for name, value in secrets.items() if value in output]
    assert not leaks, f"secrets in `configure --check` output: {leaks}"

    plan = json.loads(venv.dbfleet("--project", str(project), "plan", "--inventory", str(inventory), "--json",
                                   cwd=tmp_path).stdout)
    assert plan["applied"] is False
    observed = {c["cluster"]: c for c in plan["clusters"]}
    assert observed["pg-main"]["ok"] and not observed["pg-main"]["skipped"], observed["pg-main"]
    assert observed["pg-main"]["topology"], "plan did not observe pg-main through the project's inventory"
    assert venv.package_files() == before, "a command wrote into the installed package"


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("collection")
    built = _run([sys.executable, str(REPO / "playbooks" / "collection" / "build.py"), "--output", str(tmp / "dist")])
    tarball = Path(built.stdout.strip().splitlines()[-1])
    assert tarball.name == f"dbfleet-fleet-{dbfleet.__version__}.tar.gz"
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert "plugins/modules/redis_current_master.py" in names and "plugins/filter/dbfleet_mongo.py" in names
    assert not any("/library/" in n for n in names), "a role still carries its own modules"
    paths = tmp / "collections"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env |= {"ANSIBLE_COLLECTIONS_PATH": f"{paths}{os.pathsep}{os.pathsep.join(_default_collection_paths())}",
            "ANSIBLE_FORCE_COLOR": "0"}
    _run(["ansible-galaxy", "collection", "install", "--offline", "--no-deps", str(tarball), "-p", str(paths)],
         env=env, cwd=tmp)
    yield paths / "ansible_collections" / "dbfleet" / "fleet", env


@pytest.mark.parametrize("where", ["argument", "working folder"])
def test_ansible_galaxy_on_the_collection_folder_refuses_rather_than_build_a_collection_without_roles(
        where: str, tmp_path: Path) -> None:
    """Issue 24 asks that `ansible-galaxy collection build` make the collection. Run on playbooks/collection it
    made dbfleet-fleet-<version>.tar.gz with no role in it (the roles are staged by build.py, and ansible-galaxy
    skips links to directories outside the collection). The folder now has no galaxy.yml, so it fails instead."""
    folder = REPO / "playbooks" / "collection"
    argv = ["ansible-galaxy", "collection", "build", "--output-path", str(tmp_path / "dist")]
    done = subprocess.run([*argv, str(folder)] if where == "argument" else argv, cwd=folder if where != "argument"
                          else tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0, done.stdout
    assert f"{folder / 'galaxy.yml'}' does not exist" in done.stdout + done.stderr
    assert not list(tmp_path.rglob("*.tar.gz"))


def _default_collection_paths() -> list[str]:
    return [str(Path.home() / ".ansible" / "collections"), "/usr/share/ansible/collections"]


def _play(roles_by_group: dict[str, list[str]]) -> list[dict[str, object]]:
    return [{"name": f"{group} through dbfleet.fleet", "hosts": group, "gather_facts": False,
             "roles": [f"dbfleet.fleet.{r}" for r in roles]} for group, roles in roles_by_group.items()]


def test_the_collection_installs_and_its_roles_resolve_by_full_name(
        collection: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, env = collection
    roles = sorted(p.name for p in (REPO / "playbooks" / "roles").iterdir() if p.is_dir())
    assert sorted(p.name for p in (root / "roles").iterdir()) == roles
    play = tmp_path / "fleet.yml"
    play.write_text(yaml.safe_dump(_play({
        "postgres": ["postgres_server", "pgbackrest", "postgres_exporter"],
        "redis": ["redis_server", "redis_exporter"], "redis_sentinel": ["redis_sentinel"],
        "mongo": ["mongo_common", "mongod", "mongodb_exporter"], "mongos": ["mongos"],
        "all": ["node_exporter", "pki", "redis_common"], "monitoring": ["prometheus"]})))
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    done = _run(["ansible-playbook", "--syntax-check", "-i", str(inventory), str(play)], env=env, cwd=tmp_path)
    assert f"playbook: {play}" in done.stdout

    play.write_text(yaml.safe_dump(_play({"postgres": ["no_such_role"]})))
    missing = subprocess.run(["ansible-playbook", "--syntax-check", "-i", str(inventory), str(play)], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "dbfleet.fleet.no_such_role" in missing.stdout + missing.stderr


def test_the_collection_carries_the_modules_and_filters_the_roles_call(
        collection: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, env = collection
    for module in (REPO / "playbooks").glob("roles/*/library/*.py"):
        doc = _run(["ansible-doc", "-t", "module", "--json", f"dbfleet.fleet.{module.stem}"], env=env, cwd=tmp_path)
        assert json.loads(doc.stdout)[f"dbfleet.fleet.{module.stem}"]["doc"]["module"] == module.stem
    # Ansible finds a collection role's modules by their short names but its filters only by full names,
    # so the collection's roles must call ours by full name, and the filter must run from the collection.
    for file in (root / "roles").rglob("*.yml"):
        text = file.read_text()
        assert "| dbfleet_mongo" not in text, f"{file}: a filter called by its short name"
    inputs = {"mongos_zones": [{"name": "eu", "shards": ["shard-a"]}],
              "mongos_sharded_collections": [{"database": "app", "collection": "events", "zones": {"eu": [1, 9]}}]}
    done = _run(["ansible", "localhost", "-i", "localhost,", "-c", "local", "-m", "ansible.builtin.debug",
                 "-a", "msg={{ mongos_zones | dbfleet.fleet.dbfleet_mongo_zone_ranges(mongos_sharded_collections) }}",
                 "-e", json.dumps(inputs)], env=env, cwd=tmp_path)
    assert "'namespace': 'app.events'" in done.stdout or '"namespace": "app.events"' in done.stdout, done.stdout
