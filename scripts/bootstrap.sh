#!/usr/bin/env bash
# Install what dbfleet needs on a fresh Debian 12 machine: Debian packages
# (docker.io, debootstrap, promtool, etcd for the leader-lock tests, PostgreSQL client tools), then this
# checkout's Python package (editable) with its test extras in .venv/ inside the
# checkout. scripts/*.sh run everything with .venv/bin/python, so two checkouts
# on one machine never share an install nor run each other's code.
# Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker.io debootstrap iproute2 prometheus postgresql-client-15 redis-tools age openssl etcd-server
              etcd-client)
# Debian's own python3 makes virtual environments only with python3-venv.
python3 -c "import ensurepip" 2>/dev/null || APT_PACKAGES+=(python3-venv)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "[bootstrap] installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # prometheus is only wanted for promtool here, etcd for a test's own server: keep their services from starting.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The checkout's own environment. --system-site-packages: what the machine has
# installed already (Ansible, Pulumi ...) is used, not downloaded again; this
# checkout's dbfleet, installed into .venv, comes before anything there.
PY=.venv/bin/python
if ! "$PY" -c "import sys" 2>/dev/null; then
  echo "[bootstrap] creating .venv (python3 -m venv --system-site-packages)" >&2
  python3 -m venv --clear --system-site-packages .venv
fi

here="$(pwd -P)/operator/dbfleet/__init__.py"
imported() { "$@" "$PY" -c "import os, dbfleet; print(os.path.realpath(dbfleet.__file__))" 2>/dev/null || true; }
stamp=.venv/dbfleet-bootstrap.stamp
want=$(sha256sum pyproject.toml | cut -c1-16)
# Reinstalled when .venv's own dbfleet is not this checkout's (say the checkout moved), whatever PYTHONPATH says.
if [[ $(imported env -u PYTHONPATH) != "$here" || ! -f $stamp || $(cat "$stamp") != "$want" ]] \
    || ! "$PY" -c "import testinfra, pulumi_aws, importlinter, mypy, ruff, ansiblelint, ansible_mitogen" 2>/dev/null; then
  echo "[bootstrap] installing the dbfleet Python package (editable) and test dependencies into .venv" >&2
  "$PY" -m pip install -q -e '.[test]' 2>&1 | grep -v -E "^(WARNING|DEPRECATION|\[notice\])" || true
  "$PY" -c "import testinfra, pulumi_aws, importlinter, mypy, ruff, ansiblelint, ansible_mitogen" || { echo "[bootstrap] pip install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
got=$(imported env)
if [[ $got != "$here" ]]; then
  echo "[bootstrap] .venv/bin/python imports dbfleet from ${got:-nowhere}, not from this checkout ($here)." >&2
  echo "[bootstrap] Is PYTHONPATH (${PYTHONPATH:-unset}) pointing at another checkout?" >&2
  exit 1
fi

# The Docker engine: started in the background when none answers.
"$PY" - <<'PY'
from dbfleet.lab.dockerd import ensure_engine
from dbfleet.progress import Progress
ensure_engine(Progress("bootstrap"))
PY
echo "[bootstrap] ready" >&2
