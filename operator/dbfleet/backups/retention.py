"""Which backups the retention policy lets go: a pure function of the manifests, the policy and the time.

Two conditions must both hold before a backup is deleted:

1. The policy allows it. A full backup (or a snapshot) beyond the newest
   `full_count` good ones, or older than `max_age_days`; a differential beyond
   the newest `diff_count` good ones, or older than `max_age_days`; any backup
   that failed its drill or was orphaned. A good incremental is never deleted
   on its own: it goes with the backup it builds on, as in pgBackRest.
2. A newer VERIFIED backup supersedes it: for a full, a newer verified full;
   for a differential or anything failed, a newer verified full or differential.
   So the newest verified full is never deleted, and nothing is deleted while
   no drill has proven a replacement.

Deleting a backup deletes everything that builds on it. `pending` backups are
never touched: they may still be running.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from dbfleet.backups.manifest import FAILED, ORPHANED, PENDING, Manifest, newest_first
from dbfleet.spec import Retention


@dataclass(frozen=True)
class Expiry:
    """One backup to delete, why the policy allows it, and the verified backup that replaces it."""

    backup: Manifest
    reason: str
    superseded_by: str
    root: str
    """The id whose deletion takes this one along (itself for the backup the rule chose)."""

    def describe(self) -> str:
        return f"{self.backup.id} ({self.backup.kind}, {self.backup.status}): {self.reason}; " \
               f"superseded by verified {self.superseded_by}"


def _dependents(root: Manifest, manifests: list[Manifest]) -> list[Manifest]:
    """Every backup whose parent chain leads to root, oldest first."""
    children: dict[str, list[Manifest]] = {}
    for m in manifests:
        if m.parent:
            children.setdefault(m.parent, []).append(m)
    out: list[Manifest] = []
    stack = list(children.get(root.id, []))
    while stack:
        m = stack.pop()
        out.append(m)
        stack.extend(children.get(m.id, []))
    return sorted(out, key=lambda m: (m.started, m.id))


def _policy_reason(m: Manifest, rank: int | None, limit: int, label: str, policy: Retention,
                   now: datetime) -> str | None:
    if m.status == FAILED:
        return "failed " + ("its drill" if m.verification else "while backing up")
    if m.status == ORPHANED:
        return "orphaned: the backup never finished"
    if rank is not None and rank >= limit:
        return f"beyond {label}={limit} (number {rank + 1} counting from the newest)"
    if policy.max_age_days is not None and now - m.started > timedelta(days=policy.max_age_days):
        return f"older than max_age_days={policy.max_age_days}"
    return None


def expired_backups(manifests: Iterable[Manifest], policy: Retention, now: datetime) -> list[Expiry]:
    """The backups to delete now, oldest first; see the module docstring for the rules."""
    every = newest_first(manifests)
    good_fulls = [m for m in every if m.is_full and m.good]
    good_diffs = [m for m in every if m.kind == "diff" and m.good]
    verified = [m for m in every if m.verified]

    def superseded(m: Manifest, kinds: tuple[str, ...]) -> Manifest | None:
        return next((v for v in verified if v.kind in kinds and (v.started, v.id) > (m.started, m.id)), None)

    chosen: dict[str, Expiry] = {}

    def take(m: Manifest, reason: str, by: Manifest) -> None:
        if m.id in chosen:
            return
        chosen[m.id] = Expiry(m, reason, by.id, m.id)
        for dep in _dependents(m, every):
            chosen.setdefault(dep.id, Expiry(dep, f"builds on {m.id}, which is deleted", by.id, m.id))

    for m in reversed(every):  # oldest first, so a root is chosen before what builds on it
        if m.status == PENDING or m.id in chosen:
            continue
        if m.is_full:
            rank = good_fulls.index(m) if m.good else None
            reason = _policy_reason(m, rank, policy.full_count, "full_count", policy, now)
            by = superseded(m, ("full", "snapshot")) if reason else None
        elif m.kind == "diff":
            rank = good_diffs.index(m) if m.good else None
            reason = _policy_reason(m, rank, policy.diff_count, "diff_count", policy, now)
            by = superseded(m, ("full", "snapshot", "diff")) if reason else None
        else:
            reason = _policy_reason(m, None, 0, "", policy, now) if not m.good else None
            by = superseded(m, ("full", "snapshot", "diff", "incr")) if reason else None
        if reason and by is not None:
            take(m, reason, by)
    return sorted(chosen.values(), key=lambda e: (e.backup.started, e.backup.id))
