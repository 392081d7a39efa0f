"""`dbfleet connect`: print the DSN of a PostgreSQL cluster's read-write (or --ro read-only) endpoint.

The DSN carries no password: libpq takes it from ~/.pgpass or PGPASSWORD.
"""

from __future__ import annotations

import argparse

from dbfleet.commands.common import (
    EXIT_OK,
    UsageError,
    add_inventory_option,
    add_json_option,
    add_lab_options,
    emit,
    fleet_of,
    inventory_path,
    postgres_cluster,
)
from dbfleet.engines.access import FleetAccess, read_inventory_hosts
from dbfleet.engines.endpoints import endpoint_dsn
from dbfleet.errors import ReconcileError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("connect", help="print the DSN of a PostgreSQL cluster's endpoint (no password)",
                       description="Print a postgresql:// DSN for the cluster's read-write endpoint, or with --ro "
                                   "its read-only one. With ha: patroni these are HAProxy's ports, which follow "
                                   "the primary.")
    p.add_argument("--cluster", required=True, help="PostgreSQL cluster")
    p.add_argument("--ro", action="store_true", help="the read-only endpoint (replicas)")
    p.add_argument("--user", default="app", help="user name in the DSN (default: app)")
    p.add_argument("--dbname", help="database (default: the cluster's first)")
    add_lab_options(p)
    add_inventory_option(p)
    add_json_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    fleet = fleet_of(args)
    cluster = postgres_cluster(fleet, args.cluster, "connect prints PostgreSQL DSNs")
    try:
        inventory = inventory_path(args).resolve()  # the DSN's sslrootcert must hold from any directory
        hosts = read_inventory_hosts(inventory)
        access = FleetAccess({h: str(v["dbfleet_address"]) for h, v in hosts.items() if "dbfleet_address" in v}, {},
                             inventory)
        dsn = endpoint_dsn(cluster, access, read_only=args.ro, user=args.user, dbname=args.dbname)
    except ReconcileError as exc:
        raise UsageError(exc.message) from None
    emit(args, {"cluster": cluster.name, "endpoint": "ro" if args.ro else "rw", "dsn": dsn}, dsn)
    return EXIT_OK
