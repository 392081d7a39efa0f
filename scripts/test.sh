#!/usr/bin/env bash
# The test command (README and .ci/run): bootstrap, the linters, then the whole suite —
# unit, Pulumi mocks, and integration/fault tests against the container lab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/lint.sh
exec python3 -m pytest -q -ra --durations=15 "$@"
