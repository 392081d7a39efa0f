"""The policy builder and the evaluator the stack tests judge policies with, on their own."""

from __future__ import annotations

import pytest
from iam_eval import allowed

from components.errors import StackError
from components.iam import INLINE_POLICY_MAX, PrefixGrant, backup_policy, policy_json

KEY = "arn:aws:kms:us-east-1:123456789012:key/fleet"
TLS = {"aws:SecureTransport": "true"}


def test_the_evaluator_matches_like_iam() -> None:
    policy = {"Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/p/*",
                             "Condition": {"Bool": {"aws:SecureTransport": "true"},
                                           "StringLike": {"s3:prefix": ["a*", "b?"]}}}]}
    assert allowed(policy, "s3:GetObject", "arn:aws:s3:::b/p/x/y", {**TLS, "s3:prefix": "bz"})
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::b/p/x", {**TLS, "s3:prefix": "bzz"})
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::b/p/x", TLS), "a missing condition key fails"
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::b/q/x", {**TLS, "s3:prefix": "a"})
    assert not allowed(policy, "s3:PutObject", "arn:aws:s3:::b/p/x", {**TLS, "s3:prefix": "a"})
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::b/p/x", {"aws:SecureTransport": "false", "s3:prefix": "a"})
    with pytest.raises(AssertionError, match="NumericLessThan"):
        allowed({"Statement": [{"Effect": "Allow", "Action": "a", "Resource": "r",
                                "Condition": {"NumericLessThan": {"k": "1"}}}]}, "a", "r", {"k": "0"})


def test_a_read_only_grant_has_no_write_statement() -> None:
    policy = backup_policy([PrefixGrant("arn:aws:s3:::b", "p/", KEY, "us-east-1")], "us-east-1")
    assert [s["Sid"] for s in policy["Statement"]] == ["ListGrantedPrefixes1", "ReadGrantedPrefixes1",
                                                       "UseFleetKeyThroughS3"]
    assert not allowed(policy, "s3:PutObject", "arn:aws:s3:::b/p/x", TLS)


def test_a_policy_past_iams_size_limit_is_refused_with_the_role_named() -> None:
    grants = [PrefixGrant("arn:aws:s3:::b", f"clusters/cluster-{n:03}/dbfleet/cluster-{n:03}/", KEY, "us-east-1", True)
              for n in range(100)]
    with pytest.raises(StackError, match=rf"role monitoring-prometheus: .* past IAM's {INLINE_POLICY_MAX}"):
        policy_json("monitoring-prometheus", backup_policy(grants, "us-east-1"))
    assert len(policy_json("r", backup_policy(grants[:10], "us-east-1"))) < INLINE_POLICY_MAX


def test_each_buckets_key_is_usable_only_through_s3_in_its_region_and_for_its_buckets() -> None:
    dr_key = "arn:aws:kms:us-west-2:123456789012:key/dr"
    policy = backup_policy([PrefixGrant("arn:aws:s3:::dr", "p/", dr_key, "us-west-2", True),
                            PrefixGrant("arn:aws:s3:::b", "p/", KEY, "us-east-1", True)], "us-east-1")
    assert [s["Sid"] for s in policy["Statement"]][-2:] == ["UseFleetKeyThroughS3", "UseKeyThroughS3InUsWest2"]
    west = {"kms:ViaService": "s3.us-west-2.amazonaws.com", "kms:EncryptionContext:aws:s3:arn": "arn:aws:s3:::dr"}
    east = {"kms:ViaService": "s3.us-east-1.amazonaws.com", "kms:EncryptionContext:aws:s3:arn": "arn:aws:s3:::b"}
    assert allowed(policy, "kms:GenerateDataKey", dr_key, west) and allowed(policy, "kms:Decrypt", KEY, east)
    assert not allowed(policy, "kms:Decrypt", dr_key, {**west, "kms:ViaService": "s3.us-east-1.amazonaws.com"})
    assert not allowed(policy, "kms:Decrypt", dr_key, {**west, "kms:EncryptionContext:aws:s3:arn": "arn:aws:s3:::b"})
    assert not allowed(policy, "kms:Decrypt", KEY, {**east, "kms:EncryptionContext:aws:s3:arn": "arn:aws:s3:::dr"})
