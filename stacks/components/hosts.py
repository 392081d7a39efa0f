"""FleetHost: one spec host as an EC2 instance with an encrypted gp3 data volume, and its first-boot script."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_aws as aws

from dbfleet import spec

from .context import FleetContext
from .images import ami_architecture, debian_arch

ROOT_VOLUME_GB = 20
DATA_DEVICE = "/dev/sdf"


def boot_script(region: str, architecture: str, data_dir: str | None, volume_id: str | None) -> str:
    """First-boot shell script: install the SSM agent, then format and mount the data volume at `data_dir`."""
    arch = debian_arch(architecture)
    lines = [
        "#!/bin/bash",
        "# dbfleet first boot: SSM agent (how Ansible reaches the host), then the data volume.",
        "set -euo pipefail",
        "if ! systemctl is-active --quiet amazon-ssm-agent; then",
        f"  curl -fsSL --retry 10 -o /tmp/amazon-ssm-agent.deb "
        f"https://s3.{region}.amazonaws.com/amazon-ssm-{region}/latest/debian_{arch}/amazon-ssm-agent.deb",
        "  dpkg -i /tmp/amazon-ssm-agent.deb",
        "  systemctl enable --now amazon-ssm-agent",
        "fi",
    ]
    if data_dir and volume_id:
        serial = volume_id.replace("-", "")
        lines += [
            # Nitro instances name the volume by its id; older ones keep the requested device.
            "for i in $(seq 1 120); do",
            f"  for dev in /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{serial} /dev/xvdf; do",
            "    [ -b \"$dev\" ] && break 2",
            "  done",
            "  sleep 5",
            "done",
            f"[ -b \"$dev\" ] || {{ echo 'data volume {volume_id} never attached' >&2; exit 1; }}",
            "command -v mkfs.xfs >/dev/null || { apt-get update -q && apt-get install -qy xfsprogs; }",
            "blkid \"$dev\" >/dev/null || mkfs.xfs -L dbfleet-data \"$dev\"",
            f"mkdir -p {data_dir}",
            f"grep -q ' {data_dir} ' /etc/fstab || "
            f"echo \"UUID=$(blkid -s UUID -o value \"$dev\") {data_dir} xfs defaults,noatime,nofail 0 2\" "
            ">> /etc/fstab",
            f"mountpoint -q {data_dir} || mount {data_dir}",
        ]
    return "\n".join(lines) + "\n"


class FleetHost(pulumi.ComponentResource):
    """One host in its zone's private subnet: IMDSv2 only, no public address, every volume on the fleet key."""

    instance: aws.ec2.Instance
    private_ip: pulumi.Output[str]
    zone: pulumi.Output[str]

    def __init__(self, name: str, *, size: spec.Instance, data_dir: str | None, zone: int,
                 security_group_ids: Sequence[pulumi.Input[str]], profile: aws.iam.InstanceProfile,
                 tags: dict[str, str], ctx: FleetContext, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dbfleet:aws:Host", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        architecture = ami_architecture(size.type)
        self.zone = ctx.zone_names[zone]
        volume = None
        user_data: pulumi.Input[str] = boot_script(ctx.region, architecture, None, None)
        if data_dir:
            volume = aws.ebs.Volume(
                f"{name}-data", availability_zone=self.zone, type="gp3", size=size.volume_gb,
                iops=size.volume_iops, encrypted=True, kms_key_id=ctx.key_arn, final_snapshot=True,
                tags={**tags, "Name": f"{name}-data"}, opts=child,
            )
            user_data = volume.id.apply(lambda vid: boot_script(ctx.region, architecture, data_dir, vid))
        self.instance = aws.ec2.Instance(
            name,
            ami=ctx.amis.for_type(size.type),
            instance_type=size.type,
            subnet_id=ctx.private_subnet_ids[zone],
            vpc_security_group_ids=security_group_ids,
            iam_instance_profile=profile.name,
            key_name=ctx.key_name,
            associate_public_ip_address=False,
            root_block_device={"volume_type": "gp3", "volume_size": ROOT_VOLUME_GB, "encrypted": True,
                               "kms_key_id": ctx.key_arn, "delete_on_termination": True},
            metadata_options={"http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 1},
            user_data=user_data,
            tags={**tags, "Name": name},
            # A newer Debian image must not replace a database host; roll hosts deliberately.
            opts=pulumi.ResourceOptions(parent=self, depends_on=ctx.boot_after, ignore_changes=["ami"]),
        )
        if volume is not None:
            aws.ec2.VolumeAttachment(f"{name}-data", device_name=DATA_DEVICE, volume_id=volume.id,
                                     instance_id=self.instance.id, stop_instance_before_detaching=True, opts=child)
        self.private_ip = self.instance.private_ip
        self.register_outputs({"private_ip": self.private_ip, "instance_id": self.instance.id, "zone": self.zone})
