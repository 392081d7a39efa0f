"""Redis backups: an RDB snapshot with `redis-cli --rdb` from a replica, restored into a scratch redis-server.

`redis-cli --rdb` asks the server for a full sync, so the snapshot comes from
a replica's fork and the primary does no extra work. It runs on the replica's
own host as the operator's ACL user (`dbfleet_admin`, password
`redis_admin_password`, passed in REDISCLI_AUTH, never argv), over TLS when
the cluster has it (engines.tls: the host's CA checks the server). DBSIZE and the
spec's canary key are read on the same replica around the snapshot and kept in
the manifest, so a drill can tell whether the restored server holds them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dbfleet.backups.access import BackupAccess
from dbfleet.backups.engine import EngineBackups, Prepared, Restored, RestoreTarget
from dbfleet.backups.manifest import Check, Manifest, utcnow
from dbfleet.backups.scratch import SCRATCH_HOST, ScratchHost
from dbfleet.backups.spool import AGE_SUFFIX, CIPHER, decrypt_into_scratch, encrypted_dump, recipient, staged_locally
from dbfleet.engines.credentials import REDIS_ADMIN
from dbfleet.engines.executor import ExecResult
from dbfleet.engines.tls import redis_cli_tls_args
from dbfleet.errors import PermanentError, TemporaryError
from dbfleet.spec import RedisCluster

RDB_NAME = "dump.rdb"
SCRATCH_DIR = "/tmp/redis-restore"
LOAD_TIMEOUT = 600.0

log = logging.getLogger(__name__)


def _redis(cluster: Any) -> RedisCluster:
    if not isinstance(cluster, RedisCluster):
        raise PermanentError(f"{cluster.name} is not a Redis cluster")
    return cluster


def cli(access: BackupAccess, host: str, *args: str, timeout: float = 60) -> ExecResult:
    """redis-cli on `host` against its own server, as the admin ACL user."""
    cluster = _redis(access.cluster)
    argv = ["redis-cli", *redis_cli_tls_args(cluster), "-h", "127.0.0.1", "-p", str(cluster.port),
            "--user", str(REDIS_ADMIN.user), "--no-auth-warning", *args]
    return access.executor.run(host, argv, env={"REDISCLI_AUTH": access.password(REDIS_ADMIN)}, timeout=timeout)


def _roles(access: BackupAccess) -> list[tuple[str, str, str]]:
    """(host, role, master_link_status) of every data node that answers."""
    cluster = _redis(access.cluster)
    answered = []
    for host in [h.name for h in cluster.data_hosts()]:
        try:
            info = cli(access, host, "INFO", "replication")
        except TemporaryError:
            continue
        if not info.ok:
            continue
        fields = dict(line.split(":", 1) for line in info.out.splitlines() if ":" in line)
        answered.append((host, fields.get("role", "").strip(), fields.get("master_link_status", "").strip()))
    return answered


def current_primary(access: BackupAccess) -> str | None:
    """The data node that answers as master now (after a Sentinel failover, not the spec's first host)."""
    return next((host for host, role, _ in _roles(access) if role == "master"), None)


def pick_replica(access: BackupAccess) -> str:
    """A replica whose link to the primary is up; the primary only when no replica is."""
    cluster = _redis(access.cluster)
    answered = _roles(access)
    for host, role, link in answered:
        if role == "slave" and link == "up":
            return host
    for host, role, _ in answered:
        if role == "master":
            return host
    raise TemporaryError("no Redis data node answers", cluster=cluster.name, action="backup")


def ensure_canary(access: BackupAccess, replica: str, timeout: float = 10.0) -> None:
    """Set the spec's canary key on the primary when it is absent (SET NX), then wait until `replica` has it.

    The drill compares the key in the restored server with its value at backup
    time, so a fresh cluster still gets a provable snapshot. A key that exists
    is never overwritten.
    """
    cluster = _redis(access.cluster)
    key = cluster.backup.drill.canary
    if not key or cli(access, replica, "EXISTS", key).out.strip() == "1":
        return
    primary = current_primary(access)
    if primary is None:
        return
    value = f"dbfleet restore-drill canary, set {utcnow().isoformat(timespec='seconds')}"
    if not cli(access, primary, "SET", key, value, "NX").ok:
        log.warning("%s: the canary key %s is absent and could not be set", access.name, key)
        return
    log.info("%s: set the canary key %s for restore drills", access.name, key)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and cli(access, replica, "EXISTS", key).out.strip() != "1":
        time.sleep(0.2)


def _dbsize(result: ExecResult) -> int | None:
    text = result.out.strip()
    return int(text) if result.ok and text.isdigit() else None


class RedisBackups(EngineBackups):
    engine = "redis"
    tool = "redis-cli --rdb"

    def tool_version(self, access: BackupAccess) -> str:
        host = _redis(access.cluster).primary
        return access.executor.check(host, ["redis-cli", "--version"], action="redis-cli --version").out.strip()

    def take(self, access: BackupAccess, pending: Manifest, prepared: Prepared | None = None) -> Manifest:
        cluster = _redis(access.cluster)
        host = pick_replica(access)
        ensure_canary(access, host)
        canary_key = cluster.backup.drill.canary
        before = _dbsize(cli(access, host, "DBSIZE"))
        canary = cli(access, host, "--raw", "GET", canary_key).out.rstrip("\n") if canary_key else None
        snapshot_at = utcnow()
        with encrypted_dump(access, host, pending.id, RDB_NAME) as dump:
            result = cli(access, host, "--rdb", dump.plain_path, timeout=3600)
            if not result.ok:
                raise PermanentError(f"redis-cli --rdb: {result.tail(5)}", cluster=cluster.name, host=host,
                                     action="backup")
        after = _dbsize(cli(access, host, "DBSIZE"))
        return pending.completed(utcnow(), access.storage.measure_many([dump.key]), replica=host,
                                 cipher=CIPHER, recipient=recipient(access),
                                 snapshot_at=snapshot_at.isoformat(), dbsize_before=before, dbsize_after=after,
                                 canary_key=canary_key, canary_value=canary or None)

    def restore(self, access: BackupAccess, backup: Manifest, scratch: ScratchHost, target: RestoreTarget) -> Restored:
        if target.kind != "latest":
            raise PermanentError("Redis restores a snapshot as it is; --to-time and --to-name are PostgreSQL's",
                                 cluster=access.name, action="restore")
        ex = scratch.executor
        ex.check(SCRATCH_HOST, ["install", "-d", "-o", "redis", "-g", "redis", "-m", "0750", SCRATCH_DIR])
        key = backup.files[0].key
        if key.endswith(AGE_SUFFIX):
            decrypt_into_scratch(access, scratch, key, f"{SCRATCH_DIR}/{RDB_NAME}", owner="redis:redis")
        elif access.target_path is not None:  # a snapshot taken before backups were encrypted
            ex.check(SCRATCH_HOST, ["cp", f"{access.target_path.rstrip('/')}/{key}", f"{SCRATCH_DIR}/{RDB_NAME}"])
            ex.check(SCRATCH_HOST, ["chown", "redis:redis", f"{SCRATCH_DIR}/{RDB_NAME}"])
        else:
            with staged_locally(access, key) as local:
                scratch.put_file(local, f"{SCRATCH_DIR}/{RDB_NAME}", owner="redis:redis")
        ex.check(SCRATCH_HOST, ["redis-server", "--port", "6379", "--bind", "127.0.0.1", "--dir", SCRATCH_DIR,
                                "--dbfilename", RDB_NAME, "--appendonly", "no", "--save", "", "--daemonize", "yes",
                                "--logfile", f"{SCRATCH_DIR}/redis.log"], user="redis", action="redis-server")
        deadline = time.monotonic() + LOAD_TIMEOUT
        while time.monotonic() < deadline:
            info = ex.run(SCRATCH_HOST, ["redis-cli", "-p", "6379", "INFO", "persistence"])
            if info.ok and "loading:0" in info.out:
                break
            time.sleep(0.2)
        else:
            log = ex.run(SCRATCH_HOST, ["tail", "-n", "10", f"{SCRATCH_DIR}/redis.log"]).out
            raise PermanentError(f"the restored redis-server did not load the RDB: {log.strip()}",
                                 cluster=access.name, action="restore")
        return Restored(backup.id, backup.started, f"RDB {key} from {backup.detail.get('replica')}")

    def verify(self, access: BackupAccess, backup: Manifest, scratch: ScratchHost, restored: Restored) -> list[Check]:
        ex = scratch.executor
        size = _dbsize(ex.run(SCRATCH_HOST, ["redis-cli", "-p", "6379", "DBSIZE"]))
        bounds = [b for b in (backup.detail.get("dbsize_before"), backup.detail.get("dbsize_after")) if b is not None]
        ok = size is not None and (not bounds or min(bounds) <= size <= max(bounds))
        checks = [Check("DBSIZE", ok, f"{size} keys; the replica had {'..'.join(map(str, bounds)) or '?'} "
                                      "around the snapshot")]
        key = backup.detail.get("canary_key")
        if key:
            want = backup.detail.get("canary_value")
            got = ex.run(SCRATCH_HOST, ["redis-cli", "-p", "6379", "--raw", "GET", key]).out.rstrip("\n") or None
            if want is None:
                checks.append(Check(f"canary {key}", False, "the key did not exist on the source at backup time"))
            else:
                checks.append(Check(f"canary {key}", got == want, f"restored {got!r}, source had {want!r}"))
        return checks
