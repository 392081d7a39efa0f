#!/usr/bin/env bash
# The main job on the local container lab: bring the fleet up, configure it
# with Ansible, reconcile once with the operator and print the fleet's status.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
SPEC=${DBFLEET_SPEC:-fleet.example.yaml}
LAB=${DBFLEET_LAB:-lab}
python3 -m dbfleet --spec "$SPEC" lab up --lab "$LAB"
python3 -m dbfleet --spec "$SPEC" configure --lab "$LAB"
python3 -m dbfleet --spec "$SPEC" reconcile --once --lab "$LAB"
python3 -m dbfleet --spec "$SPEC" status --lab "$LAB"
