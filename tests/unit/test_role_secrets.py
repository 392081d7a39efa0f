"""Every role task that would print a secret (file content, command line, loop item) is no_log."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

SECRET_MARKERS = ("dbfleet_secrets", "_password", "mongo_keyfile")


def _tasks(node: object) -> list[dict]:
    """Every task dict in a tasks file, blocks included."""
    found = []
    if isinstance(node, list):
        for item in node:
            found.extend(_tasks(item))
    elif isinstance(node, dict):
        if "block" in node or "rescue" in node:
            for key in ("block", "rescue", "always"):
                found.extend(_tasks(node.get(key, [])))
        else:
            found.append(node)
    return found


# Modules that print what they are given (file content, command lines, facts, loop items) in their results.
# Secrets passed to other modules are masked by Ansible, since their argument specs mark them no_log.
PRINTING = ("copy", "template", "lineinfile", "blockinfile", "command", "shell", "set_fact", "debug", "uri")


def _module(task: dict) -> str:
    for key in task:
        short = key.rsplit(".", 1)[-1]
        if short in PRINTING:
            return short
    return ""


@pytest.mark.parametrize("tasks_file", sorted((REPO / "playbooks/roles").glob("*/tasks/*.yml")),
                         ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_every_task_that_prints_a_secret_is_no_log(tasks_file: Path) -> None:
    offenders = []
    for task in _tasks(yaml.safe_load(tasks_file.read_text()) or []):
        module = _module(task)
        args = yaml.safe_dump({k: v for k, v in task.items() if k.rsplit(".", 1)[-1] == module})
        items = yaml.safe_dump(task.get("loop", []))
        risky = (module and any(m in args for m in SECRET_MARKERS)) or any(m in items for m in SECRET_MARKERS)
        if risky and not task.get("no_log"):
            offenders.append(task.get("name", "<unnamed>"))
    assert not offenders, f"{tasks_file}: tasks that would print a secret without no_log: {offenders}"


KEY_MARKERS = (".key", "keyfile")


@pytest.mark.parametrize("tasks_file", sorted((REPO / "playbooks/roles").glob("*/tasks/*.yml")),
                         ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_every_copy_of_a_private_key_prints_no_diff(tasks_file: Path) -> None:
    """`configure --check` adds --diff: a copy or template that writes a private key (or a keyfile) is no_log and
    diff: false, so its content shows in neither the result nor the diff, whatever no_log hides in a given
    Ansible version."""
    offenders = []
    for task in _tasks(yaml.safe_load(tasks_file.read_text()) or []):
        if _module(task) not in ("copy", "template"):
            continue
        args = yaml.safe_dump({k: v for k, v in task.items() if k.rsplit(".", 1)[-1] in ("copy", "template")})
        if any(m in args for m in KEY_MARKERS) and not (task.get("no_log") and task.get("diff") is False):
            offenders.append(task.get("name", "<unnamed>"))
    assert not offenders, f"{tasks_file}: key copies that --diff could print: {offenders}"
