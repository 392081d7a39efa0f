"""The project folder (--project, $DBFLEET_PROJECT, the current directory), `dbfleet init`, and zero hosts as an error.

No lab: the inventories here name hosts that do not exist, and the checks
under test refuse them before anything connects. `configure` asks the real
ansible-playbook which hosts a play would run on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from dbfleet import shipped
from dbfleet._build import shipped_files
from dbfleet.cli import build_parser, main
from dbfleet.commands.common import settle_paths

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "fleet.example.yaml"


def settled(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    settle_paths(args)
    return args


def test_relative_paths_are_taken_from_the_project_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    args = settled(["--project", str(tmp_path), "--spec", "specs/a.yaml", "plan", "--inventory", "inv/hosts.yml",
                    "--secrets", "/etc/s.yml"])
    assert args.project == tmp_path
    assert args.spec == tmp_path / "specs" / "a.yaml"
    assert args.inventory == tmp_path / "inv" / "hosts.yml"
    assert args.secrets == Path("/etc/s.yml")
    assert args.inventories == tmp_path / "inventories"


def test_the_project_folder_comes_from_the_environment_then_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert settled(["validate"]).project == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("DBFLEET_PROJECT", str(other))
    args = settled(["lab", "up"])
    assert args.project == other and args.inventories == other / "inventories"


def test_the_checkout_is_a_project_folder_whose_lab_commands_use_the_example_spec(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("DBFLEET_SPEC", raising=False)
    monkeypatch.delenv("DBFLEET_PROJECT", raising=False)
    assert settled(["lab", "up"]).spec == SPEC
    assert settled(["validate"]).spec is None  # issue 19: fleet.yaml, then $DBFLEET_SPEC; no silent example
    monkeypatch.setenv("DBFLEET_SPEC", "fleet.example.yaml")
    assert settled(["validate"]).spec == SPEC
    assert settled(["rules"]).output == REPO / "monitoring" / "rules" / "fleet.rules.yml"


def test_a_missing_project_folder_or_spec_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DBFLEET_SPEC", raising=False)
    assert main(["--project", str(tmp_path / "nope"), "validate"]) == 2
    assert f"project folder {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert main(["--project", str(tmp_path), "validate"]) == 2
    err = capsys.readouterr().err
    assert f"no fleet spec: {tmp_path / 'fleet.yaml'} does not exist and $DBFLEET_SPEC is not set" in err
    assert "dbfleet init" in err and len(err.splitlines()) == 1


def test_init_makes_a_project_that_validates_and_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DBFLEET_SPEC", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["init", "fleet"]) == 0
    folder = tmp_path / "fleet"
    assert sorted(p.name for p in folder.iterdir()) == [".gitignore", "README.md", "fleet.yaml"]
    spec = folder / "fleet.yaml"
    assert spec.read_text().endswith(SPEC.read_text())
    assert "inventories/local/" in (folder / ".gitignore").read_text().splitlines()
    assert "**/pki/" in (folder / ".gitignore").read_text().splitlines()
    capsys.readouterr()
    assert main(["--project", str(folder), "validate"]) == 0
    assert f"{spec}: valid" in capsys.readouterr().out

    spec.write_text(spec.read_text() + "\n# mine\n")
    assert main(["--project", str(folder), "init"]) == 0
    assert spec.read_text().endswith("# mine\n")
    assert f"kept {spec}" in capsys.readouterr().out


def test_init_adds_only_the_missing_ignore_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".gitignore").write_text("*.swp\n**/pki/\n")
    assert main(["init", str(tmp_path)]) == 0
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[:2] == ["*.swp", "**/pki/"] and lines.count("**/pki/") == 1
    assert "**/group_vars/all/secrets.yml" in lines


def test_init_refuses_a_file_and_reports_a_bad_kept_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("")
    assert main(["init", str(tmp_path / "afile")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "fleet.yaml").write_text("apiVersion: dbfleet/v1\nfleet: {name: x}\nclusters: []\nbogus: 1\n")
    assert main(["init", str(tmp_path)]) == 2
    assert f"{tmp_path / 'fleet.yaml'}:4: bogus" in capsys.readouterr().err


def _inventory(path: Path, hosts: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"all": {"hosts": {h: {"dbfleet_address": a} for h, a in hosts.items()}}}))
    return path


@pytest.mark.parametrize("command", [["plan"], ["status"], ["reconcile", "--once"]])
def test_an_inventory_without_a_host_of_the_spec_is_a_usage_error(
        command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = _inventory(tmp_path / "hosts.yml", {"web-1": "10.0.0.9"})
    assert main(["--spec", str(SPEC), *command, "--inventory", str(inventory)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dbfleet {command[0]}: inventory {inventory} (--inventory) has no host of the spec {SPEC}"


def test_a_cluster_without_a_host_in_the_inventory_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = _inventory(tmp_path / "hosts.yml", {"pg-1": "10.0.0.9"})
    assert main(["--spec", str(SPEC), "plan", "--cluster", "cache", "--inventory", str(inventory)]) == 2
    assert "has no host of clusters cache" in capsys.readouterr().err


def test_a_missing_or_unparsable_lab_inventory_names_the_path_and_the_lab(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--project", str(tmp_path), "--spec", str(SPEC), "status", "--lab", "nolab"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "inventories" / "local" / "nolab" / "hosts.yml") in err and "(lab nolab)" in err
    bad = tmp_path / "inventories" / "local" / "broken" / "hosts.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text("all: [unclosed\n")
    assert main(["--project", str(tmp_path), "--spec", str(SPEC), "plan", "--lab", "broken"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"{bad}: not a YAML inventory at line 2" in err and "(lab broken)" in err


def test_configure_refuses_an_inventory_that_gives_the_play_no_host(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = _inventory(tmp_path / "hosts.yml", {"web-1": "10.0.0.9"})
    argv = ["--project", str(tmp_path), "--spec", str(SPEC), "configure"]
    assert main([*argv, "--inventory", "hosts.yml", "--playbook", "postgres.yml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"dbfleet configure: inventory {inventory} has no host that the playbook runs on "
                   f"(--inventory, playbook postgres.yml)")
    empty = tmp_path / "empty.yml"
    empty.write_text("all: {}\n")
    assert main([*argv, "--inventory", "empty.yml"]) == 2
    assert f"inventory {empty} has no host that the playbook runs on" in capsys.readouterr().err

    assert main([*argv, "--lab", "gone", "--limit", "pg-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"inventory {tmp_path}/inventories/local/gone/hosts.yml does not exist" in err
    assert "(lab gone, playbook site.yml, limit pg-1)" in err and "dbfleet lab up --lab gone" in err

    unparsable = tmp_path / "bad.yml"
    unparsable.write_text("all: [unclosed\n")
    assert main([*argv, "--inventory", str(unparsable)]) == 2
    assert f"inventory {unparsable} could not be parsed as an inventory" in capsys.readouterr().err

    assert main([*argv, "--inventory", str(inventory), "--playbook", "nope.yml"]) == 2
    assert "--playbook: no playbook 'nope.yml'" in capsys.readouterr().err


def test_configure_with_a_limit_matching_no_host_of_the_play(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    postgres:\n      hosts:\n        pg-1: {ansible_host: 127.0.0.9}\n")
    argv = ["--spec", str(SPEC), "configure", "--inventory", str(inventory)]
    assert main([*argv, "--limit", "redis-1"]) == 2
    assert "has no host that the playbook and --limit select (--inventory, playbook site.yml, limit redis-1)" \
        in capsys.readouterr().err
    assert main([*argv, "--playbook", "redis.yml"]) == 2
    assert "has no host that the playbook runs on (--inventory, playbook redis.yml)" in capsys.readouterr().err


def test_the_checkout_ships_its_own_playbooks() -> None:
    """Run from the source tree (no dbfleet/data/), the playbooks are the checkout's, found through the package."""
    assert shipped.data_root() == REPO
    assert shipped.playbook("site.yml") == REPO / "playbooks" / "site.yml"
    assert shipped.ansible_cfg() == REPO / "ansible.cfg" and shipped.example_spec() == SPEC


def test_the_wheel_ships_playbooks_roles_plugins_and_the_example_but_not_the_collection_build() -> None:
    files = {str(p) for p in shipped_files(REPO)}
    assert {"ansible.cfg", "fleet.example.yaml", "playbooks/site.yml", "playbooks/filter_plugins/dbfleet_mongo.py",
            "playbooks/roles/redis_common/library/redis_current_master.py",
            "playbooks/roles/postgres_server/tasks/main.yml"} <= files
    assert not any("/collection/" in f or "__pycache__" in f or f.endswith(".pyc") for f in files)
