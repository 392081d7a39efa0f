"""The package layout: operator/ holds the package folder and never shadows the standard `operator` module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_operator_from_the_repository_root_is_the_standard_module() -> None:
    """Issue: with operator/ as the package folder, `python3 -S -c 'import json'` failed at the root."""
    done = subprocess.run([sys.executable, "-S", "-c", "import operator, json; operator.itemgetter"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (REPO / "operator" / "__init__.py").exists()


def test_dbfleet_is_imported_from_this_checkout() -> None:
    import dbfleet

    assert Path(dbfleet.__file__).resolve().parent == REPO / "operator" / "dbfleet"
