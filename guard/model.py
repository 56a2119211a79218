"""The immutable data a scan works on: resources, metric series, snapshots and findings."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

Tags = Mapping[str, str]


def freeze_tags(tags: Mapping[str, str] | list[dict[str, str]] | None) -> Tags:
    """Tags as a read-only mapping, from a dict or from AWS's [{'Key':…, 'Value':…}] list."""
    if tags is None:
        return MappingProxyType({})
    if isinstance(tags, Mapping):
        return MappingProxyType(dict(tags))
    return MappingProxyType({t["Key"]: t.get("Value", "") for t in tags})


class Severity(str, enum.Enum):
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
    metrics: Mapping[MetricQuery, Series] | None = None
    failures: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def known(self, part: str) -> bool:
        return getattr(self, part) is not None

    def series(self, query: MetricQuery) -> Series:
        """The series for a query; empty when CloudWatch had no datapoints for it."""
        if self.metrics is None:
            raise LookupError("metrics are unknown for this snapshot")
        return self.metrics.get(query, Series())


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
