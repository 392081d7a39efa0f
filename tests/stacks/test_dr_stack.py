"""Disaster recovery on the mocks: second-region buckets and keys for S3 dr.targets, the writers' rights on them, and
a PostgreSQL standby site's network, peering and hosts; and a spec without any of it builds what it built before."""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from itertools import product
from typing import Any

import pytest
from iam_eval import allowed
from pulumi_mocks import Registered, Run, fleet_variant, run_program
from test_program import EC2_TEXT

from components.backups import plan_dr_targets
from components.errors import StackError
from components.fleet import StackSettings
from components.standby import plan_standby_sites
from dbfleet.backups.manifest import backup_prefix, manifest_key
from dbfleet.backups.storage import S3Storage
from dbfleet.engines.pgbackrest import DR_REPO, repo_options
from dbfleet.spec import Fleet, PostgresCluster

HOME = "us-east-1"
TARGETS = {
    # cluster: (first bucket, prefix, second bucket, second region)
    "pg-main": ("acme-pg", "pg", "acme-pg-dr", "us-west-2"),
    "mongo-main": ("acme-shared", "mongo", "acme-dr-shared", "us-west-2"),
    "cache": ("acme-shared", "cache", "acme-cache-dr", "eu-west-1"),
}
"""Two clusters share a second bucket in us-west-2; cache's second copy is in a third region."""
STANDBY_CIDR = "10.41.0.0/16"
BUCKET = "aws:s3/bucket:Bucket"
KEY = "aws:kms/key:Key"
INSTANCE = "aws:ec2/instance:Instance"
VOLUME = "aws:ebs/volume:Volume"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
ROUTE = "aws:ec2/route:Route"
PEERING = "aws:ec2/vpcPeeringConnection:VpcPeeringConnection"
ACCEPTER = "aws:ec2/vpcPeeringConnectionAccepter:VpcPeeringConnectionAccepter"
VPC = "aws:ec2/vpc:Vpc"
SUBNET = "aws:ec2/subnet:Subnet"
TLS = {"aws:SecureTransport": "true"}
CLEAR = {"aws:SecureTransport": "false"}
OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
SSH = StackSettings(ssh_public_key="ssh-ed25519 AAAA test")


def _on_s3_twice(data: dict[str, Any]) -> None:
    for cluster in data["clusters"]:
        first, prefix, second, region = TARGETS[cluster["name"]]
        cluster["backup"]["target"] = {"kind": "s3", "bucket": first, "prefix": prefix}
        cluster["dr"]["target"] = {"kind": "s3", "bucket": second, "prefix": prefix, "region": region}


def _with_standby(data: dict[str, Any]) -> None:
    _on_s3_twice(data)
    data["clusters"][0]["dr"]["standby"] = {"hosts": ["pg-dr-1", {"name": "pg-dr-2", "zone": 2}],
                                            "region": "us-west-2", "vpc_cidr": STANDBY_CIDR}


@pytest.fixture(scope="module")
def dr_fleet() -> Fleet:
    return fleet_variant(_with_standby)


@pytest.fixture(scope="module")
def dr_run(dr_fleet: Fleet) -> Run:
    return run_program(dr_fleet, SSH)


@pytest.fixture(scope="module")
def s3_only_run() -> Run:
    """The same second targets, without a standby site."""
    return run_program(fleet_variant(_on_s3_twice), SSH)


def _of_bucket(run: Run, token: str, bucket: str) -> Registered:
    (found,) = [r for r in run.of_type(f"aws:s3/{token}") if r.inputs["bucket"] == bucket]
    return found


def _keys(run: Run) -> dict[str, Registered]:
    return {key.region: key for key in run.of_type(KEY)}


def _policies(run: Run) -> dict[str, dict[str, Any]]:
    return {p.name.removesuffix("-backups"): json.loads(p.inputs["policy"])
            for p in run.of_type("aws:iam/rolePolicy:RolePolicy")}


def test_each_second_region_gets_its_own_rotating_key(dr_run: Run) -> None:
    keys = _keys(dr_run)
    assert sorted(keys) == ["eu-west-1", HOME, "us-west-2"]
    for region, key in keys.items():
        assert key.inputs["enableKeyRotation"] is True, region
        assert key.state["arn"].startswith(f"arn:aws:kms:{region}:"), key.state["arn"]
    aliases = {a.region: a.inputs["targetKeyId"] for a in dr_run.of_type("aws:kms/alias:Alias")}
    assert aliases == {region: key.state["keyId"] for region, key in keys.items()}


@pytest.mark.parametrize("cluster", sorted(TARGETS))
def test_the_second_bucket_is_in_its_region_versioned_private_tls_only_and_on_that_regions_key(
        dr_run: Run, cluster: str) -> None:
    first, _, second, region = TARGETS[cluster]
    bucket = dr_run.named(BUCKET, second)
    assert bucket.region == region
    parts = {token: _of_bucket(dr_run, token, second) for token in (
        "bucketVersioning:BucketVersioning", "bucketPublicAccessBlock:BucketPublicAccessBlock",
        "bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        "bucketPolicy:BucketPolicy", "bucketLifecycleConfiguration:BucketLifecycleConfiguration",
        "bucketOwnershipControls:BucketOwnershipControls")}
    assert {part.region for part in parts.values()} == {region}
    assert parts["bucketVersioning:BucketVersioning"].inputs["versioningConfiguration"]["status"] == "Enabled"
    block = parts["bucketPublicAccessBlock:BucketPublicAccessBlock"].inputs
    assert [block[k] for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                               "restrictPublicBuckets")] == [True] * 4
    (rule,) = parts["bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"].inputs["rules"]
    assert rule["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "aws:kms",
                                                          "kmsMasterKeyId": _keys(dr_run)[region].state["arn"]}
    (statement,) = json.loads(parts["bucketPolicy:BucketPolicy"].inputs["policy"])["Statement"]
    assert (statement["Effect"], statement["Principal"], statement["Action"]) == ("Deny", "*", "s3:*")
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert set(statement["Resource"]) == {f"arn:aws:s3:::{second}", f"arn:aws:s3:::{second}/*"}
    # The copy lives exactly as long as the first: the same rules for the cluster's prefix.
    first_rules = [r for r in _of_bucket(dr_run, "bucketLifecycleConfiguration:BucketLifecycleConfiguration",
                                         first).inputs["rules"] if r["id"].startswith(f"{cluster}-")]
    second_rules = [r for r in parts["bucketLifecycleConfiguration:BucketLifecycleConfiguration"].inputs["rules"]
                    if r["id"].startswith(f"{cluster}-")]
    assert second_rules == first_rules and first_rules


def test_two_clusters_share_a_second_bucket_with_one_lifecycle(dr_run: Run) -> None:
    rules = _of_bucket(dr_run, "bucketLifecycleConfiguration:BucketLifecycleConfiguration", "acme-dr-shared")
    assert sorted(r["id"] for r in rules.inputs["rules"]) == ["mongo-main-cleanup"]
    assert [r["filter"] for r in rules.inputs["rules"]] == [{"prefix": "mongo/"}]
    assert Counter(b.region for b in dr_run.of_type(BUCKET)) == {HOME: 2, "us-west-2": 2, "eu-west-1": 1}


def _repo2(fleet: Fleet) -> tuple[str, str]:
    """(bucket, key prefix) of pgBackRest's repo2, as the hosts' pgbackrest.conf names it."""
    pg = fleet.cluster("pg-main")
    assert isinstance(pg, PostgresCluster) and pg.dr is not None
    options = repo_options(pg, DR_REPO, pg.dr.target)
    assert (options["repo2-type"], options["repo2-s3-region"]) == ("s3", "us-west-2")
    return options["repo2-s3-bucket"], options["repo2-path"].lstrip("/") + "/"


def _kms_context(bucket: str, region: str) -> dict[str, str]:
    return {"kms:ViaService": f"s3.{region}.amazonaws.com",
            "kms:EncryptionContext:aws:s3:arn": f"arn:aws:s3:::{bucket}"}


def test_pgbackrest_writes_repo2_in_the_second_bucket_and_nothing_else_there(dr_run: Run, dr_fleet: Fleet) -> None:
    policy = _policies(dr_run)["pg-main-postgres"]
    bucket, repository = _repo2(dr_fleet)
    assert (bucket, repository) == ("acme-pg-dr", "pg/pgbackrest/pg-main/")
    for name, action in product(("backup/pg-main/backup.info", "archive/pg-main/15-1/0000000100000000/"
                                 "000000010000000000000003.lz4"), OBJECT_ACTIONS):
        assert allowed(policy, action, f"arn:aws:s3:::{bucket}/{repository}{name}", TLS), (action, name)
        assert not allowed(policy, action, f"arn:aws:s3:::{bucket}/{repository}{name}", CLEAR), (action, name)
    assert allowed(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", {**TLS, "s3:prefix": repository + "backup/"})
    assert not allowed(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", {**TLS, "s3:prefix": "pg/dbfleet/"})
    manifest = f"arn:aws:s3:::{bucket}/pg/" + manifest_key("pg-main", "20250101T020000Z-full")
    assert not any(allowed(policy, action, manifest, TLS) for action in OBJECT_ACTIONS)
    west = _keys(dr_run)["us-west-2"].state["arn"]
    for action in ("kms:GenerateDataKey", "kms:Decrypt"):
        assert allowed(policy, action, west, _kms_context(bucket, "us-west-2"))
        assert not allowed(policy, action, west, _kms_context(bucket, HOME))
        assert not allowed(policy, action, west, _kms_context("acme-dr-shared", "us-west-2"))
    assert not allowed(policy, "kms:Decrypt", _keys(dr_run)["eu-west-1"].state["arn"],
                       _kms_context("acme-cache-dr", "eu-west-1"))
    for other in ("acme-dr-shared", "acme-cache-dr"):
        assert not allowed(policy, "s3:GetObject", f"arn:aws:s3:::{other}/{repository}x", TLS)


def test_the_operator_writes_its_copies_in_every_second_bucket_and_reads_repo2(dr_run: Run, dr_fleet: Fleet) -> None:
    policy = _policies(dr_run)["monitoring-prometheus"]
    for cluster, (_, prefix, bucket, region) in TARGETS.items():
        # Where the operator's own S3Storage of the second target puts a manifest and a dump.
        storage = S3Storage(bucket, prefix, region, client=object())
        for key in (manifest_key(cluster, "20250101T020000Z-full"),
                    backup_prefix(cluster, "20250101T020000Z-full") + "dump.archive.age"):
            for action in OBJECT_ACTIONS:
                assert allowed(policy, action, f"arn:aws:s3:::{bucket}/{storage.prefix}{key}", TLS), (cluster, action)
        assert allowed(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}",
                       {**TLS, "s3:prefix": storage.prefix + f"dbfleet/{cluster}/"})
        key_arn = _keys(dr_run)[region].state["arn"]
        assert allowed(policy, "kms:GenerateDataKey", key_arn, _kms_context(bucket, region)), cluster
        assert not allowed(policy, "kms:GenerateDataKey", key_arn, _kms_context(bucket, HOME)), cluster
    bucket, repository = _repo2(dr_fleet)
    segment = f"arn:aws:s3:::{bucket}/{repository}archive/pg-main/x.lz4"
    assert allowed(policy, "s3:GetObject", segment, TLS)
    assert not allowed(policy, "s3:PutObject", segment, TLS) and not allowed(policy, "s3:DeleteObject", segment, TLS)


def test_nobody_else_gets_a_right_on_the_second_region(dr_run: Run) -> None:
    # The same two writers as with one target, and the standby site's members with exactly the primary site's
    # members' rights (they restore from repo2, and archive to both once promoted); mongod, Redis, Sentinels and
    # mongos get nothing.
    policies = _policies(dr_run)
    assert set(policies) == {"monitoring-prometheus", "pg-main-postgres", "pg-main-standby-postgres"}
    def rights(role: str) -> list[str]:  # statements without their names and order (the key of the host's own
        return sorted(json.dumps({k: v for k, v in st.items() if k != "Sid"}, sort_keys=True)  # region leads)
                      for st in policies[role]["Statement"])

    assert rights("pg-main-standby-postgres") == rights("pg-main-postgres")
    for role, policy in _policies(dr_run).items():
        for bucket in ("acme-pg-dr", "acme-dr-shared", "acme-cache-dr"):
            assert not allowed(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", {**TLS, "s3:prefix": ""}), role
            assert not allowed(policy, "s3:GetObject", f"arn:aws:s3:::{bucket}/elsewhere", TLS), role
            for action in ("s3:PutBucketPolicy", "s3:DeleteBucket", "s3:DeleteObjectVersion",
                           "s3:PutLifecycleConfiguration"):
                assert not allowed(policy, action, f"arn:aws:s3:::{bucket}/pg/x", TLS), (role, action)
        for key in _keys(dr_run).values():
            for action in ("kms:Encrypt", "kms:CreateGrant", "kms:ScheduleKeyDeletion", "kms:DisableKey"):
                assert not any(allowed(policy, action, key.state["arn"], _kms_context(b, key.region))
                               for b in ("acme-pg-dr", "acme-dr-shared", "acme-cache-dr")), (role, action)


def test_a_local_first_target_and_an_s3_second_grant_only_the_second() -> None:
    def local_then_s3(data: dict[str, Any]) -> None:
        data["clusters"][0]["dr"]["target"] = {"kind": "s3", "bucket": "acme-pg-dr", "prefix": "pg",
                                               "region": "us-west-2"}

    run = run_program(fleet_variant(local_then_s3))
    policies = _policies(run)
    assert set(policies) == {"monitoring-prometheus", "pg-main-postgres"}
    pg = policies["pg-main-postgres"]
    assert {b for s in pg["Statement"] for b in ([s["Resource"]] if isinstance(s["Resource"], str)
                                                  else s["Resource"]) if b.startswith("arn:aws:s3")} == {
        "arn:aws:s3:::acme-pg-dr", "arn:aws:s3:::acme-pg-dr/pg/pgbackrest/pg-main/*"}
    assert [s["Sid"] for s in pg["Statement"]][-1] == "UseKeyThroughS3InUsWest2"
    assert not allowed(pg, "s3:GetObject", "arn:aws:s3:::lab-backups-0a1b2c3/pg-main/pgbackrest/pg-main/x", TLS)


def test_the_standby_network_is_in_its_region_on_its_own_cidr(dr_run: Run) -> None:
    (vpc,) = [v for v in dr_run.of_type(VPC) if v.region == "us-west-2"]
    assert vpc.inputs["cidrBlock"] == STANDBY_CIDR
    primary = ipaddress.ip_network(dr_run.named(VPC, "lab").inputs["cidrBlock"])
    assert not ipaddress.ip_network(STANDBY_CIDR).overlaps(primary)
    subnets = [s for s in dr_run.of_type(SUBNET) if s.inputs["vpcId"] == f"{vpc.name}-id"]
    private = sorted((s.inputs["availabilityZone"], s.inputs["cidrBlock"]) for s in subnets
                     if s.inputs["tags"]["dbfleet:tier"] == "private")
    assert [zone for zone, _ in private] == ["us-west-2a", "us-west-2b", "us-west-2c"]
    assert all(ipaddress.ip_network(cidr).subnet_of(ipaddress.ip_network(STANDBY_CIDR)) for _, cidr in private)
    assert {s.region for s in subnets} == {"us-west-2"}
    (nat,) = [n for n in dr_run.of_type("aws:ec2/natGateway:NatGateway") if n.region == "us-west-2"]
    (endpoint,) = [e for e in dr_run.of_type("aws:ec2/vpcEndpoint:VpcEndpoint") if e.region == "us-west-2"]
    assert endpoint.inputs["serviceName"] == "com.amazonaws.us-west-2.s3" and nat.name == "pg-main-standby-nat"


def test_the_peering_is_requested_from_the_fleet_and_accepted_in_the_standby_region(dr_run: Run) -> None:
    (peering,) = dr_run.of_type(PEERING)
    (accepter,) = dr_run.of_type(ACCEPTER)
    assert (peering.region, accepter.region) == (HOME, "us-west-2")
    assert peering.inputs["vpcId"] == "lab-id" and peering.inputs["peerVpcId"] == "pg-main-standby-id"
    assert peering.inputs["peerRegion"] == "us-west-2" and not peering.inputs.get("autoAccept")
    assert accepter.inputs["vpcPeeringConnectionId"] == "pg-main-standby-id" and accepter.inputs["autoAccept"] is True
    routes = {(r.region, r.inputs["routeTableId"], r.inputs["destinationCidrBlock"]) for r in dr_run.of_type(ROUTE)
              if r.inputs.get("vpcPeeringConnectionId") == "pg-main-standby-id"}
    assert routes == {(HOME, "lab-private-id", STANDBY_CIDR),
                      ("us-west-2", "pg-main-standby-private-id", "10.40.0.0/16")}


def test_each_site_admits_the_other_by_cidr(dr_run: Run) -> None:
    ingress = {(r.region, r.inputs["securityGroupId"], int(r.inputs["fromPort"]),
                r.inputs.get("cidrIpv4") or r.inputs["referencedSecurityGroupId"]) for r in dr_run.of_type(INGRESS)}
    assert (HOME, "pg-main-postgres-id", 5432, STANDBY_CIDR) in ingress
    standby = {(port, source) for region, group, port, source in ingress if group == "pg-main-standby-postgres-id"}
    # 8008 from the primary site: the operator's `dbfleet dr promote`, on the monitoring host there.
    assert standby == {(5432, "10.40.0.0/16"), (5432, "pg-main-standby-postgres-id"), (8008, "10.40.0.0/16"),
                       (8008, "pg-main-standby-postgres-id"), (2379, "pg-main-standby-postgres-id"),
                       (2380, "pg-main-standby-postgres-id")}
    assert {r for r in ingress if r[2] == "pg-main-standby-postgres-id"} <= {r for r in ingress if r[0] == "us-west-2"}
    # Only the primary's PostgreSQL group admits the standby site.
    assert [r for r in ingress if r[3] == STANDBY_CIDR] == [(HOME, "pg-main-postgres-id", 5432, STANDBY_CIDR)]
    egress = {(r.region, r.inputs["securityGroupId"], r.inputs["cidrIpv4"]) for r in dr_run.of_type(EGRESS)
              if r.inputs["ipProtocol"] == "-1"}
    assert egress == {(HOME, "lab-egress-id", "10.40.0.0/16"), (HOME, "lab-egress-id", STANDBY_CIDR),
                      ("us-west-2", "pg-main-standby-egress-id", STANDBY_CIDR),
                      ("us-west-2", "pg-main-standby-egress-id", "10.40.0.0/16")}


def test_standby_hosts_are_built_like_fleet_hosts_in_the_standby_region(dr_run: Run) -> None:
    hosts = {i.name: i for i in dr_run.of_type(INSTANCE) if i.region == "us-west-2"}
    assert sorted(hosts) == ["pg-dr-1", "pg-dr-2"]
    west_key = _keys(dr_run)["us-west-2"].state["arn"]
    subnets = {f"{s.name}-id": s for s in dr_run.of_type(SUBNET)}
    for name, host in hosts.items():
        assert host.inputs["ami"] == "ami-amd64" and host.inputs["instanceType"] == "r6i.large"
        assert host.inputs["metadataOptions"]["httpTokens"] == "required"
        assert host.inputs["associatePublicIpAddress"] is False
        assert host.inputs["rootBlockDevice"]["encrypted"] is True
        assert host.inputs["rootBlockDevice"]["kmsKeyId"] == west_key
        assert subnets[host.inputs["subnetId"]].inputs["vpcId"] == "pg-main-standby-id"
        assert set(host.inputs["vpcSecurityGroupIds"]) == {"pg-main-standby-postgres-id", "pg-main-standby-egress-id"}
        assert host.inputs["keyName"] == "pg-main-standby"
        assert "amazon-ssm-us-west-2" in host.inputs["userData"]
        volume = dr_run.named(VOLUME, f"{name}-data")
        assert (volume.region, volume.inputs["encrypted"], volume.inputs["kmsKeyId"]) == ("us-west-2", True, west_key)
        assert volume.inputs["size"] == 100
    zones = {name: subnets[h.inputs["subnetId"]].inputs["availabilityZone"] for name, h in hosts.items()}
    assert zones["pg-dr-2"] == "us-west-2c" and zones["pg-dr-1"] != zones["pg-dr-2"]
    amis = [(token, region) for token, region in dr_run.mocks.call_regions if token == "aws:ec2/getAmi:getAmi"]
    assert sorted(amis) == [("aws:ec2/getAmi:getAmi", HOME), ("aws:ec2/getAmi:getAmi", "us-west-2")]
    assert (dr_run.named("aws:ec2/keyPair:KeyPair", "pg-main-standby").region) == "us-west-2"


def test_outputs_name_the_second_buckets_and_the_standby_site(dr_run: Run) -> None:
    dr = dr_run.outputs["dr_backups"]
    assert dr["pg-main"] == {"bucket": "acme-pg-dr", "prefix": "pg/", "region": "us-west-2",
                             "kms_key_arn": _keys(dr_run)["us-west-2"].state["arn"]}
    assert dr["cache"]["region"] == "eu-west-1" and dr["mongo-main"]["bucket"] == "acme-dr-shared"
    (site,) = dr_run.outputs["standby_sites"].values()
    assert site["region"] == "us-west-2" and site["vpc_cidr"] == STANDBY_CIDR
    assert site["peering_connection_id"] == "pg-main-standby-id"
    hosts = dr_run.outputs["standby_hosts"]
    assert sorted(hosts) == ["pg-dr-1", "pg-dr-2"]
    for host in hosts.values():
        assert host["cluster"] == "pg-main" and host["region"] == "us-west-2" and host["zone"].startswith("us-west-2")
        assert ipaddress.ip_address(host["address"]) in ipaddress.ip_network(STANDBY_CIDR)
    assert "pg-dr-1" not in dr_run.outputs["hosts"]


def test_no_standby_site_unless_the_spec_asks(s3_only_run: Run, dr_run: Run) -> None:
    for token in (PEERING, ACCEPTER, INSTANCE, VPC, VOLUME):
        assert not [r for r in s3_only_run.of_type(token) if r.region != HOME], token
    assert not s3_only_run.of_type(PEERING) and "standby_hosts" not in s3_only_run.outputs
    # The standby site is exactly what the standby adds: its own resources, and the fleet's two rules to admit it.
    before = {(r.type, r.name) for r in s3_only_run.mocks.resources}
    added = {(r.type, r.name) for r in dr_run.mocks.resources} - before
    assert {name for _, name in added if "standby" not in name and not name.startswith("pg-dr-")} == {
        "pg-main-postgres-from-10.41.0.0_16-5432", "lab-egress-peer-10.41.0.0_16"}
    assert before <= {(r.type, r.name) for r in dr_run.mocks.resources}


def test_a_spec_without_dr_builds_what_it_built_before(example_run: Run) -> None:
    # The example's second targets are directories (local): nothing of the stack's is for them.
    def no_dr(data: dict[str, Any]) -> None:
        for cluster in data["clusters"]:
            cluster.pop("dr")

    without = run_program(fleet_variant(no_dr))
    assert len(without.mocks.resources) == len(example_run.mocks.resources) == 172
    assert ({(r.type, r.name, json.dumps(r.inputs, sort_keys=True)) for r in without.mocks.resources}
            == {(r.type, r.name, json.dumps(r.inputs, sort_keys=True)) for r in example_run.mocks.resources})
    assert {r.region for r in without.mocks.resources} == {HOME}
    assert set(without.outputs) == set(example_run.outputs) == {"region", "vpc_id", "kms_key_arn", "security_groups",
                                                                "hosts", "backups"}


def test_s3_second_targets_add_only_second_region_buckets_keys_and_their_grants(s3_only_run: Run) -> None:
    def first_only(data: dict[str, Any]) -> None:
        _on_s3_twice(data)
        for cluster in data["clusters"]:
            cluster["dr"]["target"] = {"kind": "local", "path": "/var/lib/dbfleet/dr-backups"}

    one = run_program(fleet_variant(first_only), SSH)
    before = {(r.type, r.name): r.inputs for r in one.mocks.resources}
    after = {(r.type, r.name): r.inputs for r in s3_only_run.mocks.resources}
    assert set(before) <= set(after)
    added = Counter(token for token, name in set(after) - set(before))
    assert added == {"pulumi:providers:aws": 2, KEY: 2, "aws:kms/alias:Alias": 2, "dbfleet:aws:FleetKey": 2,
                     "dbfleet:aws:Backups": 2, "dbfleet:aws:BackupBucket": 3, BUCKET: 3,
                     "aws:s3/bucketOwnershipControls:BucketOwnershipControls": 3,
                     "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": 3,
                     "aws:s3/bucketVersioning:BucketVersioning": 3,
                     "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": 3,
                     "aws:s3/bucketPolicy:BucketPolicy": 3,
                     "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": 3}
    # What changes in place: only the two writers' policies.
    assert sorted(key[1] for key in before if before[key] != after[key]) == [
        "monitoring-prometheus-backups", "pg-main-postgres-backups"]


def test_a_standby_site_without_a_vpc_cidr_is_refused_before_anything_is_built() -> None:
    def no_cidr(data: dict[str, Any]) -> None:
        _with_standby(data)
        data["clusters"][0]["dr"]["standby"].pop("vpc_cidr")

    with pytest.raises(StackError, match="cluster pg-main: dr.standby.vpc_cidr is needed .* apart from fleet.vpc_cidr "
                                         "10.40.0.0/16"):
        plan_standby_sites(fleet_variant(no_cidr))


def test_a_standby_host_pinned_past_the_zones_is_refused() -> None:
    def far(data: dict[str, Any]) -> None:
        _with_standby(data)
        data["clusters"][0]["dr"]["standby"]["hosts"] = [{"name": "pg-dr-1", "zone": 4}]

    with pytest.raises(StackError, match="host pg-dr-1: zone 4 is outside"):
        plan_standby_sites(fleet_variant(far))


def test_one_bucket_name_in_two_regions_is_refused() -> None:
    def clash(data: dict[str, Any]) -> None:
        _on_s3_twice(data)
        data["clusters"][2]["dr"]["target"]["bucket"] = "acme-dr-shared"  # us-west-2 for mongo-main, eu-west-1 here

    with pytest.raises(StackError, match="clusters mongo-main and cache: bucket acme-dr-shared is named in us-west-2 "
                                         "and in eu-west-1"):
        plan_dr_targets(fleet_variant(clash))


def test_second_targets_outside_aws_or_local_get_nothing() -> None:
    def elsewhere(data: dict[str, Any]) -> None:
        _on_s3_twice(data)
        data["clusters"][0]["dr"]["target"]["endpoint"] = "https://minio.example.internal:9000"
        data["clusters"][1]["dr"]["target"] = {"kind": "local", "path": "/var/lib/dbfleet/dr-backups"}

    assert set(plan_dr_targets(fleet_variant(elsewhere))) == {"cache"}


def test_the_new_groups_and_rules_have_descriptions_ec2_accepts(dr_run: Run) -> None:
    described = [r for token in ("aws:ec2/securityGroup:SecurityGroup", INGRESS, EGRESS) for r in dr_run.of_type(token)
                 if "standby" in r.name or "10.41" in r.name]
    assert len(described) == 14  # 2 groups, 7 ingress rules (1 into the primary), 5 egress rules (1 of the primary)
    for resource in described:
        assert EC2_TEXT.match(resource.inputs["description"]), (resource.name, resource.inputs["description"])
