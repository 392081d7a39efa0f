"""Pulumi mocks that record every registered resource, and a runner for the fleet program under them."""

from __future__ import annotations

import hashlib
import ipaddress
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml

with warnings.catch_warnings():
    # pulumi_aws.s3 still defines the deprecated *V2 classes, which warn on import; the program uses none of them.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pulumi_aws

    pulumi_aws.s3.Bucket, pulumi_aws.ec2.Instance  # noqa: B018 - loading the lazy modules here is the point

from dbfleet.spec import Fleet, parse_fleet

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "fleet.example.yaml"
sys.path.insert(0, str(REPO / "stacks"))

from components.fleet import StackSettings, provision_fleet  # noqa: E402
from components.images import DEBIAN_OWNER  # noqa: E402

ACCOUNT = "123456789012"
DEFAULT_REGION = "us-east-1"
"""The region of a resource registered without an aws provider (the program never does that)."""
ZONE_LETTERS = "abcd"
SUBNET = "aws:ec2/subnet:Subnet"


@dataclass(frozen=True)
class Registered:
    """One resource as the program registered it: its type token, name and inputs."""

    type: str
    name: str
    inputs: dict[str, Any]
    state: dict[str, Any]
    region: str
    """The region of the aws provider it was registered with."""


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    """Answers like AWS would, closely enough for the program, and keeps what it was asked."""

    resources: list[Registered] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    call_regions: list[tuple[str, str]] = field(default_factory=list)
    """(token, region of the provider asked) of every invoke."""
    provider_regions: dict[str, str] = field(default_factory=dict)
    """Region by aws provider id."""

    def region(self, provider: str | None) -> str:
        """The region of a provider reference (`urn::id`)."""
        return self.provider_regions.get((provider or "").rsplit("::", 1)[-1], DEFAULT_REGION)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        # Ids and addresses derive from the name alone, so a resource looks the same
        # to its dependents whatever else the spec adds.
        digest = hashlib.sha256(f"{args.typ}/{args.name}".encode()).digest()
        state = {**args.inputs}
        region = self.region(args.provider)
        service = args.typ.split(":")[1].split("/")[0] if ":" in args.typ else "pulumi"
        state.setdefault("arn", f"arn:aws:{service}:{region}:{ACCOUNT}:{args.name}")
        rid = f"{args.name}-id"
        if args.typ == "pulumi:providers:aws":
            self.provider_regions[rid] = args.inputs["region"]
        elif args.typ == "aws:ec2/instance:Instance":
            rid = f"i-{digest.hex()[:17]}"
            # An address inside the subnet it was placed in (AWS keeps each subnet's first four and last one).
            subnet = ipaddress.ip_network(next(r.inputs["cidrBlock"] for r in self.resources if r.type == SUBNET
                                               and f"{r.name}-id" == args.inputs["subnetId"]))
            state["privateIp"] = str(subnet[4 + int.from_bytes(digest[:2]) % (subnet.num_addresses - 5)])
        elif args.typ == "aws:ebs/volume:Volume":
            rid = f"vol-{digest.hex()[:17]}"
        elif args.typ == "aws:kms/key:Key":
            state.update(arn=f"arn:aws:kms:{region}:{ACCOUNT}:key/{args.name}", keyId=args.name)
        elif args.typ == "aws:s3/bucket:Bucket":
            bucket = args.inputs.get("bucket") or f"{args.name}-0a1b2c3"
            state.update(bucket=bucket, arn=f"arn:aws:s3:::{bucket}")
            rid = bucket
        elif args.typ == "aws:ec2/keyPair:KeyPair":
            state.setdefault("keyName", args.name)
        elif args.typ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            state.setdefault("name", f"{args.name}-0a1b2c3")
        self.resources.append(Registered(args.typ, args.name, dict(args.inputs), state, region))
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        self.calls.append((args.token, dict(args.args)))
        region = self.region(args.provider)
        self.call_regions.append((args.token, region))
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": [region + letter for letter in ZONE_LETTERS],
                    "zoneIds": [f"{region}-az{i}" for i in range(len(ZONE_LETTERS))]}, []
        if args.token == "aws:ec2/getAmi:getAmi":
            assert args.args.get("owners") == [DEBIAN_OWNER], args.args
            pattern = next(f["values"][0] for f in args.args["filters"] if f["name"] == "name")
            return {"id": f"ami-{pattern.split('-')[2]}", "name": pattern.replace("*", "20250101-1")}, []
        raise NotImplementedError(f"the program invoked {args.token}, which the mocks do not answer")


@dataclass
class Run:
    """The resources and resolved outputs of one program run under the mocks."""

    mocks: RecordingMocks
    outputs: dict[str, Any]

    def of_type(self, token: str) -> list[Registered]:
        return [r for r in self.mocks.resources if r.type == token]

    def named(self, token: str, name: str) -> Registered:
        return next(r for r in self.of_type(token) if r.name == name)


def run_program(fleet: Fleet, settings: StackSettings | None = None) -> Run:
    """Run the fleet program on fresh mocks and wait for every output."""
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="dbfleet", stack="test", preview=False)
    resolved: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> pulumi.Output[Any]:
        outputs = pulumi.Output.from_input(provision_fleet(fleet, settings or StackSettings()))
        return outputs.apply(resolved.update)

    program()
    return Run(mocks, resolved)


def without_standby(data: dict[str, Any]) -> None:
    """Drop every cluster's dr.standby (the example's standby site) from a parsed spec."""
    for cluster in data["clusters"]:
        (cluster.get("dr") or {}).pop("standby", None)


def fleet_variant(change: Any) -> Fleet:
    """The example spec without its standby site (a variant that wants one sets it), after `change(data)` edits
    its parsed YAML, validated like any spec."""
    data = yaml.safe_load(SPEC.read_text())
    without_standby(data)
    change(data)
    return parse_fleet(yaml.safe_dump(data), "variant.yaml")
