"""The operator's own Prometheus metrics and the helpers that record them (monitoring.endpoint serves them).

Every metric lives in one registry, REGISTRY, so tests and the server see the
same objects. Callers record facts as they learn them (a reconcile finished, a
backup was observed, a drill ran); nothing here talks to a database. Values
that are ages are computed at scrape time from the recorded timestamps, so a
stale backup keeps getting older even when nobody records anything.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

INDEX_STATES = ("declared", "missing", "unused", "duplicate", "invalid")

# Names the alert rules and the status figures refer to.
BACKUP_LAST_SUCCESS = "dbfleet_backup_last_success_timestamp_seconds"
BACKUP_AGE = "dbfleet_backup_age_seconds"
DRILL_SUCCESS = "dbfleet_restore_drill_success"
DRILL_LAST = "dbfleet_restore_drill_last_timestamp_seconds"
INDEX_BLOAT_RATIO = "dbfleet_pg_index_bloat_ratio"
TABLE_BLOAT_RATIO = "dbfleet_pg_table_bloat_ratio"
DEAD_TUPLE_RATIO = "dbfleet_pg_table_dead_tuple_ratio"
LAST_VACUUM = "dbfleet_pg_table_last_vacuum_timestamp_seconds"
DEAD_TUPLES = "dbfleet_pg_table_dead_tuples"
XID_AGE = "dbfleet_pg_database_xid_age"
MXID_AGE = "dbfleet_pg_database_mxid_age"
"""Wraparound ages come from the postgres exporter (its dbfleet_pg_database query), sampled every scrape."""
ARCHIVER_FAILING = "dbfleet_pg_archiver_failing"
"""1 while a primary's archive_command fails (the exporter's dbfleet_pg_archiver query)."""
CYCLES_WITHOUT_LEADER = "dbfleet_operator_cycles_without_leader"
"""Consecutive cycles in which the leader lock's store did not answer this operator (OperatorNoLeader)."""

RECONCILE_DURATION = Histogram(
    "dbfleet_reconcile_duration_seconds", "Time one reconciler took for one cluster.",
    ["cluster", "reconciler"], registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
RECONCILE_ERRORS = Counter(
    "dbfleet_reconcile_errors_total", "Reconciler runs that ended in an error.",
    ["cluster", "reconciler"], registry=REGISTRY,
)
RECONCILE_LAST = Gauge(
    "dbfleet_reconcile_last_run_timestamp_seconds", "When a reconciler last finished for a cluster (Unix time).",
    ["cluster", "reconciler"], registry=REGISTRY,
)
ACTIONS = Counter(
    "dbfleet_actions_total", "Actions the operator applied, by kind (create_index, backup, failover, ...).",
    ["cluster", "kind"], registry=REGISTRY,
)
BACKUP_LAST = Gauge(BACKUP_LAST_SUCCESS, "When the newest successful backup of this kind finished (Unix time).",
                    ["cluster", "kind"], registry=REGISTRY)
BACKUP_SIZE = Gauge("dbfleet_backup_size_bytes", "Size of the newest successful backup of this kind.",
                    ["cluster", "kind"], registry=REGISTRY)
BACKUP_DURATION = Gauge("dbfleet_backup_duration_seconds", "How long the newest successful backup of this kind took.",
                        ["cluster", "kind"], registry=REGISTRY)
DRILL_OK = Gauge(DRILL_SUCCESS, "1 if the last restore drill proved the backup restorable, else 0.",
                 ["cluster"], registry=REGISTRY)
DRILL_TIME = Gauge(DRILL_LAST, "When the last restore drill finished (Unix time).", ["cluster"], registry=REGISTRY)
DRILL_RTO = Gauge("dbfleet_restore_drill_rto_seconds", "Recovery time of the last restore drill: start to usable.",
                  ["cluster"], registry=REGISTRY)
DRILL_RPO = Gauge("dbfleet_restore_drill_rpo_seconds",
                  "Recovery point of the last restore drill: how much time of writes the restore lost.",
                  ["cluster"], registry=REGISTRY)
DR_DRILL_SUCCESS = "dbfleet_dr_drill_success"
DR_DRILL_LAST = "dbfleet_dr_drill_last_timestamp_seconds"
DR_DRILL_RPO_SECONDS = "dbfleet_dr_drill_rpo_seconds"
DR_COPIES_MISSING = "dbfleet_dr_copies_missing"
DR_OK = Gauge(DR_DRILL_SUCCESS, "1 if the last DR drill restored the newest backup from the second target, else 0.",
              ["cluster"], registry=REGISTRY)
DR_TIME = Gauge(DR_DRILL_LAST, "When the last DR drill (from the second target) finished (Unix time).", ["cluster"],
                registry=REGISTRY)
DR_RTO = Gauge("dbfleet_dr_drill_rto_seconds", "Recovery time of the last DR drill: restore start to usable.",
               ["cluster"], registry=REGISTRY)
DR_RPO = Gauge(DR_DRILL_RPO_SECONDS, "Recovery point of the last DR drill: the age, when it ended, of the newest "
               "point restored from the second target.", ["cluster"], registry=REGISTRY)
DR_MISSING = Gauge(DR_COPIES_MISSING, "Good backups in the first target that the second target does not hold as "
                   "good ones.", ["cluster"], registry=REGISTRY)
DR_STANDBY_READY_NAME = "dbfleet_dr_standby_ready"
DR_OLD_SITE_UNFENCED_NAME = "dbfleet_dr_old_site_unfenced"
DR_STANDBY_READY = Gauge(DR_STANDBY_READY_NAME, "1 while the PostgreSQL standby site (dr.standby) could take over: it "
                         "answers and has a standby leader following the primary site (or leads after a promotion), "
                         "else 0.", ["cluster"], registry=REGISTRY)
DR_OLD_SITE_UNFENCED = Gauge(DR_OLD_SITE_UNFENCED_NAME, "1 while, after `dbfleet dr promote`, the old primary site "
                             "answers with a leader that is not fenced (it may accept writes beside the promoted "
                             "site), else 0.", ["cluster"], registry=REGISTRY)
LEADER = Gauge("dbfleet_operator_leader", "1 while this operator process holds the leader lock, else 0.",
               ["backend"], registry=REGISTRY)
NO_LEADER_CYCLES = Gauge(CYCLES_WITHOUT_LEADER, "Consecutive cycles in which the leader lock's store did not answer "
                         "this operator, so it could not lead nor learn who does; 0 while it leads or sees a leader.",
                         registry=REGISTRY)
JOB_HEARTBEAT_SECONDS = 5.0
"""How often a running job's record is rewritten with its step and the time (dbfleet.backups.jobs)."""
JOB_STALE_AFTER = 30.0
"""A running job record from another machine whose heartbeat is older than this: its operator stopped. The
OperatorJobHeartbeatStale alert fires past it."""
JOB_AGE = "dbfleet_job_age_seconds"
JOB_HEARTBEAT_AGE = "dbfleet_job_heartbeat_age_seconds"
JOBS_QUEUED = "dbfleet_jobs_waiting"
"""Names the job alerts (rules.operator_job_rules) read."""
JOBS_RUNNING = Gauge("dbfleet_jobs_running", "Long jobs (backups, restore drills, maintenance rewrites) running now "
                     "outside the cycle, by kind.", ["kind"], registry=REGISTRY)
JOBS_WAITING = Gauge(JOBS_QUEUED, "Jobs due but waiting for a free slot (the spec's operator.jobs limits), "
                     "by kind, as the last cycle saw them: the queue depth.", ["kind"], registry=REGISTRY)
JOBS_ENDED = Counter("dbfleet_jobs_total", "Jobs that ended, by kind and state (done, failed, interrupted).",
                     ["kind", "state"], registry=REGISTRY)
JOB_STARTED = Gauge("dbfleet_job_started_timestamp_seconds", "When the job of this kind running on this cluster "
                    "started (Unix time); no series while none runs.", ["cluster", "kind"], registry=REGISTRY)
JOB_HEARTBEAT = Gauge("dbfleet_job_heartbeat_timestamp_seconds", "When the running job of this kind on this cluster "
                      "last had its record written (its heartbeat, Unix time); no series while none runs.",
                      ["cluster", "kind"], registry=REGISTRY)
INDEXES = Gauge("dbfleet_indexes", "Index counts per cluster: declared, missing, unused, duplicate, invalid.",
                ["cluster", "state"], registry=REGISTRY)


class _BackupAge(Collector):
    """dbfleet_backup_age_seconds: now minus the newest backup of any kind, per cluster, at scrape time."""

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(BACKUP_AGE, "Seconds since the newest successful backup of any kind.",
                                   labels=["cluster"])
        newest: dict[str, float] = {}
        for metric in BACKUP_LAST.collect():
            for sample in metric.samples:
                cluster = sample.labels["cluster"]
                newest[cluster] = max(newest.get(cluster, 0.0), sample.value)
        now = time.time()
        for cluster, finished in sorted(newest.items()):
            family.add_metric([cluster], max(0.0, now - finished))
        return [family]


REGISTRY.register(_BackupAge())


class _JobAge(Collector):
    """dbfleet_job_age_seconds and dbfleet_job_heartbeat_age_seconds: how long each running job has run, and how
    long ago its record was last written, at scrape time (so a job whose heartbeats stopped keeps ageing)."""

    def collect(self) -> list[GaugeMetricFamily]:
        age = GaugeMetricFamily(JOB_AGE, "Seconds the running job of this kind on this cluster has run.",
                                labels=["cluster", "kind"])
        beat = GaugeMetricFamily(JOB_HEARTBEAT_AGE, "Seconds since the running job of this kind on this cluster "
                                 "last had its record written (its heartbeat).", labels=["cluster", "kind"])
        now = time.time()
        seen = set()
        for gauge, family in ((JOB_STARTED, age), (JOB_HEARTBEAT, beat)):
            for metric in gauge.collect():
                for sample in metric.samples:
                    seen.add((sample.labels["cluster"], sample.labels["kind"]))
                    family.add_metric([sample.labels["cluster"], sample.labels["kind"]], max(0.0, now - sample.value))
        for cluster, jobs in sorted(_OBSERVED_JOBS.items()):
            for kind, started, heartbeat in jobs:
                if (cluster, kind) not in seen:
                    age.add_metric([cluster, kind], max(0.0, now - started))
                    beat.add_metric([cluster, kind], max(0.0, now - heartbeat))
        return [age, beat]


_OBSERVED_JOBS: dict[str, list[tuple[str, float, float]]] = {}
"""Running jobs of a cluster that another process runs (a user's `dbfleet restore`, another operator), as the
last cycle read their records: (kind, started, heartbeat)."""


def set_observed_jobs(cluster: str, jobs: list[tuple[str, float, float]]) -> None:
    """The cluster's running job records that this process does not run, replaced whole each cycle."""
    _OBSERVED_JOBS[cluster] = list(jobs)


REGISTRY.register(_JobAge())


class _Maintenance(Collector):
    """Bloat and vacuum figures of the last maintenance observation per cluster, replaced whole each cycle so a
    dropped index or table leaves no stale series."""

    def __init__(self) -> None:
        self.clusters: dict[str, Any] = {}

    def collect(self) -> list[GaugeMetricFamily]:
        ratio = GaugeMetricFamily(INDEX_BLOAT_RATIO, "Wasted share of a B-tree index (pgstatindex or estimate).",
                                  labels=["cluster", "database", "index", "method"])
        wasted = GaugeMetricFamily("dbfleet_pg_index_wasted_bytes", "Wasted bytes of a B-tree index.",
                                   labels=["cluster", "database", "index", "method"])
        table_ratio = GaugeMetricFamily(TABLE_BLOAT_RATIO, "Wasted share of a table (pgstattuple_approx or estimate).",
                                        labels=["cluster", "database", "table", "method"])
        table_wasted = GaugeMetricFamily("dbfleet_pg_table_wasted_bytes", "Wasted bytes of a table.",
                                         labels=["cluster", "database", "table", "method"])
        dead = GaugeMetricFamily(DEAD_TUPLE_RATIO, "Dead tuples over live and dead tuples of a table.",
                                 labels=["cluster", "database", "table"])
        vacuumed = GaugeMetricFamily(LAST_VACUUM, "When a table was last vacuumed, by hand or autovacuum (Unix time;"
                                     " 0 if never).", labels=["cluster", "database", "table"])
        dead_count = GaugeMetricFamily(DEAD_TUPLES, "Dead tuples of a table (pg_stat_user_tables.n_dead_tup).",
                                       labels=["cluster", "database", "table"])
        for cluster, observed in sorted(self.clusters.items()):
            for i in observed.all_indexes():
                if i.wasted_bytes is not None:
                    labels = [cluster, i.database, i.scope, i.method]
                    ratio.add_metric(labels, i.ratio or 0.0)
                    wasted.add_metric(labels, float(i.wasted_bytes))
            for t in observed.all_tables():
                if t.wasted_bytes is not None:
                    labels = [cluster, t.database, f"{t.schema}.{t.name}", t.method]
                    table_ratio.add_metric(labels, t.ratio or 0.0)
                    table_wasted.add_metric(labels, float(t.wasted_bytes))
            for v in observed.all_vacuum():
                labels = [cluster, v.database, f"{v.schema}.{v.name}"]
                dead.add_metric(labels, v.dead_ratio)
                dead_count.add_metric(labels, float(v.dead_tuples))
                last = v.last_vacuum
                vacuumed.add_metric(labels, last.replace(tzinfo=UTC).timestamp() if last else 0.0)
        return [ratio, wasted, table_ratio, table_wasted, dead, dead_count, vacuumed]


_MAINTENANCE = _Maintenance()
REGISTRY.register(_MAINTENANCE)


def set_maintenance(cluster: str, observed: Any) -> None:
    """The maintenance reconciler's latest observation of a cluster (a reconcile.ObservedMaintenance: duck-typed,
    as monitoring sits below reconcile)."""
    _MAINTENANCE.clusters[cluster] = observed


def record_reconcile(cluster: str, reconciler: str, seconds: float, error: bool = False) -> None:
    """One reconciler finished for one cluster, in `seconds`, with or without an error."""
    RECONCILE_DURATION.labels(cluster, reconciler).observe(seconds)
    RECONCILE_LAST.labels(cluster, reconciler).set(time.time())
    errors = RECONCILE_ERRORS.labels(cluster, reconciler)  # the series exists, at 0, from the first run
    if error:
        errors.inc()


def record_action(cluster: str, kind: str, count: int = 1) -> None:
    """The operator applied `count` actions of `kind` to a cluster."""
    ACTIONS.labels(cluster, kind).inc(count)


def record_leadership(backend: str, leads: bool, cycles_without_leader: int) -> None:
    """What this cycle's acquire of the leader lock found."""
    LEADER.labels(backend).set(1 if leads else 0)
    NO_LEADER_CYCLES.set(cycles_without_leader)


def record_backup(cluster: str, kind: str, finished_at: float, size_bytes: float, duration_seconds: float) -> None:
    """The newest successful backup of `kind` (full, diff, incr, snapshot) as observed in the repository."""
    BACKUP_LAST.labels(cluster, kind).set(finished_at)
    BACKUP_SIZE.labels(cluster, kind).set(size_bytes)
    BACKUP_DURATION.labels(cluster, kind).set(duration_seconds)


def record_drill(cluster: str, success: bool, rto_seconds: float | None, rpo_seconds: float | None,
                 finished_at: float | None = None, dr: bool = False) -> None:
    """The result of a restore drill (with `dr`, of a DR drill from the second target). RTO/RPO may be None when
    the drill failed before measuring them."""
    ok, last, rto, rpo = (DR_OK, DR_TIME, DR_RTO, DR_RPO) if dr else (DRILL_OK, DRILL_TIME, DRILL_RTO, DRILL_RPO)
    ok.labels(cluster).set(1 if success else 0)
    last.labels(cluster).set(time.time() if finished_at is None else finished_at)
    if rto_seconds is not None:
        rto.labels(cluster).set(rto_seconds)
    if rpo_seconds is not None:
        rpo.labels(cluster).set(rpo_seconds)


def record_dr_copies_missing(cluster: str, count: int) -> None:
    """How many good backups of the first target the second lacks, as the last observation saw."""
    DR_MISSING.labels(cluster).set(count)


def record_standby_site(cluster: str, ready: bool, old_site_unfenced: bool) -> None:
    """The standby site's state as the dr reconciler last observed it."""
    DR_STANDBY_READY.labels(cluster).set(1 if ready else 0)
    DR_OLD_SITE_UNFENCED.labels(cluster).set(1 if old_site_unfenced else 0)


def record_jobs(running: list[tuple[str, str, float, float]], waiting: Mapping[str, int],
                kinds: tuple[str, ...]) -> None:
    """The runner's jobs now: (cluster, kind, started at, record last written at) of each running one, and how
    many of each kind wait."""
    JOB_STARTED.clear()
    JOB_HEARTBEAT.clear()
    for cluster, kind, started, written in running:
        JOB_STARTED.labels(cluster, kind).set(started)
        JOB_HEARTBEAT.labels(cluster, kind).set(written or started)
    for kind in kinds:
        JOBS_RUNNING.labels(kind).set(sum(r[1] == kind for r in running))
        JOBS_WAITING.labels(kind).set(waiting.get(kind, 0))


def record_job_end(kind: str, state: str) -> None:
    JOBS_ENDED.labels(kind, state).inc()


def set_index_counts(cluster: str, counts: Mapping[str, int]) -> None:
    """Index counts for a cluster by state; a state left out is 0, an unknown state is an error."""
    unknown = set(counts) - set(INDEX_STATES)
    if unknown:
        raise ValueError(f"unknown index states {sorted(unknown)}; expected some of {', '.join(INDEX_STATES)}")
    for state in INDEX_STATES:
        INDEXES.labels(cluster, state).set(counts.get(state, 0))


def render() -> bytes:
    """The current metrics in Prometheus text format, as /metrics serves them."""
    return generate_latest(REGISTRY)
