"""Progress lines for long operations: what is happening, and how long each step took."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    """Prints '[lab] step ... done (12.3s)' lines to stderr, so stdout stays for results."""

    def __init__(self, scope: str, stream: TextIO | None = None, quiet: bool = False):
        self.scope = scope
        self.stream = stream or sys.stderr
        self.quiet = quiet

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.scope}] {message}", file=self.stream, flush=True)

    @contextmanager
    def step(self, message: str) -> Iterator[None]:
        start = time.monotonic()
        self.say(f"{message} ...")
        try:
            yield
        except BaseException:
            self.say(f"{message}: failed after {time.monotonic() - start:.1f}s")
            raise
        self.say(f"{message}: done ({time.monotonic() - start:.1f}s)")
