"""`--tags` converges one concern of the converged lab, and changes nothing there (issue 19's tags, on real hosts).

`--tags backups` is the run that skips the server roles, so it must find the current primary (under Patroni,
Patroni's leader) and PostgreSQL's layout on its own: it once failed on `postgres_tls_dir` being undefined.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.lab


def test_tags_backups_alone_converges_and_changes_nothing(configured: Any) -> None:
    result = configured.converge("site.yml", ["--tags", "backups"])
    assert result.ok, f"site.yml --tags backups failed:\n{result.failures()}\n{result.output[-2000:]}"
    assert result.changed == {}, f"a converged lab changed under --tags backups: {result.changed}"
    assert "TASK [pgbackrest :" in result.output, "--tags backups ran no pgBackRest task"
    # Ansible runs each role's argument validation whatever the tags (it is tagged `always`); nothing else of the
    # server roles may run.
    other = [line for line in result.output.splitlines() if line.startswith(("TASK [redis_server :",
             "TASK [prometheus :", "TASK [postgres_exporter :")) and "Validating arguments" not in line]
    assert other == [], other
