#!/usr/bin/env bash
# The package's static checks (run by scripts/test.sh): the declared import layers, ruff, mypy, and
# ansible-lint on the playbooks, roles and collection (its settings: .ansible-lint).
# With .venv/bin/python (bootstrap.sh) when there is one, so the layers checked are this checkout's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[[ -x .venv/bin/python ]] && PY=.venv/bin/python
echo "[lint] import layers (lint-imports)" >&2
lint_imports() { "$PY" -c "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())" "$@"; }
lint_imports --no-cache >/dev/null || lint_imports --no-cache
echo "[lint] ruff" >&2
"$PY" -m ruff check --quiet .
echo "[lint] mypy --strict (the dbfleet package)" >&2
"$PY" -m mypy
echo "[lint] ansible-lint (production profile)" >&2
"$PY" -m ansiblelint -q playbooks/
