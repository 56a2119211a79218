"""The immutable data a scan works on: resources, metric series, snapshots and findings."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from types import MappingProxyType
from typing import Any

Tags = Mapping[str, str]
DimensionSet = tuple[tuple[str, str], ...]
GPU_METRIC = ("CWAgent", "nvidia_smi_utilization_gpu")
"""(namespace, metric) the CloudWatch agent's nvidia_gpu plugin publishes: one series per GPU (dimensions
``InstanceId``, ``index``, …). An instance with such series is judged on its GPUs."""
CLUSTER_TAG = "vmguard:cluster"
"""Tag the SDK puts on every resource of a cluster it launched: the cluster id."""


def freeze_tags(tags: Mapping[str, str] | list[dict[str, str]] | None) -> Tags:
    """Tags as a read-only mapping, from a dict or from AWS's [{'Key':…, 'Value':…}] list."""
    if tags is None:
        return MappingProxyType({})
    if isinstance(tags, Mapping):
        return MappingProxyType(dict(tags))
    return MappingProxyType({t["Key"]: t.get("Value", "") for t in tags})


class Severity(str, enum.Enum):
    info = "info"
    """Not waste: something the team should know (e.g. a bucket whose requests cannot be measured)."""
    low = "low"
    medium = "medium"
    high = "high"


@dataclass(frozen=True)
class Instance:
    id: str
    instance_type: str
    state: str
    arch: str
    launch_time: datetime
    tags: Tags = field(default_factory=lambda: freeze_tags(None))
    volume_ids: tuple[str, ...] = ()
    stopped_since: datetime | None = None
    """When a stopped instance was stopped (from AWS's StateTransitionReason), if known."""
    lifecycle: str | None = None
    """AWS's InstanceLifecycle: ``spot``, ``scheduled``, ``capacity-block``; None for on-demand."""
    spot_request_id: str | None = None


@dataclass(frozen=True)
class Volume:
    id: str
    volume_type: str
    size_gib: int
    state: str
    create_time: datetime
    tags: Tags = field(default_factory=lambda: freeze_tags(None))
    attached_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class Address:
    """An Elastic IP."""

    allocation_id: str
    public_ip: str
    association_id: str | None
    instance_id: str | None
    network_interface_id: str | None
    tags: Tags = field(default_factory=lambda: freeze_tags(None))


@dataclass(frozen=True)
class NatGateway:
    id: str
    state: str
    create_time: datetime
    vpc_id: str
    subnet_id: str
    connectivity_type: str = "public"
    tags: Tags = field(default_factory=lambda: freeze_tags(None))


@dataclass(frozen=True)
class EbsSnapshot:
    """An EBS snapshot owned by the scanned account."""

    id: str
    volume_id: str | None
    size_gib: int
    start_time: datetime
    state: str
    description: str = ""
    tags: Tags = field(default_factory=lambda: freeze_tags(None))
    storage_tier: str = "standard"
    """standard or archive (a quarter of the price, billed on the full size)."""


@dataclass(frozen=True)
class Image:
    """An AMI owned by the scanned account, with the snapshots behind it."""

    id: str
    name: str
    state: str
    snapshot_ids: tuple[str, ...] = ()
    tags: Tags = field(default_factory=lambda: freeze_tags(None))


@dataclass(frozen=True)
class LaunchSource:
    """What Auto Scaling groups and fleets launch from: one launch template version or one launch configuration,
    with the EBS snapshots its block-device mappings restore volumes from."""

    kind: str
    """``launch-template`` or ``launch-configuration``."""
    id: str
    """The launch template id, or the launch configuration name."""
    name: str
    version: int | None
    """The launch template version number; None for a launch configuration."""
    snapshot_ids: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "launch-template":
            return f"launch template {self.name} ({self.id}) version {self.version}"
        return f"launch configuration {self.name}"


@dataclass(frozen=True)
class LogGroup:
    name: str
    arn: str
    stored_bytes: int
    retention_days: int | None
    creation_time: datetime
    tags: Tags = field(default_factory=lambda: freeze_tags(None))
    log_group_class: str = "STANDARD"
    """STANDARD or INFREQUENT_ACCESS (half the ingestion price)."""


@dataclass(frozen=True)
class Bucket:
    name: str
    creation_date: datetime
    tags: Tags = field(default_factory=lambda: freeze_tags(None))


@dataclass(frozen=True)
class LogSampleRequest:
    """A bounded read of a log group's recent events, asked for by a rule after the metrics are in."""

    log_group: str
    window_seconds: int
    max_events: int
    max_bytes: int
    max_stream_pages: int


@dataclass(frozen=True)
class LogSample:
    """What a bounded read of a log group returned: the messages, and how many streams wrote in the window."""

    log_group: str
    messages: tuple[str, ...]
    bytes_read: int
    truncated: bool
    active_streams: int
    active_streams_capped: bool


@dataclass(frozen=True)
class UsageReport:
    """What one heartbeat of a registered cluster reported it did since the heartbeat before it."""

    at: datetime
    s3_requests: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Bucket → S3 operation class (GET, PUT, LIST, …) → requests."""
    log_bytes_by_level: Mapping[str, int] = field(default_factory=dict)
    """Log level (debug, info, …) → bytes logged."""


@dataclass(frozen=True)
class ClusterUsage:
    """A running cluster the SDK registered, with the usage its heartbeats reported recently (oldest first)."""

    cluster_id: str
    owner: str
    region: str
    instance_ids: tuple[str, ...]
    registered_at: datetime
    reports: tuple[UsageReport, ...] = ()
    tags: Tags = field(default_factory=lambda: freeze_tags(None))

    def reported_since(self, start: datetime, end: datetime) -> tuple[tuple[UsageReport, ...], float]:
        """The reports after ``start``, and the seconds they cover: from ``start`` (or the registration, if later)
        to the last of them — 0 when there is none."""
        reports = tuple(report for report in self.reports if start < report.at <= end)
        if not reports:
            return (), 0.0
        return reports, max((reports[-1].at - max(start, self.registered_at)).total_seconds(), 0.0)


@dataclass(frozen=True)
class MetricQuery:
    """One CloudWatch series a rule wants: namespace/metric/dimensions, a statistic, a period and a window."""

    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    stat: str
    period_seconds: int
    window_seconds: int


@dataclass(frozen=True)
class Series:
    """Datapoints of one metric query, oldest first."""

    timestamps: tuple[datetime, ...] = ()
    values: tuple[float, ...] = ()

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Snapshot:
    """Everything known about one account region at one moment.

    A part that could not be fetched is ``None`` (unknown) — never an empty tuple — and its
    collector's error is in ``failures``; rules that need it are skipped for the cycle.
    """

    account_id: str
    region: str
    taken_at: datetime
    instances: tuple[Instance, ...] | None = None
    volumes: tuple[Volume, ...] | None = None
    addresses: tuple[Address, ...] | None = None
    nat_gateways: tuple[NatGateway, ...] | None = None
    snapshots: tuple[EbsSnapshot, ...] | None = None
    images: tuple[Image, ...] | None = None
    launch_sources: tuple[LaunchSource, ...] | None = None
    """Every launch template version and launch configuration of the region (what groups and fleets launch)."""
    log_groups: tuple[LogGroup, ...] | None = None
    buckets: tuple[Bucket, ...] | None = None
    metric_listings: Mapping[tuple[str, str], tuple[DimensionSet, ...]] | None = None
    """(namespace, metric) → the dimension sets CloudWatch has recent data for (ListMetrics)."""
    metrics: Mapping[MetricQuery, Series] | None = None
    log_samples: Mapping[str, LogSample] | None = None
    clusters: tuple[ClusterUsage, ...] | None = None
    """Running clusters the SDK registered with the daemon (every region: S3 buckets are not regional to them)."""
    instance_storage: Mapping[str, bool] | None = None
    """Instance type → whether it has instance-store volumes (DescribeInstanceTypes), for the types of the
    instances a rule's stop or terminate may act on; a type AWS did not describe is absent (unknown)."""
    failures: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def known(self, part: str) -> bool:
        return getattr(self, part) is not None

    def gpu_series(self) -> Mapping[str, tuple[DimensionSet, ...]] | None:
        """Instance id → the dimension sets of its listed GPU series (``GPU_METRIC``); None when the metric
        listings are unknown (whether an instance reports GPU use cannot be told then)."""
        if self.metric_listings is None:
            return None
        by_instance: dict[str, list[DimensionSet]] = {}
        for dimension_set in self.metric_listings.get(GPU_METRIC, ()):
            instance_id = dict(dimension_set).get("InstanceId")
            if instance_id:
                by_instance.setdefault(instance_id, []).append(dimension_set)
        return MappingProxyType({instance_id: tuple(sets) for instance_id, sets in by_instance.items()})

    def series(self, query: MetricQuery) -> Series:
        """The series for a query; empty when CloudWatch had no datapoints for it."""
        if self.metrics is None:
            raise LookupError("metrics are unknown for this snapshot")
        return self.metrics.get(query, Series())


SNAPSHOT_PARTS = frozenset(f.name for f in fields(Snapshot)) - {"account_id", "region", "taken_at", "failures"}
"""The parts of a snapshot a rule can declare it needs."""


@dataclass(frozen=True)
class Finding:
    """A priced piece of waste: what, where, whose, how much per hour, and what to do."""

    rule: str
    resource_id: str
    resource_type: str
    region: str
    owner: str
    severity: Severity
    waste_hourly_usd: float | None
    summary: str
    suggested_action: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    billing: str = ""
    """What the waste pays for (e.g. "ec2-instance-hours"): totals count a resource once per billing line."""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.rule, self.region, self.resource_id)


@dataclass(frozen=True)
class Evaluation:
    """What a rule concluded: its findings, and the resources it could not judge this cycle.

    Undetermined resources (e.g. too few datapoints) keep any open finding open: only a
    positive "not waste any more" resolves a finding.
    """

    findings: tuple[Finding, ...] = ()
    undetermined: frozenset[str] = frozenset()
