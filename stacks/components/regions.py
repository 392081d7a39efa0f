"""Providers per region, and what a second region holds of its own: the aws provider for it and its KMS key.

Each second region (a dr.target bucket's, a standby site's) gets its own
customer-managed key rather than a replica of a multi-region key: both copies
are written directly (nothing is decrypted in one region to be re-encrypted in
the other), so no key material needs to be shared, and a mistake on one key (a
deletion scheduled, the key disabled) cannot make both copies unreadable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from dbfleet import spec

from .encryption import FleetKey


def region_provider(name: str, region: str, fleet: spec.Fleet, stack: str) -> aws.Provider:
    """An aws provider for `region` that tags everything it creates with the fleet, environment and stack."""
    meta = fleet.fleet
    return aws.Provider(name, region=region, default_tags={"tags": {
        "dbfleet:fleet": meta.name, "dbfleet:environment": meta.environment, "dbfleet:stack": stack}})


@dataclass(frozen=True)
class SecondRegion:
    """A region other than fleet.region: its provider, and its key for the buckets and volumes there."""

    region: str
    provider: aws.Provider
    key: FleetKey

    @property
    def opts(self) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(providers=[self.provider])


def second_regions(fleet: spec.Fleet, regions: Iterable[str], stack: str) -> dict[str, SecondRegion]:
    """A provider and a key for each region named, in sorted order so the same spec registers the same way."""
    made = {}
    for region in sorted(set(regions) - {fleet.fleet.region}):
        provider = region_provider(f"aws-{region}", region, fleet, stack)
        key = FleetKey(f"{fleet.fleet.name}-{region}", f"dbfleet-{fleet.fleet.name}-{stack}",
                       pulumi.ResourceOptions(providers=[provider]))
        made[region] = SecondRegion(region, provider, key)
    return made
