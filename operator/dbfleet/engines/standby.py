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
