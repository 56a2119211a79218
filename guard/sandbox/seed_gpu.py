"""GPU utilisation for ``idle-gpu``: agent series for the team's busy g5.12xlarge, and three new GPU boxes.

The team account's idle GPU instances have no agent metrics, so ``idle-gpu`` judges them on CPU: they are
findings here too. The CloudWatch agent's ``CWAgent`` ``nvidia_smi_utilization_gpu`` series (one per GPU)
are fed for ``train-llm`` (busy: a near miss) and for three new instances whose CPU and network are busy, so
``idle-vms`` finds none of them: one whose GPU idles (a finding only the GPU signal catches), one whose
busiest GPU sits just above the threshold, and a protected one. A fourth, a g5.12xlarge fine-tuning from local
NVMe, has 2% CPU and a quiet network but its four GPUs busy: a near miss of both rules (``idle-vms`` leaves an
instance with GPU series to ``idle-gpu``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from guard.pricing import default_catalog
from guard.sandbox import metrics
from guard.sandbox.account import LOADS, PROTECT_TAG, REGIONS, TEAMS
from guard.sandbox.backdate import backdate
from guard.sandbox.images import architecture, image_for
from guard.sandbox.server import seeding_client
from guard.sandbox.truth import ExpectedFinding, InstanceSpec, LiveSeries, NearMiss, SeedContext, Seeded

RULE = "idle-gpu"
GPU_PERCENT_MAX = 10.0
CPU_PERCENT_MAX = 5.0
"""idle-gpu's default thresholds."""
NAMESPACE, METRIC = "CWAgent", "nvidia_smi_utilization_gpu"

Range = tuple[float, float]
IDLE_GPU: Range = (0.0, 3.0)
BUSY_GPU: Range = (60.0, 98.0)
NEAR_MISS_GPU: Range = (10.5, 12.0)
"""Each datapoint is drawn inside its range, so each GPU's mean over any window is inside it too."""

BUSY_BASE_INSTANCE = "train-llm"
"""The team's busy g5.12xlarge: the agent reports its four GPUs busy."""


@dataclass(frozen=True)
class _GpuBox:
    """A new GPU instance: busy CPU and network, and these GPU ranges (by GPU index)."""

    region: str
    instance_type: str
    owner: str
    name: str
    gpus: tuple[Range, ...]
    reason: str | None
    """Why idle-gpu must not report it; None: a finding."""
    protect: bool = False
    age: timedelta = timedelta(days=3)
    quiet: bool = False
    """CPU and network idle (the ``gpu-busy`` profile) rather than busy."""


_E, _W = REGIONS
NEW_BOXES = (
    _GpuBox(_E, "g5.2xlarge", "priya.patel", "cv-augment-train", (IDLE_GPU,), None),
    _GpuBox(_W, "g4dn.12xlarge", "wei.chen", "multi-gpu-eval", (NEAR_MISS_GPU, IDLE_GPU, IDLE_GPU, IDLE_GPU),
            "gpu-near-miss"),
    _GpuBox(_W, "g5.xlarge", "maria.garcia", "forecast-gpu-trial", (IDLE_GPU,), "protected", protect=True),
    _GpuBox(_E, "g5.12xlarge", "wei.chen", "llm-finetune-nvme", (BUSY_GPU,) * 4, "gpu-busy", quiet=True),
)


def _tags(box: _GpuBox) -> list[dict[str, str]]:
    tags = [{"Key": "owner", "Value": box.owner}, {"Key": "team", "Value": TEAMS[box.owner]},
            {"Key": "Name", "Value": box.name}]
    return [*tags, PROTECT_TAG] if box.protect else tags


def _launch(endpoint_url: str, box: _GpuBox) -> str:
    tags = _tags(box)
    reply = seeding_client(endpoint_url, "ec2", box.region).run_instances(
        ImageId=image_for(box.instance_type), InstanceType=box.instance_type, MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": kind, "Tags": tags} for kind in ("instance", "volume")])
    return reply["Instances"][0]["InstanceId"]


def _gpu_datums(instance_id: str, instance_type: str, gpus: tuple[Range, ...], stamps: list[datetime],
                rng: random.Random) -> Iterator[dict]:
    """What the agent's nvidia_gpu plugin publishes (with InstanceId/InstanceType appended), one series per GPU.

    Dimensions are written sorted by name, the order the listing collector reports them in: moto matches a
    query's dimensions to a series' in order (AWS does not care).
    """
    gpu_name = f"NVIDIA {default_catalog().info(instance_type).gpu_name}"
    host = f"{instance_id}.ec2.internal"
    for index, (low, high) in enumerate(gpus):
        dimensions = [{"Name": name, "Value": value} for name, value in sorted(
            {"InstanceId": instance_id, "InstanceType": instance_type, "host": host, "index": str(index),
             "name": gpu_name}.items())]
        for stamp in stamps:
            yield {"MetricName": METRIC, "Dimensions": dimensions, "Timestamp": stamp,
                   "Value": round(rng.uniform(low, high), 3), "Unit": "Percent"}


def _cpu_idle(profile: str) -> bool:
    """Whether a base profile's CPU series (all datapoints in its load's range) averages below the threshold."""
    low, high = LOADS[profile].cpu_percent
    if low < CPU_PERCENT_MAX <= high:
        raise ValueError(f"profile {profile!r}: its CPU range {low}-{high}% straddles idle-gpu's threshold")
    return high < CPU_PERCENT_MAX


def _base_truth(vm: InstanceSpec) -> ExpectedFinding | NearMiss:
    """idle-gpu on a team GPU instance judged on CPU, from its profile."""
    if vm.profile in ("stopped", "protected"):
        return NearMiss(RULE, vm.region, vm.instance_id, vm.profile)
    if vm.profile in ("young", "no-data"):  # undetermined, as for idle-vms
        return NearMiss(RULE, vm.region, vm.instance_id, "too-few-datapoints", undetermined=True)
    if _cpu_idle(vm.profile):
        hourly = default_catalog().hourly_usd(vm.instance_type, vm.region)
        return ExpectedFinding(RULE, vm.region, vm.instance_id, vm.owner, hourly)
    return NearMiss(RULE, vm.region, vm.instance_id, "cpu-busy")


def seed(context: SeedContext) -> Seeded:
    rng = random.Random("guard.sandbox.seed_gpu")
    catalog = default_catalog()
    stamps = metrics.timestamps(context.now)
    findings: list[ExpectedFinding] = []
    near_misses: list[NearMiss] = []
    cpu_data: dict[str, list[dict]] = {region: [] for region in REGIONS}
    gpu_data: dict[str, list[dict]] = {region: [] for region in REGIONS}
    for vm in context.instances:
        if not catalog.is_gpu(vm.instance_type):
            continue
        if vm.name == BUSY_BASE_INSTANCE:
            gpus = (BUSY_GPU,) * catalog.info(vm.instance_type).gpu_count
            gpu_data[vm.region].extend(_gpu_datums(vm.instance_id, vm.instance_type, gpus, stamps, rng))
            near_misses.append(NearMiss(RULE, vm.region, vm.instance_id, "gpu-busy"))
        else:
            truth = _base_truth(vm)
            (findings if isinstance(truth, ExpectedFinding) else near_misses).append(truth)
    launched: dict[str, dict[str, datetime]] = {region: {} for region in REGIONS}
    instances: list[InstanceSpec] = []
    for box in NEW_BOXES:
        instance_id = _launch(context.endpoint_url, box)
        launched[box.region][instance_id] = context.now - box.age
        load = metrics.IDLE if box.quiet else metrics.BUSY
        cpu_data[box.region].extend(metrics.datums(instance_id, load, stamps, rng))
        gpu_data[box.region].extend(_gpu_datums(instance_id, box.instance_type, box.gpus, stamps, rng))
        profile = "protected" if box.protect else "gpu-busy" if box.quiet else "busy"
        instances.append(InstanceSpec(box.region, instance_id, box.instance_type, architecture(box.instance_type),
                                      profile, box.owner, box.name, box.protect, context.now - box.age))
        if box.reason is None:
            findings.append(ExpectedFinding(RULE, box.region, instance_id, box.owner,
                                            catalog.hourly_usd(box.instance_type, box.region)))
        else:
            near_misses.append(NearMiss(RULE, box.region, instance_id, box.reason))
    live: list[LiveSeries] = []  # every series goes on repeating its seeded span
    for region in REGIONS:
        metrics.put(context.endpoint_url, region, cpu_data[region])
        metrics.put(context.endpoint_url, region, gpu_data[region], namespace=NAMESPACE)
        backdate(context.endpoint_url, region, instances=launched[region])
        live.extend(LiveSeries.of(region, metrics.NAMESPACE, metrics.SPAN, cpu_data[region]))
        live.extend(LiveSeries.of(region, NAMESPACE, metrics.SPAN, gpu_data[region]))
    return Seeded(findings=tuple(findings), near_misses=tuple(near_misses), instances=tuple(instances),
                  live_series=tuple(live))
