"""Leader lock: of several operator processes only one acts, the holder of a PostgreSQL advisory lock.

The lock is a session-level `pg_try_advisory_lock(key)` held on a dedicated
connection to the primary of a PostgreSQL cluster (the first in the spec
unless told otherwise). It is released on exit, and also by the server if
the process or its connection dies, so a crashed leader never blocks the
others. A switchover breaks the connection; the next cycle re-acquires the
lock on the new primary. A fleet without PostgreSQL falls back to a file
lock, which only guards one machine.
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

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], key: int = LOCK_KEY, where: str = ""):
        self.connect = connect
        self.key = key
        self.where = where
        self._conn: psycopg.Connection[Any] | None = None
        self.holder = ""

    @property
    def held(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def acquire(self) -> bool:
        """True if this process leads (already or now). Never raises: a failure just means 'not leader'."""
        if self.held:
            try:
                row = self._conn.execute("SELECT pg_is_in_recovery()").fetchone()  # type: ignore[union-attr]
                if row is not None and not row[0]:
                    return True
                # A demoted primary (Patroni after a partition) may keep its connections: the lock must live on
                # the server that takes writes, or a second operator could take it on the new primary.
                log.warning("leader lock server%s is no longer primary; taking the lock on the new one",
                            f" ({self.where})" if self.where else "")
            except psycopg.Error:
                log.warning("leader lock connection lost; trying to take the lock again")
            self._drop()
        try:
            conn = self.connect()
        except ReconcileError as exc:
            self.holder = f"nobody known (lock server unreachable: {exc.message})"
            return False
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", [self.key]).fetchone()[0]  # type: ignore[index]
            if got:
                self._conn = conn
                self.holder = "this process"
                log.info("leader lock %d taken%s", self.key, f" on {self.where}" if self.where else "")
                return True
            row = conn.execute(HOLDER_SQL, [self.key >> 32, self.key & 0xFFFFFFFF]).fetchone()
            self.holder = f"{row[0]} from {row[1]} (pid {row[2]})" if row else "another session"
        except psycopg.Error as exc:
            self.holder = f"nobody known (lock query failed: {str(exc).splitlines()[0]})"
        conn.close()
        return False

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

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self.holder = ""

    @property
    def held(self) -> bool:
        return self._fd is not None

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
