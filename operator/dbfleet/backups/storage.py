"""Where backups are kept: a local directory (the lab's shared volume) or an S3 bucket, behind one interface.

Keys are POSIX paths relative to the target root (`dbfleet/pg-main/<id>/manifest.json`).
The operator reads and writes manifests, hashes stored files and deletes expired
ones through a Storage; the tools (pgBackRest, mongodump) write their own data
straight into the same target.

What a target holds is data, not trusted: `manifests()` and `drills()` return
only records that pass their checks. Each one left out is logged once and kept,
with its key and the reason, in `invalid_records(cluster)` (the backup planner
reports them as `report-invalid-manifest`), so one bad file never stops the
cluster's other backups. A local delete never follows a symbolic link.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from dbfleet.backups.jobs import JobRecord, job_key
from dbfleet.backups.manifest import (
    DrillRecord,
    FileEntry,
    Manifest,
    ManifestError,
    cluster_prefix,
    drill_key,
)
from dbfleet.errors import PermanentError, TemporaryError
from dbfleet.spec import LocalTarget, S3Target

CHUNK = 1 << 20
T = TypeVar("T")
log = logging.getLogger(__name__)
MEASURE_THREADS = 4
"""Files hashed at once: reads and sha256 release the GIL, so a backup set of many files measures in parallel."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int


@dataclass(frozen=True)
class InvalidRecord:
    """A manifest or drill record in the target that dbfleet will not use: its key and why."""

    key: str
    reason: str


class Storage(ABC):
    """One backup target."""

    description: str = ""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def put_file(self, key: str, source: Path) -> None: ...

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> None: ...

    @abstractmethod
    def open_chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks, for hashing without loading it whole."""

    @abstractmethod
    def list(self, prefix: str) -> builtins.list[StoredObject]:
        """Every object whose key starts with prefix, sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool:
        return any(o.key == key for o in self.list(key))

    def delete_prefix(self, prefix: str) -> int:
        objects = self.list(prefix)
        for obj in objects:
            self.delete(obj.key)
        return len(objects)

    def measure(self, key: str) -> FileEntry:
        """Size and sha256 of one stored object."""
        digest = hashlib.sha256()
        size = 0
        for chunk in self.open_chunks(key):
            digest.update(chunk)
            size += len(chunk)
        return FileEntry(key, size, digest.hexdigest())

    def _on_threads(self, fn: Callable[[str], T], keys: builtins.list[str]) -> builtins.list[T]:
        """fn of every key, in order, on a few threads."""
        if len(keys) < 2:
            return [fn(k) for k in keys]
        with ThreadPoolExecutor(max_workers=MEASURE_THREADS) as pool:
            return list(pool.map(fn, keys))

    def measure_many(self, keys: builtins.list[str]) -> builtins.list[FileEntry]:
        """`measure` of every key, in order."""
        return self._on_threads(self.measure, keys)

    def _measure_if_present(self, key: str) -> FileEntry | None:
        try:
            return self.measure(key)
        except FileNotFoundError:
            return None

    def measure_prefix(self, prefix: str, exclude: tuple[str, ...] = ()) -> builtins.list[FileEntry]:
        return self.measure_many([o.key for o in self.list(prefix) if not o.key.endswith(exclude)])

    # -- manifests ---------------------------------------------------------------

    def save_manifest(self, manifest: Manifest) -> None:
        self.put_bytes(manifest.key, manifest.to_json().encode())

    def load_manifest(self, key: str) -> Manifest:
        return Manifest.from_json(self.get_bytes(key), f"{self.description}/{key}")

    def manifests(self, cluster: str) -> builtins.list[Manifest]:
        """Every valid manifest of a cluster. One that is not (unreadable, a field of the wrong shape, a file key
        outside the cluster, another cluster's or backup's name) is left out and recorded (invalid_records)."""
        found, invalid = [], []
        for obj in self.list(cluster_prefix(cluster)):
            rest = obj.key[len(cluster_prefix(cluster)):]
            if rest.count("/") == 1 and rest.endswith("/manifest.json"):
                try:
                    manifest = self.load_manifest(obj.key)
                    if manifest.cluster != cluster or manifest.id != rest.split("/")[0]:
                        raise ManifestError(obj.key, f"says cluster {manifest.cluster}, backup {manifest.id}, but "
                                                     f"is stored as cluster {cluster}'s {rest.split('/')[0]}")
                    found.append(manifest)
                except ManifestError as exc:
                    invalid.append(InvalidRecord(obj.key, exc.reason))
        self._record_invalid(cluster, "manifests", invalid)
        return found

    def save_drill(self, record: DrillRecord) -> None:
        self.put_bytes(record.key, record.to_json().encode())

    def drills(self, cluster: str) -> builtins.list[DrillRecord]:
        """Every valid drill record of a cluster, oldest first; an invalid one is left out and recorded."""
        prefix = drill_key(cluster, "")[: -len(".json")]
        records, invalid = [], []
        for obj in self.list(prefix):
            if not obj.key.endswith(".json"):
                continue
            try:
                records.append(DrillRecord.from_json(self.get_bytes(obj.key), obj.key))
            except ManifestError as exc:
                invalid.append(InvalidRecord(obj.key, exc.reason))
        self._record_invalid(cluster, "drills", invalid)
        return sorted(records, key=lambda r: (r.finished, r.id))

    def _record_invalid(self, cluster: str, kind: str, invalid: builtins.list[InvalidRecord]) -> None:
        # Kept on the storage object, since manifests() keeps the return type its callers use.
        by_cluster: dict[tuple[str, str], builtins.list[InvalidRecord]] = self.__dict__.setdefault("_invalid", {})
        warned: set[InvalidRecord] = self.__dict__.setdefault("_warned", set())
        by_cluster[(cluster, kind)] = invalid
        for record in invalid:
            if record not in warned:
                warned.add(record)
                log.warning("%s: %s in %s is left out: %s", cluster, record.key, self.description, record.reason)

    def invalid_records(self, cluster: str) -> builtins.list[InvalidRecord]:
        """The manifests and drill records of `cluster` that the last manifests() and drills() left out."""
        by_cluster: dict[tuple[str, str], builtins.list[InvalidRecord]] = self.__dict__.get("_invalid", {})
        return [r for kind in ("manifests", "drills", "jobs") for r in by_cluster.get((cluster, kind), [])]

    def jobs(self, cluster: str) -> builtins.list[JobRecord]:
        """The cluster's job records (jobs.py), one per kind at most; an invalid one is left out and recorded."""
        found, invalid = [], []
        for obj in self.list(job_key(cluster, "")[: -len(".json")]):
            if not obj.key.endswith(".json"):
                continue
            try:
                record = JobRecord.from_json(self.get_bytes(obj.key), obj.key)
                if record.key != obj.key:
                    raise ManifestError(obj.key, f"says cluster {record.cluster}, kind {record.kind}")
                found.append(record)
            except ManifestError as exc:
                invalid.append(InvalidRecord(obj.key, exc.reason))
        self._record_invalid(cluster, "jobs", invalid)
        return found

    def last_drill(self, cluster: str) -> DrillRecord | None:
        records = self.drills(cluster)
        return records[-1] if records else None

    def verify_files(self, manifest: Manifest) -> builtins.list[str]:
        """Each stored file whose size or sha256 differs from the manifest, as 'key: why'. Empty when intact;
        never empty for a manifest that lists no files, since then nothing was verified."""
        if not manifest.files:
            return ["the manifest lists no files, so there is nothing to verify"]
        problems = []
        found = self._on_threads(self._measure_if_present, [entry.key for entry in manifest.files])
        for entry, now in zip(manifest.files, found, strict=True):
            if now is None:
                problems.append(f"{entry.key}: missing")
            elif now.size != entry.size:
                problems.append(f"{entry.key}: size {now.size}, manifest says {entry.size}")
            elif now.sha256 != entry.sha256:
                problems.append(f"{entry.key}: sha256 {now.sha256[:12]}..., manifest says {entry.sha256[:12]}...")
        return problems


class LocalStorage(Storage):
    """A directory on the operator's machine: in the lab, the shared backup volume's mountpoint."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.description = str(self.root)
        self._dirs: dict[str, Path] | None = None
        """Directories resolved during one bulk operation; None outside one, so every call resolves afresh."""

    def _on_threads(self, fn: Callable[[str], T], keys: builtins.list[str]) -> builtins.list[T]:
        # Resolving every component of every file is what measuring a backup set of thousands of files spent
        # its time on: within one bulk operation, each directory is resolved once.
        self._dirs = {}
        try:
            return super()._on_threads(fn, keys)
        finally:
            self._dirs = None

    def _path(self, key: str) -> Path:
        parent, _, name = (self.root / key).as_posix().rpartition("/")
        dirs = self._dirs
        if dirs is None:
            resolved = Path(parent).resolve()
        else:
            resolved = dirs.get(parent) or dirs.setdefault(parent, Path(parent).resolve())
        path = resolved / name
        if name in ("", ".", "..") or path.is_symlink():
            path = path.resolve()
        if not path.is_relative_to(self.root):
            raise PermanentError(f"key {key!r} leaves the backup root {self.root}")
        return path

    def _replace(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        """Write a stored file through a fresh temporary file beside it, renamed over the key: a reader never
        sees half a file, and nothing planted in the target is followed. The temporary name is random and made
        with O_EXCL (tempfile), so a symbolic link waiting under a guessable `<key>.tmp` is never written
        through; the rename replaces a link at the key itself, not what it names."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                write(out)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._replace(key, lambda out: out.write(data))

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def put_file(self, key: str, source: Path) -> None:
        def copy(out: BinaryIO) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, out, CHUNK)

        self._replace(key, copy)

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), dest)

    def open_chunks(self, key: str) -> Iterator[bytes]:
        with self._path(key).open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    def list(self, prefix: str) -> builtins.list[StoredObject]:
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._path(head) if head else self.root
        if not base.is_dir():
            return []
        out = []
        for path in base.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix) and not key.endswith(".tmp") and path.is_file():
                out.append(StoredObject(key, path.stat().st_size))
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        """Remove one stored file without following any symbolic link: each directory on the way is opened
        O_NOFOLLOW (a link there is refused), and a link as the file itself is removed, not what it names."""
        parts = key.split("/")
        if key.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise PermanentError(f"key {key!r} is not a normalised relative key; not deleted")
        directory = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                try:
                    inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
                except FileNotFoundError:
                    return
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise PermanentError(f"key {key!r} passes through {part!r}, a symbolic link or a file; "
                                             "not deleted") from None
                    raise
                os.close(directory)
                directory = inner
            try:
                os.unlink(parts[-1], dir_fd=directory)
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                raise PermanentError(f"key {key!r} is a directory; not deleted") from None
        finally:
            os.close(directory)
        # Drop directories left empty, up to the root, so a pruned backup leaves no trace. rmdir never follows
        # a link, and one that is not empty stays.
        for depth in range(len(parts) - 1, 0, -1):
            try:
                os.rmdir(self.root.joinpath(*parts[:depth]))
            except OSError:
                break


class S3Storage(Storage):
    """An S3 bucket and prefix through boto3 (credentials from the usual AWS chain; AWS_CA_BUNDLE honoured)."""

    def __init__(self, bucket: str, prefix: str = "", region: str = "us-east-1", endpoint: str | None = None,
                 client: Any = None):
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        # A session of its own: the default one caches the credentials it first resolved.
        self.client = client or boto3.session.Session().client("s3", region_name=region, endpoint_url=endpoint)
        self.description = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError, EndpointConnectionError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"{self.description}/{kwargs.get('Key', '')}") from None
            if code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "503", "500"):
                raise TemporaryError(f"S3 {what}: {code}") from None
            raise PermanentError(f"S3 {what} in {self.description}: {code} {exc}") from None
        except EndpointConnectionError as exc:
            raise TemporaryError(f"S3 {what}: {exc}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("put", self.client.put_object, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        body: bytes = self._call("get", self.client.get_object, Key=self._key(key))["Body"].read()
        return body

    def put_file(self, key: str, source: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.upload_file(str(source), self.bucket, self._key(key))
        except ClientError as exc:
            raise PermanentError(f"S3 upload {key} to {self.description}: {exc}") from None

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("wb") as handle:
            for chunk in self.open_chunks(key):
                handle.write(chunk)

    def open_chunks(self, key: str) -> Iterator[bytes]:
        body = self._call("get", self.client.get_object, Key=self._key(key))["Body"]
        try:
            while chunk := body.read(CHUNK):
                yield chunk
        finally:
            body.close()

    def list(self, prefix: str) -> builtins.list[StoredObject]:
        out = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list", self.client.list_objects_v2, Prefix=self._key(prefix), **token)
            for item in page.get("Contents", []):
                out.append(StoredObject(item["Key"][len(self.prefix):], int(item["Size"])))
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        self._call("delete", self.client.delete_object, Key=self._key(key))


def storage_for(target: LocalTarget | S3Target, local_root: Path | None = None, s3_client: Any = None) -> Storage:
    """The Storage for a spec target. `local_root` is where the operator sees a local target (the lab's
    volume mountpoint); without it, the target's own path, as on a host that mounts the share."""
    if isinstance(target, S3Target):
        return S3Storage(target.bucket, target.prefix, target.region, target.endpoint, client=s3_client)
    return LocalStorage(local_root or Path(target.path))
