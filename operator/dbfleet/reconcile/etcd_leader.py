"""Leader lock on etcd (`operator.leader: etcd`): a lease, and a key that exists only while its holder's lease does.

To lead, an operator grants itself a lease of `operator.lease_ttl` seconds
and creates the key engines.etcd.LEADER_KEY bound to it, in one transaction
that succeeds only if the key does not exist (create_revision == 0), its
value naming the process. Every cycle, and before every act, it renews the
lease (a keep-alive) and checks the key is still bound to it: that is the
fencing check (`confirm`). A leader that stops renewing, because it died, hung
or lost etcd, loses the key when the lease expires, and another operator
takes it. `release` revokes the lease, which deletes the key at once.

etcd is the Patroni cluster's consensus store: it keeps answering while
any one PostgreSQL server, or a minority of etcd members, is down, so one
engine's outage does not take the operator away from the rest of the fleet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Self

from dbfleet.engines.etcd import LEADER_KEY, EtcdGateway, KeyValue
from dbfleet.errors import ReconcileError
from dbfleet.reconcile.leader import operator_identity

log = logging.getLogger(__name__)


def describe(kv: KeyValue) -> str:
    """A holder as `status` and the cycle report show it: its identity and its lease as etcdctl prints it."""
    return f"{kv.value or 'an unnamed holder'} (etcd lease {kv.lease:x})"


class EtcdLeaderLock:
    """A lease and a key in one etcd cluster, through the gateway `connect` makes (once, on first use)."""

    backend = "etcd"

    def __init__(self, connect: Callable[[], EtcdGateway], ttl: int, *, key: str = LEADER_KEY, where: str = "",
                 identity: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.connect = connect
        self.ttl = ttl
        self.key = key
        self.where = where or "etcd"
        self.identity = identity or operator_identity()
        self.clock = clock
        self.holder = ""
        self.fault = ""
        """Why the lock's store could not say who leads (it did not answer, or refused us); "" when it did."""
        self._gateway: EtcdGateway | None = None
        self._lease: int | None = None
        self._expires = 0.0
        """When the lease runs out at the latest, by this process's clock, unless renewed: measured from before
        the call that granted or renewed it, so it is never later than etcd's own deadline."""

    @property
    def held(self) -> bool:
        """The lease is ours and cannot have expired yet. Says nothing new to etcd: `confirm` asks."""
        return self._lease is not None and self.clock() < self._expires

    def acquire(self) -> bool:
        """True if this process leads (already, renewed now, or newly). Never raises: a failure means 'not
        leader', with who leads or why nobody is known in `holder`."""
        self.fault = ""
        if self._lease is not None:
            if self.confirm():
                return True
            if self._lease is not None:  # kept: etcd did not answer, so the lease may still be alive there
                return False
        started = self.clock()
        lease: int | None = None
        try:
            gateway = self._gateway_once()
            lease, granted = gateway.grant_lease(self.ttl)
            current = gateway.create(self.key, self.identity, lease)
        except ReconcileError as exc:
            self._unknown(exc)
            if lease is not None:
                self._revoke_quietly(lease)
            return False
        if current is not None:
            self._revoke_quietly(lease)
            self.holder = describe(current)
            return False
        self._lease, self._expires = lease, started + granted
        self.holder = "this process"
        log.info("leader lease %x taken in %s (%s, ttl %ds)", lease, self.where, self.key, granted)
        return True

    def confirm(self) -> bool:
        """Fencing: a keep-alive etcd accepted just now, and the key still bound to our lease. False otherwise,
        and then no act may start; a lease found expired or replaced is dropped for good."""
        if self._lease is None:
            return False
        started = self.clock()
        try:
            gateway = self._gateway_once()
            remaining = gateway.keep_alive(self._lease)
            current = gateway.get(self.key)
        except ReconcileError as exc:
            self._unknown(exc)
            log.warning("leader lease %x not renewed: %s", self._lease, exc.message)
            return False
        if remaining <= 0 or current is None or current.lease != self._lease:
            lease, self._lease = self._lease, None
            if remaining <= 0:
                why = "our lease expired"
            else:  # someone deleted or overwrote the key: the lease is alive but leads nothing
                why = "the leader key was deleted" if current is None else "the leader key was replaced"
                self._revoke_quietly(lease)
            log.warning("leader lease %x lost in %s: %s", lease, self.where, why)
            self.holder = describe(current) if current is not None else f"nobody ({why})"
            return False
        self._expires = started + remaining
        self.fault = ""
        return True

    def release(self) -> None:
        """Revoke the lease: the key goes with it, and another operator may lead at once."""
        if self._lease is None:
            return
        lease, self._lease = self._lease, None
        self._revoke_quietly(lease)
        log.info("leader lease %x released in %s", lease, self.where)

    def current_holder(self) -> str:
        """Who holds the lock now, read only (for `status`)."""
        try:
            current = self._gateway_once().get(self.key)
        except ReconcileError as exc:
            return f"nobody known ({exc.message})"
        if current is None:
            return "nobody"
        return "this process" if current.lease == self._lease else describe(current)

    def _gateway_once(self) -> EtcdGateway:
        if self._gateway is None:
            self._gateway = self.connect()
        return self._gateway

    def _unknown(self, exc: ReconcileError) -> None:
        self.fault = exc.render()
        self.holder = f"nobody known ({self.fault})"

    def _revoke_quietly(self, lease: int) -> None:
        """Best effort: a lease left behind expires by itself after its TTL."""
        try:
            self._gateway_once().revoke(lease)
        except ReconcileError as exc:
            log.warning("leader lease %x not revoked (it expires by itself): %s", lease, exc.message)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
