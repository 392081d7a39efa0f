"""Fixtures for the stack tests: the example spec, and one program run on the mocks shared by the session."""

from __future__ import annotations

import pytest
from pulumi_mocks import SPEC, Run, run_program

from dbfleet.spec import Fleet, load_fleet


@pytest.fixture(scope="session")
def example_fleet() -> Fleet:
    return load_fleet(SPEC)


@pytest.fixture(scope="session")
def example_run(example_fleet: Fleet) -> Run:
    return run_program(example_fleet)
