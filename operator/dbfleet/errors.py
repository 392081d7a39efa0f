"""Errors every layer raises, at the bottom of the package: temporary ones are retried, permanent ones reported once."""

from __future__ import annotations


class ReconcileError(Exception):
    """A failure naming where it happened: cluster, host and action, as far as they are known."""

    def __init__(self, message: str, *, cluster: str = "", host: str = "", action: str = ""):
        self.message = message
        self.cluster = cluster
        self.host = host
        self.action = action
        super().__init__(self.render())

    def render(self) -> str:
        where = ", ".join(f"{k} {v}" for k, v in (("cluster", self.cluster), ("host", self.host),
                                                   ("action", self.action)) if v)
        return f"{where}: {self.message}" if where else self.message

    def located(self, *, cluster: str = "", host: str = "", action: str = "") -> ReconcileError:
        """The same error with missing location parts filled in."""
        return type(self)(self.message, cluster=self.cluster or cluster, host=self.host or host,
                          action=self.action or action)


class TemporaryError(ReconcileError):
    """Worth retrying: a host unreachable, a lock timeout, a failover in progress."""


class PermanentError(ReconcileError):
    """Retrying will not help until someone changes the spec or the server: bad SQL, duplicate rows."""


class Waiting(ReconcileError):
    """Not now, and not a failure: the work waits (for a free job slot, for a job already running) and the next
    cycle plans it again. The loop reports it skipped and goes on."""
