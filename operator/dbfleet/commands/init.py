"""`dbfleet init [DIR]`: make a project folder: a starter fleet.yaml, a .gitignore for secrets and PKI, a README.

Idempotent: an existing fleet.yaml or README.md is kept, and an existing
.gitignore only gains the lines it lacks. Nothing is written anywhere else.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dbfleet import shipped
from dbfleet.commands.common import EXIT_OK, UsageError
from dbfleet.spec import load_fleet

SPEC_HEADER = """\
# Starter spec written by `dbfleet init` from dbfleet's fleet.example.yaml (the lab
# topology and the reference for every key). Edit it to describe your fleet;
# `dbfleet validate` checks it.
"""

GITIGNORE = [
    "# Written by `dbfleet init`: credentials, keys and state never go into git.",
    "# Lab inventories (`dbfleet lab up`) hold generated passwords, the lab CA and operator state.",
    "inventories/local/",
    "# Wherever an inventory lives: its secrets, the fleet CA and host keys, the operator's state and lock.",
    "**/group_vars/all/secrets.yml",
    "**/pki/",
    "**/operator-state.json",
    "**/operator-leader.lock",
]

README = """\
# dbfleet project

This folder holds one fleet's state; the dbfleet package holds none. Run
`dbfleet` here, or point at this folder with `--project DIR` or
`DBFLEET_PROJECT=DIR`; relative paths in options are taken from here.

| path | what | in git |
|---|---|---|
| `fleet.yaml` | the fleet spec (`dbfleet validate`) | yes |
| `inventories/local/<lab>/hosts.yml` | a lab's inventory, written by `dbfleet lab up` | no |
| `inventories/local/<lab>/group_vars/all/secrets.yml` | generated passwords, mode 0600 | never |
| `inventories/local/<lab>/pki/` | the fleet CA and host keys, made by `dbfleet configure` | never |
| `inventories/local/<lab>/operator-state.json` | what the last `reconcile` did, read by `status` | no |
| `monitoring/rules/fleet.rules.yml` | alert rules, if you keep them (`dbfleet rules --write`) | yes |

    dbfleet validate
    dbfleet lab up --lab lab           # local containers; writes inventories/local/lab/
    dbfleet configure --lab lab        # Ansible, with the playbooks dbfleet ships
    dbfleet plan --lab lab
    dbfleet reconcile --once --lab lab
    dbfleet status --lab lab

For hosts of your own, write an inventory here and pass `--inventory FILE`.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("init", help="make a project folder: a starter fleet.yaml, .gitignore and README",
                       description="Write a starter fleet.yaml (from the example dbfleet ships), a .gitignore "
                                   "for secrets and PKI and a README into DIR (default: the project folder). "
                                   "Existing files are kept.")
    p.add_argument("directory", nargs="?", type=Path, metavar="DIR",
                   help="the folder to set up; made if missing (default: the project folder)")
    p.set_defaults(handler=run)


def _write_new(path: Path, text: str) -> str:
    if path.exists():
        return f"kept {path}"
    path.write_text(text, encoding="utf-8")
    return f"wrote {path}"


def _extend_gitignore(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    missing = [line for line in GITIGNORE if line not in lines]
    if not missing:
        return f"kept {path}"
    prefix = "\n" if lines and lines[-1].strip() else ""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(prefix + "\n".join(missing) + "\n")
    return f"{'extended' if lines else 'wrote'} {path}"


def run(args: argparse.Namespace) -> int:
    folder: Path = args.directory or args.project
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "fleet.yaml"
    done = [_write_new(spec, SPEC_HEADER + shipped.example_spec().read_text(encoding="utf-8")),
            _extend_gitignore(folder / ".gitignore"),
            _write_new(folder / "README.md", README)]
    load_fleet(spec)  # a kept fleet.yaml may be invalid: say so now, located, rather than at the first command
    for line in done:
        print(f"init: {line}")
    print(f"init: {folder} is a dbfleet project; next: `dbfleet validate`, then `dbfleet lab up`")
    return EXIT_OK
