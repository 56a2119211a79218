"""Sandbox storage waste: orphaned EBS snapshots (``orphaned-snapshots``) and the volumes of long-stopped
instances (``stopped-instance-volumes``).

Orphans are made as a person makes them: snapshot a volume, then delete the volume; or register an AMI (the
emulator backs it with a snapshot of a throw-away volume, as a Packer build does) and deregister it later.
Snapshots of live volumes, of registered AMIs and of deleted volumes that a launch template version (an older one
than ``$Default``/``$Latest``, as a pinned Auto Scaling group uses) or a launch configuration still restores a data
volume from are the near misses. Snapshot start times and the base
account's stopped instances' stop times are then moved into the past.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from guard.pricing import HOURS_PER_MONTH, SNAPSHOT_USD_PER_GB_MONTH, default_catalog
from guard.sandbox.account import REGIONS, team_tags
from guard.sandbox.backdate import backdate
from guard.sandbox.server import SandboxError, seeding_client
from guard.sandbox.truth import UNKNOWN_OWNER, ExpectedFinding, NearMiss, SeedContext, Seeded

ORPHANED_SNAPSHOTS = "orphaned-snapshots"
STOPPED_INSTANCE_VOLUMES = "stopped-instance-volumes"

SnapshotKind = Literal["orphan", "orphan-of-image", "too-young", "under-min-age", "protected", "volume-exists",
                       "used-by-image", "used-by-launch-template", "used-by-launch-configuration"]
"""``orphan`` and ``orphan-of-image`` (its AMI deregistered) are findings with the default 7-day ``min_age``."""
_FINDING_KINDS = frozenset({"orphan", "orphan-of-image"})
_LAUNCHED_FROM = frozenset({"used-by-launch-template", "used-by-launch-configuration"})
_OF_A_DELETED_VOLUME = frozenset({"orphan", "too-young", "under-min-age", "protected"}) | _LAUNCHED_FROM
_OF_AN_IMAGE = frozenset({"orphan-of-image", "used-by-image"})


@dataclass(frozen=True)
class _Snap:
    """One snapshot: of a throw-away volume (``size_gib``/``volume_type``), of the team volume named ``source``
    (``volume-exists``), or behind an AMI named ``name`` (the emulator picks its size)."""

    region: str
    kind: SnapshotKind
    age: timedelta
    owner: str | None = None
    name: str | None = None
    size_gib: int = 0
    volume_type: str = "gp3"
    source: str | None = None


@dataclass(frozen=True)
class _Stop:
    """When the base account's stopped instance ``name`` was stopped; ``finding``: past the default 7 days."""

    region: str
    name: str
    stopped_for: timedelta
    finding: bool


_E, _W = REGIONS
SNAPSHOTS = (
    _Snap(_E, "orphan", timedelta(days=95), "maria.garcia", "training-data-2023", 500, "gp2"),
    _Snap(_E, "orphan", timedelta(days=40), "wei.chen", "llm-checkpoints-v1", 2000),
    _Snap(_E, "orphan-of-image", timedelta(days=30), "priya.patel", "feature-store-ami-2024-09"),
    _Snap(_E, "used-by-image", timedelta(days=20), "sara.okafor", "mlflow-ami"),
    _Snap(_E, "volume-exists", timedelta(days=10), "maria.garcia", "training-data-2024-backup",
          source="training-data-2024"),
    _Snap(_E, "too-young", timedelta(days=2), "sara.okafor", "scratch-before-resize", 200),
    _Snap(_E, "used-by-launch-template", timedelta(days=60), "wei.chen", "dask-workers-dataset", 100),
    _Snap(_W, "orphan", timedelta(days=14), size_gib=64, volume_type="gp2"),
    _Snap(_W, "orphan", timedelta(days=8), "tom.becker", "kafka-logs-2023", 500, "st1"),
    _Snap(_W, "under-min-age", timedelta(days=6, hours=20), "priya.patel", "embeddings-v0", 100),
    _Snap(_W, "protected", timedelta(days=120), "tom.becker", "dr-postgres-golden", 1000),
    _Snap(_W, "volume-exists", timedelta(days=30), "priya.patel", "golden-dataset-weekly", source="golden-dataset"),
    _Snap(_W, "used-by-image", timedelta(days=50), "priya.patel", "vector-db-ami"),
    _Snap(_W, "used-by-launch-configuration", timedelta(days=200), "tom.becker", "kafka-brokers-2022", 50),
)
"""``kafka-logs-2023`` (8 days) is just past the default 7 days, ``embeddings-v0`` (6 d 20 h) just short of it."""

STOPS = (
    _Stop(_E, "cv-inference-test", timedelta(days=16), finding=True),
    _Stop(_E, "postgres-dev", timedelta(days=7, hours=6), finding=True),
    _Stop(_W, "sandbox-maria", timedelta(days=6, hours=18), finding=False),
)
"""The base account's three stopped instances; each must have been launched before the stop time given here."""



def seed(context: SeedContext) -> Seeded:
    """Make both regions' snapshots and backdate the stopped instances; return what the two rules must report."""
    findings: list[ExpectedFinding] = []
    near_misses: list[NearMiss] = []
    for region in REGIONS:
        for seeded in (_seed_snapshots(context, region), _seed_stops(context, region)):
            findings.extend(seeded.findings)
            near_misses.extend(seeded.near_misses)
    return Seeded(tuple(findings), tuple(near_misses))


def _seed_snapshots(context: SeedContext, region: str) -> Seeded:
    ec2 = seeding_client(context.endpoint_url, "ec2", region)
    team_volumes = {v.name: v.volume_id for v in context.volumes if v.region == region and v.name}
    created: dict[str, _Snap] = {}
    for snap in (s for s in SNAPSHOTS if s.region == region):
        tags = team_tags(snap.owner, snap.name, snap.kind == "protected")
        if snap.kind in _OF_AN_IMAGE:
            image_id = ec2.register_image(Name=snap.name or "image", Architecture="x86_64", RootDeviceName="/dev/xvda",
                                          VirtualizationType="hvm")["ImageId"]
            [image] = ec2.describe_images(ImageIds=[image_id])["Images"]
            snapshot_id = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
            if tags:
                ec2.create_tags(Resources=[image_id, snapshot_id], Tags=tags)
            if snap.kind == "orphan-of-image":
                ec2.deregister_image(ImageId=image_id)
        else:
            if snap.kind in _OF_A_DELETED_VOLUME:
                volume_id = ec2.create_volume(AvailabilityZone=f"{region}a", Size=snap.size_gib,
                                              VolumeType=snap.volume_type)["VolumeId"]
            else:
                volume_id = team_volumes[snap.source]
            tag_specs = {"TagSpecifications": [{"ResourceType": "snapshot", "Tags": tags}]} if tags else {}
            snapshot_id = ec2.create_snapshot(VolumeId=volume_id, Description=snap.name or "backup",
                                              **tag_specs)["SnapshotId"]
            if snap.kind in _OF_A_DELETED_VOLUME:
                ec2.delete_volume(VolumeId=volume_id)
            if snap.kind in _LAUNCHED_FROM:
                _launch_from(context, region, snap, snapshot_id)
        created[snapshot_id] = snap
    backdate(context.endpoint_url, region, snapshots={i: context.now - s.age for i, s in created.items()})
    sizes = {raw["SnapshotId"]: raw["VolumeSize"]
             for raw in ec2.describe_snapshots(SnapshotIds=list(created))["Snapshots"]}
    findings, near_misses = [], []
    for snapshot_id, snap in created.items():
        if snap.kind in _FINDING_KINDS:
            waste = sizes[snapshot_id] * SNAPSHOT_USD_PER_GB_MONTH / HOURS_PER_MONTH
            findings.append(ExpectedFinding(ORPHANED_SNAPSHOTS, region, snapshot_id, snap.owner or UNKNOWN_OWNER,
                                            waste))
        else:
            near_misses.append(NearMiss(ORPHANED_SNAPSHOTS, region, snapshot_id, snap.kind))
    return Seeded(tuple(findings), tuple(near_misses))


def _launch_from(context: SeedContext, region: str, snap: _Snap, snapshot_id: str) -> None:
    """A launch template whose version 1 restores a data volume from the snapshot and whose later versions (the
    ``$Default`` and ``$Latest``) do not — a group pinned to version 1 still needs it; or a launch configuration."""
    name = snap.name or "workers"
    data_volume = [{"DeviceName": "/dev/sdf", "Ebs": {"SnapshotId": snapshot_id, "VolumeType": "gp3",
                                                      "DeleteOnTermination": True}}]
    image_id = "ami-0123456789abcdef0"
    if snap.kind == "used-by-launch-configuration":
        seeding_client(context.endpoint_url, "autoscaling", region).create_launch_configuration(
            LaunchConfigurationName=name, ImageId=image_id, InstanceType="m5.xlarge", BlockDeviceMappings=data_volume)
        return
    ec2 = seeding_client(context.endpoint_url, "ec2", region)
    tags = team_tags(snap.owner, name)
    template_id = ec2.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData={"ImageId": image_id, "InstanceType": "m5.xlarge", "BlockDeviceMappings": data_volume},
        **({"TagSpecifications": [{"ResourceType": "launch-template", "Tags": tags}]} if tags else {}),
    )["LaunchTemplate"]["LaunchTemplateId"]
    for instance_type in ("m5.2xlarge", "m5.4xlarge"):
        ec2.create_launch_template_version(LaunchTemplateId=template_id,
                                           LaunchTemplateData={"ImageId": image_id, "InstanceType": instance_type})
    ec2.modify_launch_template(LaunchTemplateId=template_id, DefaultVersion="3")


def _seed_stops(context: SeedContext, region: str) -> Seeded:
    """Backdate the stop of the region's stopped instances; their volumes are priced as describe_volumes reports."""
    ec2 = seeding_client(context.endpoint_url, "ec2", region)
    stopped = {vm.name: vm for vm in context.instances if vm.region == region and vm.profile == "stopped"}
    stops = [stop for stop in STOPS if stop.region == region]
    stopped_at: dict[str, datetime] = {}
    for stop in stops:
        vm = stopped[stop.name]
        stopped_at[vm.instance_id] = context.now - stop.stopped_for
        if stopped_at[vm.instance_id] < vm.launched_at:
            raise SandboxError(f"{vm.instance_id} ({stop.name}) was launched after the stop time to seed")
    if not stopped_at:
        return Seeded()
    backdate(context.endpoint_url, region, stopped=stopped_at)
    reservations = ec2.describe_instances(InstanceIds=list(stopped_at))["Reservations"]
    volume_ids = {raw["InstanceId"]: [m["Ebs"]["VolumeId"] for m in raw["BlockDeviceMappings"] if "Ebs" in m]
                  for reservation in reservations for raw in reservation["Instances"]}
    volumes = {raw["VolumeId"]: raw for raw in ec2.describe_volumes(
        VolumeIds=[v for ids in volume_ids.values() for v in ids])["Volumes"]}
    prices = default_catalog()
    findings, near_misses = [], []
    for stop in stops:
        vm = stopped[stop.name]
        if stop.finding:
            parts = [prices.volume_hourly_usd(volumes[v]["VolumeType"], volumes[v]["Size"], region)
                     for v in volume_ids[vm.instance_id]]
            waste = None if None in parts else sum(parts)
            findings.append(ExpectedFinding(STOPPED_INSTANCE_VOLUMES, region, vm.instance_id, vm.owner, waste))
        else:
            near_misses.append(NearMiss(STOPPED_INSTANCE_VOLUMES, region, vm.instance_id, "under-min-stopped"))
    running_twins = [vm for vm in context.instances if vm.region == region and vm.profile != "stopped"
                     and vm.name in {stop.name for stop in stops}]
    near_misses.extend(NearMiss(STOPPED_INSTANCE_VOLUMES, region, vm.instance_id, "running") for vm in running_twins)
    return Seeded(tuple(findings), tuple(near_misses))
