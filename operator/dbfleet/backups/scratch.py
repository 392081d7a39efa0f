"""The throwaway host a restore or drill runs on: the interface backups need, implemented elsewhere.

Backups never start machines themselves. A ScratchProvider hands out a
ScratchHost for an engine and removes it afterwards; the lab implements it
with containers (dbfleet.lab.scratch), and a cloud implementation (a fresh
EC2 instance) is an addition beside it, not a change here.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from dbfleet.engines.executor import Executor

SCRATCH_HOST = "scratch"
"""The host name a scratch host answers to in its own executor."""


class ScratchHost(Protocol):
    """A running host with the engine's packages and the backup target readable, nothing else."""

    @property
    def name(self) -> str:
        """What to call it in messages (a container or instance name)."""
        ...

    @property
    def address(self) -> str:
        """Its private address."""
        ...

    @property
    def executor(self) -> Executor:
        """Runs commands on it: its only host is SCRATCH_HOST."""
        ...

    def put_file(self, source: Path, dest: str, owner: str | None = None, mode: int = 0o600) -> None:
        """Copy one local file onto it (the directory must exist)."""
        ...

    def remove(self) -> None:
        """Remove it and everything on it."""
        ...


class ScratchProvider(Protocol):
    """Makes scratch hosts for one fleet."""

    def scratch(self, engine: str, purpose: str, keep: bool = False) -> AbstractContextManager[ScratchHost]:
        """A scratch host of `engine`, removed on leaving the block unless `keep`."""
        ...
