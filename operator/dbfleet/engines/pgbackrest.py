"""pgBackRest's configuration: the one place its repository path and pgbackrest.conf are decided.

The hosts' /etc/pgbackrest/pgbackrest.conf (written by the pgbackrest role,
which copies `host_config` from the inventory) and the scratch host's, for a
restore or drill (`scratch_config`), are rendered here from the cluster spec,
so the repository a restore reads is always the one the hosts write. Values
are checked on the way in: a line break or a bracket would start a new option
or section, so such a value is refused, never written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlparse

from dbfleet.engines.postgres import PgPaths, pg_paths
from dbfleet.errors import PermanentError
from dbfleet.spec import LocalTarget, PostgresCluster, S3Target

HOST_SOCKET_DIR = "/var/run/postgresql"
HOST_LOG_PATH = "/var/log/pgbackrest"
PROCESS_MAX = 2
COMPRESS_TYPE = "lz4"
BUNDLE = True
"""Bundle small files (most of a cluster's relation files) into a few repository objects: far fewer S3
requests and files per backup, and a manifest of a handful of entries. `pgbackrest verify` still names the
file inside a bundle that fails its checksum."""
CIPHER_TYPE = "aes-256-cbc"
"""The repository is always encrypted; the passphrase (secrets: backup_cipher_pass) is not in pgbackrest.conf
but in an include file the role writes (CIPHER_INCLUDE) and, for a restore, in the tool's environment."""
CIPHER_INCLUDE = "/etc/pgbackrest/conf.d/dbfleet-cipher.conf"
CIPHER_PASS_ENV = "PGBACKREST_REPO1_CIPHER_PASS"
DR_REPO = 2
"""The repository in dr.target. A restore from it configures it as a scratch host's only repository, repo1."""
SPOOL_PATH = "/var/spool/pgbackrest"
ARCHIVE_QUEUE_MAX = "4GiB"
"""With archive-async, WAL waiting in the spool for a repository that cannot take it is dropped past this (the
archive then has a gap, which the next backup closes) rather than filling the primary's disk: a lost second
region must not stop the first. PostgresArchivingFailing fires before the drop only if the queue takes longer than
its 5 minutes to fill (README, Disaster recovery: the known limit)."""
RETENTION_FULL = "9999999"
"""Expiry is the operator's: a backup goes only once a newer one is verified by a restore drill."""

_SAFE_VALUE = re.compile(r"^[^\x00-\x1f\x7f\[\]]*$")


def repo_prefix(cluster: str) -> str:
    """Where a cluster's repository sits inside the backup target (as a storage key prefix)."""
    return f"pgbackrest/{cluster}/"


def repo_path(cluster: PostgresCluster, target: LocalTarget | S3Target | None = None) -> str:
    """repoN-path: the local target's directory, or the path inside the S3 bucket (default: backup.target's)."""
    target = target or cluster.backup.target
    if isinstance(target, S3Target):
        return "/" + "/".join(p for p in (target.prefix.strip("/"), repo_prefix(cluster.name).rstrip("/")) if p)
    return f"{target.path.rstrip('/')}/{repo_prefix(cluster.name).rstrip('/')}"


def repositories(cluster: PostgresCluster) -> dict[int, LocalTarget | S3Target]:
    """pgBackRest's repositories by number: repo1 in backup.target, repo2 in dr.target when the spec has one."""
    repos: dict[int, LocalTarget | S3Target] = {1: cluster.backup.target}
    if cluster.dr is not None:
        repos[DR_REPO] = cluster.dr.target
    return repos


def local_repo_paths(cluster: PostgresCluster) -> list[str]:
    """The repositories' directories on the hosts (those in local targets), which the role creates."""
    return [repo_path(cluster, target) for target in repositories(cluster).values()
            if isinstance(target, LocalTarget)]


def repo_options(cluster: PostgresCluster, repo: int = 1, target: LocalTarget | S3Target | None = None
                 ) -> dict[str, str]:
    """The repoN-* options for one repository (default: repo1 in the cluster's backup target)."""
    target = target or cluster.backup.target
    key = f"repo{repo}-"
    if not isinstance(target, S3Target):
        return {key + "cipher-type": CIPHER_TYPE, key + "path": repo_path(cluster, target)}
    url = urlparse(target.endpoint or f"https://s3.{target.region}.amazonaws.com")
    options = {key + "cipher-type": CIPHER_TYPE, key + "type": "s3", key + "path": repo_path(cluster, target),
               key + "s3-bucket": target.bucket,
               key + "s3-region": target.region, key + "s3-endpoint": url.hostname or ""}
    if url.port:
        options[key + "storage-port"] = str(url.port)
    if target.endpoint:
        options[key + "s3-uri-style"] = "path"
    return options


def archive_get_command(cluster: PostgresCluster, repo: int | None = None) -> str:
    """PostgreSQL's restore_command: pgBackRest's archive-get, from every repository in order, or from `repo` only
    (a standby site reads the second region's repository, which outlives the first region)."""
    only = f" --repo={repo}" if repo else ""
    return f'pgbackrest --stanza={cluster.name}{only} archive-get %f "%p"'


def replica_restore_command(cluster: PostgresCluster, repo: int | None = None) -> str:
    """The command Patroni runs to build a replica from the newest backup (its `pgbackrest` replica method), from
    every repository in order or from `repo` only; Patroni adds no arguments (no_params)."""
    only = f" --repo={repo}" if repo else ""
    return f"pgbackrest --stanza={cluster.name}{only} --delta --type=standby restore"


def render(sections: Mapping[str, Mapping[str, str]], header: str = "") -> str:
    """An INI file in pgBackRest's format, refusing any value that could start another line or section."""
    lines = [f"# {line}" for line in header.splitlines()]
    for section, options in sections.items():
        lines.append(f"[{section}]")
        for key, value in options.items():
            if not _SAFE_VALUE.match(value) or not _SAFE_VALUE.match(key):
                raise PermanentError(f"pgbackrest.conf: refusing {key}={value!r}: control character or bracket")
            lines.append(f"{key}={value}")
        lines.append("")
    return "\n".join(lines)


def host_config(cluster: PostgresCluster, paths: PgPaths | None = None) -> str:
    """/etc/pgbackrest/pgbackrest.conf on every host of the cluster: repo1 in backup.target, and with dr: repo2
    in dr.target, WAL pushed to both asynchronously through the spool."""
    paths = paths or pg_paths(cluster)
    repos: dict[str, str] = {}
    for number, target in repositories(cluster).items():
        repo = repo_options(cluster, number, target)
        if isinstance(target, S3Target):
            repo[f"repo{number}-s3-key-type"] = "auto"  # the instance profile's credentials (stacks/ grants this)
        repo[f"repo{number}-retention-full"] = RETENTION_FULL
        repo[f"repo{number}-bundle"] = "y" if BUNDLE else "n"
        repos.update(repo)
    tuning = {"process-max": str(PROCESS_MAX), "compress-type": COMPRESS_TYPE, "start-fast": "y",
              "log-level-console": "warn", "log-level-file": "info", "log-path": HOST_LOG_PATH}
    if cluster.dr is not None:
        # archive_command hands each segment to a background process that pushes to both repositories in
        # parallel and acknowledges from the spool: archiving keeps up while one repository is slow.
        tuning.update({"archive-async": "y", "spool-path": SPOOL_PATH, "archive-push-queue-max": ARCHIVE_QUEUE_MAX})
    stanza = {"pg1-path": paths.data_dir, "pg1-port": str(cluster.port), "pg1-socket-path": HOST_SOCKET_DIR}
    return render({"global": {**repos, **tuning}, cluster.name: stanza},
                  header="Managed by dbfleet from the fleet spec (dbfleet.engines.pgbackrest); changes here are "
                         "overwritten.")


def scratch_config(cluster: PostgresCluster, pg_path: str, socket: str, s3_ca_file: str | None = None) -> str:
    """pgbackrest.conf for a restore on a scratch host: the same repository, read into `pg_path`."""
    repo = repo_options(cluster)
    if s3_ca_file and repo.get("repo1-type") == "s3":
        repo["repo1-s3-ca-file"] = s3_ca_file
    scratch = {"log-path": "/tmp", "lock-path": "/tmp/pgbackrest-lock", "spool-path": "/tmp",
               "log-level-console": "warn", "log-level-file": "off"}
    return render({"global": {**repo, **scratch}, cluster.name: {"pg1-path": pg_path, "pg1-socket-path": socket}})
