"""MongoDB backups against a real sharded cluster: only with a MongoDB server image or tarball supplied."""

from __future__ import annotations

import os

import pytest
from backup_support import converged_lab, fresh_access

from dbfleet.backups.drills import run_drill
from dbfleet.backups.mongo import MongoBackups
from dbfleet.backups.runner import take_backup

pytestmark = [
    pytest.mark.lab,
    pytest.mark.mongo_server,
    pytest.mark.skipif(not (os.environ.get("DBFLEET_MONGO_IMAGE") or os.environ.get("DBFLEET_MONGO_TARBALL")),
                       reason="no MongoDB server here: set DBFLEET_MONGO_IMAGE (e.g. mongo:7.0) or "
                              "DBFLEET_MONGO_TARBALL to run the sharded backup tests"),
]


def test_sharded_dump_restores_and_leaves_the_balancer_on(request: pytest.FixtureRequest) -> None:
    lab = converged_lab(request)
    access = fresh_access(lab, "mongo-main")
    adapter = MongoBackups()
    client = adapter.client_factory(access)
    try:
        client["app"]["events"].insert_many([{"user_id": i, "ts": i} for i in range(200)])
        backup = take_backup(access, "full", adapter)
        assert {f.key.rsplit("/", 1)[-1] for f in backup.files} == {"cfg.archive.gz", "shard-a.archive.gz",
                                                                      "shard-b.archive.gz"}
        assert client.admin.command("balancerStatus")["mode"] == "full", "the balancer runs again"
        record = run_drill(access, adapter)
        assert record.ok, record.message
    finally:
        client.close()
