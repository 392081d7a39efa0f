"""FleetContext: what every cluster component builds on (network, fleet groups, key, images, backups, zones)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

from .backups import BackupLocation
from .images import AmiCatalog


@dataclass(frozen=True)
class FleetContext:
    """Shared resources, handed from the fleet program to each cluster component."""

    region: str
    vpc_id: pulumi.Output[str]
    zone_names: list[pulumi.Output[str]]
    private_subnet_ids: list[pulumi.Output[str]]
    groups: dict[str, pulumi.Output[str]]
    """Fleet-wide security group ids by role: app, operator, monitoring, egress."""
    key_arn: pulumi.Output[str]
    backups: dict[str, BackupLocation]
    """Backup location by cluster name; a cluster without one gets no S3 access."""
    zones: dict[str, int]
    """Zone index by host name."""
    amis: AmiCatalog
    key_name: pulumi.Output[str] | None
    """EC2 key pair for SSH over SSM; None leaves SSM shell access only."""
    boot_after: list[pulumi.Resource]
    """What hosts wait for before booting: the NAT route their boot script downloads through."""
    dr_backups: dict[str, BackupLocation] = field(default_factory=dict)
    """Second backup location (an S3 dr.target, in its own region) by cluster name; written like the first."""
