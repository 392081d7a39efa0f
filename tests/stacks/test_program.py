"""The Pulumi program on Pulumi's mocks: what it registers for the example spec, and for spec changes."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from typing import Any

import pytest
from pulumi_mocks import Run, fleet_variant, run_program

from components.fleet import StackSettings
from dbfleet.inventory import host_roles
from dbfleet.spec import Fleet, SpecError

INSTANCE = "aws:ec2/instance:Instance"
VOLUME = "aws:ebs/volume:Volume"
ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"
GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
KEY = "aws:kms/key:Key"
EC2_TEXT = re.compile(r"^[a-zA-Z0-9. _\-:/()#,@\[\]+=&;{}!$*]{1,255}$")
"""What EC2 accepts in security group and rule descriptions."""


def _zones(run: Run) -> dict[str, str]:
    """Availability zone by host, through the subnet each instance was placed in."""
    subnet_zone = {f"{s.name}-id": s.inputs["availabilityZone"] for s in run.of_type("aws:ec2/subnet:Subnet")}
    return {i.name: subnet_zone[i.inputs["subnetId"]] for i in run.of_type(INSTANCE)}


def _ingress(run: Run) -> set[tuple[str, int, str]]:
    """(target group, port, source group or CIDR) for every ingress rule."""
    return {(r.inputs["securityGroupId"].removesuffix("-id"), int(r.inputs["fromPort"]),
             r.inputs.get("referencedSecurityGroupId", "").removesuffix("-id") or r.inputs["cidrIpv4"])
            for r in run.of_type(INGRESS)}


def test_one_instance_per_spec_host_spread_over_zones(example_fleet: Fleet, example_run: Run) -> None:
    instances = example_run.of_type(INSTANCE)
    per_cluster = Counter(i.inputs["tags"]["dbfleet:cluster"] for i in instances)
    assert per_cluster == {"pg-main": 3, "mongo-main": 4, "cache": 6, "monitoring": 1}
    assert {i.name for i in instances} == set(host_roles(example_fleet))
    zones = _zones(example_run)
    assert len({zones[h] for h in ("pg-1", "pg-2", "pg-3")}) == 3
    assert len({zones[h] for h in ("redis-1", "redis-2", "redis-3")}) == 3
    assert len({zones[h] for h in ("sentinel-1", "sentinel-2", "sentinel-3")}) == 3
    assert set(zones.values()) == {"us-east-1a", "us-east-1b", "us-east-1c"}


def test_instance_types_and_volumes_follow_the_spec(example_run: Run) -> None:
    pg = example_run.named(INSTANCE, "pg-2")
    assert pg.inputs["instanceType"] == "r6i.large"
    assert pg.inputs["ami"] == "ami-amd64" and pg.inputs["associatePublicIpAddress"] is False
    assert pg.inputs["metadataOptions"]["httpTokens"] == "required"
    volume = example_run.named(VOLUME, "pg-2-data")
    assert (volume.inputs["size"], volume.inputs["iops"], volume.inputs["type"]) == (100, 3000, "gp3")
    assert volume.inputs["availabilityZone"] == _zones(example_run)["pg-2"]
    assert example_run.named(VOLUME, "redis-1-data").inputs["size"] == 50
    stateless = {"mongos-1", "sentinel-1", "sentinel-2", "sentinel-3"}
    assert {v.name.removesuffix("-data") for v in example_run.of_type(VOLUME)} == {
        i.name for i in example_run.of_type(INSTANCE)} - stateless
    assert len(example_run.of_type(ATTACHMENT)) == len(example_run.of_type(VOLUME))


def test_every_volume_is_encrypted_with_the_fleet_key(example_run: Run) -> None:
    (key,) = example_run.of_type(KEY)
    assert key.inputs["enableKeyRotation"] is True
    for volume in example_run.of_type(VOLUME):
        assert volume.inputs["encrypted"] is True and volume.inputs["kmsKeyId"] == key.state["arn"], volume.name
    for instance in example_run.of_type(INSTANCE):
        root = instance.inputs["rootBlockDevice"]
        assert root["encrypted"] is True and root["kmsKeyId"] == key.state["arn"], instance.name


def test_nothing_is_open_to_everyone(example_run: Run) -> None:
    for rule in example_run.of_type(INGRESS):
        assert rule.inputs.get("cidrIpv4") not in ("0.0.0.0/0",) and "cidrIpv6" not in rule.inputs, rule.name
        assert rule.inputs.get("referencedSecurityGroupId") or rule.inputs.get("cidrIpv4"), rule.name
    for group in example_run.of_type(GROUP):
        assert not group.inputs.get("ingress"), f"{group.name} has inline ingress"
    default = example_run.of_type("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")[0]
    assert not default.inputs.get("ingress") and not default.inputs.get("egress")


def test_group_and_rule_descriptions_are_ones_ec2_accepts(example_run: Run) -> None:
    described = [*example_run.of_type(GROUP), *example_run.of_type(INGRESS),
                 *example_run.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")]
    assert len(described) == 45
    for resource in described:
        assert EC2_TEXT.match(resource.inputs["description"]), (resource.name, resource.inputs["description"])


def test_each_role_accepts_only_the_roles_that_need_it(example_run: Run) -> None:
    rules = _ingress(example_run)
    by_target: dict[tuple[str, int], set[str]] = defaultdict(set)
    for target, port, source in rules:
        by_target[(target, port)].add(source)
    assert by_target[("pg-main-postgres", 5432)] == {"lab-app", "lab-operator", "pg-main-postgres"}
    assert by_target[("mongo-main-mongos", 27017)] == {"lab-app", "lab-operator"}
    assert by_target[("mongo-main-shard", 27017)] == {
        "mongo-main-shard", "mongo-main-mongos", "mongo-main-config", "lab-operator"}
    assert by_target[("mongo-main-config", 27017)] == {
        "mongo-main-config", "mongo-main-shard", "mongo-main-mongos", "lab-operator"}
    assert by_target[("cache-redis", 6379)] == {"cache-redis", "cache-sentinel", "lab-app", "lab-operator"}
    assert by_target[("cache-sentinel", 26379)] == {"cache-sentinel", "lab-app", "lab-operator"}
    scrapes = {(t, p) for (t, p), sources in by_target.items() if sources == {"lab-monitoring"}}
    assert scrapes >= {("pg-main-postgres", 9187), ("mongo-main-shard", 9216), ("mongo-main-mongos", 9216),
                       ("cache-redis", 9121), ("cache-sentinel", 9100), ("pg-main-postgres", 9100)}
    assert ("lab-operator", 9640, "lab-monitoring") in rules
    monitor = example_run.named(INSTANCE, "monitor-1").inputs["vpcSecurityGroupIds"]
    assert set(monitor) == {"lab-monitoring-id", "lab-operator-id", "lab-egress-id"}


def test_backup_bucket_is_versioned_encrypted_private_and_tls_only(example_run: Run) -> None:
    (bucket,) = example_run.of_type("aws:s3/bucket:Bucket")
    name, key_arn = bucket.state["bucket"], example_run.of_type(KEY)[0].state["arn"]
    for token in ("bucketVersioning:BucketVersioning", "bucketPublicAccessBlock:BucketPublicAccessBlock",
                  "bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                  "bucketPolicy:BucketPolicy", "bucketLifecycleConfiguration:BucketLifecycleConfiguration"):
        assert [r.inputs["bucket"] for r in example_run.of_type(f"aws:s3/{token}")] == [name], token
    versioning = example_run.of_type("aws:s3/bucketVersioning:BucketVersioning")[0].inputs
    assert versioning["versioningConfiguration"]["status"] == "Enabled"
    sse = example_run.of_type(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")[0].inputs
    default = sse["rules"][0]["applyServerSideEncryptionByDefault"]
    assert default == {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": key_arn}
    block = example_run.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")[0].inputs
    assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                          "restrictPublicBuckets"))
    (statement,) = json.loads(example_run.of_type("aws:s3/bucketPolicy:BucketPolicy")[0].inputs["policy"])["Statement"]
    assert statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert set(statement["Resource"]) == {f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"}


def test_lifecycle_follows_each_clusters_retention(example_run: Run) -> None:
    rules = {r["id"]: r for r in example_run.of_type(
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")[0].inputs["rules"]}
    assert set(rules) == {"pg-main-cleanup", "pg-main-age", "mongo-main-cleanup", "cache-cleanup"}
    # pg-main keeps 14 days; a weekly full means objects must live one full interval longer.
    assert rules["pg-main-age"]["expiration"] == {"days": 21}
    for cluster in ("pg-main", "mongo-main", "cache"):
        rule = rules[f"{cluster}-cleanup"]
        assert rule["filter"] == {"prefix": f"{cluster}/"} and rule["status"] == "Enabled"
        assert rule["noncurrentVersionExpiration"]["noncurrentDays"] == 7


def _policies(run: Run) -> dict[str, dict[str, Any]]:
    return {p.name.removesuffix("-backups"): json.loads(p.inputs["policy"]) for p in run.of_type(ROLE_POLICY)}


def test_instance_profiles_reach_only_their_own_backup_prefix(example_run: Run) -> None:
    policies = _policies(example_run)
    assert set(policies) == {"pg-main-postgres", "mongo-main-mongos", "cache-redis"}
    bucket = example_run.of_type("aws:s3/bucket:Bucket")[0].state["arn"]
    for role, document in policies.items():
        prefix = {"pg-main-postgres": "pg-main/", "mongo-main-mongos": "mongo-main/", "cache-redis": "cache/"}[role]
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow" and "*" not in str(statement["Action"])
            resource = statement["Resource"]
            if statement["Action"] == "s3:ListBucket":
                assert resource == bucket
                assert statement["Condition"]["StringLike"]["s3:prefix"] == [prefix, f"{prefix}*"]
            elif str(statement["Action"]).startswith("['kms:"):
                assert statement["Condition"]["StringEquals"]["kms:ViaService"] == "s3.us-east-1.amazonaws.com"
            elif statement["Action"] != "s3:GetBucketLocation":
                assert resource == f"{bucket}/{prefix}*", role
    profiles = {i.name: i.inputs["iamInstanceProfile"] for i in example_run.of_type(INSTANCE)}
    assert profiles["sentinel-1"].startswith("cache-sentinel") and profiles["pg-3"].startswith("pg-main-postgres")
    assert len(example_run.of_type("aws:iam/instanceProfile:InstanceProfile")) == 7


def test_one_more_replica_adds_exactly_one_instance_and_volume(example_run: Run) -> None:
    def add_replica(data: dict[str, Any]) -> None:
        pg = data["clusters"][0]
        pg["hosts"].append("pg-4")
        pg["replicas"] += 1

    grown = run_program(fleet_variant(add_replica))
    before = {(r.type, r.name): r.inputs for r in example_run.mocks.resources}
    after = {(r.type, r.name): r.inputs for r in grown.mocks.resources}
    assert set(after) - set(before) == {("dbfleet:aws:Host", "pg-4"), (INSTANCE, "pg-4"), (VOLUME, "pg-4-data"),
                                        (ATTACHMENT, "pg-4-data")}
    assert set(before) <= set(after)
    # Nothing that existed changes: no host moves zone, no group or policy is rewritten.
    assert [key for key in before if before[key] != after[key]] == []
    assert grown.outputs["hosts"]["pg-4"]["roles"] == ["postgres", "postgres_replica"]


def test_s3_targets_get_their_named_bucket_and_prefix() -> None:
    def s3_target(data: dict[str, Any]) -> None:
        data["clusters"][0]["backup"]["target"] = {"kind": "s3", "bucket": "acme-pg-backups", "prefix": "/pg/main"}

    run = run_program(fleet_variant(s3_target), StackSettings(ssh_public_key="ssh-ed25519 AAAA test"))
    assert sorted(b.state["bucket"] for b in run.of_type("aws:s3/bucket:Bucket")) == ["acme-pg-backups",
                                                                                       "lab-backups-0a1b2c3"]
    assert run.outputs["backups"]["pg-main"] == {"bucket": "acme-pg-backups", "prefix": "pg/main/"}
    statements = _policies(run)["pg-main-postgres"]["Statement"]
    assert any(s["Resource"] == "arn:aws:s3:::acme-pg-backups/pg/main/*" for s in statements)
    assert {i.inputs["keyName"] for i in run.of_type(INSTANCE)} == {"lab"}


def test_ami_is_the_newest_official_debian_12(example_run: Run) -> None:
    lookups = [args for token, args in example_run.mocks.calls if token == "aws:ec2/getAmi:getAmi"]
    assert len(lookups) == 1 and lookups[0]["mostRecent"] is True
    assert {"name": "name", "values": ["debian-12-amd64-*"]} in lookups[0]["filters"]


def _with_clients(*cidrs: str) -> Fleet:
    def change(data: dict[str, Any]) -> None:
        data["clusters"][0]["allowed_clients"] = list(cidrs)

    return fleet_variant(change)


def test_ipv6_clients_get_ipv6_rules_and_ipv4_clients_ipv4_rules() -> None:
    run = run_program(_with_clients("2001:db8:40::/48", "10.1.0.0/16"))
    rules = [r.inputs for r in run.of_type(INGRESS) if r.inputs["securityGroupId"] == "pg-main-postgres-id"
             and int(r.inputs["fromPort"]) == 5432 and not r.inputs.get("referencedSecurityGroupId")]
    assert sorted((r.get("cidrIpv4", "-"), r.get("cidrIpv6", "-")) for r in rules) == [
        ("-", "2001:db8:40::/48"), ("10.1.0.0/16", "-")]


@pytest.mark.parametrize(("cidrs", "bound"), [
    (("0.0.0.0/1", "128.0.0.0/1"), "/8"),
    (("10.0.0.0/8", "11.0.0.0/8"), "/8"),
    (("::/1", "8000::/1"), "/32"),
    (("2001:db8::/31",), "/32"),
])
def test_client_cidrs_that_together_cover_more_than_the_bound_are_refused(cidrs: tuple[str, ...], bound: str) -> None:
    with pytest.raises(SpecError, match=rf"clusters.0.allowed_clients: .*more than a {bound}"):
        _with_clients(*cidrs)


def test_client_cidrs_up_to_the_bound_are_written_in_network_form() -> None:
    fleet = _with_clients("10.0.0.0/9", "10.128.0.1/9", "2001:db8::/32", "10.0.0.0/9")
    assert fleet.clusters[0].allowed_clients == ["10.0.0.0/9", "10.128.0.0/9", "2001:db8::/32"]
