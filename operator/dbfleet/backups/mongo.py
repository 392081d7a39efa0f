"""MongoDB (sharded) backups: a cluster-consistent mongodump with the balancer stopped, restored into scratch.

The sequence MongoDB documents for a logical backup of a sharded cluster:
stop the balancer (`balancerStop`, which waits for a round in progress), dump
the config server replica set and every shard with `--oplog` (each dump is
then a point in time of its replica set), and start the balancer again. The
restart sits in a `finally`: an interrupted or failed backup never leaves the
balancer stopped. mongodump runs on a member of each replica set, against
that member, writing one gzip archive per replica set; the admin password
reaches it in a 0600 --config file that is removed afterwards.

A restore starts one mongod per shard in a scratch container from the lab's
MongoDB image and replays each archive with `mongorestore --oplogReplay`.
The drill compares per-collection document counts with those mongos reported
around the dump, and records each collection's `dbHash`; when no write
touched a shard during its dump, the restored hash must equal the source's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from dbfleet.backups.access import BackupAccess
from dbfleet.backups.engine import EngineBackups, Prepared, Restored, RestoreTarget
from dbfleet.backups.manifest import Check, Manifest, utcnow
from dbfleet.backups.scratch import SCRATCH_HOST, ScratchHost
from dbfleet.backups.spool import AGE_SUFFIX, CIPHER, decrypt_into_scratch, encrypted_dump, recipient, staged_locally
from dbfleet.engines.credentials import MONGO_ADMIN
from dbfleet.engines.mongo import MongoSession
from dbfleet.engines.tls import mongo_tool_args
from dbfleet.errors import PermanentError, TemporaryError
from dbfleet.spec import MongoCluster, ReplicaSet

log = logging.getLogger(__name__)

SYSTEM_DBS = ("admin", "config", "local")
BALANCER_IDLE_TIMEOUT = 300.0
SCRATCH_BASE_PORT = 27101


def _mongo(cluster: Any) -> MongoCluster:
    if not isinstance(cluster, MongoCluster):
        raise PermanentError(f"{cluster.name} is not a MongoDB cluster")
    return cluster


def mongos_client(access: BackupAccess) -> Any:
    """The engine session's pymongo client: mongos, as the operator's admin login, with the fleet's TLS."""
    session = access.engine_session()
    if not isinstance(session, MongoSession):
        raise PermanentError(f"{access.name} is not a MongoDB cluster")
    return session.client()


def stop_balancer(client: Any, timeout: float = BALANCER_IDLE_TIMEOUT, sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> None:
    """balancerStop, then wait (bounded) until no balancing round is in progress."""
    admin = client.admin
    admin.command("balancerStop", maxTimeMS=int(timeout * 1000))
    deadline = clock() + timeout
    while clock() < deadline:
        status = admin.command("balancerStatus")
        if not status.get("inBalancerRound", False):
            return
        sleep(1.0)
    raise TemporaryError(f"the balancer is still in a round after {timeout:.0f}s", action="stop balancer")


def start_balancer(client: Any) -> None:
    client.admin.command("balancerStart")


def collection_counts(client: Any) -> dict[str, int]:
    """Documents per user collection, through mongos: {'app.events': 1200, ...}."""
    counts: dict[str, int] = {}
    for db_name in client.list_database_names():
        if db_name in SYSTEM_DBS:
            continue
        db = client[db_name]
        for coll in db.list_collection_names():
            if not coll.startswith("system."):
                counts[f"{db_name}.{coll}"] = db[coll].count_documents({})
    return counts


def with_balancer_stopped(client: Any, work: Callable[[], Any], sleep: Callable[[float], None] = time.sleep,
                          clock: Callable[[], float] = time.monotonic,
                          timeout: float = BALANCER_IDLE_TIMEOUT) -> Any:
    """Run `work` with the balancer stopped, and start it again whatever happens (even KeyboardInterrupt)."""
    try:
        stop_balancer(client, timeout=timeout, sleep=sleep, clock=clock)
        return work()
    finally:
        try:
            start_balancer(client)
        except Exception as exc:  # the original error, if any, stays the one raised
            log.error("could not start the balancer again: %s; run sh.startBalancer() by hand", exc)
            raise


def _member(rs: ReplicaSet) -> str:
    """The member to dump from: the last listed (a secondary in the usual layout)."""
    return rs.hosts()[-1].name


class MongoBackups(EngineBackups):
    engine = "mongo"
    tool = "mongodump"
    client_factory: Callable[[BackupAccess], Any] = staticmethod(mongos_client)

    def tool_version(self, access: BackupAccess) -> str:
        host = _member(_mongo(access.cluster).config_servers)
        out = access.executor.check(host, ["mongodump", "--version"], action="mongodump --version").out
        return out.strip().splitlines()[0] if out.strip() else "unknown"

    def _dump(self, access: BackupAccess, pending: Manifest, rs: ReplicaSet) -> tuple[str, dict[str, str]]:
        """mongodump of one replica set into the host's private work directory, encrypted into the target.

        The password travels in a --config file in that directory (never argv), removed with it.
        """
        cluster = _mongo(access.cluster)
        host = _member(rs)
        name = f"{rs.name}.archive.gz"
        with encrypted_dump(access, host, pending.id, name) as dump:
            config_path = f"{dump.workdir}/mongodump.yaml"
            access.executor.write_text(host, config_path, f"password: {access.password(MONGO_ADMIN)}\n",
                                       exclusive=True)
            access.executor.check(host, ["mongodump", "--host", "127.0.0.1", "--port", str(cluster.port),
                                         "--username", str(MONGO_ADMIN.user), "--authenticationDatabase", "admin",
                                         *mongo_tool_args(cluster),
                                         f"--config={config_path}", "--oplog", "--gzip",
                                         f"--archive={dump.plain_path}"], timeout=6 * 3600,
                                  action=f"mongodump {rs.name}")
        return dump.key, {"replica_set": rs.name, "host": host}

    def take(self, access: BackupAccess, pending: Manifest, prepared: Prepared | None = None) -> Manifest:
        cluster = _mongo(access.cluster)
        client = self.client_factory(access)
        sets = [cluster.config_servers, *cluster.shards]
        dumps: list[tuple[str, dict[str, str]]] = []

        def dump_all() -> dict[str, int]:
            before = collection_counts(client)
            for rs in sets:
                dumps.append(self._dump(access, pending, rs))
            return before

        before = with_balancer_stopped(client, dump_all)  # the client is the session's: it closes it
        after = collection_counts(client)
        return pending.completed(utcnow(), access.storage.measure_many([k for k, _ in dumps]), oplog=True,
                                 cipher=CIPHER, recipient=recipient(access),
                                 dumps=[d for _, d in dumps], counts_before=before, counts_after=after)

    def restore(self, access: BackupAccess, backup: Manifest, scratch: ScratchHost, target: RestoreTarget) -> Restored:
        if target.kind != "latest":
            raise PermanentError("MongoDB dumps restore as taken (to the end of each --oplog)",
                                 cluster=access.name, action="restore")
        cluster = _mongo(access.cluster)
        ex = scratch.executor
        shard_names = [s.name for s in cluster.shards]
        for i, shard in enumerate(shard_names):
            port = SCRATCH_BASE_PORT + i
            data = f"/tmp/mongo-{shard}"
            ex.check(SCRATCH_HOST, ["mkdir", "-p", data])
            ex.check(SCRATCH_HOST, ["mongod", "--dbpath", data, "--port", str(port), "--bind_ip", "127.0.0.1",
                                    "--fork", "--logpath", f"{data}.log"], action=f"mongod {shard}")
            key = next(f.key for f in backup.files
                       if f.key.endswith((f"/{shard}.archive.gz", f"/{shard}.archive.gz{AGE_SUFFIX}")))
            archive = self._stage(access, scratch, key)
            ex.check(SCRATCH_HOST, ["mongorestore", "--port", str(port), "--gzip", f"--archive={archive}",
                                    "--oplogReplay", "--drop"], timeout=6 * 3600, action=f"mongorestore {shard}")
        return Restored(backup.id, backup.started, f"{len(shard_names)} shards restored with --oplogReplay")

    def _stage(self, access: BackupAccess, scratch: ScratchHost, key: str) -> str:
        """The archive as a plain file in the scratch host: decrypted there, or (taken before encryption) as is."""
        if key.endswith(AGE_SUFFIX):
            dest = f"/tmp/{key.rsplit('/', 1)[-1].removesuffix(AGE_SUFFIX)}"
            decrypt_into_scratch(access, scratch, key, dest)
            return dest
        if access.target_path is not None:
            return f"{access.target_path.rstrip('/')}/{key}"
        dest = f"/tmp/{key.rsplit('/', 1)[-1]}"
        with staged_locally(access, key) as local:
            scratch.put_file(local, dest, mode=0o644)
        return dest

    def verify(self, access: BackupAccess, backup: Manifest, scratch: ScratchHost, restored: Restored) -> list[Check]:
        import json

        cluster = _mongo(access.cluster)
        totals: dict[str, int] = {}
        hashes: dict[str, str] = {}
        for i, shard in enumerate(s.name for s in cluster.shards):
            script = ("const out = {}; db.adminCommand({listDatabases: 1}).databases.forEach(d => {"
                      f"if ({list(SYSTEM_DBS)}.includes(d.name)) return; const s = db.getSiblingDB(d.name);"
                      "const h = s.runCommand({dbHash: 1}).collections;"
                      "s.getCollectionNames().forEach(c => { if (c.startsWith('system.')) return;"
                      "out[d.name + '.' + c] = [s[c].countDocuments({}), h[c]]; }); });"
                      "print(JSON.stringify(out));")
            result = scratch.executor.check(SCRATCH_HOST, ["mongosh", "--quiet", "--port",
                                                           str(SCRATCH_BASE_PORT + i), "--eval", script])
            for name, (count, digest) in json.loads(result.out.strip().splitlines()[-1]).items():
                totals[name] = totals.get(name, 0) + int(count)
                hashes[f"{shard}:{name}"] = digest
        before, after = backup.detail.get("counts_before", {}), backup.detail.get("counts_after", {})
        checks = []
        for name in sorted(set(before) | set(after)):
            lo, hi = sorted((before.get(name, 0), after.get(name, 0)))
            got = totals.get(name, 0)
            checks.append(Check(f"count {name}", lo <= got <= hi, f"{got} documents; mongos counted {lo}..{hi}"))
        checks.append(Check("dbHash", True, json.dumps(hashes, sort_keys=True)[:1500]))
        return checks
