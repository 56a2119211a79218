"""Seeding the sandbox: a realistic data-science team account full of waste, and a large plain fleet.

Everything is created over HTTP with boto3, as a person would on AWS; only creation times are moved into the
past in-process (see ``backdate``). The team account is deterministic: a fixed random seed for the values,
and moto's own id generator seeded too, so a fresh emulator gets the same ids every time.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from guard.sandbox import metrics
from guard.sandbox.backdate import backdate
from guard.sandbox.images import architecture, image_for
from guard.sandbox.server import SandboxError, in_this_process, moto_api, seeding_client
from guard.sandbox.truth import (
    UNKNOWN_OWNER,
    GroundTruth,
    InstanceSpec,
    LiveSeries,
    Profile,
    SeedContext,
    Seeded,
    VolumeKind,
    VolumeSpec,
)

SEED = 20240601
ACCOUNT_ID = "123456789012"
"""The emulator's default account, the one the sandbox's credentials land in."""
PROTECT_TAG = {"Key": "guard:protect", "Value": "true"}
REGIONS = ("us-east-1", "us-west-2")

TEAMS = {
    "maria.garcia": "forecasting",
    "sara.okafor": "forecasting",
    "wei.chen": "nlp",
    "priya.patel": "vision",
    "tom.becker": "data-platform",
}
"""The five people of the team (tag ``owner``) and their sub-team (tag ``team``)."""

LOADS: dict[str, metrics.Load] = {
    "busy": metrics.BUSY,
    "idle": metrics.IDLE,
    "protected": metrics.IDLE,
    "young": metrics.IDLE,
    "near-miss-cpu": metrics.CPU_NEAR_MISS,
    "near-miss-network": metrics.NETWORK_NEAR_MISS,
}
"""The series each profile gets; ``stopped`` and ``no-data`` get none."""

YOUNG_AGE = timedelta(minutes=16)
YOUNG_SERIES = timedelta(minutes=15)
"""A young instance's series: 3 datapoints, too few for a one-hour window at 80% coverage. Kept going live, it
fills the window within the hour, and the young instance is judged by its profile from then on."""


@dataclass(frozen=True)
class _Launch:
    """One RunInstances call: ``len(profiles)`` instances of one type, tagged alike (untagged without owner)."""

    region: str
    instance_type: str
    profiles: tuple[Profile, ...]
    owner: str | None = None
    name: str | None = None
    protect: bool = False


@dataclass(frozen=True)
class _Disk:
    """One CreateVolume call; ``attach_to`` names the launch whose first instance it is attached to."""

    region: str
    volume_type: str
    size_gib: int
    kind: VolumeKind
    owner: str | None = None
    name: str | None = None
    attach_to: str | None = None


_E, _W = REGIONS
LAUNCHES = (
    _Launch(_E, "m5.xlarge", ("idle",), "maria.garcia", "notebook-maria"),
    _Launch(_E, "g5.xlarge", ("idle",), "wei.chen", "finetune-llama"),
    _Launch(_E, "g5.12xlarge", ("busy",), "wei.chen", "train-llm"),
    _Launch(_E, "m6i.2xlarge", ("busy",) * 5 + ("near-miss-cpu",), "maria.garcia", "dask-forecast"),
    _Launch(_E, "c6i.2xlarge", ("idle", "idle", "near-miss-network"), "tom.becker", "dask-etl"),
    _Launch(_E, "m7g.xlarge", ("idle", "busy"), "priya.patel", "feature-store"),
    _Launch(_E, "r6i.xlarge", ("protected",), "tom.becker", "airflow-scheduler", protect=True),
    _Launch(_E, "t3.large", ("near-miss-cpu", "near-miss-network", "busy"), "sara.okafor", "jupyterhub"),
    _Launch(_E, "g4dn.xlarge", ("stopped",), "priya.patel", "cv-inference-test"),
    _Launch(_E, "t3.medium", ("idle", "no-data")),
    _Launch(_E, "m5.2xlarge", ("young",), "sara.okafor", "adhoc-analysis"),
    _Launch(_E, "c7g.2xlarge", ("busy", "near-miss-cpu"), "tom.becker", "stream-consumer"),
    _Launch(_E, "m9g.xlarge", ("idle",), "wei.chen", "graviton-next-trial"),
    _Launch(_E, "r6i.large", ("stopped",), "maria.garcia", "postgres-dev"),
    _Launch(_E, "m6i.large", ("idle", "busy"), "sara.okafor", "mlflow"),
    _Launch(_W, "g5.2xlarge", ("idle",), "wei.chen", "embeddings-gpu"),
    _Launch(_W, "m6i.xlarge", ("busy", "busy", "idle", "idle"), "sara.okafor", "dask-sim"),
    _Launch(_W, "r7g.xlarge", ("idle", "near-miss-network"), "priya.patel", "vector-db"),
    _Launch(_W, "c6i.xlarge", ("busy", "near-miss-cpu", "near-miss-network"), "tom.becker", "kafka-connect"),
    _Launch(_W, "m5.large", ("protected",), "tom.becker", "bastion", protect=True),
    _Launch(_W, "t3.xlarge", ("no-data", "stopped"), "maria.garcia", "sandbox-maria"),
    _Launch(_W, "g4dn.xlarge", ("idle",)),
    _Launch(_W, "m7g.large", ("young",), "wei.chen", "tokenizer-dev"),
    _Launch(_W, "r6i.2xlarge", ("busy", "busy"), "maria.garcia", "spark-driver"),
    _Launch(_W, "c7g.xlarge", ("busy",) * 4, "wei.chen", "batch-scoring"),
)
"""The team's instances; ``m9g.xlarge`` is a type the price catalog does not know (its waste is unknown)."""

DISKS = (
    _Disk(_E, "gp2", 500, "detached", "maria.garcia", "training-data-2024"),
    _Disk(_E, "gp3", 2000, "detached", "wei.chen", "llm-checkpoints"),
    _Disk(_E, "io1", 200, "detached", "tom.becker", "postgres-old-data"),
    _Disk(_E, "st1", 1000, "detached"),
    _Disk(_E, "sc1", 1500, "detached", "priya.patel", "raw-images-archive"),
    _Disk(_E, "standard", 8, "detached"),
    _Disk(_E, "gp3", 100, "detached", "sara.okafor", "scratch"),
    _Disk(_E, "gp3", 200, "young", "sara.okafor", "scratch-today"),
    _Disk(_E, "gp3", 500, "attached", "wei.chen", "train-llm-data", attach_to="train-llm"),
    _Disk(_E, "st1", 2048, "attached", "maria.garcia", "dask-spill", attach_to="dask-forecast"),
    _Disk(_W, "gp3", 50, "detached", "wei.chen", "tokenizer-cache"),
    _Disk(_W, "gp2", 8, "detached"),
    _Disk(_W, "io1", 100, "detached", "maria.garcia", "mysql-restore-test"),
    _Disk(_W, "st1", 500, "detached", "tom.becker", "kafka-old-logs"),
    _Disk(_W, "gp3", 750, "detached", "priya.patel", "embeddings-v1"),
    _Disk(_W, "sc1", 125, "detached"),
    _Disk(_W, "standard", 20, "detached", "sara.okafor", "sara-home-backup"),
    _Disk(_W, "gp3", 1000, "protected", "priya.patel", "golden-dataset"),
    _Disk(_W, "gp2", 64, "young", "tom.becker", "kafka-tmp"),
    _Disk(_W, "gp3", 200, "attached", "priya.patel", "vector-db-data", attach_to="vector-db"),
)
"""The team's extra EBS volumes (instances' root volumes come with the instances)."""

_VOLUME_AGE_DAYS: dict[str, tuple[float, float]] = {"detached": (2, 90), "protected": (2, 90), "attached": (1, 60)}
_YOUNG_VOLUME_AGE = timedelta(hours=3)
_IO1_IOPS = 3000


def team_tags(owner: str | None, name: str | None, protect: bool = False) -> list[dict[str, str]]:
    """A team resource's tags: owner, team, Name, and the protect tag if asked; none for an unowned one."""
    if owner is None:
        return []
    tags = [{"Key": "owner", "Value": owner}, {"Key": "team", "Value": TEAMS[owner]}]
    if name:
        tags.append({"Key": "Name", "Value": name})
    if protect:
        tags.append(PROTECT_TAG)
    return tags


def _tag_specs(tags: list[dict[str, str]], *resource_types: str) -> dict:
    return {"TagSpecifications": [{"ResourceType": kind, "Tags": tags} for kind in resource_types]} if tags else {}


def _utc(now: datetime | None) -> datetime:
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(microsecond=0)


def _days_ago(now: datetime, rng: random.Random, low: float, high: float) -> datetime:
    return now - timedelta(seconds=round(rng.uniform(low, high) * 86400))


def _run_instances(endpoint_url: str, region: str, instance_type: str, count: int,
                   tags: list[dict[str, str]]) -> tuple[list[str], str]:
    """One RunInstances call; the new ids and their availability zone."""
    reply = seeding_client(endpoint_url, "ec2", region).run_instances(
        ImageId=image_for(instance_type), InstanceType=instance_type, MinCount=count, MaxCount=count,
        **_tag_specs(tags, "instance", "volume"))
    instances = reply["Instances"]
    return [i["InstanceId"] for i in instances], instances[0]["Placement"]["AvailabilityZone"]


def _create_volume(endpoint_url: str, region: str, zone: str, volume_type: str, size_gib: int,
                   tags: list[dict[str, str]]) -> str:
    extra = {"Iops": _IO1_IOPS} if volume_type == "io1" else {}
    reply = seeding_client(endpoint_url, "ec2", region).create_volume(
        AvailabilityZone=zone, Size=size_gib, VolumeType=volume_type, **extra, **_tag_specs(tags, "volume"))
    return reply["VolumeId"]


def seed_team_account(endpoint_url: str, now: datetime | None = None) -> GroundTruth:
    """Seed an empty sandbox account (reset it first) with the team's instances, series and volumes.

    The account is served by a SandboxServer of this process (creation times are backdated in-process).
    """
    if not in_this_process(endpoint_url):
        raise SandboxError(f"{endpoint_url} is not a SandboxServer of this process")
    now = _utc(now)
    rng = random.Random(SEED)
    for region in REGIONS:
        # the emulator builds a service's backend on first use, drawing on the id generator: build the ones the
        # seeders use late before seeding it, so ids do not depend on what an earlier account in this process did
        seeding_client(endpoint_url, "autoscaling", region).describe_launch_configurations()
    moto_api(endpoint_url, f"seed?a={SEED}")
    instances: list[InstanceSpec] = []
    first_of: dict[str, tuple[str, str]] = {}
    launched: dict[str, dict[str, datetime]] = defaultdict(dict)
    series: dict[str, list[dict]] = defaultdict(list)
    live: list[LiveSeries] = []  # each series goes on repeating its seeded span
    for launch in LAUNCHES:
        ids, zone = _run_instances(endpoint_url, launch.region, launch.instance_type, len(launch.profiles),
                                   team_tags(launch.owner, launch.name, launch.protect))
        young = launch.profiles[0] == "young"
        launched_at = now - YOUNG_AGE if young else _days_ago(now, rng, 0.25, 40)
        if launch.name:
            first_of[launch.name] = (ids[0], zone)
        for instance_id, profile in zip(ids, launch.profiles, strict=True):
            launched[launch.region][instance_id] = launched_at
            instances.append(InstanceSpec(launch.region, instance_id, launch.instance_type,
                                          architecture(launch.instance_type), profile,
                                          launch.owner or UNKNOWN_OWNER, launch.name, launch.protect, launched_at))
            if profile in LOADS:
                span = YOUNG_SERIES if young else metrics.SPAN
                data = list(metrics.datums(instance_id, LOADS[profile], metrics.timestamps(now, span), rng))
                series[launch.region].extend(data)
                live.extend(LiveSeries.of(launch.region, metrics.NAMESPACE, span, data))
    for region in REGIONS:
        stopped = [vm.instance_id for vm in instances if vm.region == region and vm.profile == "stopped"]
        if stopped:
            seeding_client(endpoint_url, "ec2", region).stop_instances(InstanceIds=stopped)
    volumes = _seed_disks(endpoint_url, now, rng, first_of)
    for region in REGIONS:
        metrics.put(endpoint_url, region, series[region])
        backdate(endpoint_url, region, instances=launched[region],
                 volumes={v.volume_id: v.created_at for v in volumes if v.region == region})
    context = SeedContext(endpoint_url, now, ACCOUNT_ID, tuple(instances), volumes)
    base = Seeded(live_series=tuple(live))
    return GroundTruth.of(now, tuple(instances), volumes, extra=[base, *(seed(context) for seed in _seeders())])


def _seeders() -> list[Callable[[SeedContext], Seeded]]:
    """The ``seed`` function of every ``guard/sandbox/seed_*.py`` module, in name order (ids stay deterministic)."""
    package = importlib.import_module("guard.sandbox")
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("seed_"))
    return [importlib.import_module(f"guard.sandbox.{name}").seed for name in names]


def _seed_disks(endpoint_url: str, now: datetime, rng: random.Random,
                first_of: dict[str, tuple[str, str]]) -> tuple[VolumeSpec, ...]:
    volumes = []
    for disk in DISKS:
        if disk.attach_to:
            instance_id, zone = first_of[disk.attach_to]
        else:
            instance_id, zone = None, disk.region + rng.choice("abc")
        tags = team_tags(disk.owner, disk.name, protect=disk.kind == "protected")
        volume_id = _create_volume(endpoint_url, disk.region, zone, disk.volume_type, disk.size_gib, tags)
        if instance_id:
            seeding_client(endpoint_url, "ec2", disk.region).attach_volume(
                VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
        if disk.kind == "young":
            created_at = now - _YOUNG_VOLUME_AGE
        else:
            created_at = _days_ago(now, rng, *_VOLUME_AGE_DAYS[disk.kind])
        volumes.append(VolumeSpec(disk.region, volume_id, disk.volume_type, disk.size_gib, disk.kind,
                                  disk.owner or UNKNOWN_OWNER, disk.name, created_at, instance_id))
    return tuple(volumes)


def make_busy(endpoint_url: str, region: str, instance_id: str, now: datetime | None = None) -> None:
    """Add saturated datapoints (CPU 90%, 2 GB/h) at the series' timestamps: every period's average turns busy."""
    stamps = metrics.timestamps(_utc(now))
    metrics.put(endpoint_url, region, metrics.datums(instance_id, metrics.SATURATED, stamps, random.Random(SEED)))


@dataclass(frozen=True)
class Fleet:
    """What ``seed_fleet`` created; ``idle_ids`` are the instances given an idle series (with_metrics only)."""

    region: str
    instance_ids: tuple[str, ...]
    idle_ids: tuple[str, ...]
    volume_ids: tuple[str, ...]


_FLEET_TYPES = ("m6i.large", "c6i.xlarge", "r6i.large", "m7g.large", "t3.medium")


def seed_fleet(endpoint_url: str, region: str, instances: int = 1000, volumes: int = 100, per_reservation: int = 10,
               now: datetime | None = None, with_metrics: bool = False) -> Fleet:
    """A large plain account for scale tests: instances in reservations of ``per_reservation``, detached volumes.

    With ``with_metrics``, every other instance gets an idle series and the rest a busy one. Volumes are
    backdated by 2-90 days when the emulator runs in this process, else they are as old as the call.
    """
    now = _utc(now)
    rng = random.Random(SEED)
    owners = sorted(TEAMS)
    instance_ids: list[str] = []
    for number, start in enumerate(range(0, instances, per_reservation)):
        instance_type = _FLEET_TYPES[number % len(_FLEET_TYPES)]
        owner = owners[number % len(owners)]
        ids, _ = _run_instances(endpoint_url, region, instance_type, min(per_reservation, instances - start),
                                team_tags(owner, f"fleet-{number:04d}"))
        instance_ids.extend(ids)
    idle_ids = tuple(instance_ids[0::2]) if with_metrics else ()
    if with_metrics:
        stamps = metrics.timestamps(now)
        busy_ids = instance_ids[1::2]
        metrics.put(endpoint_url, region, (
            datum
            for ids, load in ((idle_ids, metrics.IDLE), (busy_ids, metrics.BUSY))
            for instance_id in ids
            for datum in metrics.datums(instance_id, load, stamps, rng)
        ))
    created: dict[str, datetime] = {}
    for number in range(volumes):
        owner = owners[number % len(owners)]
        volume_type = rng.choice(("gp3", "gp2"))
        volume_id = _create_volume(endpoint_url, region, region + "abc"[number % 3], volume_type,
                                   rng.choice((8, 50, 100, 500, 1000)), team_tags(owner, f"fleet-data-{number:04d}"))
        created[volume_id] = _days_ago(now, rng, 2, 90)
    if in_this_process(endpoint_url):
        backdate(endpoint_url, region, volumes=created)
    return Fleet(region, tuple(instance_ids), idle_ids, tuple(created))
