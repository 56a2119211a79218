"""Sandbox network waste: Elastic IPs (``unattached-eips``) and NAT gateways (``idle-nat-gateways``).

Each region gets a team VPC with a public subnet. Every NAT gateway holds an Elastic IP of its own, and two
team instances get one too, so associated addresses are near misses of their own. NAT gateways are backdated
and given hourly ``AWS/NATGateway`` sums of a constant processed volume, so the daily rate — and the expected
$ — is the same whichever 24 hours a scan's window covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from guard.pricing import GB, NAT_GATEWAY_USD_PER_GB, NAT_GATEWAY_USD_PER_HOUR, PUBLIC_IPV4_USD_PER_HOUR
from guard.sandbox import metrics
from guard.sandbox.account import REGIONS, team_tags
from guard.sandbox.backdate import backdate
from guard.sandbox.server import seeding_client
from guard.sandbox.truth import UNKNOWN_OWNER, ExpectedFinding, LiveSeries, NearMiss, SeedContext, Seeded

UNATTACHED_EIPS = "unattached-eips"
IDLE_NAT_GATEWAYS = "idle-nat-gateways"
NAT_NAMESPACE = "AWS/NATGateway"
SERIES_SPAN = timedelta(hours=26)
"""Hourly sums far enough back to fill the rule's default 24-hour window, which ends at the last complete hour."""
HOUR = timedelta(hours=1)
"""Live, the newest hourly sum repeats every hour, at the same minute: one datapoint in every hour of a window."""

EipKind = Literal["unattached", "protected", "on-instance"]
"""Only ``unattached`` addresses are findings; the NAT gateways' own addresses are near misses ``on-nat-gateway``."""
NatKind = Literal["idle", "over-threshold", "busy", "too-young", "protected", "no-data"]
"""Only ``idle`` gateways (old enough, under 1 GB/day) are findings; ``no-data`` ones are undetermined."""


@dataclass(frozen=True)
class _Eip:
    """One Elastic IP; ``attach_to`` names the team instance (the first of that name) it is associated with."""

    region: str
    kind: EipKind
    owner: str | None = None
    name: str | None = None
    attach_to: str | None = None


@dataclass(frozen=True)
class _Nat:
    """One public NAT gateway with its own Elastic IP; ``gb_per_day`` of processed traffic (None: no series)."""

    region: str
    kind: NatKind
    age: timedelta
    gb_per_day: float | None
    owner: str | None = None
    name: str | None = None


_E, _W = REGIONS
EIPS = (
    _Eip(_E, "unattached", "tom.becker", "old-bastion-ip"),
    _Eip(_E, "unattached"),
    _Eip(_E, "protected", "sara.okafor", "jupyterhub-dns-ip"),
    _Eip(_E, "on-instance", "sara.okafor", "mlflow-ip", attach_to="mlflow"),
    _Eip(_E, "on-instance", "maria.garcia", "postgres-dev-ip", attach_to="postgres-dev"),
    _Eip(_W, "unattached", "wei.chen", "embeddings-api-ip"),
    _Eip(_W, "on-instance", "tom.becker", "bastion-ip", attach_to="bastion"),
)
"""Addresses besides the NAT gateways' own; ``postgres-dev`` is a stopped instance (associated all the same)."""

NATS = (
    _Nat(_E, "idle", timedelta(days=12), 0.05, "tom.becker", "etl-vpc-nat"),
    _Nat(_E, "idle", timedelta(days=30), 0.0),
    _Nat(_E, "over-threshold", timedelta(days=20), 1.2, "maria.garcia", "forecast-vpc-nat"),
    _Nat(_E, "busy", timedelta(days=40), 350.0, "wei.chen", "llm-vpc-nat"),
    _Nat(_E, "too-young", timedelta(hours=3), 0.0, "sara.okafor", "adhoc-vpc-nat"),
    _Nat(_W, "idle", timedelta(days=9), 0.9, "priya.patel", "vision-vpc-nat"),
    _Nat(_W, "protected", timedelta(days=60), 0.01, "tom.becker", "shared-egress-nat"),
    _Nat(_W, "no-data", timedelta(days=5), None, "wei.chen", "tokenizer-vpc-nat"),
)
"""``over-threshold`` sits just above the default 1 GB/day, the ``vision-vpc-nat`` idle one just under it."""

_CIDRS = {_E: ("10.20.0.0/16", "10.20.0.0/24"), _W: ("10.30.0.0/16", "10.30.0.0/24")}
"""Each region's team VPC and its public subnet."""
_OUTBOUND_SHARE = 4
"""A quarter of the processed bytes go out from the VPC (requests), the rest come back (downloads)."""



def _tag_specs(tags: list[dict[str, str]], resource_type: str) -> dict:
    return {"TagSpecifications": [{"ResourceType": resource_type, "Tags": tags}]} if tags else {}


def _hourly_bytes(gb_per_day: float) -> tuple[int, int]:
    """(BytesInFromSource, BytesInFromDestination) per hour for a processed volume of ``gb_per_day``."""
    total = round(gb_per_day * GB / 24)
    outbound = total // _OUTBOUND_SHARE
    return outbound, total - outbound


def seed(context: SeedContext) -> Seeded:
    """Allocate both regions' addresses and NAT gateways; return what the two rules must and must not report."""
    findings: list[ExpectedFinding] = []
    near_misses: list[NearMiss] = []
    live: list[LiveSeries] = []
    first_instance: dict[tuple[str, str], str] = {}
    for vm in context.instances:
        if vm.name:
            first_instance.setdefault((vm.region, vm.name), vm.instance_id)
    for region in REGIONS:
        ec2 = seeding_client(context.endpoint_url, "ec2", region)
        for eip in (e for e in EIPS if e.region == region):
            allocation_id = ec2.allocate_address(Domain="vpc", **_tag_specs(
                team_tags(eip.owner, eip.name, eip.kind == "protected"), "elastic-ip"))["AllocationId"]
            if eip.attach_to:
                ec2.associate_address(AllocationId=allocation_id,
                                      InstanceId=first_instance[(region, eip.attach_to)])
            if eip.kind == "unattached":
                findings.append(ExpectedFinding(UNATTACHED_EIPS, region, allocation_id,
                                                eip.owner or UNKNOWN_OWNER, PUBLIC_IPV4_USD_PER_HOUR))
            else:
                near_misses.append(NearMiss(UNATTACHED_EIPS, region, allocation_id, eip.kind))
        gateways = _seed_nat_gateways(context, region)
        findings.extend(gateways.findings)
        near_misses.extend(gateways.near_misses)
        live.extend(gateways.live_series)
    return Seeded(tuple(findings), tuple(near_misses), live_series=tuple(live))


def _seed_nat_gateways(context: SeedContext, region: str) -> Seeded:
    ec2 = seeding_client(context.endpoint_url, "ec2", region)
    vpc_tags = team_tags("tom.becker", "team-vpc")
    vpc_cidr, subnet_cidr = _CIDRS[region]
    vpc_id = ec2.create_vpc(CidrBlock=vpc_cidr, **_tag_specs(vpc_tags, "vpc"))["Vpc"]["VpcId"]
    gateway_id = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway_id, VpcId=vpc_id)
    subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock=subnet_cidr, AvailabilityZone=f"{region}a",
                                  **_tag_specs(vpc_tags, "subnet"))["Subnet"]["SubnetId"]
    findings, near_misses = [], []
    created: dict[str, datetime] = {}
    datums: list[dict] = []
    live: list[LiveSeries] = []
    newest = context.now - timedelta(minutes=30)
    for nat in (n for n in NATS if n.region == region):
        tags = team_tags(nat.owner, nat.name, nat.kind == "protected")
        allocation_id = ec2.allocate_address(Domain="vpc", **_tag_specs(tags, "elastic-ip"))["AllocationId"]
        nat_id = ec2.create_nat_gateway(SubnetId=subnet_id, AllocationId=allocation_id,
                                        **_tag_specs(tags, "natgateway"))["NatGateway"]["NatGatewayId"]
        near_misses.append(NearMiss(UNATTACHED_EIPS, region, allocation_id, "on-nat-gateway"))
        created_at = context.now - nat.age
        created[nat_id] = created_at
        if nat.gb_per_day is not None:
            # one sum an hour, from half an hour ago back over the span or to the gateway's creation
            stamps = [newest - timedelta(hours=k) for k in range(int(SERIES_SPAN / timedelta(hours=1)))
                      if newest - timedelta(hours=k) > created_at]
            datums.extend(_nat_datums(nat_id, nat.gb_per_day, stamps))
            live.extend(LiveSeries.of(region, NAT_NAMESPACE, HOUR, _nat_datums(nat_id, nat.gb_per_day, stamps[:1])))
        if nat.kind == "idle":
            outbound, inbound = _hourly_bytes(nat.gb_per_day or 0.0)
            waste = NAT_GATEWAY_USD_PER_HOUR + (outbound + inbound) / GB * NAT_GATEWAY_USD_PER_GB
            findings.append(ExpectedFinding(IDLE_NAT_GATEWAYS, region, nat_id, nat.owner or UNKNOWN_OWNER, waste))
        else:
            near_misses.append(NearMiss(IDLE_NAT_GATEWAYS, region, nat_id, nat.kind,
                                        undetermined=nat.kind == "no-data"))
    metrics.put(context.endpoint_url, region, datums, namespace=NAT_NAMESPACE)
    backdate(context.endpoint_url, region, nat_gateways=created)
    return Seeded(tuple(findings), tuple(near_misses), live_series=tuple(live))


def _nat_datums(nat_id: str, gb_per_day: float, stamps: list[datetime]) -> list[dict]:
    dimensions = [{"Name": "NatGatewayId", "Value": nat_id}]
    outbound, inbound = _hourly_bytes(gb_per_day)
    return [{"MetricName": metric, "Dimensions": dimensions, "Timestamp": stamp, "Value": value, "Unit": "Bytes"}
            for stamp in stamps
            for metric, value in (("BytesInFromSource", outbound), ("BytesInFromDestination", inbound))]
