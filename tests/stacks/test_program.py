"""The Pulumi program on Pulumi's mocks: what it registers for the example spec, and for spec changes."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from itertools import product
from typing import Any

import pytest
from iam_eval import allowed
from pulumi_mocks import Run, fleet_variant, run_program

from components.fleet import StackSettings
from dbfleet.backups.manifest import backup_prefix, cluster_prefix, manifest_key
from dbfleet.backups.storage import S3Storage
from dbfleet.engines.pgbackrest import repo_options, repo_path
from dbfleet.inventory import host_roles
from dbfleet.spec import Fleet, PostgresCluster, SpecError

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
    assert len(described) == 62  # 45 before ha: patroni added etcd's and HAProxy's groups and 15 rules
    for resource in described:
        assert EC2_TEXT.match(resource.inputs["description"]), (resource.name, resource.inputs["description"])


def test_each_role_accepts_only_the_roles_that_need_it(example_run: Run) -> None:
    rules = _ingress(example_run)
    by_target: dict[tuple[str, int], set[str]] = defaultdict(set)
    for target, port, source in rules:
        by_target[(target, port)].add(source)
    assert by_target[("pg-main-postgres", 5432)] == {"lab-app", "lab-operator", "pg-main-postgres", "pg-main-haproxy"}
    # ha: patroni: etcd's peers only between its members, its clients Patroni and the operator (its leader lease);
    # Patroni's API to members, HAProxy, operator, Prometheus.
    assert by_target[("pg-main-etcd", 2379)] == {"pg-main-postgres", "pg-main-etcd", "lab-operator"}
    assert by_target[("pg-main-etcd", 2380)] == {"pg-main-etcd"}
    assert by_target[("pg-main-postgres", 8008)] == {"pg-main-postgres", "pg-main-haproxy", "lab-operator",
                                                     "lab-monitoring"}
    assert by_target[("pg-main-haproxy", 5000)] == by_target[("pg-main-haproxy", 5001)] == {"lab-app", "lab-operator"}
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


TLS = {"aws:SecureTransport": "true"}
CLEAR = {"aws:SecureTransport": "false"}
OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")
S3_TARGETS = {"pg-main": ("acme-pg", "/pg/"), "mongo-main": ("acme-shared", "mongo"), "cache": ("acme-shared", "cache")}
"""Each cluster's S3 target in the variant below: pg-main alone in a bucket, the other two sharing one."""


def _object(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def _on_s3(data: dict[str, Any]) -> None:
    for cluster in data["clusters"]:
        bucket, prefix = S3_TARGETS[cluster["name"]]
        cluster["backup"]["target"] = {"kind": "s3", "bucket": bucket, "prefix": prefix}


@pytest.fixture(scope="module")
def s3_fleet() -> Fleet:
    return fleet_variant(_on_s3)


@pytest.fixture(scope="module")
def s3_run(s3_fleet: Fleet) -> Run:
    return run_program(s3_fleet)


def _operator_key(cluster: str, key: str) -> str:
    """Where the operator's own S3Storage puts `key` of a cluster (its prefix is the target's, as the spec says)."""
    bucket, prefix = S3_TARGETS[cluster]
    return S3Storage(bucket, prefix, client=object()).prefix + key


def test_only_the_operator_and_the_postgres_hosts_get_backup_rights(s3_run: Run) -> None:
    # mongod and mongos, Redis and Sentinel hosts never call S3: dumps are spooled on the host and the operator
    # uploads them (dbfleet.backups.spool). The operator, on the monitoring host, had none and now has its own.
    assert set(_policies(s3_run)) == {"monitoring-prometheus", "pg-main-postgres"}
    attached = {a.inputs["policyArn"] for a in s3_run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")}
    assert attached == {"arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"}
    assert len(s3_run.of_type("aws:iam/role:Role")) == 7
    profiles = {i.name: i.inputs["iamInstanceProfile"] for i in s3_run.of_type(INSTANCE)}
    assert profiles["monitor-1"].startswith("monitoring-prometheus") and profiles["pg-3"].startswith("pg-main-postgres")
    assert profiles["mongos-1"].startswith("mongo-main-mongos") and profiles["redis-1"].startswith("cache-redis")


def test_a_local_target_grants_nobody_anything(example_run: Run) -> None:
    # The example's targets are directories: the prefixes the fleet's bucket reserves for them are written by
    # nothing, so no profile may touch the bucket or use the key through S3.
    assert _policies(example_run) == {}


def test_every_s3_right_is_scoped_and_over_tls_only(s3_run: Run) -> None:
    buckets = {"arn:aws:s3:::acme-pg", "arn:aws:s3:::acme-shared"}
    for role, policy in _policies(s3_run).items():
        for statement in policy["Statement"]:
            actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
            assert statement["Effect"] == "Allow" and all("*" not in a for a in actions), (role, statement)
            resources = [statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"]
            if actions[0].startswith("s3:"):
                assert statement["Condition"]["Bool"] == {"aws:SecureTransport": "true"}, (role, statement)
                for resource in resources:
                    bucket, _, key = resource.partition("/")
                    assert bucket in buckets and (key == "" or len(key) > 1), (role, resource)
        for bucket in buckets:
            # Never a whole bucket: not its listing, not its objects.
            assert not allowed(policy, "s3:ListBucket", bucket, TLS)
            assert not allowed(policy, "s3:ListBucket", bucket, {**TLS, "s3:prefix": ""})
            assert not allowed(policy, "s3:GetObject", f"{bucket}/elsewhere/file", TLS)
            for action in ("s3:PutBucketPolicy", "s3:DeleteBucket", "s3:PutLifecycleConfiguration",
                           "s3:DeleteObjectVersion", "s3:GetObjectVersion", "s3:PutObjectAcl"):
                assert not allowed(policy, action, bucket, TLS) and not allowed(policy, action, f"{bucket}/x", TLS)


def test_the_operator_reads_writes_and_deletes_its_own_files_of_every_cluster(s3_run: Run) -> None:
    policy = _policies(s3_run)["monitoring-prometheus"]
    for cluster, (bucket, _) in S3_TARGETS.items():
        manifest = _operator_key(cluster, manifest_key(cluster, "20250101T020000Z-full"))
        dump = _operator_key(cluster, backup_prefix(cluster, "20250101T020000Z-full") + "shard-a.archive.gz")
        for key, action in product((manifest, dump), (*OBJECT_ACTIONS, "s3:AbortMultipartUpload")):
            assert allowed(policy, action, _object(bucket, key), TLS), (cluster, action, key)
            assert not allowed(policy, action, _object(bucket, key), CLEAR), (cluster, action, key)
        listing = {**TLS, "s3:prefix": _operator_key(cluster, cluster_prefix(cluster))}
        assert allowed(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", listing)
    # A neighbour in the same bucket with a longer name is not the cluster.
    assert not allowed(policy, "s3:GetObject", _object("acme-shared", "cache/dbfleet/cache-2/x/manifest.json"), TLS)
    assert not allowed(policy, "s3:GetObject", _object("acme-shared", "mongo/pgbackrest/mongo-main/x"), TLS)


def test_the_operator_reads_pgbackrests_repository_but_never_changes_it(s3_run: Run, s3_fleet: Fleet) -> None:
    policy = _policies(s3_run)["monitoring-prometheus"]
    pg = s3_fleet.cluster("pg-main")
    assert isinstance(pg, PostgresCluster)
    repository = repo_path(pg).lstrip("/") + "/"
    assert repository == "pg/pgbackrest/pg-main/"
    segment = _object("acme-pg", repository + "archive/pg-main/15-1/0000000100000000/000000010000000000000003.lz4")
    assert allowed(policy, "s3:GetObject", segment, TLS)
    assert allowed(policy, "s3:ListBucket", "arn:aws:s3:::acme-pg", {**TLS, "s3:prefix": repository + "archive/"})
    assert not allowed(policy, "s3:PutObject", segment, TLS) and not allowed(policy, "s3:DeleteObject", segment, TLS)


def test_postgres_hosts_reach_pgbackrests_repository_and_nothing_else(s3_run: Run, s3_fleet: Fleet) -> None:
    policy = _policies(s3_run)["pg-main-postgres"]
    pg = s3_fleet.cluster("pg-main")
    assert isinstance(pg, PostgresCluster)
    # The prefix granted is the repo1-path the hosts' pgbackrest.conf names (one fact: engines.pgbackrest).
    options = repo_options(pg)
    assert (options["repo1-type"], options["repo1-s3-bucket"]) == ("s3", "acme-pg")
    repository = options["repo1-path"].lstrip("/") + "/"
    for name in ("backup/pg-main/backup.info", "archive/pg-main/15-1/0000000100000000/000000010000000000000003.lz4"):
        for action in OBJECT_ACTIONS:
            assert allowed(policy, action, _object("acme-pg", repository + name), TLS), (action, name)
            assert not allowed(policy, action, _object("acme-pg", repository + name), CLEAR), (action, name)
    # pgBackRest lists below its path with a trailing slash (storageS3ListInternal).
    assert allowed(policy, "s3:ListBucket", "arn:aws:s3:::acme-pg", {**TLS, "s3:prefix": repository + "backup/"})
    assert not allowed(policy, "s3:ListBucket", "arn:aws:s3:::acme-pg", {**TLS, "s3:prefix": "pg/dbfleet/"})
    # Not the operator's record of the backups: a database host cannot rewrite or hide a manifest.
    manifest = _object("acme-pg", _operator_key("pg-main", manifest_key("pg-main", "20250101T020000Z-full")))
    assert not any(allowed(policy, action, manifest, TLS) for action in OBJECT_ACTIONS)
    assert not allowed(policy, "s3:GetObject", _object("acme-shared", "mongo/dbfleet/mongo-main/x"), TLS)


def test_the_fleet_key_only_through_s3_and_only_for_the_granted_buckets(s3_run: Run) -> None:
    key = s3_run.of_type(KEY)[0].state["arn"]
    via_s3 = {"kms:ViaService": "s3.us-east-1.amazonaws.com"}
    buckets = {"monitoring-prometheus": ["arn:aws:s3:::acme-pg", "arn:aws:s3:::acme-shared"],
               "pg-main-postgres": ["arn:aws:s3:::acme-pg"]}
    for role, policy in _policies(s3_run).items():
        for bucket in buckets[role]:
            context = {**via_s3, "kms:EncryptionContext:aws:s3:arn": bucket}
            assert allowed(policy, "kms:GenerateDataKey", key, context) and allowed(policy, "kms:Decrypt", key, context)
            assert not allowed(policy, "kms:Decrypt", key, {**context, "kms:ViaService": "ec2.us-east-1.amazonaws.com"})
            assert not allowed(policy, "kms:Decrypt", "arn:aws:kms:us-east-1:123456789012:key/other", context)
            for action in ("kms:Encrypt", "kms:CreateGrant", "kms:ReEncryptFrom", "kms:ScheduleKeyDeletion"):
                assert not allowed(policy, action, key, context), (role, action)
        elsewhere = {**via_s3, "kms:EncryptionContext:aws:s3:arn": "arn:aws:s3:::someone-elses-bucket"}
        assert not allowed(policy, "kms:Decrypt", key, elsewhere)
        assert not allowed(policy, "kms:Decrypt", key, via_s3)
    pg_only = {**via_s3, "kms:EncryptionContext:aws:s3:arn": "arn:aws:s3:::acme-shared"}
    assert not allowed(_policies(s3_run)["pg-main-postgres"], "kms:Decrypt", key, pg_only)


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
    # ha: patroni: Patroni owns the new replica and it serves the endpoints too; etcd keeps its three members.
    assert grown.outputs["hosts"]["pg-4"]["roles"] == ["postgres", "postgres_replica", "patroni", "haproxy"]


def test_s3_targets_get_their_named_bucket_and_prefix() -> None:
    def s3_target(data: dict[str, Any]) -> None:
        data["clusters"][0]["backup"]["target"] = {"kind": "s3", "bucket": "acme-pg-backups", "prefix": "/pg/main"}

    run = run_program(fleet_variant(s3_target), StackSettings(ssh_public_key="ssh-ed25519 AAAA test"))
    assert sorted(b.state["bucket"] for b in run.of_type("aws:s3/bucket:Bucket")) == ["acme-pg-backups",
                                                                                       "lab-backups-0a1b2c3"]
    assert run.outputs["backups"]["pg-main"] == {"bucket": "acme-pg-backups", "prefix": "pg/main/"}
    policy = _policies(run)["pg-main-postgres"]
    assert allowed(policy, "s3:PutObject", "arn:aws:s3:::acme-pg-backups/pg/main/pgbackrest/pg-main/backup.info", TLS)
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


def test_etcd_and_haproxy_hosts_of_their_own_get_instances_spread_over_the_zones() -> None:
    def own_hosts(data: dict[str, Any]) -> None:
        pg = data["clusters"][0]
        pg["patroni"]["etcd"] = {"hosts": ["etcd-1", "etcd-2", "etcd-3"]}
        pg["endpoints"]["hosts"] = ["proxy-1", "proxy-2"]

    run = run_program(fleet_variant(own_hosts))
    for host in ("etcd-1", "etcd-2", "etcd-3", "proxy-1", "proxy-2"):
        assert run.named(INSTANCE, host), host
    zones = {h: run.outputs["hosts"][h]["zone"] for h in ("etcd-1", "etcd-2", "etcd-3")}
    assert len(set(zones.values())) == 3, f"etcd members share a zone: {zones}"
    assert run.outputs["hosts"]["etcd-1"]["roles"] == ["etcd"]
    groups = set(run.named(INSTANCE, "etcd-2").inputs["vpcSecurityGroupIds"])
    assert "pg-main-etcd-id" in groups and "pg-main-postgres-id" not in groups
