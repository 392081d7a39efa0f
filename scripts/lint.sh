#!/usr/bin/env bash
# The package's static checks (run by scripts/test.sh): the declared import layers, ruff and mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "[lint] import layers (lint-imports)" >&2
lint-imports --no-cache >/dev/null || lint-imports --no-cache
echo "[lint] ruff" >&2
ruff check --quiet .
echo "[lint] mypy --strict (the dbfleet package)" >&2
mypy
