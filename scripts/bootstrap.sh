#!/usr/bin/env bash
# Install what dbfleet needs on a fresh Debian 12 machine: Debian packages
# (docker.io, debootstrap, promtool, PostgreSQL client tools) and the Python
# package with its test extras. Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker.io debootstrap iproute2 prometheus postgresql-client-15 redis-tools age openssl)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "[bootstrap] installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # prometheus is only wanted for promtool here: keep its service from starting on this machine.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=.dbfleet/bootstrap.stamp
want=$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]] || ! python3 -c "import dbfleet, testinfra, pulumi_aws, importlinter, mypy" 2>/dev/null; then
  echo "[bootstrap] installing the dbfleet Python package and test dependencies" >&2
  python3 -m pip install -q -e '.[test]' 2>&1 | grep -v -E "^(WARNING|DEPRECATION)" || true
  python3 -c "import dbfleet, testinfra, pulumi_aws, importlinter, mypy" || { echo "[bootstrap] pip install failed" >&2; exit 1; }
  mkdir -p .dbfleet && echo "$want" > "$stamp"
fi

# The Docker engine: started in the background when none answers.
python3 - <<'PY'
from dbfleet.lab.dockerd import ensure_engine
from dbfleet.progress import Progress
ensure_engine(Progress("bootstrap"))
PY
echo "[bootstrap] ready" >&2
