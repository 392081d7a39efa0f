"""The action model: what a reconciler would do, why, and what came of it; rendered as text or JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REPORT_PREFIXES = ("report-", "advise-")


@dataclass(frozen=True)
class Action:
    """One step a reconciler plans. Kinds named report-* or advise-* only inform; the others change a server."""

    cluster: str
    reconciler: str
    kind: str
    target: str
    reason: str
    destructive: bool = False
    detail: dict[str, Any] = field(default_factory=dict, compare=True, hash=False)

    @property
    def changes(self) -> bool:
        return not self.kind.startswith(REPORT_PREFIXES)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "reconciler": self.reconciler,
            "kind": self.kind,
            "target": self.target,
            "reason": self.reason,
            "destructive": self.destructive,
            "changes": self.changes,
            "detail": self.detail,
        }

    def render(self) -> str:
        mark = "!" if self.destructive else ("+" if self.changes else "-")
        return f"{mark} {self.cluster} {self.reconciler} {self.kind} {self.target}: {self.reason}"


@dataclass(frozen=True)
class Outcome:
    """What acting on one action gave: done, failed (with the error) or skipped (with why)."""

    action: Action
    status: str
    """'done', 'failed' or 'skipped'."""
    message: str = ""
    attempts: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def as_dict(self) -> dict[str, Any]:
        return {**self.action.as_dict(), "status": self.status, "message": self.message,
                "attempts": self.attempts, "seconds": round(self.seconds, 3)}

    def render(self) -> str:
        tail = f" ({self.message})" if self.message else ""
        return f"{self.action.render()} -> {self.status}{tail}"
