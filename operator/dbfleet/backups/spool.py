"""Where a tool on a database host writes a backup file, how it is encrypted there, and how it reaches the target.

The tool writes its plaintext into a private work directory on the host
(`mktemp -d` under /var/lib/dbfleet/spool, which only root can create or
enter), never into a shared or guessable path. `age` then encrypts it to the
fleet's recipient: straight into a local target (the lab's volume, an
NFS/EFS share on AWS), or into the work directory, from where the operator
fetches and uploads it (S3). The plaintext is removed; the work directory
too, whatever happened. Only encrypted bytes leave the host.

A restore reverses it inside the scratch host: the encrypted file is copied
in (or read from the mounted target) and decrypted there with the fleet's
identity, which never reaches a database host.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dbfleet.age_keys import recipient_of
from dbfleet.backups.access import BackupAccess
from dbfleet.backups.manifest import backup_prefix
from dbfleet.backups.scratch import SCRATCH_HOST, ScratchHost
from dbfleet.secrets import BACKUP_AGE_IDENTITY, BACKUP_AGE_IDENTITY_OLD

WORK_ROOT = "/var/lib/dbfleet/spool"
AGE_SUFFIX = ".age"
CIPHER = "age-x25519"
"""What manifests record as the cipher of a MongoDB dump or a Redis snapshot."""

WORKDIR_SCRIPT = r"""
umask 077
root=$1
mkdir -p "$root" || exit 3
if [ -L "$root" ] || [ ! -d "$root" ] || [ "$(stat -c '%u %a' "$root")" != "$(id -u) 700" ]; then
  echo "dbfleet-refused: $root is not a directory that only $(id -un) may use" >&2; exit 3
fi
mktemp -d "$root/work.XXXXXXXX"
"""
"""Prints a fresh private directory under the root (argument), after checking the root is root-only."""

ENCRYPT_SCRIPT = r"""
set -e
umask 077
plain=$1 dest=$2 recipient=$3
mkdir -p "$(dirname "$dest")"
age -r "$recipient" -o "$dest.partial" "$plain"
mv -f "$dest.partial" "$dest"
rm -f "$plain"
"""
"""age-encrypts the plaintext (argument 1) into dest (argument 2) for the recipient (argument 3)."""


@dataclass(frozen=True)
class Dump:
    host: str
    workdir: str
    """The private directory on the host for this dump (the tool may keep a credentials file there)."""
    plain_path: str
    """Where the tool writes its plaintext."""
    key: str
    """Where the encrypted file lives in the target afterwards."""


@contextmanager
def private_workdir(access: BackupAccess, host: str) -> Iterator[str]:
    """A fresh directory on `host` that only root can enter, removed on leaving."""
    made = access.executor.check(host, ["sh", "-c", WORKDIR_SCRIPT, "workdir", WORK_ROOT], action="work dir")
    workdir = made.out.strip().splitlines()[-1]
    if not workdir.startswith(f"{WORK_ROOT}/work."):
        raise ValueError(f"mktemp printed {workdir!r}")
    try:
        yield workdir
    finally:
        access.executor.run(host, ["rm", "-rf", "--", workdir])


def recipient(access: BackupAccess) -> str:
    return recipient_of(access.secret(BACKUP_AGE_IDENTITY))


@contextmanager
def encrypted_dump(access: BackupAccess, host: str, backup_id: str, name: str) -> Iterator[Dump]:
    """A private path on `host` for the tool's plaintext; on leaving without error, the file is in the target,
    age-encrypted, under the yielded key (`<name>.age`)."""
    key = backup_prefix(access.name, backup_id) + name + AGE_SUFFIX
    with private_workdir(access, host) as workdir:
        dump = Dump(host, workdir, f"{workdir}/{name}", key)
        yield dump
        base = access.target_path
        dest = f"{base.rstrip('/')}/{key}" if base is not None else f"{workdir}/{name}{AGE_SUFFIX}"
        access.executor.check(host, ["sh", "-c", ENCRYPT_SCRIPT, "encrypt", dump.plain_path, dest, recipient(access)],
                              action="age")
        if base is None:
            with tempfile.TemporaryDirectory(prefix="dbfleet-spool-") as tmp:  # 0700, removed after
                local = Path(tmp) / Path(dest).name
                access.executor.fetch(host, dest, local)
                access.storage.put_file(key, local)


@contextmanager
def staged_locally(access: BackupAccess, key: str) -> Iterator[Path]:
    """A stored file as a local path on the operator's machine (a temporary copy for S3)."""
    with tempfile.TemporaryDirectory(prefix="dbfleet-stage-") as tmp:
        local = Path(tmp) / key.rsplit("/", 1)[-1]
        access.storage.get_file(key, local)
        yield local


SCRATCH_IDENTITIES = "/root/.dbfleet-age-identities"


def decrypt_into_scratch(access: BackupAccess, scratch: ScratchHost, key: str, dest: str,
                         owner: str | None = None) -> None:
    """The stored file `key`, decrypted with the fleet's identities to `dest` inside the scratch host."""
    ex = scratch.executor
    identities = [access.fleet.secrets[k] for k in (BACKUP_AGE_IDENTITY, BACKUP_AGE_IDENTITY_OLD)
                  if access.fleet.secrets.get(k)]
    if not identities:
        access.secret(BACKUP_AGE_IDENTITY)  # raises, naming the missing key
    ex.write_text(SCRATCH_HOST, SCRATCH_IDENTITIES, "\n".join(identities) + "\n", mode="0600")
    try:
        if access.target_path is not None:
            source = f"{access.target_path.rstrip('/')}/{key}"
            ex.check(SCRATCH_HOST, ["age", "-d", "-i", SCRATCH_IDENTITIES, "-o", dest, source], action="age -d")
        else:
            staged = f"{dest}{AGE_SUFFIX}"
            with staged_locally(access, key) as local:
                scratch.put_file(local, staged)
            ex.check(SCRATCH_HOST, ["age", "-d", "-i", SCRATCH_IDENTITIES, "-o", dest, staged], action="age -d")
            ex.run(SCRATCH_HOST, ["rm", "-f", staged])
    finally:
        ex.run(SCRATCH_HOST, ["rm", "-f", SCRATCH_IDENTITIES])
    if owner:
        ex.check(SCRATCH_HOST, ["chown", owner, dest])
