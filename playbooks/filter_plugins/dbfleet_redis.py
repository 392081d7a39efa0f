"""Ansible filter: which of a Redis host's config files belong to servers set up the other way than tls.enabled.

redis_common refuses to switch a running cluster between plaintext and TLS in place (README, Redis, TLS); it reads
the files with one `slurp` and decides here, where two `set_fact` tasks on every host used to (README, "Converge
speed"). Pure function over plain values, unit-tested in tests/unit/test_redis_roles.py.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any


def redis_tls_other_way(read: Iterable[Mapping[str, Any]], tls_enabled: bool, sentinel_config: str,
                        sentinel_marker: str) -> list[str]:
    """The paths of `read` (slurp's loop results, each with the path as `item` and, when the file exists, its
    `content` in base64) whose servers run the other way than `tls_enabled`.

    A file of ours with the line `tls-replication yes` belongs to servers that run TLS. Debian's Sentinel file,
    without dbfleet's marker line, is not ours and says nothing; neither does a file that could not be read."""
    found: list[str] = []
    for result in read:
        if "content" not in result:
            continue
        try:
            text = base64.b64decode(str(result["content"])).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            continue
        path = str(result.get("item", ""))
        if path == sentinel_config and sentinel_marker not in text:
            continue
        if ("tls-replication yes" in text.splitlines()) != bool(tls_enabled):
            found.append(path)
    return found


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"redis_tls_other_way": redis_tls_other_way}
