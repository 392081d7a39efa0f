#!/usr/bin/env bash
# The main job on the local container lab: bring the fleet up, configure it
# with Ansible, reconcile once with the operator and print the fleet's status.
# Runs this checkout's dbfleet from .venv/ (made by bootstrap.sh); the checkout
# is the project folder (spec fleet.example.yaml, inventories/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
SPEC=${DBFLEET_SPEC:-fleet.example.yaml}
LAB=${DBFLEET_LAB:-lab}
dbfleet() { .venv/bin/python -m dbfleet --project . --spec "$SPEC" "$@"; }
dbfleet lab up --lab "$LAB"
dbfleet configure --lab "$LAB"
dbfleet reconcile --once --lab "$LAB"
dbfleet status --lab "$LAB"
