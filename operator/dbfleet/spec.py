"""The fleet model: one YAML spec parsed once into typed, validated models.

Every consumer (the Pulumi stacks, the lab and inventory writer, the Ansible
variables and the operator) reads these models; none parses the YAML itself.
A bad spec raises SpecError naming the file, the line, the key path and what
was expected.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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
    path: Annotated[str, Field(pattern=r"^/")]


class S3Target(Strict):
    kind: Literal["s3"]
    bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_./-]*$")] = ""
    region: str = "us-east-1"
    endpoint: str | None = None


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
    target: Annotated[LocalTarget | S3Target, Field(discriminator="kind")] = LocalTarget(
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


class MissingRule(Strict):
    report: bool = True
    min_seq_scans: Annotated[int, Field(ge=1)] = 50
    min_rows: Annotated[int, Field(ge=1)] = 10000
    min_cost_reduction: Annotated[float, Field(gt=0, le=1)] = 0.5
    queries: list[Annotated[str, Field(min_length=1)]] = []


class PgIndex(Strict):
    """A declared PostgreSQL index."""

    database: Annotated[str, Field(pattern=IDENT)]
    table: Annotated[str, Field(pattern=QUALIFIED_IDENT)]
    name: Annotated[str, Field(pattern=IDENT)]
    columns: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    unique: bool = False
    method: Literal["btree", "hash", "gin", "gist", "brin"] = "btree"
    where: str | None = None


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


class IndexPolicy(Strict):
    declared: list[PgIndex] | list[MongoIndex] = []
    unused: UnusedRule = UnusedRule()
    duplicate: DetectionRule = DetectionRule()
    invalid: InvalidRule = InvalidRule()
    missing: MissingRule = MissingRule()


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
    ca_cert: str | None = None
    """Path to a CA certificate to trust; None makes the play generate a lab CA."""
    ca_key: str | None = None


class ClusterBase(Strict):
    name: Annotated[str, Field(pattern=CLUSTER_NAME)]
    version: str
    instance: Instance = Instance()
    tls: TLS = TLS()
    backup: BackupPolicy = BackupPolicy()
    monitoring: MonitoringPolicy = MonitoringPolicy()
    allowed_clients: list[str] = []
    """CIDRs of application clients allowed in besides the fleet's own hosts."""

    @field_validator("allowed_clients")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR such as 10.0.0.0/16") from None
            if net.prefixlen == 0:
                raise ValueError(f"{cidr!r} opens the cluster to every address; name a narrower CIDR")
        return value

    @model_validator(mode="after")
    def _known_version(self) -> ClusterBase:
        engine: str = getattr(self, "engine")  # noqa: B009  (each engine's subclass declares it as a Literal)
        if self.version not in SUPPORTED_VERSIONS[engine]:
            raise ValueError(
                f"version: {self.version!r} of {engine} is not supported; expected one of "
                + ", ".join(SUPPORTED_VERSIONS[engine])
            )
        return self

    def host_names(self) -> list[str]:
        return [h.name for h in self.all_hosts()]

    def all_hosts(self) -> list[Host]:  # pragma: no cover - overridden
        raise NotImplementedError


class Synchronous(Strict):
    enabled: bool = False
    num_sync: Annotated[int, Field(ge=1)] = 1


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


class PostgresCluster(ClusterBase):
    engine: Literal["postgres"]
    version: str = "15"
    ha: Literal["manual", "patroni"] = "manual"
    """manual: switchover with playbooks/pg_switchover.yml. patroni is reserved and refused at load."""
    hosts: Annotated[list[HostRef], Field(min_length=1)]
    """The first host is the initial primary."""
    replicas: Annotated[int, Field(ge=0)]
    port: Annotated[int, Field(ge=1024, le=65535)] = 5432
    databases: list[Annotated[str, Field(pattern=IDENT)]] = ["app"]
    parameters: dict[Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_.]*$")], str | int | float | bool] = {}
    synchronous: Synchronous = Synchronous()
    indexes: IndexPolicy = IndexPolicy()
    audit: PgAudit | None = None
    """pgaudit on every host of the cluster; None: not loaded."""

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
        if self.ha == "patroni":
            raise ValueError("ha: patroni is not implemented yet; use ha: manual and playbooks/pg_switchover.yml")
        canary = self.backup.drill.canary
        if canary is not None:
            parts = canary.split(".")
            if len(parts) > 3 or not all(re.fullmatch(IDENT, part) for part in parts):
                raise ValueError(f"backup.drill.canary: {canary!r} is not 'table', 'schema.table' "
                                 "or 'database.schema.table'")
            if len(parts) == 3 and parts[0] not in self.databases:
                raise ValueError(f"backup.drill.canary: database {parts[0]!r} is not one of databases "
                                 f"{self.databases}")
        protected = {"listen_addresses", "port", "ssl", "wal_level", "archive_command", "primary_conninfo",
                     "shared_preload_libraries"}
        clash = protected.intersection(self.parameters)
        if clash:
            raise ValueError(f"parameters: {sorted(clash)} are managed by dbfleet and cannot be set here")
        audit_keys = sorted(k for k in self.parameters if k.startswith("pgaudit."))
        if audit_keys:
            raise ValueError(f"parameters: {audit_keys} are set from the cluster's audit section, not here")
        return self

    def all_hosts(self) -> list[Host]:
        return [_as_host(h) for h in self.hosts[: self.replicas + 1]]

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
    tls: TLS = TLS(enabled=False)
    """Redis TLS is not implemented yet: off by default, and asking for it is refused at load."""

    @model_validator(mode="after")
    def _topology(self) -> RedisCluster:
        if self.tls.enabled:
            raise ValueError("tls.enabled: TLS for Redis and Sentinel is not implemented yet; keep Redis on "
                             "private subnets (the stacks' security groups) and set tls: {enabled: false}")
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
    region: str = "us-east-1"
    vpc_cidr: str = "10.40.0.0/16"

    @field_validator("vpc_cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            net = ipaddress.ip_network(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR such as 10.40.0.0/16") from None
        if net.prefixlen > 20:
            raise ValueError("a /20 or larger, to hold three subnets per AZ")
        return value


class FleetMonitoring(Strict):
    """Where the fleet's Prometheus runs, and where the operator serves /metrics."""

    host: Annotated[str, Field(pattern=HOST_NAME)] = "monitor-1"
    prometheus_port: Annotated[int, Field(ge=1024, le=65535)] = 9090
    operator_metrics_port: Annotated[int, Field(ge=1024, le=65535)] = 9640


class Fleet(Strict):
    """The whole fleet spec: api version, fleet metadata and the clusters."""

    apiVersion: Literal["dbfleet/v1"]
    fleet: FleetMeta
    monitoring: FleetMonitoring = FleetMonitoring()
    clusters: Annotated[list[Cluster], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique(self) -> Fleet:
        seen_clusters: set[str] = set()
        seen_hosts: dict[str, str] = {self.monitoring.host: "monitoring"}
        for i, cluster in enumerate(self.clusters):
            if cluster.name in seen_clusters:
                raise ValueError(f"clusters.{i}.name: cluster {cluster.name!r} is defined twice")
            seen_clusters.add(cluster.name)
            hosts = cluster.all_hosts()
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
        return self

    # -- lookups used by every consumer ------------------------------------

    def cluster(self, name: str) -> PostgresCluster | MongoCluster | RedisCluster:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(f"no cluster named {name!r}; the spec has {', '.join(c.name for c in self.clusters)}")

    def of_engine(self, engine: str) -> list[Any]:
        return [c for c in self.clusters if c.engine == engine]


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


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str, ...]:
    """Drop pydantic's union-branch labels so the path matches the YAML keys."""
    out: list[str] = []
    for part in loc:
        text = str(part)
        if text in {"postgres", "mongo", "redis", "local", "s3"} and out and out[-1].isdigit():
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
        path = ".".join(part if part.isprintable() and part.strip() == part and part else repr(part) for part in loc)
        problems.setdefault((path, message), SpecProblem(path, line, message))
    return list(problems.values())


def parse_fleet(text: str, file: str = "<spec>") -> Fleet:
    """Parse and validate spec text; raise SpecError with located problems."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise SpecError(file, [SpecProblem("", line, f"not valid YAML: {problem}")]) from None
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
        data = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(str(p), [SpecProblem("", None, "no such file")]) from None
    except IsADirectoryError:
        raise SpecError(str(p), [SpecProblem("", None, "is a directory, expected a YAML file")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(str(p), [SpecProblem("", None, f"not UTF-8 text: {exc.reason}")]) from None
    return LoadedSpec(parse_fleet(text, str(p)), hashlib.sha256(data).hexdigest())


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet spec file."""
    return read_spec(path).fleet
