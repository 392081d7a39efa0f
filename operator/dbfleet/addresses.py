"""Host addresses from outside (the lab, stack outputs, a hand-written inventory) checked before any use: an IP
address or a DNS host name, nothing else. They reach libpq conninfo strings, pg_hba lines, certificates and
command lines, so a quote, a space or a comma there would be syntax, not data."""

from __future__ import annotations

import ipaddress
import re

from dbfleet.errors import PermanentError

LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
"""One label of a DNS host name (RFC 1123): letters, digits and inner hyphens."""


def is_address(value: str) -> bool:
    """An IPv4 or IPv6 address, or a DNS host name (at most 253 characters, dot-separated labels)."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    return 0 < len(name) <= 253 and all(LABEL.fullmatch(label) for label in name.split("."))


def check_address(value: object, where: str) -> str:
    """`value` when it is an address (is_address), else a PermanentError naming `where` and the value."""
    if not isinstance(value, str) or not is_address(value):
        raise PermanentError(f"{where}: {value!r} is not an IP address or a DNS host name")
    return value
