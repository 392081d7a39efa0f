"""What every benchmark shares: a result row, a timer, and the lab it runs against."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "fleet.example.yaml"


@dataclass
class Result:
    """One measured figure, and optionally the baseline it is compared with."""

    bench: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class Timer:
    seconds: float = 0.0


@contextmanager
def timed() -> Iterator[Timer]:
    t = Timer()
    start = time.perf_counter()
    try:
        yield t
    finally:
        t.seconds = time.perf_counter() - start


@contextmanager
def converged_postgres_lab(lab: str, fleet: Any = None) -> Iterator[tuple[Any, Any]]:
    """The lab named `lab` with its PostgreSQL hosts up and postgres.yml converged: (lab state, FleetAccess).

    `fleet` is the spec (default: fleet.example.yaml). Engines already running are kept in the inventory; the lab
    goes down afterwards unless DBFLEET_KEEP_LAB=1. DBFLEET_BENCH_NO_CONVERGE=1 skips the converge (a lab kept
    from a run before)."""
    from dbfleet.engines.access import FleetAccess
    from dbfleet.lab import lifecycle
    from dbfleet.playbook import run_playbook
    from dbfleet.spec import load_fleet

    inventories = REPO / "inventories"
    running = {row["engine"] for row in lifecycle.status(lab) if row["engine"]}
    state = lifecycle.up(fleet or load_fleet(SPEC), lab, inventories, running | {"postgres"})
    try:
        if os.environ.get("DBFLEET_BENCH_NO_CONVERGE") != "1":
            with timed() as t:
                converge = run_playbook("postgres.yml", state.inventory, echo=False)
            if not converge.ok:
                raise RuntimeError("postgres.yml converge failed:\n" + converge.output[-3000:])
            print(f"[bench] lab {lab}: postgres.yml converged in {t.seconds:.0f}s", flush=True)
        yield state, FleetAccess.load(state.inventory, state.secrets)
    finally:
        if os.environ.get("DBFLEET_KEEP_LAB") != "1":
            lifecycle.down(lab, inventories)
