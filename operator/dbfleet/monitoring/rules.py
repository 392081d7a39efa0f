"""Prometheus alert rules generated from each cluster's monitoring thresholds in the spec.

One rule group per cluster, every expression filtered on that cluster's label,
so clusters with different thresholds never share a rule; one more group for
the fleet (targets outside any cluster, the data-directory disk ratio, and an
operator that has known no leader for operator.no_leader_alert_cycles cycles).
The series come from the exporters the playbooks install (postgres, redis,
sentinel, mongodb, node; the PostgreSQL custom queries are in
playbooks/roles/postgres_exporter/templates/queries.yaml.j2) and from the
operator (dbfleet.monitoring.metrics). `dbfleet rules` writes the result to
monitoring/rules/fleet.rules.yml, which the prometheus role installs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from typing import Any

import yaml

from dbfleet.monitoring import metrics
from dbfleet.monitoring.exporters import (
    DATA_DIRECTORY_INFO,
    MONGODB,
    NODE,
    OPERATOR_JOB,
    PATRONI,
    POSTGRES,
    REDIS,
    SENTINEL,
)
from dbfleet.schedule import parse_cron
from dbfleet.spec import (
    DrPolicy,
    Fleet,
    MongoCluster,
    PostgresCluster,
    PostgresMaintenance,
    RedisCluster,
    duration_seconds,
    size_bytes,
)

BACKUP_GRACE_FRACTION = 0.5
"""A backup may be this fraction of its longest scheduled gap late (a long full delays the next run)..."""
BACKUP_GRACE_MIN_SECONDS = 3600
"""... but never less than an hour late."""
SUSTAINED = "5m"
"""How long a capacity condition (disk, connections, memory) must hold before it alerts."""
LAG_FOR = "1m"
CACHE_FOR = "10m"
DATA_DIR_RATIO = "dbfleet:data_dir_used_ratio"


@dataclass(frozen=True)
class Rule:
    """An alerting rule (alert set) or a recording rule (record set)."""

    expr: str
    alert: str | None = None
    record: str | None = None
    for_: str | None = None
    severity: str = "warning"
    summary: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        if self.record:
            return {"record": self.record, "expr": self.expr, **({"labels": self.labels} if self.labels else {})}
        out: dict[str, Any] = {"alert": self.alert, "expr": self.expr}
        if self.for_:
            out["for"] = self.for_
        out["labels"] = {"severity": self.severity, **self.labels}
        out["annotations"] = {"summary": self.summary}
        return out


# --------------------------------------------------------------------------- helpers


def prom_duration(seconds: float) -> str:
    """Seconds as a Prometheus duration: 30 -> '30s', 120 -> '2m', 7200 -> '2h'."""
    whole = int(round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def max_gap_seconds(schedules: Iterable[str]) -> int:
    """The longest time between two consecutive firings of any of the cron expressions.

    Two years from a leap year's first day cover every weekday/month-day/leap
    combination a five-field cron can express, except Feb 29-only schedules,
    which fire at most once in those two years and so count as a two-year gap.
    """
    return _max_gap(tuple(sorted(set(schedules))))


@lru_cache(maxsize=256)
def _max_gap(schedules: tuple[str, ...], start: datetime = datetime(2024, 1, 1), days: int = 731) -> int:
    crons = [parse_cron(expr) for expr in schedules]
    if not crons:
        raise ValueError("no schedules")
    fired: list[datetime] = []
    for day in (start + timedelta(days=i) for i in range(days + 1)):
        minutes: set[int] = set()
        for cron in crons:
            if cron.matches(day.replace(hour=min(cron.hours), minute=min(cron.minutes))):
                minutes.update(h * 60 + m for h in cron.hours for m in cron.minutes)
        fired.extend(day + timedelta(minutes=m) for m in sorted(minutes))
    if len(fired) < 2:
        return days * 86400
    return int(max((b - a).total_seconds() for a, b in pairwise(fired)))


def backup_allowed_age_seconds(schedules: Iterable[str]) -> int:
    """How old the newest backup may get before it is late: the longest gap plus grace."""
    gap = max_gap_seconds(schedules)
    return gap + max(BACKUP_GRACE_MIN_SECONDS, int(gap * BACKUP_GRACE_FRACTION))


def _sel(cluster: str, *matchers: str, **labels: str) -> str:
    """A label selector for one cluster, e.g. {cluster="pg-main",job="postgres"}; `matchers` are raw ones."""
    parts = [f'cluster="{cluster}"'] + [f'{k}="{v}"' for k, v in labels.items()] + list(matchers)
    return "{" + ",".join(parts) + "}"


def _ratio(hits: str, misses: str, by: str = "cluster, host") -> str:
    """hits / (hits + misses) over rates, NaN (so never alerting) when idle."""
    return (f"sum by ({by}) ({hits})\n/\n(sum by ({by}) ({hits}) + sum by ({by}) ({misses}))")


# --------------------------------------------------------------------------- rules per cluster


def _shared_rules(cluster: PostgresCluster | RedisCluster | MongoCluster) -> list[Rule]:
    """Disk, backups and drills: the same idea for every engine."""
    name, alerts = cluster.name, cluster.monitoring.alerts
    c = _sel(name)
    rules = [
        Rule(alert="TargetDown", expr=f"up{c} == 0", for_=alerts.replica_down_for, severity="critical",
             summary="{{ $labels.job }} exporter on {{ $labels.host }} (%s) is unreachable" % name),
        Rule(alert="DataDiskUsageHigh", expr=f"{DATA_DIR_RATIO}{c} * 100 > {alerts.disk_used_percent_max:g}",
             for_=SUSTAINED, severity="warning",
             summary="data directory %s on {{ $labels.host }} is {{ $value | humanize }}%% full (limit %g%%)"
                     % ("{{ $labels.path }}", alerts.disk_used_percent_max)),
    ]
    backup = cluster.backup
    if backup.enabled and backup.schedule:
        allowed = backup_allowed_age_seconds(backup.schedule.values())
        rules.append(Rule(
            alert="BackupTooOld",
            expr=f"time() - max by (cluster) ({metrics.BACKUP_LAST_SUCCESS}{c}) > {allowed}",
            severity="critical",
            summary="newest backup of %s is {{ $value | humanizeDuration }} old; its schedule allows %s"
                    % (name, prom_duration(allowed)),
        ))
        rules.append(Rule(
            alert="RestoreDrillFailed", expr=f"{metrics.DRILL_SUCCESS}{c} == 0", severity="critical",
            summary=f"the last restore drill of {name} failed",
        ))
        drill_allowed = backup_allowed_age_seconds([backup.drill.schedule])
        rules.append(Rule(
            alert="RestoreDrillOverdue", expr=f"time() - {metrics.DRILL_LAST}{c} > {drill_allowed}",
            severity="warning",
            summary="no restore drill of %s for {{ $value | humanizeDuration }}; its schedule allows %s"
                    % (name, prom_duration(drill_allowed)),
        ))
    if backup.enabled and cluster.dr is not None:
        rules += dr_rules(cluster, cluster.dr)
    if isinstance(cluster, PostgresCluster) and cluster.ha == "patroni" and cluster.standby_hosts():
        rules += standby_site_rules(cluster)
    return rules


STANDBY_UNREADY_FOR = "5m"
"""How long the standby site may be unable to take over before DrStandbySiteUnready fires (a restart of its one
member, or Patroni rebuilding it, takes minutes at most)."""


def standby_site_rules(cluster: PostgresCluster) -> list[Rule]:
    """The PostgreSQL standby site (dr.standby), as the operator's dr reconciler observes it."""
    name, c = cluster.name, _sel(cluster.name)
    return [
        Rule(alert="DrStandbySiteUnready", expr=f"{metrics.DR_STANDBY_READY_NAME}{c} == 0", for_=STANDBY_UNREADY_FOR,
             severity="critical",
             summary=f"the standby site of {name} (dr.standby) could not take over: it does not answer or has no "
                     "standby leader; `dbfleet plan --reconciler dr` says which"),
        Rule(alert="DrOldSiteUnfenced", expr=f"{metrics.DR_OLD_SITE_UNFENCED_NAME}{c} == 1", for_="1m",
             severity="critical",
             summary=f"after a promotion, {name}'s old primary site answers with a leader that is not fenced and "
                     "may accept writes; dr.standby.old_site: fence, or `dbfleet dr promote`, fences it"),
    ]


DR_COPY_FOR = "30m"
"""How long a good backup may lack its second copy before DrCopyMissing fires (a copy runs right after its
backup; a long PostgreSQL backup into repo2 takes as long as the one into repo1)."""


def dr_rules(cluster: PostgresCluster | RedisCluster | MongoCluster, dr: DrPolicy) -> list[Rule]:
    """The second target: copies it lacks, the DR drill's verdict and schedule, and its RPO against dr.rpo_seconds."""
    name, c = cluster.name, _sel(cluster.name)
    allowed = backup_allowed_age_seconds([dr.drill.schedule])
    return [
        Rule(alert="DrCopyMissing", expr=f"{metrics.DR_COPIES_MISSING}{c} > 0", for_=DR_COPY_FOR,
             severity="critical",
             summary="{{ $value }} good backups of %s are not in the second target (dr.target); `dbfleet plan` "
                     "names them" % name),
        Rule(alert="DrDrillFailed", expr=f"{metrics.DR_DRILL_SUCCESS}{c} == 0", severity="critical",
             summary=f"the last DR drill of {name} (a restore from the second target) failed"),
        Rule(alert="DrDrillOverdue", expr=f"time() - {metrics.DR_DRILL_LAST}{c} > {allowed}", severity="warning",
             summary="no DR drill of %s for {{ $value | humanizeDuration }}; its schedule allows %s"
                     % (name, prom_duration(allowed))),
        Rule(alert="DrRpoExceeded", expr=f"{metrics.DR_DRILL_RPO_SECONDS}{c} > {dr.rpo_seconds}",
             severity="critical",
             summary="the last DR drill of %s restored to {{ $value | humanizeDuration }} before it ended; "
                     "dr.rpo_seconds allows %s" % (name, prom_duration(dr.rpo_seconds))),
    ]


def postgres_rules(cluster: PostgresCluster) -> list[Rule]:
    name, alerts = cluster.name, cluster.monitoring.alerts
    c, pg = _sel(name), _sel(name, job=POSTGRES.job)
    window = _rate_window(cluster)
    hit_rate = f"rate(pg_stat_database_blks_hit{pg}[{window}])"
    read_rate = f"rate(pg_stat_database_blks_read{pg}[{window}])"
    rules = [
        Rule(record="dbfleet:pg_cache_hit_ratio:rate", expr=_ratio(hit_rate, read_rate)),
        Rule(alert="PostgresDown", expr=f"pg_up{pg} == 0", for_=alerts.replica_down_for, severity="critical",
             summary="PostgreSQL on {{ $labels.host }} (%s) does not answer its exporter" % name),
    ]
    if cluster.replicas:
        rules.append(Rule(
            alert="PostgresReplicaDown",
            expr=f"max by (cluster) (dbfleet_pg_standbys_streaming{pg}) < {cluster.replicas}",
            for_=alerts.replica_down_for, severity="critical",
            summary="%s has {{ $value }} streaming replicas; the spec wants %d" % (name, cluster.replicas),
        ))
        rules.append(Rule(
            alert="PostgresReplicaLag",
            expr=(f"max by (cluster, host) (dbfleet_pg_recovery_lag_seconds{pg}) > {alerts.replica_lag_seconds:g}\n"
                  f"or\nmax by (cluster, host) (dbfleet_pg_recovery_lag_bytes{pg}) > {alerts.replica_lag_bytes}\n"
                  f"or\nmax by (cluster, replica) (dbfleet_pg_standby_lag_bytes{pg}) > {alerts.replica_lag_bytes}"),
            for_=LAG_FOR, severity="warning",
            summary="replica {{ $labels.host }}{{ $labels.replica }} of %s lags {{ $value | humanize }} "
                    "(limits %gs, %d bytes)" % (name, alerts.replica_lag_seconds, alerts.replica_lag_bytes),
        ))
    rules += [
        Rule(alert="PostgresArchivingFailing", expr=f"max by (cluster, host) ({metrics.ARCHIVER_FAILING}{pg}) == 1",
             for_=SUSTAINED, severity="critical",
             summary="WAL archiving on {{ $labels.host }} (%s) has failed for %s: backups and "
                     "point-in-time recovery stop behind it; `dbfleet plan` names the segment" % (name, SUSTAINED)),
        Rule(alert="PostgresCacheHitRatioLow",
             expr=f"dbfleet:pg_cache_hit_ratio:rate{c} < {alerts.cache_hit_ratio_min:g}", for_=CACHE_FOR,
             summary="buffer cache hit ratio on {{ $labels.host }} is {{ $value | humanizePercentage }} "
                     "(minimum %g)" % alerts.cache_hit_ratio_min),
        Rule(alert="PostgresConnectionsHigh",
             expr=(f"dbfleet_pg_connections_used{pg} / dbfleet_pg_connections_max{pg} * 100"
                   f" > {alerts.connections_used_percent_max:g}"),
             for_=SUSTAINED,
             summary="{{ $labels.host }} uses {{ $value | humanize }}%% of max_connections (limit %g%%)"
                     % alerts.connections_used_percent_max),
    ]
    if cluster.ha == "patroni":
        rules += patroni_rules(cluster)
    return rules + maintenance_rules(cluster) + _shared_rules(cluster)


def maintenance_rules(cluster: PostgresCluster) -> list[Rule]:
    """Wraparound from the exporter's ages (every cluster; the spec's maintenance.vacuum thresholds or their
    defaults), and autovacuum falling behind from the operator's table figures (clusters with a policy)."""
    name = cluster.name
    c, pg = _sel(name), _sel(name, job=POSTGRES.job)
    policy = cluster.maintenance or PostgresMaintenance()
    vacuum = policy.vacuum
    rules = [Rule(
        alert="PostgresWraparoundApproaching",
        expr=(f"max by (cluster, datname) ({metrics.XID_AGE}{pg}) > {vacuum.xid_age_max}\n"
              f"or\nmax by (cluster, datname) ({metrics.MXID_AGE}{pg}) > {vacuum.mxid_age_max}"),
        for_=SUSTAINED, severity="critical",
        summary="database {{ $labels.datname }} of %s is {{ $value | humanize }} transaction or multixact IDs "
                "from its last freeze (limits %d, %d): vacuum it before PostgreSQL stops writes"
                % (name, vacuum.xid_age_max, vacuum.mxid_age_max),
    )]
    if cluster.maintenance is not None:
        allowed = duration_seconds(vacuum.autovacuum_age_max)
        rules.append(Rule(
            alert="PostgresAutovacuumBehind",
            expr=(f"{metrics.DEAD_TUPLE_RATIO}{c} > {vacuum.dead_tuple_ratio_max:g}\n"
                  f"and on (cluster, database, table) {metrics.DEAD_TUPLES}{c} >= {vacuum.min_dead_tuples}\n"
                  f"and on (cluster, database, table) time() - {metrics.LAST_VACUUM}{c} > {allowed}"),
            for_=SUSTAINED, severity="warning",
            summary="{{ $labels.database }}.{{ $labels.table }} of %s is {{ $value | humanizePercentage }} dead "
                    "tuples and not vacuumed for %s: autovacuum is not keeping up"
                    % (name, prom_duration(allowed)),
        ))
    return rules


FAILOVER_WINDOW = "10m"
"""How long PatroniFailover stays firing after the primary changed."""


def patroni_rules(cluster: PostgresCluster) -> list[Rule]:
    """From Patroni's own /metrics: no leader, the primary changed, a member whose PostgreSQL is not running."""
    name, alerts = cluster.name, cluster.monitoring.alerts
    pt = _sel(name, job=PATRONI.job, scope=name)  # the primary site's members; a standby site's scope is <name>-dr
    return [
        Rule(alert="PatroniNoLeader",
             expr=(f"max by (cluster) (patroni_primary{pt}) == 0\n"
                   f"or\nmax by (cluster) (patroni_cluster_unlocked{pt}) == 1"),
             for_=alerts.replica_down_for, severity="critical",
             summary="%s has no leader: no member takes writes (Patroni fails over after ttl %ds; "
                     "longer means no member can be promoted, or etcd has no quorum)" % (name, cluster.patroni.ttl)),
        Rule(alert="PatroniFailover",
             expr=f"changes(max by (cluster) (patroni_postgres_timeline{pt})[{FAILOVER_WINDOW}:]) > 0",
             severity="warning",
             summary="the primary of %s changed {{ $value }} time(s) in the last %s: a failover or a "
                     "switchover" % (name, FAILOVER_WINDOW)),
        Rule(alert="PatroniMemberNotRunning", expr=f"patroni_postgres_running{pt} == 0",
             for_=alerts.replica_down_for, severity="critical",
             summary="PostgreSQL on {{ $labels.host }} (%s) is not running under Patroni" % name),
    ]


def redis_rules(cluster: RedisCluster) -> list[Rule]:
    name, alerts = cluster.name, cluster.monitoring.alerts
    c, rd, st = _sel(name), _sel(name, job=REDIS.job), _sel(name, job=SENTINEL.job)
    window = _rate_window(cluster)
    hits = f"rate(redis_keyspace_hits_total{rd}[{window}])"
    misses = f"rate(redis_keyspace_misses_total{rd}[{window}])"
    quorum = cluster.effective_quorum
    rules = [
        Rule(record="dbfleet:redis_cache_hit_ratio:rate", expr=_ratio(hits, misses)),
        Rule(alert="RedisDown", expr=f"redis_up{rd} == 0", for_=alerts.replica_down_for, severity="critical",
             summary="Redis on {{ $labels.host }} (%s) does not answer its exporter" % name),
    ]
    if cluster.replicas:
        rules.append(Rule(
            alert="RedisReplicaDown",
            expr=f"max by (cluster) (redis_connected_slaves{rd}) < {cluster.replicas}",
            for_=alerts.replica_down_for, severity="critical",
            summary="the Redis primary of %s has {{ $value }} replicas; the spec wants %d" % (name, cluster.replicas),
        ))
        rules.append(Rule(
            alert="RedisReplicaLag",
            expr=(f"max by (cluster, slave_ip) (redis_connected_slave_lag_seconds{rd}) > {alerts.replica_lag_seconds:g}"
                  f"\nor\n(max by (cluster) (redis_master_repl_offset{rd})"
                  f" - on (cluster) group_right max by (cluster, slave_ip) (redis_connected_slave_offset_bytes{rd}))"
                  f" > {alerts.replica_lag_bytes}"),
            for_=LAG_FOR,
            summary="Redis replica {{ $labels.slave_ip }} of %s lags {{ $value | humanize }}" % name,
        ))
    rules += [
        Rule(alert="SentinelNoQuorum",
             expr=(f"min by (cluster) (redis_sentinel_master_ckquorum_status{st}) == 0\n"
                   f"or\nmin by (cluster) (redis_sentinel_master_ok_sentinels{st}) < {quorum}\n"
                   f"or\nsum by (cluster) (redis_up{st} or up{st} * 0) < {quorum}"),
             for_=alerts.replica_down_for, severity="critical",
             summary="Sentinels of %s cannot reach their quorum of %d: failover is impossible" % (name, quorum)),
        Rule(alert="RedisMemoryHigh",
             expr=(f"redis_memory_used_bytes{rd} / (redis_memory_max_bytes{rd} > 0) * 100"
                   f" > {alerts.memory_used_percent_max:g}"),
             for_=SUSTAINED,
             summary="Redis on {{ $labels.host }} uses {{ $value | humanize }}%% of maxmemory (limit %g%%)"
                     % alerts.memory_used_percent_max),
        Rule(alert="RedisFragmentationHigh",
             expr=(f"redis_mem_fragmentation_ratio{rd} > {cluster.maintenance.fragmentation.max_ratio:g}\n"
                   f"and\nredis_memory_used_bytes{rd} >= {size_bytes(cluster.maintenance.fragmentation.min_used)}"),
             for_=SUSTAINED,
             summary="Redis on {{ $labels.host }} (%s) holds {{ $value }} times the memory its data needs "
                     "(limit %g); turn on maintenance.fragmentation.activedefrag or restart it"
                     % (name, cluster.maintenance.fragmentation.max_ratio)),
        Rule(alert="RedisCacheHitRatioLow",
             expr=f"dbfleet:redis_cache_hit_ratio:rate{c} < {alerts.cache_hit_ratio_min:g}", for_=CACHE_FOR,
             summary="keyspace hit ratio on {{ $labels.host }} is {{ $value | humanizePercentage }} "
                     "(minimum %g)" % alerts.cache_hit_ratio_min),
        Rule(alert="RedisConnectionsHigh",
             expr=(f"redis_connected_clients{rd} / redis_config_maxclients{rd} * 100"
                   f" > {alerts.connections_used_percent_max:g}"),
             for_=SUSTAINED,
             summary="{{ $labels.host }} uses {{ $value | humanize }}%% of maxclients (limit %g%%)"
                     % alerts.connections_used_percent_max),
    ]
    return rules + _shared_rules(cluster)


def mongo_rules(cluster: MongoCluster) -> list[Rule]:
    name, alerts = cluster.name, cluster.monitoring.alerts
    c, mg = _sel(name), _sel(name, job=MONGODB.job)
    window = _rate_window(cluster)
    members = _sel(name, 'replset!=""', job=MONGODB.job)
    state = f"mongodb_mongod_replset_my_state{mg}"
    requested = f"rate(mongodb_ss_wt_cache_pages_requested_from_the_cache{mg}[{window}])"
    read_in = f"rate(mongodb_ss_wt_cache_pages_read_into_cache{mg}[{window}])"
    current = f"sum by (cluster, host) (mongodb_ss_connections{_sel(name, job=MONGODB.job, conn_type='current')})"
    available = f"sum by (cluster, host) (mongodb_ss_connections{_sel(name, job=MONGODB.job, conn_type='available')})"
    rules = [
        Rule(record="dbfleet:mongo_cache_hit_ratio:rate",
             expr=f"1 - sum by (cluster, host) ({read_in}) / sum by (cluster, host) ({requested})"),
        Rule(alert="MongoDown", expr=f"mongodb_up{mg} == 0", for_=alerts.replica_down_for, severity="critical",
             summary="mongod/mongos on {{ $labels.host }} (%s) does not answer its exporter" % name),
        Rule(alert="MongoShardNoPrimary",
             expr=(f"count by (cluster, replset) (up{members})\nunless on (cluster, replset)\n"
                   f"count by (cluster, replset) ({state} == 1)"),
             for_=alerts.replica_down_for, severity="critical",
             summary="replica set {{ $labels.replset }} of %s has no primary: its writes fail" % name),
        Rule(alert="MongoReplicaDown",
             expr=f"{state} > 2 or {state} < 1", for_=alerts.replica_down_for, severity="critical",
             summary="member {{ $labels.host }} of {{ $labels.replset }} (%s) is neither primary nor secondary"
                     % name),
        Rule(alert="MongoReplicaLag",
             expr=(f"max by (cluster, set, name) (mongodb_mongod_replset_member_replication_lag{mg})"
                   f" > {alerts.replica_lag_seconds:g}"),
             for_=LAG_FOR,
             summary="secondary {{ $labels.name }} of {{ $labels.set }} lags {{ $value }}s (limit %gs)"
                     % alerts.replica_lag_seconds),
        Rule(alert="MongoCacheHitRatioLow",
             expr=f"dbfleet:mongo_cache_hit_ratio:rate{c} < {alerts.cache_hit_ratio_min:g}", for_=CACHE_FOR,
             summary="WiredTiger cache hit ratio on {{ $labels.host }} is {{ $value | humanizePercentage }}"),
        Rule(alert="MongoConnectionsHigh",
             expr=f"{current}\n/\n({current} + {available})\n* 100 > {alerts.connections_used_percent_max:g}",
             for_=SUSTAINED,
             summary="{{ $labels.host }} uses {{ $value | humanize }}%% of its connections (limit %g%%)"
                     % alerts.connections_used_percent_max),
    ]
    return rules + _shared_rules(cluster)


def _rate_window(cluster: PostgresCluster | RedisCluster | MongoCluster) -> str:
    """Rates over 5 minutes, or four scrapes when scrapes are rarer, so a rate always has samples."""
    return prom_duration(max(300, 4 * duration_seconds(cluster.monitoring.scrape_interval)))


# --------------------------------------------------------------------------- the file


def fleet_group(fleet: Fleet) -> dict[str, Any]:
    """Rules for what belongs to no cluster, and the data-directory ratio every cluster's disk alert reads."""
    info = f"{DATA_DIRECTORY_INFO}{{job=\"{NODE.job}\"}}"
    join = f"on (instance, mountpoint) group_left (path) {info}"
    enabled = [c for c in fleet.clusters if c.monitoring.enabled] or list(fleet.clusters)
    down_for = prom_duration(min(duration_seconds(c.monitoring.alerts.replica_down_for) for c in enabled))
    disk_max = min(c.monitoring.alerts.disk_used_percent_max for c in enabled)
    rules = [
        Rule(record=DATA_DIR_RATIO,
             expr=(f"1 - (node_filesystem_avail_bytes{{job=\"{NODE.job}\"}} * {join})\n"
                   f"/ (node_filesystem_size_bytes{{job=\"{NODE.job}\"}} * {join})")),
        Rule(alert="TargetDown", expr='up{cluster=""} == 0', for_=down_for, severity="critical",
             summary="{{ $labels.job }} at {{ $labels.instance }} is unreachable"),
        Rule(alert="DataDiskUsageHigh", expr=f'{DATA_DIR_RATIO}{{cluster=""}} * 100 > {disk_max:g}', for_=SUSTAINED,
             summary="{{ $labels.path }} on {{ $labels.host }} is {{ $value | humanize }}%% full (limit %g%%)"
                     % disk_max),
        operator_no_leader_rule(fleet),
        *operator_job_rules(fleet),
    ]
    return {"name": "dbfleet-fleet", "rules": [r.as_dict() for r in rules]}


def operator_job_rules(fleet: Fleet) -> list[Rule]:
    """A stuck or starved job (dbfleet.backups.job_runner): one that has run longer than
    operator.jobs.running_alert_after, one whose record has not been written for longer than another operator
    waits before taking it for stopped (its heartbeat), and due jobs that have waited for a free slot for
    operator.jobs.waiting_alert_after without a pause. The largest figure among the operators: only the leader
    runs jobs."""
    limits = fleet.operator.jobs
    operator = f'{{job="{OPERATOR_JOB}"}}'
    running = duration_seconds(limits.running_alert_after)
    stale = int(metrics.JOB_STALE_AFTER)
    return [
        Rule(alert="OperatorJobRunningLong",
             expr=f"max by (cluster, kind) ({metrics.JOB_AGE}{operator}) > {running}",
             summary="the {{ $labels.kind }} job of {{ $labels.cluster }} has run for {{ $value | humanizeDuration }}"
                     " (limit %s, operator.jobs.running_alert_after): stuck, or far longer than its schedule allows;"
                     " `dbfleet status` shows its step" % limits.running_alert_after),
        Rule(alert="OperatorJobHeartbeatStale",
             expr=f"max by (cluster, kind) ({metrics.JOB_HEARTBEAT_AGE}{operator}) > {stale}",
             for_="1m", severity="critical",
             summary="the record of the {{ $labels.kind }} job of {{ $labels.cluster }} has not been written for "
                     "{{ $value | humanizeDuration }} (heartbeat every %gs): the backup target refuses writes or "
                     "the operator is wedged, and an operator elsewhere takes a job silent for %ds for stopped"
                     % (metrics.JOB_HEARTBEAT_SECONDS, stale)),
        Rule(alert="OperatorJobsQueued",
             expr=f"max by (kind) ({metrics.JOBS_QUEUED}{operator}) > 0",
             for_=prom_duration(duration_seconds(limits.waiting_alert_after)),
             summary="{{ $value }} due {{ $labels.kind }} jobs have waited for a free slot for %s without a pause:"
                     " operator.jobs (backups %d, drills %d for drills and DR drills together, rewrites %d) is too low "
                     "for the fleet, or a job holds its slot (a user's restore never waits here)"
                     % (limits.waiting_alert_after, limits.backups, limits.drills, limits.rewrites)),
    ]


def operator_no_leader_rule(fleet: Fleet) -> Rule:
    """No operator has known a leader for operator.no_leader_alert_cycles cycles: every scraped operator's
    store of the leader lock failed to answer it, so nobody acts on any cluster. The least count among the
    operators, so one operator cut off while another leads does not fire it."""
    cycles, backend = fleet.operator.no_leader_alert_cycles, fleet.leader_backend()
    operator = f'{{job="{OPERATOR_JOB}"}}'
    return Rule(alert="OperatorNoLeader",
                expr=f"min by (job) ({metrics.CYCLES_WITHOUT_LEADER}{operator}) >= {cycles}",
                severity="critical",
                summary="no dbfleet operator has known a leader for {{ $value }} cycles (limit %d): the leader "
                        "lock's store (operator.leader: %s) does not answer, so nothing is acted on: backups, "
                        "drills and repairs wait; the operators' reports say why" % (cycles, backend))


def cluster_group(cluster: PostgresCluster | RedisCluster | MongoCluster) -> dict[str, Any]:
    if isinstance(cluster, PostgresCluster):
        rules = postgres_rules(cluster)
    elif isinstance(cluster, RedisCluster):
        rules = redis_rules(cluster)
    else:
        rules = mongo_rules(cluster)
    # Each alert names its cluster as a label too, so the same alert of two clusters is two distinct rules.
    rules = [r if r.record else replace(r, labels={"cluster": cluster.name, **r.labels}) for r in rules]
    return {"name": f"dbfleet-{cluster.name}", "interval": cluster.monitoring.scrape_interval,
            "rules": [r.as_dict() for r in rules]}


def fleet_rules(fleet: Fleet) -> dict[str, Any]:
    """The whole rules file as data: the fleet group, then one group per monitored cluster."""
    groups = [fleet_group(fleet)]
    groups += [cluster_group(c) for c in fleet.clusters if c.monitoring.enabled]
    return {"groups": groups}


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as literal blocks, so the file reads like hand-written PromQL."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_rules(fleet: Fleet) -> str:
    """The rules file text: a header naming the fleet, then the groups."""
    header = (f"# Prometheus rules for fleet {fleet.fleet.name!r}, generated from its spec by "
              "`dbfleet rules --write`.\n"
              "# Do not edit: change the spec's monitoring thresholds and regenerate.\n")
    return header + yaml.dump(fleet_rules(fleet), Dumper=_Dumper, sort_keys=False, width=100_000, allow_unicode=True)
