"""What a seeded sandbox account holds, and what the built-in rules must find in it with their default settings.

Tests and ``guard demo`` compare the daemon's findings with ``GroundTruth.expected()``; the near misses say
why every other seeded resource must *not* be reported, so a difference can be explained.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from guard.pricing import default_catalog

IDLE_VMS = "idle-vms"
DETACHED_VOLUMES = "detached-volumes"
UNKNOWN_OWNER = "unknown"

Profile = Literal["busy", "idle", "near-miss-cpu", "near-miss-network", "protected", "stopped", "young", "no-data",
                  "gpu-busy"]
"""How an instance behaves: only ``idle`` is a finding; ``young`` and ``no-data`` are undetermined; ``gpu-busy``
is quiet on CPU and network but its GPUs are busy (the agent says so): not idle."""
VolumeKind = Literal["detached", "young", "protected", "attached"]
"""What a seeded volume is: only ``detached`` (older than a day, unprotected) is a finding."""

_UNDETERMINED: frozenset[str] = frozenset({"young", "no-data"})
"""Running instances with too few datapoints: the rule can judge neither way."""

Key = tuple[str, str, str]
"""(rule, region, resource id), as ``Finding.key``."""


@dataclass(frozen=True)
class InstanceSpec:
    region: str
    instance_id: str
    instance_type: str
    arch: str
    profile: Profile
    owner: str
    name: str | None
    protected: bool
    launched_at: datetime


@dataclass(frozen=True)
class VolumeSpec:
    region: str
    volume_id: str
    volume_type: str
    size_gib: int
    kind: VolumeKind
    owner: str
    name: str | None
    created_at: datetime
    attached_to: str | None = None


@dataclass(frozen=True)
class ExpectedFinding:
    rule: str
    region: str
    resource_id: str
    owner: str
    waste_hourly_usd: float | None
    """On-demand $/hour for an instance (None when its type is not in the catalog); storage $/hour for a volume."""

    @property
    def key(self) -> Key:
        return (self.rule, self.region, self.resource_id)


@dataclass(frozen=True)
class NearMiss:
    """A seeded resource the rule must not report, and why: the instance's profile or the volume's kind."""

    rule: str
    region: str
    resource_id: str
    reason: str
    undetermined: bool = False
    """The rule reports the resource as undetermined (too few datapoints) rather than judged."""

    @property
    def key(self) -> Key:
        return (self.rule, self.region, self.resource_id)


@dataclass(frozen=True)
class SeedContext:
    """What a seeder module (``guard/sandbox/seed_*.py``) gets: the emulator, the clock, the base account."""

    endpoint_url: str
    now: datetime
    account_id: str
    instances: tuple[InstanceSpec, ...]
    volumes: tuple[VolumeSpec, ...]


@dataclass(frozen=True)
class LiveSeries:
    """How a seeded CloudWatch series goes on: ``points`` are one ``cycle`` of it, written again every cycle.

    Nothing in the emulator generates metrics, so ``LiveMetrics`` writes each point again at ``stamp + k × cycle``
    as the clock passes it. Replaying the seeded datapoints, rather than drawing new ones, keeps the sums and
    averages over any window what the ground truth was derived from, whatever the series' period and alignment: a
    window one cycle long always holds exactly one cycle's points. The points lie within one cycle, the last one
    before seeding, so every replay is a new datapoint.
    """

    region: str
    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    """(name, value) in the order the seeder wrote them: the emulator matches a query's dimensions in order."""
    unit: str
    cycle: timedelta
    points: tuple[tuple[datetime, float], ...]
    """(timestamp, value) of one cycle, as seeded."""

    def __post_init__(self) -> None:
        stamps = [stamp for stamp, _ in self.points]
        if stamps and max(stamps) - min(stamps) >= self.cycle:
            raise ValueError(f"{self.namespace} {self.metric} {self.dimensions}: its points span more than one cycle "
                             f"({self.cycle}), so replays would land on seeded datapoints")

    @classmethod
    def of(cls, region: str, namespace: str, cycle: timedelta,
           data: Iterable[Mapping[str, Any]]) -> tuple[LiveSeries, ...]:
        """The series of PutMetricData entries as a seeder wrote them, one per metric, dimension set and unit."""
        points: dict[tuple[str, tuple[tuple[str, str], ...], str], list[tuple[datetime, float]]] = {}
        for datum in data:
            dimensions = tuple((d["Name"], d["Value"]) for d in datum["Dimensions"])
            points.setdefault((datum["MetricName"], dimensions, datum["Unit"]), []).append(
                (datum["Timestamp"], datum["Value"]))
        return tuple(cls(region, namespace, metric, dimensions, unit, cycle, tuple(series))
                     for (metric, dimensions, unit), series in points.items())


@dataclass(frozen=True)
class LiveLogStream:
    """How a seeded log stream goes on writing: its ``messages`` again, all at one instant, every ``cycle`` after
    ``since``.

    Rules that sample recent events judge their levels and bytes and count the streams that wrote: the same
    messages keep both what the ground truth says, and writing them at one instant lets a copy enter and leave a
    window whole.
    """

    region: str
    group: str
    stream: str
    messages: tuple[str, ...]
    since: datetime
    cycle: timedelta


@dataclass(frozen=True)
class Seeded:
    """What one seeder adds to the ground truth."""

    findings: tuple[ExpectedFinding, ...] = ()
    near_misses: tuple[NearMiss, ...] = ()
    instances: tuple[InstanceSpec, ...] = ()
    """Instances the seeder launched: idle-vms's truth about them follows from their profile, as for the base."""
    live_series: tuple[LiveSeries, ...] = ()
    """The CloudWatch series the seeder wrote, to be kept going as the clock moves on."""
    live_logs: tuple[LiveLogStream, ...] = ()
    """The log streams the seeder wrote recent events to, to be kept writing."""


@dataclass(frozen=True)
class GroundTruth:
    now: datetime
    instances: tuple[InstanceSpec, ...]
    volumes: tuple[VolumeSpec, ...]
    findings: tuple[ExpectedFinding, ...]
    near_misses: tuple[NearMiss, ...]
    live_series: tuple[LiveSeries, ...] = field(default=(), repr=False)
    """Every seeded series, as ``LiveMetrics`` keeps it going: the findings stay these as time goes by."""
    live_logs: tuple[LiveLogStream, ...] = field(default=(), repr=False)
    """Every log stream with recent events, as ``LiveMetrics`` keeps it writing."""

    @classmethod
    def of(cls, now: datetime, instances: tuple[InstanceSpec, ...], volumes: tuple[VolumeSpec, ...],
           extra: Iterable[Seeded] = ()) -> GroundTruth:
        """Derive the expected findings and near misses from what was seeded (plus the other seeders' own), and
        gather the seeders' live series and log streams."""
        prices = default_catalog()
        findings: list[ExpectedFinding] = []
        near_misses: list[NearMiss] = []
        live_series: list[LiveSeries] = []
        live_logs: list[LiveLogStream] = []
        for seeded in extra:
            findings.extend(seeded.findings)
            near_misses.extend(seeded.near_misses)
            instances = (*instances, *seeded.instances)
            live_series.extend(seeded.live_series)
            live_logs.extend(seeded.live_logs)
        for vm in instances:
            if vm.profile == "idle":
                findings.append(ExpectedFinding(IDLE_VMS, vm.region, vm.instance_id, vm.owner,
                                                prices.hourly_usd(vm.instance_type, vm.region)))
            else:
                near_misses.append(NearMiss(IDLE_VMS, vm.region, vm.instance_id, vm.profile,
                                            undetermined=vm.profile in _UNDETERMINED))
        for disk in volumes:
            if disk.kind == "detached":
                findings.append(ExpectedFinding(DETACHED_VOLUMES, disk.region, disk.volume_id, disk.owner,
                                                prices.volume_hourly_usd(disk.volume_type, disk.size_gib,
                                                                         disk.region)))
            else:
                near_misses.append(NearMiss(DETACHED_VOLUMES, disk.region, disk.volume_id, disk.kind))
        return cls(now, instances, volumes, tuple(findings), tuple(near_misses), tuple(live_series), tuple(live_logs))

    @property
    def regions(self) -> frozenset[str]:
        return frozenset(vm.region for vm in self.instances) | frozenset(disk.region for disk in self.volumes)

    @property
    def profiles(self) -> dict[str, Profile]:
        """Instance id → profile."""
        return {vm.instance_id: vm.profile for vm in self.instances}

    def expected(self, rule: str | None = None) -> dict[Key, ExpectedFinding]:
        """The findings the rules must report with default settings, by key (one rule, or all)."""
        return {f.key: f for f in self.findings if rule is None or f.rule == rule}

    def undetermined(self) -> frozenset[Key]:
        """Keys the rules must report as undetermined rather than as findings or as fine."""
        return frozenset(miss.key for miss in self.near_misses if miss.undetermined)

    def total_hourly_usd(self, rule: str | None = None) -> float:
        """Sum of the known waste of the expected findings (unknown prices count as nothing)."""
        return sum(f.waste_hourly_usd or 0.0 for f in self.findings if rule is None or f.rule == rule)
