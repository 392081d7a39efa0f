"""What the region-loss test and bench/bench_dr.py share: one server of a site, its rows, both sites' roles, and
`dbfleet dr promote`, `plan` and `reconcile` with the DR site reconciler, run in-process as the CLI runs them.

`lab` is the tests' Lab (tests/conftest.py): name, inventory_path, state, secrets, address()."""

from __future__ import annotations

import json
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg
from patroni_support import CLIENT, Patroni

from dbfleet.cli import main
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
