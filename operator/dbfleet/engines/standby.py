"""A PostgreSQL standby site (dr.standby): its Patroni scope, and the `standby_cluster` section that makes a site
follow another one, streaming and restoring WAL from the second region's repository."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dbfleet.engines import pgbackrest
from dbfleet.spec import PostgresCluster

SCOPE_SUFFIX = "-dr"
"""A standby site's Patroni scope is the cluster's name with this suffix: its leader key is apart from the primary
site's even in one DCS (a Patroni standby cluster must not share the primary's scope)."""
REPLICA_METHODS = ["pgbackrest", "basebackup"]
"""How a standby site builds a member, in order: repo2's newest backup (the patroni role's local `pgbackrest`
method reads repo2 there), then pg_basebackup from the site it follows."""


def scope(cluster: PostgresCluster) -> str:
    """The standby site's Patroni scope."""
    return cluster.name + SCOPE_SUFFIX


def standby_cluster(cluster: PostgresCluster, follow: Sequence[str]) -> dict[str, Any]:
    """Patroni's `standby_cluster` section for a site that follows the servers at `follow` (addresses).

    Its standby leader streams from the first of them that answers (libpq tries each in turn; a replica serves WAL
    as a leader does) over the replication user's TLS settings (verify-full), and restores WAL from the second
    region's repository (repo2) when streaming is cut, so it catches up from there. The same section fences a
    primary site: `dbfleet dr promote` writes it there, following the promoted site, and that site's leader
    demotes itself to a standby leader."""
    return {"host": ",".join(follow), "port": cluster.port, "create_replica_methods": list(REPLICA_METHODS),
            "restore_command": pgbackrest.archive_get_command(cluster, pgbackrest.DR_REPO)}


REPLAY_LAG_QUERY = ("SELECT application_name, state, EXTRACT(EPOCH FROM replay_lag)::float8 AS lag "
                    "FROM pg_stat_replication WHERE application_name = ANY(%s)")
"""The standby site's walsender rows on one primary-site server (its standby leader streams from any of them, a
replica too). PostgreSQL's replay_lag is the time from a WAL record's flush upstream to its replay there, and NULL
once the standby has replayed all WAL sent and none is pending: caught up."""


def replay_lag_check(cluster: PostgresCluster, rows: Sequence[dict[str, Any]]) -> tuple[bool, str]:
    """(ok, detail) of the standby site's replay lag against dr.rpo_seconds, from every primary-site server's
    REPLAY_LAG_QUERY rows: ok when a standby-site member streams and its lag is within the RPO."""
    rpo = cluster.dr.rpo_seconds if cluster.dr else 0
    streaming = [r for r in rows if r.get("state") == "streaming"]
    if not streaming:
        seen = ", ".join(f"{r.get('application_name')} {r.get('state')}" for r in rows) or "no walsender"
        return False, (f"the standby site streams from no primary-site server ({seen}); it restores from the second "
                       "target only, or is down")
    worst = max(float(r["lag"] or 0.0) for r in streaming)
    names = ",".join(sorted({str(r["application_name"]) for r in streaming}))
    if worst > rpo:
        return False, f"{names} replays {worst:.1f}s behind, over dr.rpo_seconds {rpo}"
    return True, f"{names} replays {worst:.1f}s behind (dr.rpo_seconds {rpo})"
