"""The spec, mapped to the variables each Ansible role declares (its meta/argument_specs.yml): the one place that
knows which field of the fleet model a role reads, and under which name.

A cluster's group vars are the inputs of every role its hosts run, each named with the role's prefix
(`postgres_server_port`, `redis_sentinel_quorum`, ...), plus the fleet facts every play shares (`dbfleet_*`).
The roles read only these, never the spec as a whole. Where a role includes another role's entry points (patroni
runs postgres_server's, redis_server and redis_sentinel depend on redis_common, mongod and mongos follow
mongo_common in their play), it reads that role's inputs too, as its argument_specs.yml says.
Every string is marked data for Ansible when the inventory writes it (dbfleet.inventory_format.from_spec).
"""

from __future__ import annotations

from typing import Any

from dbfleet.engines import patroni, pgbackrest, standby
from dbfleet.engines.base import AnyCluster
from dbfleet.engines.etcd import OPERATOR_PREFIX
from dbfleet.engines.mongo import mongos_hosts
from dbfleet.spec import TLS, ClusterBase, MongoCluster, PostgresCluster, RedisCluster, ReplicaSet, duration_seconds


def cluster_inputs(cluster: AnyCluster) -> dict[str, Any]:
    """The inputs of every role a host of `cluster` runs: its group vars in the inventory."""
    if isinstance(cluster, PostgresCluster):
        engine = postgres_inputs(cluster)
    elif isinstance(cluster, RedisCluster):
        engine = redis_inputs(cluster)
    else:
        engine = mongo_inputs(cluster)
    return {**shared_inputs(cluster), **engine}


def shared_inputs(cluster: ClusterBase) -> dict[str, Any]:
    """What every engine's hosts share: whether the cluster is monitored (monitoring.yml runs the exporters and the
    node exporter only then) and a CA of the cluster's own for pki."""
    return {"dbfleet_monitored": cluster.monitoring.enabled, **pki_inputs(cluster.tls)}


def pki_inputs(tls: TLS) -> dict[str, Any]:
    """The CA the spec supplies (tls.ca_cert, tls.ca_key); none when pki is to make and use the fleet CA (the role's
    default, '', is left to the role)."""
    supplied = {"pki_supplied_ca_cert": tls.ca_cert, "pki_supplied_ca_key": tls.ca_key}
    return {name: path for name, path in supplied.items() if path}


def postgres_inputs(cluster: PostgresCluster) -> dict[str, Any]:
    """postgres_server's, pgbackrest's and postgres_exporter's inputs, and with ha: patroni those of patroni, etcd
    and haproxy."""
    found = {**postgres_server_inputs(cluster), **pgbackrest_inputs(cluster),
             "postgres_exporter_port_to_scrape": cluster.port,
             "postgres_exporter_tls_enabled": cluster.tls.enabled}
    if cluster.ha == "patroni":
        found |= {**patroni_inputs(cluster), **etcd_inputs(cluster), **haproxy_inputs(cluster)}
    return found


def postgres_server_inputs(cluster: PostgresCluster) -> dict[str, Any]:
    """The server's settings (patroni, which runs postgres_server's entry points, reads them too)."""
    audit = cluster.audit.model_dump(mode="json") if cluster.audit else {}
    maintenance = cluster.maintenance
    return {
        "postgres_server_version": cluster.version,
        "postgres_server_port": cluster.port,
        "postgres_server_ha": cluster.ha,
        "postgres_server_tls_enabled": cluster.tls.enabled,
        "postgres_server_databases": list(cluster.databases),
        "postgres_server_parameters": server_parameters(cluster),
        "postgres_server_allowed_clients": list(cluster.allowed_clients),
        "postgres_server_synchronous_replicas": cluster.synchronous.num_sync if cluster.synchronous.enabled else 0,
        "postgres_server_audit": audit,
        "postgres_server_measures_bloat": maintenance is not None,
        "postgres_server_repacks": maintenance is not None and maintenance.table_bloat.action == "repack",
    }


def server_parameters(cluster: PostgresCluster) -> dict[str, str | int | float | bool]:
    """The spec's parameters, and archive_timeout when dr bounds the RPO (the spec refuses it in parameters)."""
    parameters = dict(cluster.parameters)
    if cluster.dr is not None:
        parameters["archive_timeout"] = f"{cluster.dr.archive_timeout}s"
    return parameters


def pgbackrest_inputs(cluster: PostgresCluster) -> dict[str, Any]:
    """The stanza, and the configuration dbfleet renders from the spec (dbfleet.engines.pgbackrest), the same code
    that configures a restore."""
    return {
        "pgbackrest_stanza": cluster.name,
        "pgbackrest_conf": pgbackrest.host_config(cluster),
        "pgbackrest_local_repo_paths": pgbackrest.local_repo_paths(cluster),
        "pgbackrest_repos": sorted(pgbackrest.repositories(cluster)),
        "pgbackrest_spool_path": pgbackrest.SPOOL_PATH if cluster.dr is not None else "",
        "pgbackrest_log_path": pgbackrest.HOST_LOG_PATH,
        "pgbackrest_cipher_include": pgbackrest.CIPHER_INCLUDE,
        "pgbackrest_standby_site": False,
    }


def patroni_inputs(cluster: PostgresCluster) -> dict[str, Any]:
    """Patroni's REST API, loop and DCS: its namespace, scope and dynamic configuration (dbfleet.engines.patroni),
    and pgBackRest's commands for restoring WAL and building replicas (dbfleet.engines.pgbackrest)."""
    return {
        "patroni_rest_port": cluster.patroni.rest_api_port,
        "patroni_loop_wait": cluster.patroni.loop_wait,
        "patroni_etcd_port": cluster.patroni.etcd.client_port,
        "patroni_namespace": patroni.NAMESPACE,
        "patroni_scope": cluster.name,
        "patroni_dynamic_config": patroni.dynamic_config(cluster),
        "patroni_standby_cluster": {},
        "patroni_restore_command": pgbackrest.archive_get_command(cluster),
        "patroni_replica_command": pgbackrest.replica_restore_command(cluster),
    }


def standby_site_inputs(cluster: PostgresCluster, follow: list[str]) -> dict[str, Any]:
    """The standby site's group vars (dr.standby): the cluster's, with a Patroni scope of its own, a standby
    cluster that follows the primary site's servers at `follow`, WAL and replicas from the second region's
    repository (repo2), and no stanza creation (the primary site's leader makes the stanza). With ha: manual, the
    postgres_server role's: hot standbys that follow `follow`, restore WAL from repo2, and are never synchronous."""
    repo = pgbackrest.DR_REPO
    if cluster.ha == "manual":
        return {**cluster_inputs(cluster),
                "postgres_server_follow": ",".join(follow),
                "postgres_server_restore_command": pgbackrest.archive_get_command(cluster, repo),
                "postgres_server_synchronous_replicas": 0,
                "pgbackrest_standby_site": True}
    return {**cluster_inputs(cluster),
            "patroni_scope": standby.scope(cluster),
            "patroni_standby_cluster": standby.standby_cluster(cluster, follow),
            "patroni_restore_command": pgbackrest.archive_get_command(cluster, repo),
            "patroni_replica_command": pgbackrest.replica_restore_command(cluster, repo),
            "pgbackrest_standby_site": True}


def etcd_inputs(cluster: PostgresCluster) -> dict[str, Any]:
    """The ports, and the key prefixes Patroni's and the operator's users may use (Patroni's namespace, the
    operator's leader lease)."""
    return {
        "etcd_client_port": cluster.patroni.etcd.client_port,
        "etcd_peer_port": cluster.patroni.etcd.peer_port,
        "etcd_patroni_namespace": patroni.NAMESPACE,
        "etcd_operator_prefix": OPERATOR_PREFIX,
    }


def haproxy_inputs(cluster: PostgresCluster) -> dict[str, Any]:
    """The endpoints' ports, the servers' port and Patroni's (its health checks), and who may connect."""
    return {
        "haproxy_rw_port": cluster.endpoints.rw_port,
        "haproxy_ro_port": cluster.endpoints.ro_port,
        "haproxy_server_port": cluster.port,
        "haproxy_check_port": cluster.patroni.rest_api_port,
        "haproxy_allowed_clients": list(cluster.allowed_clients),
    }


def redis_inputs(cluster: RedisCluster) -> dict[str, Any]:
    """redis_common's (which redis_server and redis_sentinel depend on), theirs and redis_exporter's."""
    return {
        "redis_common_port": cluster.port,
        "redis_common_sentinel_port": cluster.sentinel_port,
        "redis_common_tls_enabled": cluster.tls.enabled,
        "redis_server_persistence": cluster.persistence,
        "redis_server_maxmemory": cluster.maxmemory,
        "redis_server_maxmemory_policy": cluster.maxmemory_policy,
        "redis_server_min_replicas_to_write": cluster.min_replicas_to_write,
        "redis_server_min_replicas_max_lag": cluster.min_replicas_max_lag,
        "redis_server_activedefrag": cluster.maintenance.fragmentation.activedefrag,
        "redis_sentinel_quorum": cluster.effective_quorum,
        "redis_sentinel_down_after_ms": cluster.down_after_ms,
        "redis_sentinel_failover_timeout_ms": cluster.failover_timeout_ms,
        "redis_exporter_target_port": cluster.port,
        "redis_exporter_sentinel_target_port": cluster.sentinel_port,
        "redis_exporter_tls_enabled": cluster.tls.enabled,
    }


def mongo_inputs(cluster: MongoCluster) -> dict[str, Any]:
    """mongo_common's (which mongod and mongos follow in their plays), mongos's and mongodb_exporter's."""
    return {
        "mongo_common_series": cluster.version,
        "mongo_common_port": cluster.port,
        "mongo_common_tls_enabled": cluster.tls.enabled,
        "mongo_common_topology": {"config_servers": replica_set(cluster.config_servers),
                                  "shards": [replica_set(s) for s in cluster.shards],
                                  "mongos": mongos_hosts(cluster)},
        "mongos_sharded_collections": [c.model_dump(mode="json") for c in cluster.sharded_collections],
        "mongos_balancer_window": cluster.balancer_window.model_dump(mode="json") if cluster.balancer_window else {},
        "mongos_zones": [z.model_dump(mode="json") for z in cluster.zones],
        "mongodb_exporter_target_port": cluster.port,
        "mongodb_exporter_tls_enabled": cluster.tls.enabled,
    }


def replica_set(replset: ReplicaSet) -> dict[str, Any]:
    """A replica set as mongo_common's topology filter reads it: its name and its members' host names."""
    return {"name": replset.name, "members": [h.name for h in replset.hosts()]}


def prometheus_inputs(clusters: list[AnyCluster]) -> dict[str, Any]:
    """What Prometheus needs from the clusters with hosts in the inventory: the scrape interval the most demanding
    monitored cluster asks (15 s with none), the clusters not monitored, each Patroni host's REST API port, each
    MongoDB member's replica set (a label), the CAs the Patroni clusters supply and whether one uses the fleet CA."""
    seconds = min((duration_seconds(c.monitoring.scrape_interval) for c in clusters if c.monitoring.enabled),
                  default=15)
    patroni_clusters = [c for c in clusters if isinstance(c, PostgresCluster) and c.ha == "patroni"]
    return {
        "prometheus_scrape_seconds": seconds,
        "prometheus_unmonitored_clusters": [c.name for c in clusters if not c.monitoring.enabled],
        "prometheus_patroni_ports": {h.name: c.patroni.rest_api_port for c in patroni_clusters
                                     for h in c.all_hosts() + c.standby_hosts()},
        "prometheus_patroni_cluster_cas": [c.tls.ca_cert for c in patroni_clusters if c.tls.ca_cert],
        "prometheus_patroni_fleet_ca": any(not c.tls.ca_cert for c in patroni_clusters),
        "prometheus_mongo_replsets": {h.name: rs.name for c in clusters if isinstance(c, MongoCluster)
                                      for rs in [c.config_servers, *c.shards] for h in rs.hosts()},
    }
