"""Pulumi program: read the fleet spec named by the stack's config and provision it on AWS."""

from pathlib import Path

import pulumi

from components.fleet import StackSettings, provision_fleet
from dbfleet.spec import load_fleet

config = pulumi.Config()
# A bad spec raises SpecError naming the file, line and key path.
fleet = load_fleet((Path(__file__).resolve().parent / config.get("spec", "../fleet.example.yaml")).resolve())
outputs = provision_fleet(fleet, StackSettings(ssh_public_key=config.get("sshPublicKey") or None))
for name, value in outputs.items():
    pulumi.export(name, value)
