"""The members reconciler: a replica or Sentinel the spec lists whose server stopped is started again.

observe reads the topology the loop already has; diff is pure; act starts the
host's service through Ansible with the same inventory the playbooks use, so
it works on lab containers and EC2 hosts alike.

It never starts a lone old primary: a PostgreSQL host is started only when it
holds standby.signal (the act checks on the host), because a former primary
beside the promoted one would split the cluster. Redis data nodes and
Sentinels are safe to start: the Sentinels turn an old master into a replica.
Nothing is started while the cluster has no primary: that is a failover for
the HA tooling or a human, not for a restart loop.

With `ha: patroni` Patroni owns PostgreSQL: it restarts a crashed server, builds
a missing replica and rewinds a former primary. The reconciler then only
reports what is down (and a cluster without a leader), and starts nothing.
One case Patroni 3.0.2 misses: a replica that replayed past its new leader's
fork point after Patroni's one check at the change of leader (old-timeline WAL
restored from the archive). It can follow no one; with `patroni.on_diverged:
rewind` the reconciler restarts Patroni there (a destructive `rewind`: the
start-up check runs pg_rewind, discarding the WAL the leader never had),
otherwise it reports it. A second: a rewound member that later leads queues
old-timeline segments left in its pg_wal for archiving, and pgBackRest refuses
one the archive holds with other bytes, which stops all archiving behind it.
When the leader's archiver fails on a segment off its timeline history, the
same policy marks such segments archived (`skip-stale-wal`); any other
archiving failure is reported. And it keeps etcd's raft leader off the
PostgreSQL leader's host (`move-etcd-leader`): losing both at once costs a
failover about one more `ttl` (etcd renews every lease when its leader changes).
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

from dbfleet.actions import Action
from dbfleet.engines import AnySession
from dbfleet.engines.base import AnyCluster, Topology
from dbfleet.engines.etcd import move_leader
from dbfleet.engines.patroni import SEGMENT_NAME, PatroniApi
from dbfleet.engines.postgres import PgPaths, pg_paths
from dbfleet.errors import PermanentError, TemporaryError
from dbfleet.playbook import run_shell
from dbfleet.spec import PostgresCluster, RedisCluster

RECONCILER = "members"
START_TIMEOUT = 120
NOT_A_STANDBY = 3
"""Exit code of the PostgreSQL start command when the host holds no standby.signal."""


def postgres_start_command(paths: PgPaths) -> str:
    data = paths.data_dir
    return (f"test -f {data}/standby.signal || {{ echo 'no standby.signal in {data}: this host was a primary; "
            f"starting it beside the promoted one would split the cluster'; exit {NOT_A_STANDBY}; }}; "
            f"systemctl start {paths.service}")


def patroni_reports(cluster: PostgresCluster, topology: Topology) -> list[Action]:
    """What is down in a cluster Patroni owns, reported, never acted on."""
    reports: list[Action] = []
    if topology.primary is None:
        reports.append(Action(cluster.name, RECONCILER, "report-no-leader", cluster.name,
                              f"no member leads; Patroni promotes a replica once the leader lock expires "
                              f"(ttl {cluster.patroni.ttl}s), or waits for etcd's quorum"))
    unstartable = unstartable_members(cluster, topology)
    rebuilt = {a.target for a in unstartable}
    for member in topology.members:
        if not member.up and member.host not in rebuilt:
            reports.append(Action(cluster.name, RECONCILER, "report-member-down", member.host,
                                  f"{member.host} is not running ({member.detail or 'down'}); Patroni owns it: "
                                  "it restarts, rebuilds or rewinds the server, dbfleet starts nothing"))
    return (reports + unstartable + diverged_members(cluster, topology) + stuck_archiving(cluster, topology)
            + etcd_leader_placement(cluster, topology))


START_FAILED = "start failed"
"""Patroni's state of a member whose PostgreSQL it tried to start and could not; it does not try again by itself."""


def unstartable_members(cluster: PostgresCluster, topology: Topology) -> list[Action]:
    """A `reinit` (or, without the policy, a report) per member Patroni could not start while the site has a
    running leader to clone from. Seen after a region loss: the old site's leader demoted with a shutdown
    checkpoint past the promoted site's fork and, once fenced, could not start on the new timeline
    (`requested timeline ... is not a child of this server's history`); Patroni 3.0.2 does not rewind it."""
    patroni = topology.facts.get("patroni") or {}
    members: dict[str, dict[str, Any]] = patroni.get("members") or {}
    leader = next((name for name, m in sorted(members.items()) if m.get("role") in ("leader", "standby_leader")
                   and m.get("state") in ("running", "streaming")), None)
    if leader is None:
        return []
    actions: list[Action] = []
    for name, member in sorted(members.items()):
        if member.get("state") != START_FAILED or name == leader:
            continue
        why = (f"Patroni could not start PostgreSQL on {name} (state '{START_FAILED}', timeline "
               f"{member.get('timeline')}) and does not try again by itself, while {leader} leads")
        if cluster.patroni.on_diverged == "rewind":
            actions.append(Action(cluster.name, RECONCILER, "reinit", name,
                                  f"{why}; rebuild it from the site's leader (Patroni's POST /reinitialize: its data "
                                  "directory is replaced, as `patronictl reinit` does)", destructive=True,
                                  detail={"unit": "patroni", "leader": leader,
                                          "done": f"Patroni rebuilds {name} from {leader}"}))
        else:
            actions.append(Action(cluster.name, RECONCILER, "report-start-failed", name,
                                  f"{why}; `patroni.on_diverged: rewind` lets dbfleet rebuild it, or run "
                                  f"`patronictl reinit {cluster.name} {name}`"))
    return actions


def etcd_leader_placement(cluster: PostgresCluster, topology: Topology) -> list[Action]:
    """A `move-etcd-leader` when etcd's raft leader runs on the PostgreSQL leader's host.

    Losing that host would then cost etcd its leader too: an election (election timeout), after which etcd
    renews every lease to its full TTL, so Patroni's leader key outlives the dead primary by about one more `ttl`
    (on the lab: 15.2 s from the kill to a new leader, against 10.4 s when etcd's leader was elsewhere). The
    leadership goes to the first other etcd member, in the spec's order, whose PostgreSQL runs or that holds
    no PostgreSQL."""
    etcd = (topology.facts.get("patroni") or {}).get("etcd") or {}
    leader, primary = etcd.get("leader"), topology.primary
    if not leader or primary is None or leader != primary:
        return []
    ids: dict[str, str] = etcd.get("ids") or {}
    running = {m.host for m in topology.members if m.up}
    hosts = set(cluster.host_names())
    target = next((h.name for h in cluster.etcd_hosts()
                   if h.name != leader and h.name in ids and (h.name in running or h.name not in hosts)), None)
    if target is None:
        return []
    return [Action(cluster.name, RECONCILER, "move-etcd-leader", target,
                   f"etcd's leader runs on {leader}, beside PostgreSQL's leader: losing that host would cost etcd an "
                   f"election and renew Patroni's leader key for another ttl ({cluster.patroni.ttl}s) before a "
                   f"failover; hand etcd's leadership to {target}",
                   detail={"unit": "etcd", "target_id": ids[target], "leader_urls": list(etcd.get("urls") or []),
                           "done": f"etcd's leader moved from {leader} to {target}"})]


def diverged_members(cluster: PostgresCluster, topology: Topology) -> list[Action]:
    """A `rewind` (or, without the policy, a report) per member past the leader's fork point."""
    patroni = topology.facts.get("patroni") or {}
    actions: list[Action] = []
    for name, member in sorted((patroni.get("members") or {}).items()):
        fork = member.get("diverged_at")
        if fork is None:
            continue
        why = (f"{name} replayed timeline {member.get('timeline')} to {member.get('replayed')}, past the fork "
               f"at {fork} of leader {patroni.get('leader')}'s timeline {patroni.get('timeline')}: it can follow "
               "no leader until it is rewound")
        if cluster.patroni.on_diverged == "rewind":
            actions.append(Action(cluster.name, RECONCILER, "rewind", name,
                                  f"{why}; restart Patroni there, whose start-up check runs pg_rewind (the WAL "
                                  "past the fork, never on the leader, is discarded)", destructive=True,
                                  detail={"unit": "patroni", "command": "systemctl restart patroni",
                                          "done": "restarted patroni to rewind", "fork": fork}))
        else:
            actions.append(Action(cluster.name, RECONCILER, "report-diverged", name,
                                  f"{why}; `patroni.on_diverged: rewind` lets dbfleet restart Patroni there to "
                                  "rewind it, or rebuild it with `patronictl reinit`", detail={"fork": fork}))
    return actions


def mark_done_command(data_dir: str, segments: list[str]) -> str:
    """Mark queued segments archived (`.ready` -> `.done`), each only if still queued; names are checked."""
    if not segments or not all(SEGMENT_NAME.fullmatch(wal) for wal in segments):
        raise ValueError(f"not WAL segment names: {segments!r}")
    status_dir = shlex.quote(f"{data_dir}/pg_wal/archive_status")
    return (f"cd {status_dir} && for wal in {' '.join(segments)}; do "
            'if [ -e "$wal.ready" ]; then mv "$wal.ready" "$wal.done" && echo "$wal"; fi; done')


def stuck_archiving(cluster: PostgresCluster, topology: Topology) -> list[Action]:
    """The leader's archiver failing: a `skip-stale-wal` when the segments queued off the leader's timeline
    history are in the way (with `patroni.on_diverged: rewind`), otherwise a report."""
    patroni = topology.facts.get("patroni") or {}
    archiver, leader = patroni.get("archiver"), topology.primary
    if not archiver or leader is None:
        return []
    failing, stale = archiver.get("failing_wal"), list(archiver.get("off_history") or [])
    why = (f"WAL archiving on {leader} fails at {failing} ({archiver.get('queued')} segments queued): backups and "
           "point-in-time recovery stop until it archives again")
    if failing not in stale:
        return [Action(cluster.name, RECONCILER, "report-archive-failing", leader,
                       f"{why}; see the server's log and `pgbackrest check`", detail={"wal": failing})]
    listed = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
    why = (f"{why}. {listed} lie on timelines the leader's history left before them (left in pg_wal by a "
           "rewind; the archive holds other bytes under the same name)")
    if cluster.patroni.on_diverged != "rewind":
        return [Action(cluster.name, RECONCILER, "report-stale-wal", leader,
                       f"{why}; `patroni.on_diverged: rewind` lets dbfleet mark them archived",
                       detail={"wal": failing, "segments": stale})]
    return [Action(cluster.name, RECONCILER, "skip-stale-wal", leader,
                   f"{why}: mark them archived (.ready -> .done); the current timeline never replays them",
                   destructive=True,
                   detail={"unit": "archive_status", "wal": failing, "segments": stale,
                           "command": mark_done_command(pg_paths(cluster).data_dir, stale),
                           "done": f"marked {len(stale)} off-history segments archived"})]


def planned_starts(cluster: AnyCluster, topology: Topology) -> list[Action]:
    """A `start` per listed member that does not answer, while the cluster's primary does."""
    if isinstance(cluster, PostgresCluster) and cluster.ha == "patroni":
        return patroni_reports(cluster, topology)
    if topology.primary is None or not isinstance(cluster, (PostgresCluster, RedisCluster)):
        return []
    actions: list[Action] = []
    for member in topology.members:
        if member.up or member.host == topology.primary:
            continue
        if isinstance(cluster, PostgresCluster):
            paths = pg_paths(cluster)
            unit, command = paths.service, postgres_start_command(paths)
        elif member.role == "sentinel":
            unit = "redis-sentinel"
            command = f"systemctl start {unit}"
        else:
            unit = "redis-server"
            command = f"systemctl start {unit}"
        actions.append(Action(cluster.name, RECONCILER, "start", member.host,
                              f"{member.host} does not answer ({member.detail or 'down'}) while primary "
                              f"{topology.primary} does: start {unit}", detail={"unit": unit, "command": command}))
    return actions


class MemberReconciler:
    """Starts stopped replicas and Sentinels of PostgreSQL and Redis clusters."""

    name = RECONCILER

    def applies_to(self, cluster: AnyCluster) -> bool:
        return isinstance(cluster, (PostgresCluster, RedisCluster))

    def observe(self, cluster: AnyCluster, session: AnySession) -> Topology:
        return session.observe_topology()

    def diff(self, cluster: AnyCluster, observed: Topology) -> list[Action]:
        return planned_starts(cluster, observed)

    def act(self, action: Action, session: AnySession) -> str:
        if action.kind == "reinit":
            if not isinstance(session.cluster, PostgresCluster):
                raise PermanentError("only a Patroni member is rebuilt", cluster=action.cluster)
            PatroniApi(session.cluster, session.access).reinitialize(action.target)
            return str(action.detail["done"])
        if action.kind == "move-etcd-leader":
            if not isinstance(session.cluster, PostgresCluster):
                raise PermanentError("etcd's leader is moved only for PostgreSQL clusters", cluster=action.cluster)
            move_leader(session.cluster, session.access, action.detail["leader_urls"], action.detail["target_id"])
            return str(action.detail["done"])
        inventory = session.access.inventory
        if inventory is None:
            raise PermanentError("starting a member needs the inventory path", cluster=action.cluster,
                                 host=action.target)
        try:
            done = run_shell(action.target, inventory, action.detail["command"], START_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise TemporaryError(f"ansible did not finish {action.kind} ({action.detail['unit']}) within "
                                 f"{START_TIMEOUT}s", cluster=action.cluster, host=action.target) from None
        if done.returncode == 0:
            return str(action.detail.get("done", f"started {action.detail['unit']}"))
        tail = (done.stdout.strip().splitlines() or done.stderr.strip().splitlines() or ["no output"])
        if "no standby.signal" in done.stdout:
            raise PermanentError("no standby.signal: this host was a primary; run playbooks/pg_switchover.yml "
                                 "or rebuild it as a replica with postgres.yml", cluster=action.cluster,
                                 host=action.target, action="start")
        if done.returncode == 4:  # ansible: host unreachable
            raise TemporaryError(f"unreachable for Ansible: {tail[-1][:300]}", cluster=action.cluster,
                                 host=action.target, action=action.kind)
        raise TemporaryError(f"{action.kind} {action.detail['unit']} failed: {tail[-1][:300]}",
                             cluster=action.cluster, host=action.target, action=action.kind)

    def notes(self, observed: Topology) -> list[str]:
        return []

    def status(self, cluster: AnyCluster, observed: Topology, actions: list[Action]) -> dict[str, Any]:
        stuck = [a for a in actions if a.kind in ("skip-stale-wal", "report-stale-wal", "report-archive-failing")]
        down = ("start", "report-member-down", "reinit", "report-start-failed")
        return {"members_down": [a.target for a in actions if a.kind in down],
                "members_diverged": [a.target for a in actions if a.kind in ("rewind", "report-diverged")],
                **({"archiving_stuck_at": stuck[0].detail["wal"]} if stuck else {})}
