"""PostgreSQL backups through pgBackRest: backup, info, expire, restore into scratch, verify.

pgBackRest is configured on every PostgreSQL host by the playbooks (stanza =
cluster name, pgbackrest.conf from dbfleet.engines.pgbackrest, WAL archived by
archive_command). The operator only runs its commands, as the postgres user,
on the current primary (the engine session's topology names it): `backup --annotation=dbfleet-id=<id>` ties pgBackRest's
label to our manifest; `info --output=json` gives type, LSNs, WAL range and
sizes; the repository files of the set (and the WAL it needs to be
consistent) are then hashed into the manifest.

A restore never touches the live cluster: a scratch container from the lab's
PostgreSQL image mounts the repository read-only, `pgbackrest restore` writes
a fresh data directory there with pgBackRest's restore_command, and PostgreSQL
replays WAL up to the target and promotes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dbfleet.backups.access import BackupAccess
from dbfleet.backups.engine import EngineBackups, Prepared, Restored, RestoreTarget
from dbfleet.backups.manifest import GOOD, Check, Manifest, newest_first, parse_time, utcnow
from dbfleet.backups.retention import Expiry
from dbfleet.backups.scratch import SCRATCH_HOST, ScratchHost
from dbfleet.engines.base import AnyCluster
from dbfleet.engines.executor import CommandFailed, ExecResult
from dbfleet.engines.pgbackrest import CIPHER_PASS_ENV, CIPHER_TYPE, RETENTION_FULL, repo_prefix, scratch_config
from dbfleet.engines.postgres import pg_paths
from dbfleet.errors import PermanentError, TemporaryError
from dbfleet.secrets import BACKUP_CIPHER_PASS
from dbfleet.spec import PostgresCluster, S3Target

log = logging.getLogger(__name__)

SCRATCH_PGDATA = "/var/lib/postgresql/dbfleet-restore"
SCRATCH_SOCKET = "/tmp"
MAX_RETENTION = RETENTION_FULL
"""pgBackRest's maximum retention: set while expiring by hand so nothing else expires with it."""
S3_CA_ENV = "DBFLEET_S3_CA_FILE"
"""A CA certificate the scratch's pgBackRest trusts for an S3 endpoint with a private CA (the test server)."""
RECOVERY_TIMEOUT = float(os.environ.get("DBFLEET_RECOVERY_TIMEOUT", "1800"))


def _pg(cluster: AnyCluster) -> PostgresCluster:
    if not isinstance(cluster, PostgresCluster):
        raise PermanentError(f"{cluster.name} is not a PostgreSQL cluster")
    return cluster


def canary_location(cluster: PostgresCluster) -> tuple[str, str] | None:
    """(database, schema.table) of the spec's canary: 'db.schema.table', or 'schema.table' in the first database."""
    canary = cluster.backup.drill.canary
    if not canary:
        return None
    parts = canary.split(".")
    if len(parts) == 3:
        return parts[0], f"{parts[1]}.{parts[2]}"
    return cluster.databases[0], canary


def psql(access: BackupAccess, host: str, sql: str, database: str = "postgres", port: int | None = None,
         socket: str | None = None) -> ExecResult:
    argv = ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql]
    if port is not None:
        argv[1:1] = ["-p", str(port)]
    if socket is not None:
        argv[1:1] = ["-h", socket]
    return access.executor.run(host, argv, user="postgres", timeout=600)


def find_primary(access: BackupAccess, fresh: bool = False) -> str:
    """The primary as the engine session's topology has it (read again when `fresh`)."""
    return access.primary(fresh)


def pgbackrest(access: BackupAccess, host: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 6 * 3600) -> ExecResult:
    argv = ["pgbackrest", f"--stanza={access.name}", *args]
    return access.executor.check(host, argv, user="postgres", env=env, timeout=timeout,
                                 action=f"pgbackrest {args[-1]}")


def stanza_info(access: BackupAccess, host: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return _stanza(access, pgbackrest(access, host, "--output=json", "info", env=env, timeout=600).out)


def _stanza(access: BackupAccess, out: str) -> dict[str, Any]:
    try:
        stanzas = json.loads(out)
    except json.JSONDecodeError as exc:
        raise PermanentError(f"pgbackrest info printed no JSON ({exc}): {out[:200]}", cluster=access.name) from None
    stanza = next((s for s in stanzas if s.get("name") == access.name), None)
    if not isinstance(stanza, dict):
        raise PermanentError(f"pgbackrest info has no stanza {access.name}", cluster=access.name)
    return stanza


def count_rows(access: BackupAccess, host: str, port: int | None = None, socket: str | None = None) -> int | None:
    """Rows in the spec's canary table, or None when the spec names none or the table is absent."""
    where = canary_location(_pg(access.cluster))
    if where is None:
        return None
    database, table = where
    result = psql(access, host, f"select count(*) from {table}", database, port=port, socket=socket)
    return int(result.out.strip()) if result.ok else None


def canary_count_sql(cluster: PostgresCluster) -> tuple[str, str] | None:
    """(database, query) counting the canary's rows, or None when the spec names no canary."""
    where = canary_location(cluster)
    return None if where is None else (where[0], f"select count(*) from {where[1]}")


BACKUP_SCRIPT = r"""
out=$(psql -XAtq -v ON_ERROR_STOP=1 -p "$1" -d "$2" -c "select pg_is_in_recovery()" ${3:+-c "$3"} 2>&1); rc=$?
case $(printf '%s\n' "$out" | sed -n 1p) in
  t) echo "dbfleet-refused: in recovery"; exit 3 ;;
  f) if [ -n "$3" ]; then
       [ $rc = 0 ] || { echo "dbfleet-refused: canary absent"; exit 3; }
       echo "dbfleet-rows-before: $(printf '%s\n' "$out" | sed -n 2p)"
     fi ;;
  *) state=$(psql -XAtq -v ON_ERROR_STOP=1 -p "$1" -d postgres -c "select pg_is_in_recovery()" 2>&1) || {
       echo "dbfleet-refused: the server does not answer: $state"; exit 3; }
     [ "$state" = f ] || { echo "dbfleet-refused: in recovery"; exit 3; }
     [ -z "$3" ] || { echo "dbfleet-refused: canary absent"; exit 3; } ;;
esac
port=$1 database=$2 query=$3 stanza=$4
shift 4
start=$(date +%s%N)
pgbackrest --stanza="$stanza" "$@" || exit $?
echo "dbfleet-tool-ms: $(( ($(date +%s%N) - start) / 1000000 ))"
if [ -n "$query" ]; then
  after=$(mktemp) || exit 1
  trap 'rm -f "$after"' EXIT
  psql -XAtq -v ON_ERROR_STOP=1 -p "$port" -d "$database" -c "$query" > "$after" 2>/dev/null &
fi
info=$(pgbackrest --stanza="$stanza" --output=json info); rc=$?
if [ -n "$query" ]; then wait; echo "dbfleet-rows-after: $(cat "$after")"; fi
[ $rc = 0 ] || exit $rc
echo "dbfleet-info:"
printf '%s\n' "$info"
"""
"""The backup in one round trip: on the primary only (one psql call also counts the canary), pgbackrest
with the remaining arguments, timed on the host, then the canary's rows again beside `pgbackrest info`.
Arguments: port, canary database, count query ('' for none), stanza, pgbackrest's arguments. A refusal
prints 'dbfleet-refused: why' before pgbackrest has run."""
REFUSED = "dbfleet-refused: "
CANARY_ABSENT = "canary absent"
INFO_MARK = "dbfleet-info:\n"


SCRATCH_LIBRARIES = ("pg_stat_statements",)
"""Loaded on every dbfleet PostgreSQL server (postgres_server's postgres_preload_libraries); pgaudit too when the
cluster audits."""


def scratch_server_conf(cluster: PostgresCluster) -> str:
    """postgresql.conf for a restored copy in a scratch host (Debian keeps the real one in /etc, so the restored
    directory has none). It preloads what the cluster's servers preload: a database whose pgaudit extension
    exists refuses DDL (pg_amcheck's CREATE EXTENSION amcheck) unless pgaudit is loaded."""
    libraries = [*SCRATCH_LIBRARIES, *(["pgaudit"] if cluster.audit is not None else [])]
    return (f"port = 5432\nlisten_addresses = 'localhost'\nunix_socket_directories = '{SCRATCH_SOCKET}'\n"
            f"archive_mode = off\nssl = off\nhot_standby = on\nshared_preload_libraries = '{','.join(libraries)}'\n")


@dataclass(frozen=True)
class BackupRun:
    """What the backup script printed, parsed."""

    result: ExecResult
    host: str
    stanza: dict[str, Any]
    """`pgbackrest info` of the stanza, right after the backup."""
    rows_before: int | None
    rows_after: int | None
    tool_seconds: float
    """pgBackRest's own run, timed on the host."""


def probe_primary(access: BackupAccess, fresh: bool = False) -> tuple[str, str]:
    """(primary host, pgBackRest version): the topology's primary, and `pgbackrest version` run there."""
    host = find_primary(access, fresh)
    result = access.executor.run(host, ["pgbackrest", "version"], user="postgres", timeout=600)
    if not result.ok:
        raise TemporaryError(f"pgbackrest version failed: {result.tail(1)}", cluster=access.name, host=host,
                             action="find primary")
    return host, result.out.strip()


def backup_on_primary(access: BackupAccess, host: str, args: list[str]) -> BackupRun:
    """Run `pgbackrest --stanza=<cluster> <args>` on the primary in one call, from `host` (the last known primary).

    When `host` is not the primary any more, the topology is read again and
    the backup starts on the primary it names; a missing canary table is
    created first.
    """
    cluster = _pg(access.cluster)
    database, query = canary_count_sql(cluster) or ("postgres", "")
    why = ""
    for _ in range(3):
        argv = ["sh", "-c", BACKUP_SCRIPT, "backup", str(cluster.port), database, query, cluster.name, *args]
        try:
            ran = access.executor.run(host, argv, user="postgres", timeout=6 * 3600)
        except TemporaryError as exc:
            why = f"{host}: {exc.message}"
            host = find_primary(access, fresh=True)
            continue
        first = ran.out.lstrip().partition("\n")[0]
        if not first.startswith(REFUSED):
            return _parsed(access, ran, host)
        why = f"{host}: {first[len(REFUSED):]}"
        if first.endswith(CANARY_ABSENT):
            if not create_canary(access, host, cluster.port):
                # Back up without the canary rather than not at all; the drill then says it is missing.
                database, query = "postgres", ""
        else:
            log.info("%s: %s; looking for the primary", cluster.name, why)
            host = find_primary(access, fresh=True)
    raise TemporaryError(f"could not start the backup on the primary ({why})", cluster=cluster.name,
                         action="backup")


def _parsed(access: BackupAccess, ran: ExecResult, host: str) -> BackupRun:
    log_text, marked, info = ran.out.partition(INFO_MARK)
    timed = re.search(r"^dbfleet-tool-ms: (\d+)$", log_text, re.M)
    if not ran.ok or not marked:
        action = "pgbackrest info" if timed else "pgbackrest backup"
        raise CommandFailed(f"{action} exited {ran.rc}: {ran.tail()}", result=ran, host=host, cluster=access.name,
                            action=action)

    def rows(label: str) -> int | None:
        found = re.search(rf"^dbfleet-rows-{label}: (\d+)$", log_text, re.M)
        return int(found.group(1)) if found else None

    return BackupRun(ran, host, _stanza(access, info), rows("before"), rows("after"),
                     int(timed.group(1)) / 1000 if timed else ran.seconds)


def create_canary(access: BackupAccess, host: str, port: int) -> bool:
    """Create the canary table with one row when it does not exist yet; False when it could not be made.

    The drill counts its rows in the restored server, so a fresh cluster whose
    application has not made it yet still gets a provable backup. A table that
    exists is never written to: its rows are the application's.
    """
    where = canary_location(_pg(access.cluster))
    if where is None:
        return False
    database, table = where
    schema = f"create schema if not exists {table.split('.')[0]}; " if "." in table else ""
    result = psql(access, host, f"{schema}create table if not exists {table} (id bigserial primary key, "
                  "written_at timestamptz not null default now(), note text); "
                  f"insert into {table}(note) select 'dbfleet restore-drill canary' "
                  f"where not exists (select 1 from {table})", database, port=port)
    if result.ok:
        log.info("%s: created the canary table %s.%s with one row for restore drills", access.name, database, table)
        return True
    log.warning("%s: the canary table %s.%s is absent and could not be created: %s", access.name, database,
                table, result.tail(2))
    return False


def set_prefix(cluster: str, label: str) -> str:
    """Where one backup set's files sit in the target."""
    return f"{repo_prefix(cluster)}backup/{cluster}/{label}/"


PGBACKREST_KINDS = ("full", "diff", "incr")


def backup_args(pending: Manifest, repo: int) -> list[str]:
    """pgbackrest's arguments for the pending backup into one repository (its own retention: dbfleet expires)."""
    return [f"--repo={repo}", f"--type={pending.kind}", "--no-expire-auto", f"--annotation=dbfleet-id={pending.id}",
            "backup"]


def _repo_key(entry: dict[str, Any]) -> int:
    """The repository an `info` backup or archive entry is in (pgBackRest names it from 2.33; 1 before)."""
    key = (entry.get("database") or {}).get("repo-key", 1)
    return key if isinstance(key, int) else 1


def _wal_between(access: BackupAccess, archive_id: str, start: str, stop: str) -> list[str]:
    """Keys of the archived WAL segments a backup needs to be consistent (start..stop inclusive)."""
    prefix = f"{repo_prefix(access.name)}archive/{access.name}/{archive_id}/{start[:16]}"
    keys = []
    for obj in access.storage.list(prefix):
        name = obj.key.rsplit("/", 1)[-1]
        segment = name[:24]
        if len(segment) == 24 and start <= segment <= stop and not name.endswith(".backup"):
            keys.append(obj.key)
    return keys


class PostgresBackups(EngineBackups):
    engine = "postgres"
    tool = "pgbackrest"

    def tool_version(self, access: BackupAccess) -> str:
        return probe_primary(access)[1]

    def prepare(self, access: BackupAccess, history: Sequence[Manifest] | None = None) -> Prepared:
        """The primary from the session's topology (read once per cycle anyway) and the last backup's
        pgBackRest version, so a backup is one round trip; `pgbackrest version` runs only before the first
        backup. The completed manifest carries the version pgBackRest reports for the backup itself."""
        known = tuple(access.storage.manifests(access.name) if history is None else history)
        last = next((m for m in newest_first(known) if m.tool_version and m.status in GOOD), None)
        if last is not None:
            return Prepared(last.tool_version, {"host": find_primary(access)}, known)
        host, version = probe_primary(access)
        return Prepared(version, {"host": host}, known)

    def take(self, access: BackupAccess, pending: Manifest, prepared: Prepared | None = None) -> Manifest:
        prepared = prepared or self.prepare(access)
        run = backup_on_primary(access, prepared.facts["host"], backup_args(pending, access.repo))
        return self._completed(access, pending, run, prepared.history, prepared.tool_version)

    def copy_to_dr(self, access: BackupAccess, dr: BackupAccess, pending: Manifest, done: Manifest,
                   prepared: Prepared) -> Manifest:
        """The same backup kind again, into the second repository (repo2, in dr.target), annotated with the same
        id: pgBackRest 2.x backs up one repository per command, and each repository keeps its own chain of
        full, diff and incr (a diff with no full in repo2 yet becomes a full there: the second target's manifest
        then says full, as `pgbackrest info` does for repo2, under the same id)."""
        run = backup_on_primary(dr, done.host or prepared.facts["host"], backup_args(pending, dr.repo))
        return self._completed(dr, pending, run, tuple(dr.storage.manifests(dr.name)), prepared.tool_version)

    def _completed(self, access: BackupAccess, pending: Manifest, run: BackupRun, history: Sequence[Manifest],
                   tool_version: str) -> Manifest:
        """The complete manifest of the backup `run` took into access's repository, its files measured there."""
        cluster = _pg(access.cluster)
        host, stanza = run.host, run.stanza
        entry = next((b for b in stanza.get("backup", []) if (b.get("annotation") or {}).get("dbfleet-id")
                      == pending.id and _repo_key(b) == access.repo), None)
        if entry is None:
            raise PermanentError(f"pgbackrest reports no backup annotated dbfleet-id={pending.id} in repo"
                                 f"{access.repo}", cluster=cluster.name, host=host, action="backup")
        label = entry["label"]
        prefix = set_prefix(cluster.name, label)
        files = access.storage.measure_prefix(prefix)
        if not files:
            raise PermanentError(f"backup set {label} has no files under {prefix} in "
                                 f"{access.storage.description}; is repo{access.repo}-path "
                                 f"<target>/{repo_prefix(cluster.name)}?", cluster=cluster.name, action="backup")
        archive_id = next((a["id"] for a in stanza.get("archive", [])
                           if a.get("database", {}).get("id") == entry["database"]["id"]
                           and _repo_key(a) == access.repo), None)
        if archive_id:
            files += access.storage.measure_many(_wal_between(access, archive_id, entry["archive"]["start"],
                                                              entry["archive"]["stop"]))
        kind = entry["type"]
        if kind not in PGBACKREST_KINDS:
            raise PermanentError(f"pgbackrest info gives backup {label} the type {str(kind)[:40]!r}",
                                 cluster=cluster.name, host=host, action="backup")
        parent = self._parent_id(history, entry.get("prior"))
        stop = datetime.fromtimestamp(entry["timestamp"]["stop"], UTC)
        # The kind is what pgBackRest took in this repository: a diff or incr with no full there yet is a full
        # (so in repo2 after the first target's chain began), and retention counts chains by kind.
        done = replace(pending, kind=kind).completed(
            utcnow(), files, host=host, label=label, type=entry["type"], prior=entry.get("prior"),
            lsn_start=entry["lsn"]["start"], lsn_stop=entry["lsn"]["stop"],
            wal_start=entry["archive"]["start"], wal_stop=entry["archive"]["stop"], archive_id=archive_id,
            pgbackrest_start=entry["timestamp"]["start"], pgbackrest_stop=entry["timestamp"]["stop"],
            recoverable_to=stop.isoformat(), database_size=entry["info"]["size"],
            repo_size=entry["info"]["repository"]["size"], canary_rows_before=run.rows_before,
            canary_rows_after=run.rows_after, tool_seconds=round(run.tool_seconds, 3), cipher=CIPHER_TYPE,
            repo=access.repo,
        )
        version = (entry.get("backrest") or {}).get("version")
        return replace(done, host=host, parent=parent,
                       tool_version=f"pgBackRest {version}" if version else tool_version)

    @staticmethod
    def _parent_id(history: Sequence[Manifest], prior_label: str | None) -> str | None:
        """Our id of the backup pgBackRest names as this one's prior (diff and incr)."""
        return next((m.id for m in history if prior_label and m.detail.get("label") == prior_label), None)

    def delete(self, access: BackupAccess, expiries: list[Expiry]) -> list[str]:
        """`pgbackrest expire --set` for each chosen root, then WAL older than the oldest remaining full."""
        host = find_primary(access)
        labels: set[str] = set()
        stanza = stanza_info(access, host)
        repo = access.repo
        present = {b["label"] for b in stanza.get("backup", []) if _repo_key(b) == repo}
        done = []
        for expiry in expiries:
            label = expiry.backup.detail.get("label")
            if expiry.root == expiry.backup.id and isinstance(label, str) and label in present:
                pgbackrest(access, host, f"--repo={repo}", f"--set={label}", f"--repo{repo}-retention-full="
                           f"{MAX_RETENTION}", f"--repo{repo}-retention-archive={MAX_RETENTION}", "expire")
                labels.add(label)
        remaining_fulls = [b for b in stanza_info(access, host).get("backup", []) if b["type"] == "full"
                           and _repo_key(b) == repo]
        if labels and remaining_fulls:
            # Counting exactly the fulls left expires no backup, only WAL no remaining backup needs.
            pgbackrest(access, host, f"--repo={repo}", f"--repo{repo}-retention-full={len(remaining_fulls)}",
                       "expire")
        for expiry in expiries:
            count = access.storage.delete_prefix(f"dbfleet/{access.name}/{expiry.backup.id}/")
            label = expiry.backup.detail.get("label") or "-"
            done.append(f"{expiry.backup.id} (pgbackrest {label}): expired, {count} dbfleet files")
        return done

    # -- restore -----------------------------------------------------------------

    def choose_backup(self, manifests: list[Manifest], target: RestoreTarget) -> Manifest:
        """The backup a restore starts from: for a time, the newest good one that finished before it."""
        good = [m for m in newest_first(manifests) if m.status in GOOD]
        if target.kind == "time" and target.value:
            when = parse_time(target.value)
            assert when is not None
            good = [m for m in good if m.finished and m.finished <= when]
        if not good:
            raise PermanentError(f"no good backup to restore {target.describe()} from")
        return good[0]

    def repo_config(self, access: BackupAccess, scratch: ScratchHost) -> tuple[str, dict[str, str]]:
        """pgbackrest.conf for the scratch host, and the environment carrying any S3 credentials."""
        cluster = _pg(access.cluster)
        if not isinstance(cluster.backup.target, S3Target):
            return scratch_config(cluster, SCRATCH_PGDATA, SCRATCH_SOCKET), self.repo_env(access)
        ca = os.environ.get(S3_CA_ENV) or os.environ.get("AWS_CA_BUNDLE")
        if ca:
            scratch.put_file(Path(ca), "/tmp/s3-ca.pem", owner="postgres", mode=0o644)
        config = scratch_config(cluster, SCRATCH_PGDATA, SCRATCH_SOCKET, "/tmp/s3-ca.pem" if ca else None)
        return config, self.repo_env(access)

    @staticmethod
    def repo_env(access: BackupAccess) -> dict[str, str]:
        """What pgBackRest in a scratch host needs besides its config: the passphrase, and S3 credentials."""
        env = {CIPHER_PASS_ENV: access.secret(BACKUP_CIPHER_PASS)}
        if isinstance(access.cluster.backup.target, S3Target):
            env.update(access.tool_s3_env("PGBACKREST_REPO1_S3_"))
        return env

    def restore(self, access: BackupAccess, backup: Manifest, scratch: ScratchHost, target: RestoreTarget) -> Restored:
        ex = scratch.executor
        config, env = self.repo_config(access, scratch)
        ex.check(SCRATCH_HOST, ["mkdir", "-p", "/etc/pgbackrest"])
        ex.write_text(SCRATCH_HOST, "/etc/pgbackrest/pgbackrest.conf", config, mode="0644")
        ex.check(SCRATCH_HOST, ["install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", SCRATCH_PGDATA])
        args = [f"--set={backup.detail['label']}"]
        if target.kind in ("time", "name"):
            value = target.value or ""
            if target.kind == "time":
                # PostgreSQL's recovery_target_time wants '2026-11-25 02:00:00.5+00', not ISO's T and Z.
                when = parse_time(value)
                assert when is not None
                value = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
            args += [f"--type={target.kind}", f"--target={value}", "--target-action=promote"]
        self._scratch_pgbackrest(access, scratch, *args, "restore", env=env)
        # Debian keeps postgresql.conf in /etc, so the restored directory has none: give it a minimal one.
        ex.write_text(SCRATCH_HOST, f"{SCRATCH_PGDATA}/postgresql.conf", scratch_server_conf(_pg(access.cluster)),
                      owner="postgres")
        ex.write_text(SCRATCH_HOST, f"{SCRATCH_PGDATA}/pg_hba.conf", "local all all trust\n", owner="postgres")
        ex.write_text(SCRATCH_HOST, f"{SCRATCH_PGDATA}/pg_ident.conf", "", owner="postgres")
        # Command-line settings beat postgresql.auto.conf, which may carry the source's ALTER SYSTEM values.
        opts = f"-c port=5432 -c unix_socket_directories={SCRATCH_SOCKET} -c ssl=off -c archive_mode=off"
        pg_ctl = f"{pg_paths(_pg(access.cluster)).bin_dir}/pg_ctl"
        started = ex.run(SCRATCH_HOST, [pg_ctl, "-D", SCRATCH_PGDATA, "-l", "/tmp/postgres.log", "-w",
                                        "-t", str(int(RECOVERY_TIMEOUT)), "-o", opts, "start"],
                         user="postgres", env=env, timeout=RECOVERY_TIMEOUT + 30)
        if not started.ok:
            raise PermanentError("restored server did not start: " + self._server_log(scratch),
                                 cluster=access.name, action="restore")
        self._wait_promoted(access, scratch)
        replayed = psql(access_for_scratch(access, scratch), SCRATCH_HOST,
                        "select coalesce(extract(epoch from pg_last_xact_replay_timestamp()), 0)",
                        socket=SCRATCH_SOCKET)
        stop = parse_time(backup.detail.get("recoverable_to")) or backup.finished
        points = [p for p in (stop, _epoch(replayed.out)) if p is not None]
        return Restored(backup.id, max(points) if points else None,
                        f"pgbackrest set {backup.detail['label']}, {target.describe()}")

    def _scratch_pgbackrest(self, access: BackupAccess, scratch: ScratchHost, *args: str,
                            env: dict[str, str] | None = None, timeout: float = 6 * 3600) -> ExecResult:
        return scratch.executor.check(SCRATCH_HOST, ["pgbackrest", f"--stanza={access.name}", *args],
                                      user="postgres", env=env, timeout=timeout, action=f"pgbackrest {args[-1]}")

    def _server_log(self, scratch: ScratchHost) -> str:
        tail = scratch.executor.run(SCRATCH_HOST, ["tail", "-n", "15", "/tmp/postgres.log"])
        return tail.out.strip()

    def _wait_promoted(self, access: BackupAccess, scratch: ScratchHost) -> None:
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while time.monotonic() < deadline:
            result = psql(access_for_scratch(access, scratch), SCRATCH_HOST, "select pg_is_in_recovery()",
                          socket=SCRATCH_SOCKET)
            if result.ok and result.out.strip() == "f":
                return
            pg_ctl = f"{pg_paths(_pg(access.cluster)).bin_dir}/pg_ctl"
            alive = scratch.executor.run(SCRATCH_HOST, [pg_ctl, "-D", SCRATCH_PGDATA, "status"],
                                         user="postgres")
            if not alive.ok:
                raise PermanentError("recovery stopped the server: " + self._server_log(scratch),
                                     cluster=access.name, action="restore")
            time.sleep(0.5)
        raise PermanentError(f"recovery did not finish within {RECOVERY_TIMEOUT:.0f}s", cluster=access.name,
                             action="restore")

    # -- verification --------------------------------------------------------------

    def verify(self, access: BackupAccess, backup: Manifest, scratch: ScratchHost, restored: Restored) -> list[Check]:
        checks = []
        try:
            out = self._scratch_pgbackrest(access, scratch, "--output=text", "verify", env=self.repo_env(access))
            checks.append(Check("pgbackrest verify", True, out.out.strip()[-300:] or "repository verified"))
        except CommandFailed as exc:
            checks.append(Check("pgbackrest verify", False, exc.result.tail(12) if exc.result else exc.message))
        pg_amcheck = f"{pg_paths(_pg(access.cluster)).bin_dir}/pg_amcheck"
        amcheck = scratch.executor.run(SCRATCH_HOST, [pg_amcheck, "-h", SCRATCH_SOCKET, "-p", "5432",
                                                      "--all", "--install-missing", "--heapallindexed"],
                                       user="postgres", timeout=6 * 3600)
        checks.append(Check("pg_amcheck", amcheck.ok, amcheck.tail(12) or "no corruption found"))
        where = canary_location(_pg(access.cluster))
        if where is not None:
            rows = count_rows(access_for_scratch(access, scratch), SCRATCH_HOST, socket=SCRATCH_SOCKET)
            before = backup.detail.get("canary_rows_before")
            if rows is None:
                checks.append(Check(f"canary {where[0]}.{where[1]}", False, "table missing in the restored server"))
            else:
                ok = before is None or rows >= before
                checks.append(Check(f"canary {where[0]}.{where[1]}", ok,
                                    f"{rows} rows; the live table had {before} when the backup started"))
        return checks

    # -- named restore points ----------------------------------------------------------

    def create_restore_point(self, access: BackupAccess, name: str) -> str:
        """pg_create_restore_point on the primary, then a WAL switch so the point is archived."""
        host = find_primary(access)
        cluster = _pg(access.cluster)
        lit = "'" + name.replace("'", "''") + "'"
        result = psql(access, host, f"select pg_create_restore_point({lit}); select pg_switch_wal()", port=cluster.port)
        if not result.ok:
            raise PermanentError(f"pg_create_restore_point: {result.tail(3)}", cluster=cluster.name, host=host)
        return result.out.strip().splitlines()[0]


def _epoch(text: str) -> datetime | None:
    try:
        value = float(text.strip() or 0)
    except ValueError:
        return None
    return datetime.fromtimestamp(value, UTC) if value > 0 else None


def access_for_scratch(access: BackupAccess, scratch: ScratchHost) -> BackupAccess:
    """The same cluster, with commands going to the scratch container."""
    return replace(access, executor=scratch.executor)
