"""Backup buckets: versioned, SSE-KMS, private, TLS-only, with lifecycle rules per cluster prefix from the spec."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import pulumi
import pulumi_aws as aws

from dbfleet import spec
from dbfleet.backups.manifest import cluster_prefix
from dbfleet.engines.pgbackrest import repo_prefix
from dbfleet.schedule import parse_cron

from .errors import StackError

NONCURRENT_DAYS = 7
"""How long an overwritten or deleted backup object stays recoverable: a mistaken expire can be undone for a week."""
ABORT_UPLOADS_DAYS = 7
HORIZON_DAYS = 400
"""How long a stretch schedules are measured over: every month length and weekday falls inside it."""
_START = datetime(2024, 1, 1)
"""A fixed day to measure schedules from, so the same spec always yields the same lifecycle rules."""


@dataclass(frozen=True)
class BackupTarget:
    """Where one cluster's backups live on AWS, and when the bucket may expire them."""

    cluster: str
    bucket: str | None
    """The spec's S3 bucket; None puts the cluster in the fleet's own bucket."""
    prefix: str
    """Key prefix the cluster owns, '' or ending in '/'."""
    expire_days: int | None
    """Current objects expire after this many days; None leaves expiry to the backup tool."""
    tool_prefix: str | None = None
    """Key prefix, inside `prefix`, that the cluster's hosts write with their own backup tool (pgBackRest's
    repository, dbfleet.engines.pgbackrest.repo_prefix); None when the operator uploads every file itself."""
    in_use: bool = True
    """False for a local target: backups then go to a directory, and the prefix reserved for the cluster in the
    fleet's bucket is written by nothing, so no instance profile is granted it."""
    region: str | None = None
    """The bucket's region when it is not fleet.region: a dr.target's second region."""

    @property
    def operator_prefix(self) -> str:
        """Key prefix, inside `prefix`, of the operator's manifests, drill records and uploaded dumps."""
        return cluster_prefix(self.cluster)


@dataclass(frozen=True)
class BackupLocation:
    """A provisioned backup target, as the instance profiles and outputs need it."""

    bucket: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    target: BackupTarget
    key_arn: pulumi.Output[str]
    """The KMS key the bucket encrypts with: the fleet key, or the second region's key for a dr.target."""
    region: str

    @property
    def prefix(self) -> str:
        return self.target.prefix


def standalone_interval_days(policy: spec.BackupPolicy) -> int:
    """The longest gap in whole days between backups that restore on their own (full or snapshot)."""
    # A cron's hours and minutes are the same on every day it fires, so one check a
    # day finds the firing days, and each day's first and last run are known.
    runs: dict[int, tuple[int, int]] = {}
    for kind in ("full", "snapshot"):
        if kind not in policy.schedule:
            continue
        cron = parse_cron(policy.schedule[kind])
        hour, minute = min(cron.hours), min(cron.minutes)
        first, last = hour * 60 + minute, max(cron.hours) * 60 + max(cron.minutes)
        for day in range(HORIZON_DAYS):
            if cron.matches(_START.replace(hour=hour, minute=minute) + timedelta(days=day)):
                earliest, latest = runs.get(day, (first, last))
                runs[day] = (min(earliest, first), max(latest, last))
    days = sorted(runs)
    if len(days) < 2:
        return HORIZON_DAYS
    widest = max((later - earlier) * 1440 + runs[later][0] - runs[earlier][1] for earlier, later in pairwise(days))
    return max(1, math.ceil(widest / 1440))


def _normal_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _planned(cluster: spec.PostgresCluster | spec.MongoCluster | spec.RedisCluster, bucket: str | None, prefix: str,
             in_use: bool, region: str | None = None) -> BackupTarget:
    """A cluster's target with the lifecycle its retention needs (the same for both copies of a backup)."""
    policy = cluster.backup
    # An object must outlive max_age_days by one full-backup interval, or the
    # oldest restore point inside max_age_days would lose the full it builds on.
    age = policy.retention.max_age_days
    expire = age + standalone_interval_days(policy) if age is not None else None
    tool = repo_prefix(cluster.name) if isinstance(cluster, spec.PostgresCluster) else None
    return BackupTarget(cluster.name, bucket, prefix, expire, tool, in_use, region)


def plan_backup_targets(fleet: spec.Fleet) -> dict[str, BackupTarget]:
    """Each cluster's backup target on AWS. Local targets get a prefix in the fleet's bucket."""
    targets: dict[str, BackupTarget] = {}
    for cluster in fleet.clusters:
        policy = cluster.backup
        if not policy.enabled:
            continue
        target = policy.target
        bucket, prefix, in_use = None, f"{cluster.name}/", False
        if isinstance(target, spec.S3Target):
            if target.endpoint:
                continue  # an S3-compatible store outside AWS: not this stack's to build
            if target.region != fleet.fleet.region:
                raise StackError(
                    f"cluster {cluster.name}: backup.target.region {target.region} differs from fleet.region "
                    f"{fleet.fleet.region}; backups are encrypted with the fleet's KMS key in {fleet.fleet.region}"
                )
            bucket, prefix, in_use = target.bucket, _normal_prefix(target.prefix), True
        targets[cluster.name] = _planned(cluster, bucket, prefix, in_use)
    _check_disjoint(targets.values())
    return targets


def plan_dr_targets(fleet: spec.Fleet) -> dict[str, BackupTarget]:
    """Each cluster's second target on AWS (dr.target of kind s3, in its own region): written directly by the same
    tools as the first, so it has the same layout and the same lifecycle. A local dr.target is a directory and
    an S3 one with an endpoint is outside AWS: neither is built here."""
    targets: dict[str, BackupTarget] = {}
    for cluster in fleet.clusters:
        dr = cluster.dr
        if dr is None or not cluster.backup.enabled or not isinstance(dr.target, spec.S3Target) or dr.target.endpoint:
            continue
        targets[cluster.name] = _planned(cluster, dr.target.bucket, _normal_prefix(dr.target.prefix), True,
                                         dr.target.region)
    _check_disjoint(targets.values())
    _check_one_region(fleet.fleet.region, [*plan_backup_targets(fleet).values(), *targets.values()])
    return targets


def _check_disjoint(targets: Any) -> None:
    by_bucket: dict[str | None, list[BackupTarget]] = defaultdict(list)
    for target in targets:
        for other in by_bucket[target.bucket]:
            if target.prefix.startswith(other.prefix) or other.prefix.startswith(target.prefix):
                raise StackError(
                    f"clusters {other.cluster} and {target.cluster} share bucket {target.bucket} with overlapping "
                    f"prefixes {other.prefix!r} and {target.prefix!r}; give each its own backup.target.prefix"
                )
        by_bucket[target.bucket].append(target)


def _check_one_region(home: str, targets: list[BackupTarget]) -> None:
    """A bucket name lives in one region: two targets naming it in two regions cannot both be built."""
    seen: dict[str, BackupTarget] = {}
    for target in targets:
        if target.bucket is None:
            continue
        other = seen.setdefault(target.bucket, target)
        if (other.region or home) != (target.region or home):
            raise StackError(
                f"clusters {other.cluster} and {target.cluster}: bucket {target.bucket} is named in "
                f"{other.region or home} and in {target.region or home}; an S3 bucket lives in one region, so give "
                "the second copy a bucket of its own"
            )


def tls_only_policy(bucket_arn: str) -> dict[str, Any]:
    """Bucket policy that refuses every request not made over TLS."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }],
    }


def lifecycle_rules(target: BackupTarget) -> list[aws.s3.BucketLifecycleConfigurationRuleArgs]:
    """The cluster's rules: clean up old versions and stale uploads, and expire by age when the spec says so."""
    scope = aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=target.prefix)
    rules = [aws.s3.BucketLifecycleConfigurationRuleArgs(
        id=f"{target.cluster}-cleanup", status="Enabled", filter=scope,
        noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
            noncurrent_days=NONCURRENT_DAYS),
        abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
            days_after_initiation=ABORT_UPLOADS_DAYS),
        expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(expired_object_delete_marker=True),
    )]
    if target.expire_days is not None:
        rules.append(aws.s3.BucketLifecycleConfigurationRuleArgs(
            id=f"{target.cluster}-age", status="Enabled", filter=scope,
            expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=target.expire_days),
        ))
    return rules


class BackupBucket(pulumi.ComponentResource):
    """One bucket: versioning, SSE-KMS with the fleet key, public access blocked, TLS only, lifecycle per prefix."""

    bucket: aws.s3.Bucket

    def __init__(self, name: str, bucket_name: str | None, targets: list[BackupTarget], key_arn: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dbfleet:aws:BackupBucket", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.bucket = aws.s3.Bucket(name, bucket=bucket_name, tags={"dbfleet:purpose": "backups"}, opts=child)
        aws.s3.BucketOwnershipControls(name, bucket=self.bucket.id, rule={"object_ownership": "BucketOwnerEnforced"},
                                       opts=child)
        private = aws.s3.BucketPublicAccessBlock(name, bucket=self.bucket.id, block_public_acls=True,
                                                 block_public_policy=True, ignore_public_acls=True,
                                                 restrict_public_buckets=True, opts=child)
        versioning = aws.s3.BucketVersioning(name, bucket=self.bucket.id,
                                             versioning_configuration={"status": "Enabled"}, opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            name, bucket=self.bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms",
                                                                "kms_master_key_id": key_arn},
                    "bucket_key_enabled": True}],
            opts=child,
        )
        aws.s3.BucketPolicy(name, bucket=self.bucket.id,
                            policy=self.bucket.arn.apply(lambda arn: json.dumps(tls_only_policy(arn))),
                            opts=pulumi.ResourceOptions(parent=self, depends_on=[private]))
        aws.s3.BucketLifecycleConfiguration(name, bucket=self.bucket.id,
                                            rules=[rule for t in targets for rule in lifecycle_rules(t)],
                                            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]))
        self.register_outputs({"bucket": self.bucket.bucket, "arn": self.bucket.arn})


class Backups(pulumi.ComponentResource):
    """The backup buckets of one region, each encrypted with that region's key: in fleet.region the fleet's own
    bucket for local targets plus each S3 bucket the spec names; in a second region the dr.target buckets."""

    locations: dict[str, BackupLocation]

    def __init__(self, name: str, targets: dict[str, BackupTarget], key_arn: pulumi.Output[str], region: str,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dbfleet:aws:Backups", name, None, opts)
        by_bucket: dict[str | None, list[BackupTarget]] = defaultdict(list)
        for target in targets.values():
            by_bucket[target.bucket].append(target)
        self.locations = {}
        for bucket_name, members in by_bucket.items():
            bucket = BackupBucket(bucket_name or name, bucket_name, members, key_arn,
                                  opts=pulumi.ResourceOptions(parent=self)).bucket
            for target in members:
                self.locations[target.cluster] = BackupLocation(bucket.bucket, bucket.arn, target, key_arn, region)
        self.register_outputs({c: loc.bucket for c, loc in self.locations.items()})
