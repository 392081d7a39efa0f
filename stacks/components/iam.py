"""Instance profiles per role: SSM access for everyone, and read/write on its own backup prefix for backup roles."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from .backups import BackupLocation

SSM_MANAGED_POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
"""What the SSM agent needs to register and carry sessions; Ansible reaches hosts through it."""

EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def backup_policy(bucket_arn: str, prefix: str, key_arn: str, region: str) -> dict[str, Any]:
    """Read, write and delete under `prefix` only, and use the fleet key only through S3."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ListOwnPrefix", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn,
             "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}*"]}}},
            {"Sid": "LocateBucket", "Effect": "Allow", "Action": "s3:GetBucketLocation", "Resource": bucket_arn},
            {"Sid": "ReadWriteOwnPrefix", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                        "s3:ListMultipartUploadParts"],
             "Resource": f"{bucket_arn}/{prefix}*"},
            {"Sid": "UseFleetKeyThroughS3", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
             "Resource": key_arn, "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}},
        ],
    }


def create_instance_profile(name: str, backup: BackupLocation | None, key_arn: pulumi.Input[str], region: str,
                            parent: pulumi.Resource) -> aws.iam.InstanceProfile:
    """A role and its instance profile, children of `parent`; `backup` None means no S3 access at all."""
    child = pulumi.ResourceOptions(parent=parent)
    role = aws.iam.Role(name, assume_role_policy=json.dumps(EC2_TRUST), description=f"dbfleet hosts: {name}",
                        opts=child)
    aws.iam.RolePolicyAttachment(f"{name}-ssm", role=role.name, policy_arn=SSM_MANAGED_POLICY, opts=child)
    if backup is not None:
        document = pulumi.Output.all(backup.bucket_arn, key_arn).apply(
            lambda arns: json.dumps(backup_policy(arns[0], backup.prefix, arns[1], region)))
        aws.iam.RolePolicy(f"{name}-backups", role=role.id, policy=document, opts=child)
    return aws.iam.InstanceProfile(name, role=role.name, opts=child)
