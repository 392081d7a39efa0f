"""Leader locks on PostgreSQL and on a file: of several operator processes only one acts, the lock's holder.

`operator.leader: postgres` is a session-level `pg_try_advisory_lock(key)`
held on a dedicated connection to the primary of a PostgreSQL cluster (the
first in the spec unless told otherwise). It is released on exit, and also by
the server if the process or its connection dies, so a crashed leader never
blocks the others. A switchover breaks the connection; the next cycle
re-acquires the lock on the new primary. While that primary is down nobody
leads, for the whole fleet: etcd (reconcile.etcd_leader) does not have that
fault. `file` is an flock that only guards one machine.

Every lock answers the loop's Leader protocol: `acquire` each cycle (never
raising: a failure means "not leader", `holder` says who or why, `fault`
says the lock's store did not answer), `confirm` before each act (fencing),
`current_holder` for `status`, `release` on exit.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import psycopg

from dbfleet.errors import ReconcileError

log = logging.getLogger(__name__)

LOCK_KEY = int.from_bytes(b"dbfleet", "big")
"""The advisory lock key: the bytes of 'dbfleet' as one bigint, unlikely to clash with an application's."""

HOLDER_SQL = """
SELECT a.application_name, host(a.client_addr) AS client, a.pid
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 1
"""


def operator_identity() -> str:
    return f"dbfleet-operator-leader {socket.gethostname()}:{os.getpid()}"


class AdvisoryLeaderLock:
    """Holds the advisory lock on a dedicated connection made by `connect`."""

    backend = "postgres"

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], key: int = LOCK_KEY, where: str = ""):
        self.connect = connect
        self.key = key
        self.where = where or "a PostgreSQL primary"
        self._conn: psycopg.Connection[Any] | None = None
        self.holder = ""
        self.fault = ""

    @property
    def held(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def confirm(self) -> bool:
        """Fencing: the lock's connection still answers and its server is still the primary."""
        if not self.held:
            return False
        try:
            row = self._conn.execute("SELECT pg_is_in_recovery()").fetchone()  # type: ignore[union-attr]
            if row is not None and not row[0]:
                return True
            # A demoted primary (Patroni after a partition) may keep its connections: the lock must live on
            # the server that takes writes, or a second operator could take it on the new primary.
            log.warning("leader lock server (%s) is no longer primary; taking the lock on the new one", self.where)
            self.holder = "nobody known (the lock's server is no longer primary)"
        except psycopg.Error as exc:
            log.warning("leader lock connection lost; trying to take the lock again")
            self.holder = f"nobody known (the lock's connection failed: {str(exc).splitlines()[0]})"
        self._drop()
        return False

    def acquire(self) -> bool:
        """True if this process leads (already or now). Never raises: a failure just means 'not leader'."""
        self.fault = ""
        if self.held and self.confirm():
            return True
        try:
            conn = self.connect()
        except ReconcileError as exc:
            self.fault = f"lock server unreachable: {exc.message}"
            self.holder = f"nobody known ({self.fault})"
            return False
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", [self.key]).fetchone()[0]  # type: ignore[index]
            if got:
                self._conn = conn
                self.holder = "this process"
                log.info("leader lock %d taken on %s", self.key, self.where)
                return True
            self.holder = self._holder(conn) or "another session"
        except psycopg.Error as exc:
            self.fault = f"lock query failed: {str(exc).splitlines()[0]}"
            self.holder = f"nobody known ({self.fault})"
        conn.close()
        return False

    def _holder(self, conn: psycopg.Connection[Any]) -> str:
        row = conn.execute(HOLDER_SQL, [self.key >> 32, self.key & 0xFFFFFFFF]).fetchone()
        return f"{row[0]} from {row[1]} (pid {row[2]})" if row else ""

    def current_holder(self) -> str:
        """Who holds the lock now, read only (for `status`)."""
        if self.held:
            return "this process"
        try:
            with self.connect() as conn:
                return self._holder(conn) or "nobody"
        except ReconcileError as exc:
            return f"nobody known (lock server unreachable: {exc.message})"
        except psycopg.Error as exc:
            return f"nobody known (lock query failed: {str(exc).splitlines()[0]})"

    def release(self) -> None:
        if self.held:
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s)", [self.key])  # type: ignore[union-attr]
                log.info("leader lock %d released", self.key)
            except psycopg.Error:
                pass  # closing the connection releases it anyway
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class FileLeaderLock:
    """For a fleet with no PostgreSQL cluster: an flock on a local file (one machine only)."""

    backend = "file"

    def __init__(self, path: Path):
        self.path = path
        self.where = str(path)
        self._fd: int | None = None
        self.holder = ""
        self.fault = ""

    @property
    def held(self) -> bool:
        return self._fd is not None

    def confirm(self) -> bool:
        """An flock lasts as long as its descriptor: held is still held."""
        return self.held

    def current_holder(self) -> str:
        if self.held:
            return "this process"
        if not self.path.exists():
            return "nobody"
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"the process holding {self.path}"
        finally:
            os.close(fd)  # closing drops the flock just taken, if any
        return "nobody"

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self.holder = f"the process holding {self.path}"
            return False
        self._fd = fd
        self.holder = "this process"
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
