"""The fleet's customer-managed KMS key: it encrypts every EBS volume and every backup object."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws


class FleetKey(pulumi.ComponentResource):
    """One rotating KMS key with an alias; the account's IAM policies decide who may use it."""

    key: aws.kms.Key
    arn: pulumi.Output[str]

    def __init__(self, name: str, alias: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dbfleet:aws:FleetKey", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # No explicit key policy: the default one delegates to IAM, so the instance
        # profiles' own policies (scoped to S3 use) are what grants access.
        self.key = aws.kms.Key(name, description=f"dbfleet {alias}: EBS volumes and backups",
                               enable_key_rotation=True, deletion_window_in_days=30, opts=child)
        aws.kms.Alias(name, name=f"alias/{alias}", target_key_id=self.key.key_id, opts=child)
        self.arn = self.key.arn
        self.register_outputs({"arn": self.arn})
