"""StackError: the spec is valid, but this stack cannot build it as written."""

from __future__ import annotations


class StackError(ValueError):
    """A spec the stack cannot provision; the message names the cluster, host or key to change."""
