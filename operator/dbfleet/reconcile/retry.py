"""Retries with exponential backoff, owned by the loop rather than by each reconciler (as in kopf).

A TemporaryError is retried a few times within a cycle; if it persists, the
cluster is put on a growing backoff across cycles. A PermanentError is never
retried. Anything else is a bug in a reconciler and is treated as permanent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from dbfleet.errors import TemporaryError

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the given number of consecutive failures (1, 2, ...)."""
        return float(min(self.max_delay, self.base_delay * (2 ** max(0, failures - 1))))


DEFAULT_RETRY = RetryPolicy()


def call_with_retry(fn: Callable[[], T], what: str, policy: RetryPolicy = DEFAULT_RETRY,
                    sleep: Callable[[float], None] = time.sleep) -> tuple[T, int]:
    """Run fn, retrying TemporaryError with backoff; return (result, attempts used)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(), attempt
        except TemporaryError as exc:
            if attempt >= policy.attempts:
                raise
            delay = policy.delay(attempt)
            log.info("%s: temporary failure (%s); retry %d/%d in %.1fs",
                     what, exc, attempt, policy.attempts - 1, delay)
            sleep(delay)


@dataclass
class ClusterBackoff:
    """Across cycles: a cluster that keeps failing is retried later and later, never abandoned."""

    policy: RetryPolicy = RetryPolicy(base_delay=10.0, max_delay=600.0)
    failures: dict[str, int] = field(default_factory=dict)
    not_before: dict[str, float] = field(default_factory=dict)

    def ready(self, cluster: str, now: float) -> bool:
        return now >= self.not_before.get(cluster, 0.0)

    def failed(self, cluster: str, now: float) -> float:
        """Record a failed cycle; return the seconds until the cluster is tried again."""
        self.failures[cluster] = self.failures.get(cluster, 0) + 1
        delay = self.policy.delay(self.failures[cluster])
        self.not_before[cluster] = now + delay
        return delay

    def succeeded(self, cluster: str) -> None:
        self.failures.pop(cluster, None)
        self.not_before.pop(cluster, None)
