"""Fixtures for the stack tests: the example spec, and one program run on the mocks shared by the session.

`example_fleet` is the example without its standby site (dr.standby): the fleet region's stack, which most tests
examine; tests/stacks/test_dr_stack.py builds standby sites on specs of its own, and `full_example_run` is the
example file as it is, standby site included (what `pulumi up` on Pulumi.dev.yaml builds)."""

from __future__ import annotations

import pytest
from pulumi_mocks import SPEC, Run, fleet_variant, run_program, without_standby

from dbfleet.spec import Fleet, load_fleet


@pytest.fixture(scope="session")
def example_fleet() -> Fleet:
    return fleet_variant(without_standby)


@pytest.fixture(scope="session")
def example_run(example_fleet: Fleet) -> Run:
    return run_program(example_fleet)


@pytest.fixture(scope="session")
def full_example_run() -> Run:
    return run_program(load_fleet(SPEC))
