"""Instance profiles per role: SSM access for everyone, and S3 rights only where a process on the host uses them.

Who touches backup storage, as the code does it (see stacks/README.md):

- the operator, on the monitoring host, writes every manifest and drill record
  and uploads the MongoDB and Redis dumps it fetches from the hosts'
  spools (dbfleet.backups.spool), under `<prefix>dbfleet/<cluster>/`; it
  deletes expired backups there, and reads pgBackRest's repository to
  measure and verify a backup set;
- pgBackRest, on every PostgreSQL host (any may become primary), writes,
  reads and expires its repository `<prefix>pgbackrest/<cluster>/`;
- nothing else: mongod, mongos, Redis and Sentinel hosts never call S3.

A dr.target in S3 is written the same way, directly, by the same processes
(pgBackRest's repo2, the operator's copy of each dump): each gets the same
rights on the second region's bucket and key as on the first, and nobody else
gets any.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from .backups import BackupLocation
from .errors import StackError

SSM_MANAGED_POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
"""What the SSM agent needs to register and carry sessions; Ansible reaches hosts through it."""

EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}

READ_ACTIONS = ["s3:GetObject"]
"""GET and HEAD of an object; listing is granted on the bucket, per prefix."""
WRITE_ACTIONS = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
"""PUT (multipart uploads included), DELETE (pgBackRest's multi-object delete is checked per key), and
abandoning a failed multipart upload (boto3 does; pgBackRest leaves it to the bucket's lifecycle rule)."""
KEY_ACTIONS = ["kms:Decrypt", "kms:GenerateDataKey"]
"""What S3 asks KMS for on the requester's behalf to read and write SSE-KMS objects."""
TLS_ONLY = {"Bool": {"aws:SecureTransport": "true"}}
INLINE_POLICY_MAX = 10_240
"""IAM's limit on a role's inline policies, in characters without whitespace."""


@dataclass(frozen=True)
class PrefixGrant:
    """Rights under one key prefix of one bucket: list and read, and with `write` also put and delete; and the use
    of the bucket's KMS key (in the bucket's region) through S3 for it."""

    bucket_arn: str
    prefix: str
    key_arn: str
    region: str
    write: bool = False


@dataclass(frozen=True)
class Grant:
    """A PrefixGrant in a provisioned backup location, before the bucket's ARN is known."""

    location: BackupLocation
    prefix: str
    """The whole key prefix in the bucket: the location's prefix and the part inside it."""
    write: bool = False


def host_grants(location: BackupLocation | None) -> list[Grant]:
    """What a host running the cluster's own backup tool may do: its repository, read and write."""
    if location is None or not location.target.in_use or location.target.tool_prefix is None:
        return []
    return [Grant(location, location.prefix + location.target.tool_prefix, write=True)]


def operator_grants(locations: Iterable[BackupLocation]) -> list[Grant]:
    """What the operator may do: its own files of every cluster read and written, the tools' repositories read."""
    grants = []
    for location in locations:
        target = location.target
        if not target.in_use:
            continue
        grants.append(Grant(location, location.prefix + target.operator_prefix, write=True))
        if target.tool_prefix is not None:
            grants.append(Grant(location, location.prefix + target.tool_prefix))
    return grants


def backup_policy(grants: Sequence[PrefixGrant], home_region: str) -> dict[str, Any]:
    """Listing, reading and (where granted) writing under the granted prefixes only, over TLS only; each bucket's
    key only through S3 in its region and only for these buckets (SSE-KMS with bucket keys: the context is the
    bucket ARN). The fleet key (home_region's) comes first, then each second region's."""
    buckets = sorted({g.bucket_arn for g in grants})
    statements: list[dict[str, Any]] = []
    for n, bucket in enumerate(buckets, 1):
        mine = sorted((g for g in grants if g.bucket_arn == bucket), key=lambda g: g.prefix)
        statements.append({
            "Sid": f"ListGrantedPrefixes{n}", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket,
            "Condition": {"StringLike": {"s3:prefix": [f"{g.prefix}*" for g in mine]}, **TLS_ONLY},
        })
        statements.append({
            "Sid": f"ReadGrantedPrefixes{n}", "Effect": "Allow", "Action": READ_ACTIONS,
            "Resource": [f"{bucket}/{g.prefix}*" for g in mine], "Condition": TLS_ONLY,
        })
        writable = [g for g in mine if g.write]
        if writable:
            statements.append({
                "Sid": f"WriteGrantedPrefixes{n}", "Effect": "Allow", "Action": WRITE_ACTIONS,
                "Resource": [f"{bucket}/{g.prefix}*" for g in writable], "Condition": TLS_ONLY,
            })
    keys = sorted({(g.region, g.key_arn) for g in grants}, key=lambda k: (k[0] != home_region, k))
    for region, key_arn in keys:
        statements.append({
            "Sid": "UseFleetKeyThroughS3" if region == home_region
            else "UseKeyThroughS3In" + "".join(part.capitalize() for part in region.split("-")),
            "Effect": "Allow", "Action": KEY_ACTIONS, "Resource": key_arn,
            "Condition": {"StringEquals": {
                "kms:ViaService": f"s3.{region}.amazonaws.com",
                "kms:EncryptionContext:aws:s3:arn": sorted({g.bucket_arn for g in grants if g.key_arn == key_arn})}},
        })
    return {"Version": "2012-10-17", "Statement": statements}


def policy_json(role: str, document: dict[str, Any]) -> str:
    """The document as IAM stores it, or a StackError naming the role when it is past IAM's size limit."""
    text = json.dumps(document, separators=(",", ":"))
    if len(text) > INLINE_POLICY_MAX:
        raise StackError(f"role {role}: its backup policy is {len(text)} characters, past IAM's {INLINE_POLICY_MAX} "
                         "for a role's inline policies; give clusters shorter backup prefixes or fewer buckets")
    return text


def _policy_document(role: str, grants: Sequence[Grant], home_region: str) -> pulumi.Output[str]:
    """The policy JSON once the buckets' and keys' ARNs are known."""
    def render(values: list[Any]) -> str:
        arns, keys = values[:len(grants)], values[len(grants):]
        resolved = [PrefixGrant(arn, grant.prefix, key, grant.location.region, grant.write)
                    for arn, key, grant in zip(arns, keys, grants, strict=True)]
        return policy_json(role, backup_policy(resolved, home_region))

    return pulumi.Output.all(*(grant.location.bucket_arn for grant in grants),
                             *(grant.location.key_arn for grant in grants)).apply(render)


def create_instance_profile(name: str, grants: Sequence[Grant], home_region: str,
                            parent: pulumi.Resource) -> aws.iam.InstanceProfile:
    """A role and its instance profile, children of `parent`; no grants means no S3 or KMS rights at all."""
    child = pulumi.ResourceOptions(parent=parent)
    role = aws.iam.Role(name, assume_role_policy=json.dumps(EC2_TRUST), description=f"dbfleet hosts: {name}",
                        opts=child)
    aws.iam.RolePolicyAttachment(f"{name}-ssm", role=role.name, policy_arn=SSM_MANAGED_POLICY, opts=child)
    if grants:
        aws.iam.RolePolicy(f"{name}-backups", role=role.id, policy=_policy_document(name, grants, home_region),
                           opts=child)
    return aws.iam.InstanceProfile(name, role=role.name, opts=child)
