"""What the loopback servers of the tests (etcd_server, s3_server) share: stopping the server's process."""

from __future__ import annotations

import subprocess
from typing import Any


def stop(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM, up to `grace` seconds to exit, then SIGKILL; reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
