"""Which exporter runs on which hosts: the job names and ports shared by the Prometheus role, the rules and `status`.

The Ansible roles carry the same ports in their defaults (a unit test keeps the
two in step), and the Prometheus scrape config names its jobs after these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exporter:
    job: str
    """The Prometheus job name, and so the `job` label on every series it serves."""
    port: int
    group: str
    """The inventory group whose hosts run it."""


POSTGRES = Exporter("postgres", 9187, "postgres")
REDIS = Exporter("redis", 9121, "redis")
SENTINEL = Exporter("sentinel", 9355, "redis_sentinel")
MONGODB = Exporter("mongodb", 9216, "mongo")
NODE = Exporter("node", 9100, "all")
PATRONI = Exporter("patroni", 8008, "patroni")
"""Patroni's own /metrics on its REST API (HTTPS, the fleet CA), on every server of an ha: patroni cluster."""
EXPORTERS = (POSTGRES, REDIS, SENTINEL, MONGODB, NODE, PATRONI)

OPERATOR_JOB = "dbfleet-operator"
PROMETHEUS_JOB = "prometheus"

DATA_DIRECTORY_INFO = "dbfleet_data_directory_info"
"""Written by the node_exporter role's textfile: which mount point holds a host's data directory."""
