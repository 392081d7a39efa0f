"""Quantities as people read them in a status table."""

from __future__ import annotations


def age(seconds: float) -> str:
    """'45s', '12m', '3h', '2d': the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
