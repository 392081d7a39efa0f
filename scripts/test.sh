#!/usr/bin/env bash
# The test command (README and .ci/run): bootstrap, the linters, then the whole suite —
# unit, Pulumi mocks, and integration/fault tests against the container lab —
# with this checkout's .venv (made by bootstrap.sh) first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH"
bash scripts/lint.sh
exec python -m pytest -q -ra --durations=15 "$@"
