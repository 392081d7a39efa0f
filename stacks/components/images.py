"""Debian 12 machine images: the architecture an instance type needs, and the newest official AMI for it."""

from __future__ import annotations

import re

import pulumi
import pulumi_aws as aws

DEBIAN_OWNER = "136693071363"
"""The Debian cloud team's AWS account, which publishes the official images."""

_GRAVITON = re.compile(r"^(a1|[a-z]+\d+g[a-z]*)$")


def ami_architecture(instance_type: str) -> str:
    """'arm64' for Graviton families (m7g, r6gd, t4g, a1), else 'x86_64'."""
    return "arm64" if _GRAVITON.match(instance_type.split(".")[0]) else "x86_64"


def debian_arch(architecture: str) -> str:
    """Debian's name for an EC2 architecture: x86_64 -> amd64."""
    return "amd64" if architecture == "x86_64" else "arm64"


class AmiCatalog:
    """Looks up the newest Debian 12 AMI once per architecture."""

    def __init__(self, provider: pulumi.ProviderResource) -> None:
        self._provider = provider
        self._ids: dict[str, pulumi.Output[str]] = {}

    def for_type(self, instance_type: str) -> pulumi.Output[str]:
        """The AMI id for an instance type's architecture."""
        arch = ami_architecture(instance_type)
        if arch not in self._ids:
            found = aws.ec2.get_ami_output(
                most_recent=True,
                owners=[DEBIAN_OWNER],
                filters=[{"name": "name", "values": [f"debian-12-{debian_arch(arch)}-*"]},
                         {"name": "architecture", "values": [arch]},
                         {"name": "virtualization-type", "values": ["hvm"]}],
                opts=pulumi.InvokeOutputOptions(provider=self._provider),
            )
            self._ids[arch] = found.id
        return self._ids[arch]
