"""Ansible filter: which of a role's Debian packages a host lacks, from one `dpkg-query --show` of them.

The roles read what is installed with one cheap dpkg-query and call `apt` only when something is missing: `apt`
loads the package cache on every call, 3-7 s a task on a host that already has everything (README, "Converge
speed"). Pure function over plain values, unit-tested in tests/unit/test_packages_filter.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def dpkg_missing(shown: str, wanted: Iterable[str]) -> list[str]:
    """The packages of `wanted` that `shown` does not report installed, in `wanted`'s order.

    `shown` is the output of `dpkg-query --show --showformat='${db:Status-Abbrev} ${Package}\\n' <wanted...>`:
    one line per package dpkg knows, its status abbreviation first ("ii" installed and configured; "un", "rc",
    "iF", ... anything else is not usable). A package dpkg does not know has no line at all (dpkg-query says so
    on stderr and exits 1). A name that is not a plain package (a virtual package, `name=version`) never shows
    as installed, so apt is asked about it, as before this check existed."""
    installed: set[str] = set()
    for line in shown.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "ii":
            installed.add(fields[-1])
    return [name for name in wanted if name not in installed]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"dpkg_missing": dpkg_missing}
