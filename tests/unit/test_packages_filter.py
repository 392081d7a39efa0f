"""dpkg_missing: which of a role's packages a host lacks, from one dpkg-query (playbooks/filter_plugins)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("dbfleet_packages", REPO / "playbooks/filter_plugins/dbfleet_packages.py")
assert spec and spec.loader
packages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(packages)


def test_everything_installed_leaves_nothing_for_apt() -> None:
    shown = "ii  etcd-client\nii  etcd-server\n"
    assert packages.dpkg_missing(shown, ["etcd-server", "etcd-client"]) == []


def test_a_package_dpkg_does_not_know_or_removed_or_half_installed_is_missing() -> None:
    shown = "ii  redis-tools\nrc  age\niF  python3-redis\nun  python3-certifi\n"
    wanted = ["redis-tools", "python3-redis", "age", "python3-certifi", "redis-server"]
    assert packages.dpkg_missing(shown, wanted) == ["python3-redis", "age", "python3-certifi", "redis-server"]


def test_no_output_at_all_asks_apt_for_everything() -> None:
    """dpkg-query absent or failing: every package goes to apt, which then decides, as before the check."""
    assert packages.dpkg_missing("", ["haproxy"]) == ["haproxy"]


def test_a_name_that_is_not_a_plain_package_goes_to_apt() -> None:
    assert packages.dpkg_missing("ii  postgresql-15\n", ["postgresql-15=15.8-0+deb12u1"]) == [
        "postgresql-15=15.8-0+deb12u1"]


def test_the_roles_ask_dpkg_before_apt() -> None:
    """Every apt task of a role runs only when dpkg_missing says something is missing: its own `when`, or that of
    the block it is in (a rescue that updates the package lists belongs to such a block)."""
    import yaml

    def apt_tasks(tasks: list[dict[str, object]], gate: str) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for task in tasks:
            when = gate + " " + str(task.get("when", ""))
            if "ansible.builtin.apt" in task:
                found.append((str(task["name"]), when))
            for part in ("block", "rescue", "always"):
                found += apt_tasks(list(task.get(part, [])), when)  # type: ignore[call-overload]
        return found

    seen = 0
    for path in sorted((REPO / "playbooks/roles").glob("*/tasks/*.yml")):
        for name, when in apt_tasks(yaml.safe_load(path.read_text()) or [], ""):
            seen += 1
            assert "dpkg_missing" in when, f"{path.relative_to(REPO)}: {name!r} runs apt without asking dpkg first"
    assert seen >= 12
