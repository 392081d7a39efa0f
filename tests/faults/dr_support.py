"""What the region-loss test and bench/bench_dr.py share: one server of a site, its rows, both sites' roles, and
`dbfleet dr promote`, `plan` and `reconcile` with the DR site reconciler, run in-process as the CLI runs them.

`lab` is the tests' Lab (tests/conftest.py): name, inventory_path, state, secrets, address()."""

from __future__ import annotations

import json
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import docker
import psycopg
from patroni_support import CLIENT, Partition, Patroni, Writer, bounded, prepare_table

from dbfleet.cli import main
from dbfleet.lab.topology import network_name
from dbfleet.spec import PostgresCluster

SPEC = Path(__file__).resolve().parents[2] / "fleet.example.yaml"


def connect(lab: Any, cluster: PostgresCluster, host: str) -> psycopg.Connection[Any]:
    """Straight to one server (not through HAProxy), verifying its certificate."""
    return psycopg.connect(host=lab.address(host), port=cluster.port, dbname=cluster.databases[0], user="postgres",
                           password=lab.secrets["postgres_superuser_password"], sslmode="verify-full",
                           sslrootcert=str(lab.inventory_path.parent / "pki" / "ca.crt"), autocommit=True, **CLIENT)


def ids_on(lab: Any, cluster: PostgresCluster, host: str, table: str) -> set[int]:
    with connect(lab, cluster, host) as conn:
        return {row[0] for row in conn.execute(f"SELECT id FROM {table}")}


def promote(lab: Any, cluster: PostgresCluster, *flags: str) -> tuple[int, dict[str, Any]]:
    argv = ["--spec", str(SPEC), "dr", "promote", "--cluster", cluster.name,
            "--inventory", str(lab.inventory_path), "--secrets", str(lab.state.secrets),
            "--state", str(lab.state.secrets.with_name("dr-state.json")), "--json", *flags]
    with redirect_stdout(StringIO()) as out:
        code = main(argv)
    return code, json.loads(out.getvalue())


def operator(lab: Any, cluster: PostgresCluster, command: str, *flags: str) -> tuple[int, dict[str, Any]]:
    """`dbfleet plan` or `dbfleet reconcile` with the DR site reconciler alone, as the operator's loop runs it."""
    state = ["--state", str(lab.state.secrets.with_name("dr-state.json"))] if command == "reconcile" else []
    argv = ["--spec", str(SPEC), command, *flags, *state, "--cluster", cluster.name,
            "--reconciler", "dr", "--inventory", str(lab.inventory_path), "--secrets", str(lab.state.secrets),
            "--json"]
    with redirect_stdout(StringIO()) as out:
        code = main(argv)
    return code, json.loads(out.getvalue())


def site_roles(lab: Any, cluster: PostgresCluster, hosts: list[str]) -> dict[str, str | None]:
    """GET /patroni's role of each host (what its PostgreSQL runs as), None where it does not answer."""
    patroni = Patroni(lab, cluster)
    roles: dict[str, str | None] = {}
    for host in hosts:
        try:
            status, data = patroni.get(host, "patroni")
            roles[host] = data.get("role") if status == 200 else None
        except OSError:
            roles[host] = None
    return roles


def site_follows(lab: Any, cluster: PostgresCluster) -> bool:
    """The primary site (the spec's hosts) is a standby cluster whose standby leader runs: it follows the other
    site, and `dr promote --failback` can promote it."""
    return any(m.get("role") == "standby_leader" and m.get("state") in ("running", "streaming")
               for m in Patroni(lab, cluster).members().values())


def writing(lab: Any, cluster: PostgresCluster, standby: str, seconds: float, bound: float) -> Writer:
    """A writer on a fresh probe table through the primary site's endpoints, once the standby site has the table,
    after `seconds` of acknowledged commits."""
    writer = Writer(lab, cluster, lab.secrets["postgres_superuser_password"])
    prepare_table(writer)
    bounded("the probe table on the standby site",
            lambda: ids_on(lab, cluster, standby, "failover_probe") == set(), bound, every=0.5)
    writer.start()
    writer.wait_for_write_after(time.time(), 30)
    time.sleep(seconds)
    return writer


def partitions(lab: Any, hosts: list[str]) -> list[Partition]:
    """One Partition of each host (to cut it off from the rest of the lab network)."""
    client = docker.from_env()
    subnet = client.networks.get(network_name(lab.name)).attrs["IPAM"]["Config"][0]["Subnet"]
    return [Partition(client.containers.get(lab.container(h)), subnet) for h in hosts]
