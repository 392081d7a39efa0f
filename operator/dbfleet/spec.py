"""The fleet model: one YAML spec parsed once into typed, validated models.

Every consumer (the Pulumi stacks, the lab and inventory writer, the Ansible
variables and the operator) reads these models; none parses the YAML itself.
A bad spec raises SpecError naming the file, the line, the key path and what
was expected.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from dbfleet.pg_syntax import UnsafeQuery, check_index_column, check_index_predicate, one_select
from dbfleet.schedule import CronError, parse_cron

SUPPORTED_VERSIONS: dict[str, tuple[str, ...]] = {
    "postgres": ("15",),
    "mongo": ("6.0", "7.0", "8.0"),
    "redis": ("7",),
}

HOST_NAME = r"^[a-z][a-z0-9-]{0,40}[a-z0-9]$"
CLUSTER_NAME = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"
IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
QUALIFIED_IDENT = r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$"
SIZE = r"^[0-9]+(b|kb|mb|gb)$"
DURATION = r"^[0-9]+(s|m|h|d)$"


class Strict(BaseModel):
    """Base for every spec model: unknown keys are errors, values are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_cron(value: str) -> str:
    try:
        parse_cron(value)
    except CronError as exc:
        raise ValueError(f"a cron expression of 5 fields: {exc}") from None
    return value


def duration_seconds(value: str) -> int:
    """'30s', '5m', '2h', '7d' to seconds."""
    number, unit = int(value[:-1]), value[-1]
    return number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def control_character(text: str) -> str | None:
    """The first control or line-break character in `text` (as a repr), or None: config files are line-based."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return repr(char)
    return None


AWS_REGION = re.compile(r"[a-z]{2}(-gov)?-[a-z]+-[0-9]")
"""An AWS region name: us-east-1, eu-central-1, ap-southeast-2, us-gov-west-1."""


def check_aws_region(value: str) -> str:
    """The one check of a region name: it reaches pgbackrest.conf, boot scripts and SSH's ProxyCommand."""
    if not AWS_REGION.fullmatch(value):
        raise ValueError(f"expected an AWS region such as us-east-1 or eu-central-1, got {value!r}")
    return value


def check_absolute_path(value: str) -> str:
    """A normalised absolute path: no control characters, no `.` or `..` parts, no `//`, not the root."""
    if control_character(value):
        raise ValueError(f"the path {value!r} holds the control character {control_character(value)}")
    if not value.startswith("/") or value == "/":
        raise ValueError(f"expected an absolute path below /, such as /var/lib/dbfleet/backups, got {value!r}")
    parts = value.rstrip("/").split("/")[1:]
    if "" in parts or "." in parts or ".." in parts:
        raise ValueError(f"the path {value!r} is not normalised: write it without '//', '.' or '..' parts")
    return value


def normalise_key_prefix(value: str) -> str:
    """An S3 key prefix, relative (leading and trailing slashes dropped), with no empty, `.` or `..` part."""
    prefix = value.strip("/")
    if not re.fullmatch(r"[A-Za-z0-9_./-]*", prefix):
        raise ValueError(f"the prefix {value!r} may hold only letters, digits, '_', '.', '-' and '/'")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ValueError(f"the prefix {value!r} is not a normalised key prefix: no '//', '.' or '..' parts")
    return prefix


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BUCKET_RESERVED = (("xn--", "sthree-", "amzn-s3-demo-"), ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"))


def check_bucket_name(value: str) -> str:
    """S3's bucket naming rules (general purpose buckets), with the dashes-by-dots rule that virtual-host TLS needs."""
    why = None
    if not _BUCKET.fullmatch(value):
        why = "3 to 63 lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit"
    elif ".." in value or ".-" in value or "-." in value:
        why = "no two dots, nor a dot beside a hyphen"
    elif re.fullmatch(r"[0-9]+(\.[0-9]+){3}", value):
        why = "not an IP address"
    elif value.startswith(_BUCKET_RESERVED[0]) or value.endswith(_BUCKET_RESERVED[1]):
        why = "not a prefix or suffix S3 reserves (xn--, sthree-, -s3alias, --ol-s3, ...)"
    if why:
        raise ValueError(f"{value!r} is not an S3 bucket name: {why}")
    return value


def check_https_endpoint(value: str) -> str:
    """An S3 endpoint: https://host[:port] and nothing else (no credentials, path, query or fragment)."""
    def refuse(why: str) -> ValueError:
        return ValueError(f"expected an https:// URL such as https://s3.example.internal:9000, got {value!r}: {why}")

    if control_character(value) or any(c.isspace() for c in value):
        raise refuse("it holds a space or control character")
    parts = urlsplit(value)
    try:
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        raise refuse("the port is not a number from 1 to 65535") from None
    if parts.scheme != "https":
        raise refuse("only https is accepted, so backups never travel in clear")
    if not parts.hostname:
        raise refuse("no host")
    if parts.username is not None or parts.password is not None:
        raise refuse("credentials do not belong in the spec")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise refuse("a path, query or fragment has no place in an endpoint")
    return value


def check_vpc_cidr(value: str) -> str:
    """A VPC's IPv4 CIDR in network form, a /20 or larger: the stack carves it into sixteenths, six subnets."""
    try:
        net = ipaddress.ip_network(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a CIDR such as 10.40.0.0/16") from None
    if net.version != 4:
        raise ValueError(f"{value!r} is not IPv4; a VPC's CIDR is an IPv4 block such as 10.40.0.0/16")
    if net.prefixlen > 20:
        raise ValueError("a /20 or larger, to hold three subnets per AZ")
    return value


AwsRegion = Annotated[str, AfterValidator(check_aws_region)]
VpcCidr = Annotated[str, AfterValidator(check_vpc_cidr)]
AbsolutePath = Annotated[str, AfterValidator(check_absolute_path)]


# --------------------------------------------------------------------------- hosts


class Host(Strict):
    """One machine: an EC2 instance on AWS, a container in the lab."""

    name: Annotated[str, Field(pattern=HOST_NAME)]
    zone: Annotated[int | None, Field(ge=0, le=5)] = None


HostRef = Annotated[str, Field(pattern=HOST_NAME)] | Host


def _as_host(ref: HostRef) -> Host:
    return ref if isinstance(ref, Host) else Host(name=ref)


class Instance(Strict):
    """Machine size on AWS; ignored by the lab."""

    type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9]*\.[a-z0-9]+$")] = "t3.medium"
    volume_gb: Annotated[int, Field(ge=8, le=16384)] = 50
    volume_iops: Annotated[int, Field(ge=3000, le=16000)] = 3000


# --------------------------------------------------------------------------- backups


class LocalTarget(Strict):
    kind: Literal["local"]
    path: AbsolutePath


class S3Target(Strict):
    kind: Literal["s3"]
    bucket: Annotated[str, AfterValidator(check_bucket_name)]
    prefix: Annotated[str, AfterValidator(normalise_key_prefix)] = ""
    """Relative: a leading or trailing slash is dropped at load."""
    region: AwsRegion = "us-east-1"
    endpoint: Annotated[str, AfterValidator(check_https_endpoint)] | None = None


class Retention(Strict):
    full_count: Annotated[int, Field(ge=1, le=1000)] = 2
    diff_count: Annotated[int, Field(ge=0, le=1000)] = 7
    max_age_days: Annotated[int | None, Field(ge=1, le=3650)] = None


class Drill(Strict):
    schedule: str = "0 4 * * *"
    canary: str | None = None
    """PostgreSQL: a table whose rows are counted; Redis: a key; Mongo: db.collection."""

    _cron = field_validator("schedule")(_check_cron)


class BackupPolicy(Strict):
    enabled: bool = True
    target: BackupTarget = LocalTarget(
        kind="local", path="/var/lib/dbfleet/backups"
    )
    schedule: dict[Literal["full", "diff", "incr", "snapshot"], str] = {"full": "0 2 * * *"}
    retention: Retention = Retention()
    drill: Drill = Drill()

    @field_validator("schedule")
    @classmethod
    def _crons(cls, value: dict[str, str]) -> dict[str, str]:
        for kind, expr in value.items():
            try:
                parse_cron(expr)
            except CronError as exc:
                raise ValueError(f"{kind}: a cron expression of 5 fields: {exc}") from None
        return value


BackupTarget = Annotated[LocalTarget | S3Target, Field(discriminator="kind")]
"""A backup target: where `backup:` writes, and where `dr:` writes the second copy."""


def same_place(first: LocalTarget | S3Target, second: LocalTarget | S3Target) -> tuple[str, str] | None:
    """(the key of `second` at fault, why) when the two targets are, or overlap, one place (a second copy there
    would be lost with the first), else None."""
    if isinstance(first, LocalTarget) and isinstance(second, LocalTarget):
        one, two = first.path.rstrip("/") + "/", second.path.rstrip("/") + "/"
        if one == two:
            return "path", f"{second.path!r} is the same directory"
        if one.startswith(two) or two.startswith(one):
            return "path", f"{second.path!r} and {first.path!r} are one inside the other"
    if isinstance(first, S3Target) and isinstance(second, S3Target) and first.bucket == second.bucket \
            and same_endpoint(first, second):
        one, two = first.prefix + "/", second.prefix + "/"
        if not first.prefix or not second.prefix or one.startswith(two) or two.startswith(one):
            return "bucket", f"{second.bucket!r} under the prefix {second.prefix!r} overlaps {first.prefix!r}"
    return None


def same_endpoint(first: S3Target, second: S3Target) -> bool:
    """Both on one S3 service: AWS's (no endpoint), or one endpoint URL (a trailing slash and the host's case aside).
    A bucket name is a place only on its service: one name on two endpoints is two buckets."""
    def norm(target: S3Target) -> str:
        return (target.endpoint or "").rstrip("/").lower()

    return norm(first) == norm(second)


class DrDrill(Strict):
    """The disaster-recovery drill: the newest backup restored from the second target (the canary is
    backup.drill's)."""

    schedule: Annotated[str, AfterValidator(_check_cron)] = "0 6 * * *"


class StandbySite(Strict):
    """A PostgreSQL standby site in the second region: with ha: patroni, a Patroni standby cluster of its own (scope
    `<cluster>-dr`, a one-member etcd on its first host) that streams from the primary site and restores WAL from
    the dr target (pgBackRest's repo2) when streaming is cut; with ha: manual, hot standbys built by the playbooks
    that do the same (playbooks/pg_dr_promote.yml promotes them). `dbfleet dr promote` makes it the primary site.
    On AWS stacks/ builds its network (on `vpc_cidr`) and hosts."""

    hosts: Annotated[list[HostRef], Field(min_length=1)]
    region: AwsRegion
    vpc_cidr: VpcCidr | None = None
    """The standby site's VPC on AWS, apart from fleet.vpc_cidr and every other standby site's (the VPCs are
    peered); the lab ignores it, and stacks/ refuses a standby site without it."""
    old_site: Literal["fence", "report"] = "report"
    """What the operator does when, after `dbfleet dr promote`, the old primary site answers again and its leader
    accepts writes: `fence` makes it a standby cluster of the promoted site in the next cycle (a destructive
    fence-site, shown in plan first; ha: patroni only); `report` reports it, and `dr promote` run again fences it
    (with ha: manual, the operator does not watch the old site: `dr promote` run again is the way)."""


DR_MIN_RPO = 30
"""The smallest rpo_seconds: PostgreSQL's archive_timeout is half of it, and below 15 s a quiet server would
archive a mostly empty 16 MB segment several times a minute."""


class DrPolicy(Strict):
    """Disaster recovery: every backup also written to a second target, drilled from there on a schedule."""

    target: BackupTarget
    rpo_seconds: Annotated[int, Field(ge=DR_MIN_RPO, le=7 * 86400)] = 300
    """The data loss the user accepts, in seconds: the DR drill's RPO alert fires above it; for PostgreSQL
    archive_timeout is half of it, so a WAL segment reaches both repositories well within it."""
    drill: DrDrill = DrDrill()
    standby: StandbySite | None = None

    @property
    def archive_timeout(self) -> int:
        """PostgreSQL's archive_timeout under this policy, in seconds (half the RPO: the other half is the push
        to both repositories)."""
        return self.rpo_seconds // 2


# --------------------------------------------------------------------------- indexes


class DetectionRule(Strict):
    """What to do with one class of detected index: report it, and maybe drop it."""

    report: bool = True
    drop: bool = False


class UnusedRule(DetectionRule):
    min_stats_age_days: Annotated[int, Field(ge=0, le=3650)] = 7


class InvalidRule(Strict):
    report: bool = True
    rebuild: bool = True


def _one_select(query: str) -> str:
    try:
        one_select(query)
    except UnsafeQuery as exc:
        raise ValueError(f"{exc}; the advisor explains exactly one SELECT") from None
    return query


class MissingRule(Strict):
    report: bool = True
    min_seq_scans: Annotated[int, Field(ge=1)] = 50
    min_rows: Annotated[int, Field(ge=1)] = 10000
    min_cost_reduction: Annotated[float, Field(gt=0, le=1)] = 0.5
    queries: list[Annotated[str, Field(min_length=1), AfterValidator(_one_select)]] = []
    """Queries to explain for missing-index advice: each must be one plain SELECT."""


class PgIndex(Strict):
    """A declared PostgreSQL index. Each column and the predicate are checked with PostgreSQL's own parser:
    one index element each, and one expression, so none can add a clause or a statement of its own."""

    database: Annotated[str, Field(pattern=IDENT)]
    table: Annotated[str, Field(pattern=QUALIFIED_IDENT)]
    name: Annotated[str, Field(pattern=IDENT)]
    columns: Annotated[list[Annotated[str, Field(min_length=1), AfterValidator(check_index_column)]],
                       Field(min_length=1)]
    unique: bool = False
    method: Literal["btree", "hash", "gin", "gist", "brin"] = "btree"
    where: Annotated[str, AfterValidator(check_index_predicate)] | None = None


class MongoIndex(Strict):
    """A declared MongoDB index, created through mongos."""

    database: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,63}$")]
    collection: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,119}$")]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,127}$")]
    keys: Annotated[list[dict[str, Literal[1, -1, "hashed", "text", "2dsphere"]]], Field(min_length=1)]
    unique: bool = False
    partial: dict[str, Any] | None = None
    ttl_seconds: Annotated[int | None, Field(ge=0)] = None

    @field_validator("keys")
    @classmethod
    def _one_field_each(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for key in value:
            if len(key) != 1:
                raise ValueError("each key is a one-entry mapping such as {user_id: 1}")
        return value

    @model_validator(mode="after")
    def _ttl_single(self) -> MongoIndex:
        if self.ttl_seconds is not None and len(self.keys) != 1:
            raise ValueError("ttl_seconds needs a single-field index")
        return self


def _index_kind(value: Any) -> str:
    """Which list `declared` is, from its first entry, so a mistake in one is not also reported as the other."""
    first = value[0] if isinstance(value, (list, tuple)) and value else None
    keys = set(first) if isinstance(first, dict) else set(type(first).model_fields) if isinstance(first, BaseModel) \
        else set()
    return "mongo" if "collection" in keys or "keys" in keys else "pg"


class IndexPolicy(Strict):
    declared: Annotated[Annotated[list[PgIndex], Tag("pg")] | Annotated[list[MongoIndex], Tag("mongo")],
                        Discriminator(_index_kind)] = []
    unused: UnusedRule = UnusedRule()
    duplicate: DetectionRule = DetectionRule()
    invalid: InvalidRule = InvalidRule()
    missing: MissingRule = MissingRule()


# --------------------------------------------------------------------------- maintenance


class MaintenanceWindow(Strict):
    """When data may be rewritten (REINDEX, pg_repack, debris dropped): from each `start` to the next `end`, UTC.

    Both are five-field cron expressions; the window is open when the latest start at or before now is later
    than the latest end at or before now (a minute where both fire closes it)."""

    start: Annotated[str, AfterValidator(_check_cron)]
    end: Annotated[str, AfterValidator(_check_cron)]

    @model_validator(mode="after")
    def _distinct(self) -> MaintenanceWindow:
        if " ".join(self.start.split()) == " ".join(self.end.split()):
            raise ValueError("end: the same expression as start, so the window would never open")
        return self


class IndexBloatPolicy(Strict):
    """B-tree index bloat: measured each cycle, reported over max_ratio, rebuilt concurrently in the window."""

    max_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.3
    """Wasted bytes over the index's size above which an index is called bloated."""
    action: Literal["report", "reindex"] = "report"
    disk_margin: Annotated[float, Field(ge=1, le=100)] = 2.0
    """A rebuild runs only while free disk on the primary exceeds the index's size times this."""
    exact_below: Annotated[str, Field(pattern=SIZE)] = "100mb"
    """Indexes smaller than this are measured exactly (pgstatindex reads them); larger ones are estimated
    from the catalog statistics."""
    clean_debris: bool = False
    """Drop the invalid _ccnew/_ccold copies an interrupted REINDEX CONCURRENTLY left, in the window."""


class TableBloatPolicy(Strict):
    """Table bloat: measured each cycle, reported over max_ratio, repacked with pg_repack in the window."""

    max_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.3
    action: Literal["report", "repack"] = "report"
    disk_margin: Annotated[float, Field(ge=1, le=100)] = 2.0
    """pg_repack runs only while free disk on the primary exceeds the table's total size times this."""
    exact_below: Annotated[str, Field(pattern=SIZE)] = "100mb"
    """Tables smaller than this are measured with pgstattuple_approx; larger ones estimated from statistics."""


class VacuumHealth(Strict):
    """Thresholds for the vacuum findings and alerts: dead tuples, autovacuum lag, transaction ID wraparound."""

    dead_tuple_ratio_max: Annotated[float, Field(gt=0, le=1)] = 0.2
    min_dead_tuples: Annotated[int, Field(ge=0)] = 10000
    """A table with fewer dead tuples than this is never reported (a small table's ratio swings)."""
    autovacuum_age_max: Annotated[str, Field(pattern=DURATION)] = "1d"
    """A table over dead_tuple_ratio_max whose last (auto)vacuum is older than this: autovacuum is behind."""
    xid_age_max: Annotated[int, Field(ge=1_000_000, le=2_000_000_000)] = 1_000_000_000
    """age(datfrozenxid) above which wraparound is reported; PostgreSQL stops writes near 2^31."""
    mxid_age_max: Annotated[int, Field(ge=1_000_000, le=2_000_000_000)] = 1_000_000_000


ScaleFactor = Annotated[float, Field(ge=0, le=100)]
Threshold = Annotated[int, Field(ge=0, le=2_147_483_647)]
FreezeAge = Annotated[int, Field(ge=0, le=2_000_000_000)]


class AutovacuumSettings(Strict):
    """Per-table autovacuum storage parameters: only these names, each with PostgreSQL's type and range."""

    autovacuum_enabled: bool | None = None
    autovacuum_vacuum_threshold: Threshold | None = None
    autovacuum_vacuum_scale_factor: ScaleFactor | None = None
    autovacuum_vacuum_insert_threshold: Annotated[int, Field(ge=-1, le=2_147_483_647)] | None = None
    autovacuum_vacuum_insert_scale_factor: ScaleFactor | None = None
    autovacuum_analyze_threshold: Threshold | None = None
    autovacuum_analyze_scale_factor: ScaleFactor | None = None
    autovacuum_vacuum_cost_delay: Annotated[float, Field(ge=-1, le=100)] | None = None
    autovacuum_vacuum_cost_limit: Annotated[int, Field(ge=-1, le=10000)] | None = None
    autovacuum_freeze_min_age: Annotated[int, Field(ge=0, le=1_000_000_000)] | None = None
    autovacuum_freeze_max_age: Annotated[int, Field(ge=100_000, le=2_000_000_000)] | None = None
    autovacuum_freeze_table_age: FreezeAge | None = None
    autovacuum_multixact_freeze_min_age: Annotated[int, Field(ge=0, le=1_000_000_000)] | None = None
    autovacuum_multixact_freeze_max_age: Annotated[int, Field(ge=10_000, le=2_000_000_000)] | None = None
    autovacuum_multixact_freeze_table_age: FreezeAge | None = None
    log_autovacuum_min_duration: Annotated[int, Field(ge=-1, le=2_147_483_647)] | None = None

    def declared(self) -> dict[str, bool | int | float]:
        """The settings given, by name."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class TableAutovacuum(Strict):
    """Autovacuum settings declared for one table, applied with ALTER TABLE ... SET (...)."""

    database: Annotated[str, Field(pattern=IDENT)]
    table: Annotated[str, Field(pattern=QUALIFIED_IDENT)]
    settings: AutovacuumSettings

    @model_validator(mode="after")
    def _some(self) -> TableAutovacuum:
        if not self.settings.declared():
            raise ValueError("settings: name at least one autovacuum setting")
        return self


class PostgresMaintenance(Strict):
    """A PostgreSQL cluster's maintenance policy (README: Maintenance)."""

    window: MaintenanceWindow | None = None
    """None: nothing that rewrites data ever runs; bloat is only reported."""
    lock_timeout: Annotated[str, Field(pattern=r"^[0-9]+(ms|s)$")] = "5s"
    """How long a rebuild or repack waits for a lock before giving up (and so how long it can block others)."""
    index_bloat: IndexBloatPolicy = IndexBloatPolicy()
    table_bloat: TableBloatPolicy = TableBloatPolicy()
    vacuum: VacuumHealth = VacuumHealth()
    autovacuum: list[TableAutovacuum] = []

    @field_validator("lock_timeout")
    @classmethod
    def _bounded_lock_timeout(cls, value: str) -> str:
        ms = lock_timeout_ms(value)
        if not 1 <= ms <= 600_000:
            raise ValueError(f"{value!r}: expected from 1ms to 600s")
        return value

    @field_validator("autovacuum")
    @classmethod
    def _once_per_table(cls, value: list[TableAutovacuum]) -> list[TableAutovacuum]:
        seen: set[tuple[str, str]] = set()
        for entry in value:
            key = (entry.database, entry.table if "." in entry.table else f"public.{entry.table}")
            if key in seen:
                raise ValueError(f"{entry.database}/{entry.table} is declared twice; merge its settings")
            seen.add(key)
        return value


def lock_timeout_ms(value: str) -> int:
    """'250ms' or '5s' in milliseconds."""
    return int(value[:-2]) if value.endswith("ms") else int(value[:-1]) * 1000


def size_bytes(value: str) -> int:
    """'512kb', '1gb' (the SIZE pattern) in bytes."""
    digits = value.rstrip("bkmg")
    return int(digits) * {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}[value[len(digits):]]


class RedisFragmentation(Strict):
    """Redis memory fragmentation: active defragmentation on the servers, and when to alert."""

    activedefrag: bool = False
    max_ratio: Annotated[float, Field(gt=1, le=100)] = 1.5
    """mem_fragmentation_ratio above which RedisFragmentationHigh fires..."""
    min_used: Annotated[str, Field(pattern=SIZE)] = "100mb"
    """... once the server uses at least this much memory (a small dataset's ratio means little)."""


class RedisMaintenance(Strict):
    fragmentation: RedisFragmentation = RedisFragmentation()


# --------------------------------------------------------------------------- monitoring


class AlertThresholds(Strict):
    replica_lag_seconds: Annotated[float, Field(gt=0)] = 30
    replica_lag_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    replica_down_for: Annotated[str, Field(pattern=DURATION)] = "1m"
    cache_hit_ratio_min: Annotated[float, Field(gt=0, le=1)] = 0.9
    disk_used_percent_max: Annotated[float, Field(gt=0, le=100)] = 80
    connections_used_percent_max: Annotated[float, Field(gt=0, le=100)] = 80
    memory_used_percent_max: Annotated[float, Field(gt=0, le=100)] = 90


class MonitoringPolicy(Strict):
    enabled: bool = True
    scrape_interval: Annotated[str, Field(pattern=DURATION)] = "15s"
    alerts: AlertThresholds = AlertThresholds()


# --------------------------------------------------------------------------- clusters


class TLS(Strict):
    enabled: bool = True
    ca_cert: AbsolutePath | None = None
    """Path to a CA certificate to trust; None makes the play generate a lab CA."""
    ca_key: AbsolutePath | None = None


CLIENT_REACH = {4: 8, 6: 32}
"""The widest the allowed_clients of one cluster may reach together, as a prefix length per IP version: all of
10.0.0.0/8, or one provider's /32 of IPv6. Two /1s are every address as surely as one /0."""


def check_client_reach(nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
    """Refuse client networks whose union, per IP version, holds more addresses than CLIENT_REACH allows."""
    for version, prefix in CLIENT_REACH.items():
        family: list[Any] = [net for net in nets if net.version == version]
        covered: int = sum(net.num_addresses for net in ipaddress.collapse_addresses(family))
        bound = 2 ** ((32 if version == 4 else 128) - prefix)
        if covered > bound:
            raise ValueError(f"together they cover {covered} IPv{version} addresses, more than a /{prefix} "
                             f"({bound}); name the clients' own networks")


class ClusterBase(Strict):
    name: Annotated[str, Field(pattern=CLUSTER_NAME)]
    version: str
    instance: Instance = Instance()
    tls: TLS = TLS()
    backup: BackupPolicy = BackupPolicy()
    dr: DrPolicy | None = None
    """Disaster recovery: a second backup target, drilled on its own schedule; None: one target only."""
    monitoring: MonitoringPolicy = MonitoringPolicy()
    allowed_clients: list[str] = []
    """CIDRs of application clients allowed in besides the fleet's own hosts."""

    @field_validator("allowed_clients")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for cidr in value:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR such as 10.0.0.0/16") from None
            if net.prefixlen == 0:
                raise ValueError(f"{cidr!r} opens the cluster to every address; name a narrower CIDR")
            if net not in nets:
                nets.append(net)
        check_client_reach(nets)
        return [str(net) for net in nets]

    @model_validator(mode="after")
    def _known_version(self) -> ClusterBase:
        engine: str = getattr(self, "engine")  # noqa: B009  (each engine's subclass declares it as a Literal)
        if self.version not in SUPPORTED_VERSIONS[engine]:
            raise ValueError(
                f"version: {self.version!r} of {engine} is not supported; expected one of "
                + ", ".join(SUPPORTED_VERSIONS[engine])
            )
        return self

    @model_validator(mode="after")
    def _dr_beside_backup(self) -> ClusterBase:
        """dr needs backups it can copy, to a place apart from them; a standby site is PostgreSQL's."""
        dr = self.dr
        if dr is None:
            return self
        if "backup" not in self.model_fields_set or not self.backup.enabled:
            raise ValueError("dr: needs a backup section with backups enabled: dr writes every backup a second time")
        overlap = same_place(self.backup.target, dr.target)
        if overlap:
            raise ValueError(f"dr.target.{overlap[0]}: {overlap[1]} as backup.target; the second copy must be apart "
                             "from the first")
        first = self.backup.target
        if isinstance(first, S3Target) and isinstance(dr.target, S3Target) and same_endpoint(first, dr.target) \
                and first.region == dr.target.region:
            raise ValueError(f"dr.target.region: {dr.target.region} is the region of backup.target (bucket "
                             f"{first.bucket!r}); the second copy belongs in another region than the first")
        engine: str = getattr(self, "engine")  # noqa: B009
        if dr.standby is not None and engine != "postgres":
            raise ValueError(f"dr.standby: a standby site is PostgreSQL's; {engine} has none")
        if dr.standby is not None and dr.standby.old_site == "fence" \
                and getattr(self, "ha") != "patroni":  # noqa: B009  (PostgresCluster's field)
            raise ValueError("dr.standby.old_site: fence needs ha: patroni; with ha: manual the operator does not "
                             "watch a returning old site: run `dbfleet dr promote` again once it is back, which "
                             "fences it (old_site: report)")
        return self

    def host_names(self) -> list[str]:
        return [h.name for h in self.all_hosts()]

    def all_hosts(self) -> list[Host]:  # pragma: no cover - overridden
        raise NotImplementedError

    def machines(self) -> list[Host]:
        """Every host the cluster needs (PostgreSQL adds its etcd and HAProxy hosts of their own)."""
        return self.all_hosts()


class Synchronous(Strict):
    enabled: bool = False
    num_sync: Annotated[int, Field(ge=1)] = 1
    strict: bool = False
    """ha: patroni only: never acknowledge a commit without num_sync replicas, even when none is left
    (Patroni's synchronous_mode_strict). Without it Patroni lets the primary write alone once no replica remains."""


class Etcd(Strict):
    """The DCS Patroni keeps its leader lock in: an etcd 3.4 cluster from Debian, with TLS and authentication."""

    hosts: list[HostRef] = []
    """The members; empty means the first of the cluster's `hosts`, an odd number of them up to five."""
    client_port: Annotated[int, Field(ge=1024, le=65535)] = 2379
    peer_port: Annotated[int, Field(ge=1024, le=65535)] = 2380


class Patroni(Strict):
    """Patroni's timings and behaviour (its dynamic configuration); see README "PostgreSQL: high availability"."""

    ttl: Annotated[int, Field(ge=5, le=3600)] = 30
    """Seconds the leader lock lives without a renewal: an unplanned failover starts at most this long after the
    primary stops renewing it."""
    loop_wait: Annotated[int, Field(ge=1, le=600)] = 10
    retry_timeout: Annotated[int, Field(ge=1, le=600)] = 10
    """Seconds a DCS or PostgreSQL operation is retried before the primary demotes itself."""
    primary_start_timeout: Annotated[int, Field(ge=0, le=3600)] = 300
    """After the primary's PostgreSQL crashes, seconds Patroni tries to restart it in place before failing over."""
    maximum_lag_on_failover: Annotated[int, Field(ge=0)] = 1048576
    failsafe_mode: bool = True
    """With etcd's quorum lost, keep the primary while every member still answers it (Patroni's failsafe_mode);
    false demotes it after retry_timeout."""
    rest_api_port: Annotated[int, Field(ge=1024, le=65535)] = 8008
    on_diverged: Literal["report", "rewind"] = "report"
    """A replica that replayed past its leader's fork point (an asynchronous replica restoring the old timeline's
    WAL from the archive after Patroni's one check at the change of leader) can follow no one. `rewind` lets the
    operator restart Patroni on it, and Patroni's start-up check rewinds it with pg_rewind, discarding its WAL
    past the fork, which the leader never had; `report` only reports it."""
    etcd: Etcd = Etcd()


class Endpoints(Strict):
    """HAProxy in front of the cluster: one port that reaches the primary, one that reaches the replicas."""

    hosts: list[HostRef] = []
    """Where HAProxy runs; empty means the cluster's PostgreSQL hosts."""
    rw_port: Annotated[int, Field(ge=1024, le=65535)] = 5000
    ro_port: Annotated[int, Field(ge=1024, le=65535)] = 5001


_MANAGED = "managed by dbfleet (from port, tls, synchronous and the replication and archiving it sets up)"
_RUNS_COMMAND = "runs a shell command as the server's user"
_LOADS_CODE = "loads code into the server"
_MOVES_FILE = "moves a file dbfleet manages"
_WRITES_FILE = "writes a file wherever it names"
_REFUSED_PARAMETERS: dict[str, str] = {
    **dict.fromkeys(("listen_addresses", "port", "ssl", "wal_level", "archive_mode", "archive_command",
                     "hot_standby", "password_encryption", "primary_conninfo", "primary_slot_name",
                     "synchronous_standby_names"), _MANAGED),
    **dict.fromkeys(("restore_command", "archive_cleanup_command", "recovery_end_command",
                     "ssl_passphrase_command"), _RUNS_COMMAND),
    **dict.fromkeys(("shared_preload_libraries", "local_preload_libraries", "session_preload_libraries",
                     "dynamic_library_path", "archive_library", "jit_provider"), _LOADS_CODE),
    **dict.fromkeys(("data_directory", "config_file", "hba_file", "ident_file", "unix_socket_directories",
                     "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "ssl_crl_file", "ssl_crl_dir",
                     "ssl_dh_params_file"), _MOVES_FILE),
    **dict.fromkeys(("external_pid_file", "log_directory", "log_filename"), _WRITES_FILE),
    **dict.fromkeys(("include", "include_dir", "include_if_exists"), "reads another configuration file"),
}
"""PostgreSQL settings `parameters` may not set, and why. dbfleet.conf is read after postgresql.conf and the
spec's parameters come last in it, so each of these would override what dbfleet set, or hand the spec author a
way to run or load code, or to read and write files, as the server's user."""


def parameter_refusal(name: str) -> str | None:
    """Why the spec may not set PostgreSQL setting `name`, or None when it may."""
    if name in _REFUSED_PARAMETERS:
        return _REFUSED_PARAMETERS[name]
    if name.startswith("ssl"):
        return "TLS settings are dbfleet's, set from the cluster's tls section"
    if name.startswith("pgaudit."):
        return "pgaudit is set from the cluster's audit section"
    return None


PGAUDIT_CLASSES = ("read", "write", "function", "role", "ddl", "misc", "misc_set", "all")
"""pgaudit's statement classes for pgaudit.log (a class prefixed with '-' is subtracted, as in 'all, -misc')."""


def _check_audit_class(value: str) -> str:
    if value.removeprefix("-") not in PGAUDIT_CLASSES or value == "-all":
        raise ValueError(f"{value!r} is not a pgaudit class; expected one of {', '.join(PGAUDIT_CLASSES)}, "
                         "or one of them after '-' to subtract it")
    return value


class PgAudit(Strict):
    """pgaudit's session audit logging: which statement classes the server log records, with an AUDIT line."""

    log: Annotated[list[Annotated[str, AfterValidator(_check_audit_class)]], Field(min_length=1)]
    log_catalog: bool = False
    """Also statements that touch only pg_catalog (psql's \\d and the exporters' queries): noise, off by default."""
    log_parameter: bool = False
    log_relation: bool = False

    @field_validator("log")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        repeated = sorted({c for c in value if value.count(c) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once")
        if all(c.startswith("-") for c in value):
            raise ValueError("only subtracted classes: name what to log, such as [all, -misc]")
        return value


def _check_maintenance(maintenance: PostgresMaintenance, databases: list[str]) -> None:
    for i, entry in enumerate(maintenance.autovacuum):
        if entry.database not in databases:
            raise ValueError(f"maintenance.autovacuum.{i}.database: {entry.database!r} is not one of "
                             f"databases {databases}")
    if maintenance.window is None:
        for part, action in (("index_bloat", maintenance.index_bloat.action),
                             ("table_bloat", maintenance.table_bloat.action)):
            if action != "report":
                raise ValueError(f"maintenance.{part}.action: {action} needs maintenance.window, the hours "
                                 "when data may be rewritten")
        if maintenance.index_bloat.clean_debris:
            raise ValueError("maintenance.index_bloat.clean_debris: needs maintenance.window")


class PostgresCluster(ClusterBase):
    engine: Literal["postgres"]
    version: str = "15"
    ha: Literal["manual", "patroni"] = "manual"
    """manual: switchover with playbooks/pg_switchover.yml. patroni: Patroni on etcd fails over by itself."""
    hosts: Annotated[list[HostRef], Field(min_length=1)]
    """The first host is the initial primary."""
    replicas: Annotated[int, Field(ge=0)]
    port: Annotated[int, Field(ge=1024, le=65535)] = 5432
    databases: list[Annotated[str, Field(pattern=IDENT)]] = ["app"]
    parameters: dict[Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_.]*$")], str | int | float | bool] = {}
    synchronous: Synchronous = Synchronous()
    patroni: Patroni = Patroni()
    endpoints: Endpoints = Endpoints()
    indexes: IndexPolicy = IndexPolicy()
    audit: PgAudit | None = None
    """pgaudit on every host of the cluster; None: not loaded."""
    maintenance: PostgresMaintenance | None = None
    """Bloat, vacuum health and the window to act in; None: the maintenance reconciler leaves the cluster alone."""

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, str | int | float | bool]) -> dict[str, str | int | float | bool]:
        for name, setting in sorted(value.items()):
            why = parameter_refusal(name)
            if why:
                raise ValueError(f"{name}: {why}; it cannot be set in parameters")
            bad = control_character(setting) if isinstance(setting, str) else None
            if bad:
                raise ValueError(f"{name}: the value holds the control character {bad}; a setting is one line")
        return value

    @model_validator(mode="after")
    def _topology(self) -> PostgresCluster:
        if self.replicas > len(self.hosts) - 1:
            raise ValueError(
                f"replicas: {self.replicas} replicas need {self.replicas + 1} hosts, "
                f"but hosts lists {len(self.hosts)}"
            )
        if self.synchronous.enabled and self.synchronous.num_sync > self.replicas:
            raise ValueError(
                f"synchronous.num_sync: {self.synchronous.num_sync} is more than the {self.replicas} replicas"
            )
        if self.indexes.declared and not isinstance(self.indexes.declared[0], PgIndex):
            raise ValueError("indexes.declared: PostgreSQL indexes take table and columns")
        for i, idx in enumerate(self.indexes.declared):
            if isinstance(idx, PgIndex) and idx.database not in self.databases:
                raise ValueError(
                    f"indexes.declared.{i}.database: {idx.database!r} is not one of databases {self.databases}"
                )
        self._check_ha()
        canary = self.backup.drill.canary
        if canary is not None:
            parts = canary.split(".")
            if len(parts) > 3 or not all(re.fullmatch(IDENT, part) for part in parts):
                raise ValueError(f"backup.drill.canary: {canary!r} is not 'table', 'schema.table' "
                                 "or 'database.schema.table'")
            if len(parts) == 3 and parts[0] not in self.databases:
                raise ValueError(f"backup.drill.canary: database {parts[0]!r} is not one of databases "
                                 f"{self.databases}")
        if self.maintenance is not None:
            _check_maintenance(self.maintenance, self.databases)
        if self.dr is not None and "archive_timeout" in self.parameters:
            raise ValueError(f"parameters.archive_timeout: set by dr.rpo_seconds (half of it, "
                             f"{self.dr.archive_timeout}s); remove it from parameters")
        return self

    def _check_ha(self) -> None:
        """What ha: patroni needs, and the keys that mean nothing without it."""
        if self.ha == "manual":
            for key in ("patroni", "endpoints"):
                if key in self.model_fields_set:
                    raise ValueError(f"{key}: only used with ha: patroni (this cluster has ha: manual)")
            if self.synchronous.strict:
                raise ValueError("synchronous.strict: only with ha: patroni; with ha: manual synchronous "
                                 "replication is set once the replicas stream")
            return
        p = self.patroni
        if p.loop_wait + 2 * p.retry_timeout > p.ttl:
            raise ValueError(f"patroni.ttl: {p.ttl} is less than loop_wait + 2 * retry_timeout "
                             f"({p.loop_wait} + 2 * {p.retry_timeout}); the primary could lose the leader lock "
                             "while it still retries")
        if self.synchronous.strict and not self.synchronous.enabled:
            raise ValueError("synchronous.strict: needs synchronous.enabled: true")
        members = self.etcd_hosts()
        names = [h.name for h in members]
        if len(set(names)) != len(names):
            raise ValueError(f"patroni.etcd.hosts: {names} names a host twice")
        if len(members) < 3 or len(members) % 2 == 0:
            where = "patroni.etcd.hosts" if p.etcd.hosts else "hosts"
            raise ValueError(f"{where}: etcd needs an odd number of members, at least 3, to keep a quorum when one "
                             f"is lost; got {len(members)} ({', '.join(names)})"
                             + ("" if p.etcd.hosts else "; name them under patroni.etcd.hosts"))
        proxies = [h.name for h in self.endpoint_hosts()]
        if len(set(proxies)) != len(proxies):
            raise ValueError(f"endpoints.hosts: {proxies} names a host twice")
        ports = {"port": self.port, "endpoints.rw_port": self.endpoints.rw_port,
                 "endpoints.ro_port": self.endpoints.ro_port, "patroni.rest_api_port": p.rest_api_port,
                 "patroni.etcd.client_port": p.etcd.client_port, "patroni.etcd.peer_port": p.etcd.peer_port}
        seen: dict[int, str] = {}
        for key, port in ports.items():
            if port in seen:
                raise ValueError(f"{key}: {port} is already {seen[port]}")
            seen[port] = key

    def all_hosts(self) -> list[Host]:
        """The PostgreSQL servers: the first host is the initial primary."""
        return [_as_host(h) for h in self.hosts[: self.replicas + 1]]

    def etcd_hosts(self) -> list[Host]:
        """etcd's members (ha: patroni): those the spec names, else the first of `hosts`, as many as make an odd
        count up to five (3 of 3 or 4 hosts, 5 of 5 or more). `hosts`, not the servers `replicas` keeps, so
        etcd's membership does not change when the replica count does."""
        if self.ha != "patroni":
            return []
        if self.patroni.etcd.hosts:
            return [_as_host(h) for h in self.patroni.etcd.hosts]
        declared = [_as_host(h) for h in self.hosts]
        count = min(5, len(declared) if len(declared) % 2 else len(declared) - 1)
        return declared[:max(count, 1)]

    def endpoint_hosts(self) -> list[Host]:
        """Where HAProxy runs (ha: patroni): the hosts the spec names, else the PostgreSQL hosts."""
        if self.ha != "patroni":
            return []
        return [_as_host(h) for h in self.endpoints.hosts] or self.all_hosts()

    def machines(self) -> list[Host]:
        """Every host the cluster needs: its PostgreSQL servers, then etcd and HAProxy hosts of their own."""
        found = {h.name: h for h in self.all_hosts()}
        for host in self.etcd_hosts() + self.endpoint_hosts():
            found.setdefault(host.name, host)
        return list(found.values())

    def standby_hosts(self) -> list[Host]:
        """The standby site's PostgreSQL servers (dr.standby), the first its standby leader at the start; none
        without a standby site."""
        if self.dr is None or self.dr.standby is None:
            return []
        return [_as_host(h) for h in self.dr.standby.hosts]

    @property
    def primary(self) -> str:
        return self.all_hosts()[0].name


class ReplicaSet(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")]
    members: Annotated[list[HostRef], Field(min_length=1, max_length=7)]

    def hosts(self) -> list[Host]:
        return [_as_host(h) for h in self.members]


class ShardedCollection(Strict):
    database: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,63}$")]
    collection: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,119}$")]
    key: Annotated[dict[str, Literal[1, "hashed"]], Field(min_length=1)]
    zones: dict[str, list[Any]] = {}


class BalancerWindow(Strict):
    start: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    stop: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


class Zone(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,63}$")]
    shards: Annotated[list[str], Field(min_length=1)]


class MongoCluster(ClusterBase):
    engine: Literal["mongo"]
    version: str = "7.0"
    config_servers: ReplicaSet
    shards: Annotated[list[ReplicaSet], Field(min_length=1)]
    mongos: Annotated[list[HostRef], Field(min_length=1)]
    port: Annotated[int, Field(ge=1024, le=65535)] = 27017
    sharded_collections: list[ShardedCollection] = []
    balancer_window: BalancerWindow | None = None
    zones: list[Zone] = []
    indexes: IndexPolicy = IndexPolicy()

    @model_validator(mode="after")
    def _topology(self) -> MongoCluster:
        names = [self.config_servers.name] + [s.name for s in self.shards]
        if len(set(names)) != len(names):
            raise ValueError(f"shards: replica set names must be unique, got {names}")
        shard_names = {s.name for s in self.shards}
        for zone in self.zones:
            unknown = set(zone.shards) - shard_names
            if unknown:
                raise ValueError(f"zones.{zone.name}: unknown shards {sorted(unknown)}")
        if self.indexes.declared and not isinstance(self.indexes.declared[0], MongoIndex):
            raise ValueError("indexes.declared: MongoDB indexes take collection and keys")
        canary = self.backup.drill.canary
        if canary is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,62}\.[^$\s][^$]{0,119}", canary):
            raise ValueError(f"backup.drill.canary: {canary!r} is not 'database.collection'")
        return self

    def all_hosts(self) -> list[Host]:
        hosts = list(self.config_servers.hosts())
        for shard in self.shards:
            hosts.extend(shard.hosts())
        hosts.extend(_as_host(h) for h in self.mongos)
        return hosts


class RedisCluster(ClusterBase):
    engine: Literal["redis"]
    version: str = "7"
    hosts: Annotated[list[HostRef], Field(min_length=1)]
    """The first host is the initial primary."""
    replicas: Annotated[int, Field(ge=0)]
    sentinels: Annotated[list[HostRef], Field(min_length=1)]
    quorum: Annotated[int | None, Field(ge=1)] = None
    port: Annotated[int, Field(ge=1024, le=65535)] = 6379
    sentinel_port: Annotated[int, Field(ge=1024, le=65535)] = 26379
    persistence: Literal["rdb", "aof", "rdb+aof", "none"] = "rdb+aof"
    maxmemory: Annotated[str, Field(pattern=SIZE)] = "256mb"
    maxmemory_policy: Literal[
        "noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random",
        "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl",
    ] = "noeviction"
    min_replicas_to_write: Annotated[int, Field(ge=0)] = 1
    min_replicas_max_lag: Annotated[int, Field(ge=1, le=3600)] = 10
    down_after_ms: Annotated[int, Field(ge=100)] = 5000
    failover_timeout_ms: Annotated[int, Field(ge=1000)] = 60000
    maintenance: RedisMaintenance = RedisMaintenance()
    tls: TLS = TLS(enabled=False)
    """Off unless asked for: the roles do not switch a running plaintext cluster to TLS in place (README, Redis)."""

    @model_validator(mode="after")
    def _topology(self) -> RedisCluster:
        if self.replicas > len(self.hosts) - 1:
            raise ValueError(
                f"replicas: {self.replicas} replicas need {self.replicas + 1} hosts, "
                f"but hosts lists {len(self.hosts)}"
            )
        if self.min_replicas_to_write > self.replicas:
            raise ValueError(
                f"min_replicas_to_write: {self.min_replicas_to_write} is more than the "
                f"{self.replicas} replicas, so the primary could never accept a write"
            )
        if self.effective_quorum > len(self.sentinels):
            raise ValueError(
                f"quorum: {self.effective_quorum} is more than the {len(self.sentinels)} sentinels"
            )
        if self.port == self.sentinel_port:
            raise ValueError("sentinel_port: must differ from port")
        return self

    @property
    def effective_quorum(self) -> int:
        return self.quorum if self.quorum is not None else len(self.sentinels) // 2 + 1

    def data_hosts(self) -> list[Host]:
        return [_as_host(h) for h in self.hosts[: self.replicas + 1]]

    def sentinel_hosts(self) -> list[Host]:
        return [_as_host(h) for h in self.sentinels]

    def all_hosts(self) -> list[Host]:
        data = self.data_hosts()
        names = {h.name for h in data}
        return data + [h for h in self.sentinel_hosts() if h.name not in names]

    @property
    def primary(self) -> str:
        return self.data_hosts()[0].name


Cluster = Annotated[PostgresCluster | MongoCluster | RedisCluster, Field(discriminator="engine")]


class FleetMeta(Strict):
    name: Annotated[str, Field(pattern=CLUSTER_NAME)]
    environment: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,20}$")] = "lab"
    region: AwsRegion = "us-east-1"
    vpc_cidr: VpcCidr = "10.40.0.0/16"


class OperatorMetrics(Strict):
    """How the operator serves /metrics to the fleet's Prometheus (dbfleet.monitoring.endpoint)."""

    tls: bool = False
    """HTTPS with the certificate the pki role makes for the operator's address from the fleet CA."""
    basic_auth: bool = False
    """Require `username` and the secrets file's operator_metrics_password; Prometheus sends them."""
    username: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "prometheus"

    @model_validator(mode="after")
    def _password_only_over_tls(self) -> OperatorMetrics:
        if self.basic_auth and not self.tls:
            raise ValueError("basic_auth: needs tls: true, or the password crosses the network in clear")
        return self


class FleetMonitoring(Strict):
    """Where the fleet's Prometheus runs, and where and how the operator serves /metrics."""

    host: Annotated[str, Field(pattern=HOST_NAME)] = "monitor-1"
    prometheus_port: Annotated[int, Field(ge=1024, le=65535)] = 9090
    operator_metrics_port: Annotated[int, Field(ge=1024, le=65535)] = 9640
    operator_metrics: OperatorMetrics = OperatorMetrics()


LeaderBackend = Literal["etcd", "postgres", "file"]
"""Where the operators' leader lock lives (README "One leader")."""


class JobLimits(Strict):
    """How many long jobs the leader runs at once, fleet-wide (dbfleet.backups.job_runner). A due job beyond the
    limit waits for a later cycle; at most one job of a kind runs per cluster whatever the limit. A user's
    `dbfleet restore` is not the operator's and not counted here: one restore per cluster at a time, from either
    target, each in the process of the command that runs it."""

    backups: Annotated[int, Field(ge=1, le=64)] = 2
    """Backups at once: they share the backup target's storage and network."""
    drills: Annotated[int, Field(ge=1, le=16)] = 1
    """Restore drills at once, drills and DR drills (`dr-drill`) together: each starts a scratch server and reads
    a whole backup back."""
    rewrites: Annotated[int, Field(ge=1, le=16)] = 2
    """Maintenance rewrites (REINDEX INDEX CONCURRENTLY, pg_repack) at once, one per cluster at most: each reads
    and writes a whole relation on its primary, in the clusters' maintenance windows."""
    running_alert_after: Annotated[str, Field(pattern=DURATION)] = "12h"
    """OperatorJobRunningLong fires for a job that has run this long: stuck, or far bigger than its schedule
    allows for."""
    waiting_alert_after: Annotated[str, Field(pattern=DURATION)] = "2h"
    """OperatorJobsQueued fires once due jobs have waited for a free slot this long without a pause: the limits
    above are too low for the fleet."""


class OperatorSettings(Strict):
    """How the fleet's operators agree which one of them acts (dbfleet.wiring.leader_lock), and how many long jobs
    the leader runs at once."""

    leader: LeaderBackend | None = None
    """`etcd`: a lease in the etcd of a PostgreSQL cluster with ha: patroni; `postgres`: an advisory lock on a
    PostgreSQL cluster's primary; `file`: a lock file, one machine only. Unset: Fleet.leader_backend decides."""
    lease_ttl: Annotated[int, Field(ge=5, le=600)] = 60
    """leader: etcd: seconds the lease outlives its last keep-alive. The operator renews it each cycle and before
    each act, so it bounds how long a leader that stopped (paused, partitioned) still blocks the others, and how
    long an act already started may overlap a new leader's."""
    no_leader_alert_cycles: Annotated[int, Field(ge=1, le=1000)] = 3
    """OperatorNoLeader fires once no operator has known a leader for this many cycles in a row."""
    jobs: JobLimits = JobLimits()


class Fleet(Strict):
    """The whole fleet spec: api version, fleet metadata and the clusters."""

    apiVersion: Literal["dbfleet/v1"]
    fleet: FleetMeta
    monitoring: FleetMonitoring = FleetMonitoring()
    operator: OperatorSettings = OperatorSettings()
    clusters: Annotated[list[Cluster], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique(self) -> Fleet:
        seen_clusters: set[str] = set()
        seen_hosts: dict[str, str] = {self.monitoring.host: "monitoring"}
        for i, cluster in enumerate(self.clusters):
            if cluster.name in seen_clusters:
                raise ValueError(f"clusters.{i}.name: cluster {cluster.name!r} is defined twice")
            seen_clusters.add(cluster.name)
            hosts = cluster.machines()
            if isinstance(cluster, RedisCluster):
                # A Sentinel may share a machine with a Redis data node of its own cluster.
                hosts = list({h.name: h for h in hosts}.values())
            for host in hosts:
                if host.name in seen_hosts:
                    raise ValueError(
                        f"clusters.{i}: host {host.name!r} is already used by cluster "
                        f"{seen_hosts[host.name]!r}; each host belongs to one place"
                    )
                seen_hosts[host.name] = cluster.name
        self._check_leader()
        self._check_dr(seen_hosts)
        return self

    def _check_dr(self, seen_hosts: dict[str, str]) -> None:
        """A second target is apart from every cluster's first one, and in another region; a standby site's hosts
        are its own, in another region than the fleet's, and its VPC apart from the fleet's and every other
        standby site's."""
        seen_networks = {"fleet.vpc_cidr": ipaddress.ip_network(self.fleet.vpc_cidr)}
        for i, cluster in enumerate(self.clusters):
            dr = cluster.dr
            if dr is None:
                continue
            for other in self.clusters:
                overlap = same_place(other.backup.target, dr.target)
                if overlap and other is not cluster:
                    raise ValueError(f"clusters.{i}.dr.target.{overlap[0]}: {overlap[1]} as cluster {other.name}'s "
                                     "backup.target; a second copy must be apart from every first one")
            if isinstance(dr.target, S3Target) and dr.target.region == self.fleet.region:
                raise ValueError(f"clusters.{i}.dr.target.region: {dr.target.region} is the fleet's own region; "
                                 "the second copy belongs in another region")
            if dr.standby is None:
                continue
            if dr.standby.region == self.fleet.region:
                raise ValueError(f"clusters.{i}.dr.standby.region: {dr.standby.region} is the fleet's own region")
            if dr.standby.vpc_cidr is not None:
                net = ipaddress.ip_network(dr.standby.vpc_cidr)
                for owner, taken in seen_networks.items():
                    if net.overlaps(taken):
                        raise ValueError(f"clusters.{i}.dr.standby.vpc_cidr: {net} overlaps {owner} ({taken}); the "
                                         "standby VPC is peered with the fleet's, so their addresses must differ")
                seen_networks[f"cluster {cluster.name}'s standby site"] = net
            for j, ref in enumerate(dr.standby.hosts):
                host = _as_host(ref)
                if host.name in seen_hosts:
                    raise ValueError(f"clusters.{i}.dr.standby.hosts.{j}: host {host.name!r} is already used by "
                                     f"{seen_hosts[host.name]!r}; each host belongs to one place")
                seen_hosts[host.name] = f"{cluster.name} standby"

    def _check_leader(self) -> None:
        """The leader lock's store must exist in this fleet; lease_ttl means something only for etcd."""
        chosen, backend = self.operator.leader, self.leader_backend()
        if chosen == "etcd" and not self.etcd_clusters():
            raise ValueError("operator.leader: etcd needs a PostgreSQL cluster with ha: patroni, whose etcd holds "
                             "the lease; no cluster runs etcd (choose postgres or file)")
        if chosen == "postgres" and not self.of_engine("postgres"):
            raise ValueError("operator.leader: postgres needs a PostgreSQL cluster, whose primary holds the lock; "
                             "the spec has none (choose file)")
        if "lease_ttl" in self.operator.model_fields_set and backend != "etcd":
            raise ValueError(f"operator.lease_ttl: only used with leader: etcd (this fleet's leader lock is "
                             f"{backend})")

    # -- lookups used by every consumer ------------------------------------

    def cluster(self, name: str) -> PostgresCluster | MongoCluster | RedisCluster:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(f"no cluster named {name!r}; the spec has {', '.join(c.name for c in self.clusters)}")

    def of_engine(self, engine: str) -> list[Any]:
        return [c for c in self.clusters if c.engine == engine]

    def etcd_clusters(self) -> list[PostgresCluster]:
        """The PostgreSQL clusters that run etcd (ha: patroni), in spec order."""
        return [c for c in self.clusters if isinstance(c, PostgresCluster) and c.ha == "patroni"]

    def leader_backend(self) -> LeaderBackend:
        """operator.leader, or its default: etcd when a PostgreSQL cluster runs Patroni (etcd outlives any one
        PostgreSQL server), else postgres when there is a PostgreSQL cluster, else file."""
        if self.operator.leader is not None:
            return self.operator.leader
        if self.etcd_clusters():
            return "etcd"
        return "postgres" if self.of_engine("postgres") else "file"


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class SpecProblem:
    path: str
    line: int | None
    message: str

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        message = " ".join(self.message.split())  # one problem, one line
        return f"{where}: {self.path or '(top level)'}: {message}"


class SpecError(Exception):
    """The spec file is missing, not YAML, or not a valid fleet. Names file, line and key path."""

    def __init__(self, file: str, problems: list[SpecProblem]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))


def _node_lines(node: yaml.Node | None, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], int]]:
    """Walk a composed YAML tree, yielding each key path with its 1-based line."""
    if node is None:
        return
    yield prefix, node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (str(key.value),)
            yield path, key.start_mark.line + 1
            yield from ((p, ln) for p, ln in _node_lines(value, path) if p != path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _node_lines(item, prefix + (str(i),))


_EXPECTED = {
    "extra_forbidden": "unknown key; remove it or check its spelling",
    "missing": "required key is missing",
    "string_type": "expected a string",
    "int_type": "expected a whole number",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
}


def _describe(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind in _EXPECTED:
        got = err.get("input")
        suffix = "" if kind in ("missing", "extra_forbidden") else f", got {type(got).__name__} {got!r}"
        return _EXPECTED[kind] + suffix
    if kind == "literal_error":
        return f"expected {err['ctx']['expected']}, got {err.get('input')!r}"
    if kind == "string_pattern_mismatch":
        return f"{err.get('input')!r} does not match the pattern {err['ctx']['pattern']}"
    if kind == "union_tag_invalid":
        key = err["ctx"]["discriminator"].strip("'")
        return f"{key}: expected {err['ctx']['expected_tags']}, got {err['ctx']['tag']!r}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(err["ctx"].values()))
        return f"expected a number {bounds[kind]} {limit}, got {err.get('input')!r}"
    if kind in ("too_short", "too_long"):
        bound = err["ctx"].get("min_length", err["ctx"].get("max_length"))
        return f"expected {'at least' if kind == 'too_short' else 'at most'} {bound} items"
    if kind == "union_tag_not_found":
        return f"missing the key {err['ctx']['discriminator']} that says which kind this is"
    msg = str(err.get("msg", kind))
    return msg.removeprefix("Value error, ")


def join_path(parts: Iterable[str]) -> str:
    """A key path as the errors show it: dotted, with any odd key (a space, a line break) quoted."""
    return ".".join(part if part.isprintable() and part.strip() == part and part else repr(part) for part in parts)


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str, ...]:
    """Drop pydantic's union-branch labels so the path matches the YAML keys."""
    out: list[str] = []
    for part in loc:
        text = str(part)
        if text in {"postgres", "mongo", "redis"} and out and out[-1].isdigit():
            continue
        if text in {"local", "s3"} and out and out[-1] == "target" or text in {"pg", "mongo"} and out \
                and out[-1] == "declared":
            continue
        if text in {"str", "Host", "list[PgIndex]", "list[MongoIndex]", "int", "float", "bool", "LocalTarget",
                    "S3Target"} or text.startswith(("function-", "constrained-str", "is-instance")):
            continue
        out.append(text)
    return tuple(out)


def _problems(exc: ValidationError, lines: dict[tuple[str, ...], int]) -> list[SpecProblem]:
    problems: dict[tuple[str, str], SpecProblem] = {}
    for err in exc.errors():
        loc = _clean_loc(tuple(err["loc"]))
        message = _describe(dict(err))
        # A model-level check that names a key ("replicas: ...") points at that key.
        head = message.split(":", 1)[0]
        if re.fullmatch(r"[a-z_][a-z0-9_.]*", head) and ":" in message:
            loc = loc + tuple(head.split("."))
            message = message.split(":", 1)[1].strip()
        line = None
        for cut in range(len(loc), -1, -1):
            if loc[:cut] in lines:
                line = lines[loc[:cut]]
                break
        path = join_path(loc)
        problems.setdefault((path, message), SpecProblem(path, line, message))
    return list(problems.values())


MAX_SPEC_BYTES = 1 << 20
"""A spec larger than this is refused before it is parsed."""
MAX_DEPTH = 64
"""Nesting deeper than this is refused, aliases included: the deepest real spec key is eight levels down."""
MAX_ALIASES = 100
MAX_EXPANDED_NODES = 100_000
"""Values (YAML nodes) the document may hold, and expand to once every alias is followed: a real spec has a
few thousand."""
MAX_INT_DIGITS = 20


class _Refused(Exception):
    """A limit the loader enforces, found while reading the YAML: located by key path and line."""

    def __init__(self, path: tuple[str, ...], line: int | None, message: str):
        super().__init__(message)
        self.problem = SpecProblem(join_path(path), line, message)


def _label(index: Any) -> str:
    """The key path part of a child being composed: its position in a sequence, its key in a mapping."""
    if isinstance(index, yaml.ScalarNode):
        return str(index.value)
    return "?" if isinstance(index, yaml.Node) else str(index)


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader that stops composing past MAX_DEPTH levels or MAX_ALIASES aliases, well before
    Python's own recursion limit, and says where."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._path: list[str] = []
        self.aliases = 0
        self.nodes = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # The scanner looks ahead through every `[` or `{` (each may start a key) before the composer sees
        # the first, and that look-ahead is quadratic: 20,000 of them took a third of a second, a MiB of them
        # would take hours. So the depth is also checked here, as each one is scanned.
        if self.flow_level >= MAX_DEPTH:
            raise _Refused(tuple(self._path), self.get_mark().line + 1, f"nested deeper than {MAX_DEPTH} levels")
        super().fetch_flow_collection_start(TokenClass)

    def _line(self) -> int:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        return int(event.start_mark.line) + 1 if event.start_mark is not None else 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if parent is not None:
            self._path.append(_label(index) if index is not None else "(a key)")
        try:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise _Refused(tuple(self._path), self._line(),
                                   f"more than {MAX_ALIASES} aliases (*name); write the values out")
            if len(self._path) > MAX_DEPTH:
                raise _Refused(tuple(self._path), self._line(),
                               f"nested deeper than {MAX_DEPTH} levels")
            self.nodes += 1
            if self.nodes > MAX_EXPANDED_NODES:
                raise _Refused(tuple(self._path), self._line(),
                               f"more than {MAX_EXPANDED_NODES} values in the document")
            return super().compose_node(parent, index)
        finally:
            if parent is not None:
                self._path.pop()


_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"


class _NodeChecks:
    """One walk over a composed document: expanded size and depth through aliases, duplicate keys, and
    numbers Python or the thresholds cannot take (over MAX_INT_DIGITS digits, inf, nan)."""

    def __init__(self, loader: _SpecLoader):
        self.loader = loader
        self.measured: dict[int, tuple[int, int]] = {}
        """Expanded (node count, height) of every node already walked, by identity: aliases share nodes."""
        self.walking: set[int] = set()
        self.problems: list[SpecProblem] = []

    def run(self, root: yaml.Node) -> list[SpecProblem]:
        self._walk(root, (), 1)
        return self.problems

    def _walk(self, node: yaml.Node, path: tuple[str, ...], depth: int) -> tuple[int, int]:
        line = node.start_mark.line + 1
        if depth > MAX_DEPTH:
            raise _Refused(path, line, f"nested deeper than {MAX_DEPTH} levels once aliases are followed")
        key = id(node)
        if key in self.walking:
            raise _Refused(path, line, "an alias refers to itself (to a collection that contains it)")
        if key in self.measured:
            size, height = self.measured[key]
            if depth + height - 1 > MAX_DEPTH:
                raise _Refused(path, line, f"nested deeper than {MAX_DEPTH} levels once aliases are followed")
            return size, height
        self.walking.add(key)
        if isinstance(node, yaml.ScalarNode):
            self._check_scalar(node, path)
            size, height = 1, 1
        else:
            children: list[tuple[yaml.Node, tuple[str, ...]]] = []
            if isinstance(node, yaml.SequenceNode):
                children = [(item, path + (str(i),)) for i, item in enumerate(node.value)]
            elif isinstance(node, yaml.MappingNode):
                self._check_keys(node, path)
                for k, v in node.value:
                    children += [(k, path + ("(a key)",)), (v, path + (_label(k),))]
            size, height = 1, 1
            for child, child_path in children:
                child_size, child_height = self._walk(child, child_path, depth + 1)
                size += child_size
                height = max(height, child_height + 1)
                if size > MAX_EXPANDED_NODES:
                    raise _Refused(path, line, f"aliases expand the document past {MAX_EXPANDED_NODES} values")
        self.walking.discard(key)
        self.measured[key] = (size, height)
        return size, height

    def _check_scalar(self, node: yaml.ScalarNode, path: tuple[str, ...]) -> None:
        line = node.start_mark.line + 1
        if node.tag == _INT:
            digits = sum(c.isdigit() for c in node.value)
            if digits > MAX_INT_DIGITS:
                self.problems.append(SpecProblem(join_path(path), line,
                                                 f"a number of {digits} digits; at most {MAX_INT_DIGITS}"))
        elif node.tag == _FLOAT:
            if not math.isfinite(self.loader.construct_yaml_float(node)):
                self.problems.append(SpecProblem(join_path(path), line,
                                                 f"expected a finite number, got {node.value!r}"))

    def _check_keys(self, node: yaml.MappingNode, path: tuple[str, ...]) -> None:
        # PyYAML keeps the last of two equal keys without a word; a second `drop: true` would silently win.
        # Keys merged in with `<<` may be overridden: that is what merging is for.
        counts: dict[tuple[str, str], list[int]] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE:
                counts.setdefault((key.tag, key.value), []).append(key.start_mark.line + 1)
        for (_, name), lines in counts.items():
            if len(lines) > 1:
                where = ", ".join(f"line {n}" for n in lines)
                self.problems.append(SpecProblem(join_path(path + (name,)), lines[-1],
                                                 f"key {name!r} appears {len(lines)} times ({where}); keep one"))


def _compose(text: str, file: str) -> tuple[yaml.Node | None, Any]:
    """The composed YAML tree and the data it builds, after the loader's limits; SpecError otherwise."""
    loader = None
    try:
        loader = _SpecLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, None
        problems = _NodeChecks(loader).run(node)
        if problems:
            raise SpecError(file, problems)
        return node, loader.construct_document(node)
    except _Refused as exc:
        raise SpecError(file, [exc.problem]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise SpecError(file, [SpecProblem("", line, f"not valid YAML: {problem}")]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # The checks above should leave nothing for the constructor to choke on; if it still does, it is the
        # spec's fault and a located SpecError, never a traceback.
        raise SpecError(file, [SpecProblem("", None, f"not a spec dbfleet can read: {type(exc).__name__}")]) from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_fleet(text: str, file: str = "<spec>") -> Fleet:
    """Parse and validate spec text; raise SpecError with located problems."""
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_SPEC_BYTES:
        raise SpecError(file, [SpecProblem("", 1, f"the spec is {size} bytes; at most {MAX_SPEC_BYTES} bytes")])
    node, data = _compose(text, file)
    if not isinstance(data, dict):
        raise SpecError(file, [SpecProblem("", 1, f"expected a mapping with apiVersion, fleet and clusters, "
                                                 f"got {type(data).__name__}")])
    lines = dict(_node_lines(node))
    try:
        return Fleet.model_validate(data)
    except ValidationError as exc:
        raise SpecError(file, _problems(exc, lines)) from None
    except RecursionError:
        raise SpecError(file, [SpecProblem("", 1, "nested too deeply")]) from None


@dataclass(frozen=True)
class LoadedSpec:
    """A validated fleet and the sha256 of the exact bytes it was parsed from (the operator's audit trail names it)."""

    fleet: Fleet
    sha256: str


def read_spec(path: str | Path) -> LoadedSpec:
    """Read and validate a fleet spec file, hashing the bytes that were parsed (read once, so they are the same)."""
    p = Path(path)
    try:
        with p.open("rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(str(p), [SpecProblem("", None, "no such file")]) from None
    except IsADirectoryError:
        raise SpecError(str(p), [SpecProblem("", None, "is a directory, expected a YAML file")]) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(str(p), [SpecProblem("", None, f"the spec is over {MAX_SPEC_BYTES} bytes; at most "
                                                       f"{MAX_SPEC_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(str(p), [SpecProblem("", None, f"not UTF-8 text: {exc.reason}")]) from None
    return LoadedSpec(parse_fleet(text, str(p)), hashlib.sha256(raw).hexdigest())


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet spec file."""
    return read_spec(path).fleet
