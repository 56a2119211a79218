"""Public list prices: EC2 on-demand per instance type and region, EBS per GB-month.

EC2 prices come from the catalog shipped as package data (``data/aws-ec2-prices.csv``, see
``data/aws-ec2-prices.SOURCE.md`` for its origin and licence). An unknown type or region prices
as ``None`` — "price unknown" — never as $0.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

HOURS_PER_MONTH = 730
"""Monthly = hourly × 730, the convention OpenCost and AWS's calculator use."""

EBS_USD_PER_GB_MONTH = {
    "gp3": 0.08,
    "gp2": 0.10,
    "io1": 0.125,
    "io2": 0.125,
    "st1": 0.045,
    "sc1": 0.015,
    "standard": 0.05,
}
"""EBS storage list prices, us-east-1 (the catalog has no per-region EBS prices)."""

EBS_PRICE_BASIS = "us-east-1 list price per GB-month"

# Other list prices (USD, us-east-1), used for every region: the catalog has no per-region prices for them.
SNAPSHOT_USD_PER_GB_MONTH = 0.05
SNAPSHOT_ARCHIVE_USD_PER_GB_MONTH = 0.0125
COPIED_SNAPSHOT_VOLUME_ID = "vol-ffffffff"
"""The VolumeId AWS gives snapshots made by CopySnapshot: the source volume was never in this region."""
PUBLIC_IPV4_USD_PER_HOUR = 0.005
"""An Elastic IP / public IPv4 address, attached or not (since 2024-02-01)."""
CROSS_AZ_USD_PER_GB = 0.01
"""Data between two AZs of a region, billed in each direction."""
NAT_GATEWAY_USD_PER_HOUR = 0.045
NAT_GATEWAY_USD_PER_GB = 0.045
LOGS_INGEST_USD_PER_GB = 0.50
LOGS_INGEST_INFREQUENT_ACCESS_USD_PER_GB = 0.25


def logs_ingest_usd_per_gb(log_group_class: str) -> float:
    """Ingestion list price of a log group's class."""
    if log_group_class == "INFREQUENT_ACCESS":
        return LOGS_INGEST_INFREQUENT_ACCESS_USD_PER_GB
    return LOGS_INGEST_USD_PER_GB
LOGS_STORAGE_USD_PER_GB_MONTH = 0.03
S3_TIER1_USD_PER_1000 = 0.005
"""S3 Standard PUT, COPY, POST and LIST requests."""
S3_TIER2_USD_PER_1000 = 0.0004
"""S3 Standard GET, SELECT, HEAD and other read requests."""
GB = 1_000_000_000
"""AWS bills data in decimal GB (10^9 bytes) for CloudWatch Logs and NAT processing."""


@dataclass(frozen=True)
class InstanceTypeInfo:
    instance_type: str
    region: str
    arch: str
    vcpus: float
    memory_gib: float
    gpu_name: str | None
    gpu_count: int
    on_demand_usd_per_hour: float
    spot_usd_per_hour_min: float | None

    @property
    def is_gpu(self) -> bool:
        return self.gpu_count > 0


class PriceCatalog:
    """Look-ups over the EC2 price catalog; loaded once per process."""

    def __init__(self, rows: dict[tuple[str, str], InstanceTypeInfo]):
        self._rows = rows
        self._regions = frozenset(region for _, region in rows)
        self._types: dict[str, InstanceTypeInfo] = {}
        for (instance_type, _), info in rows.items():
            self._types.setdefault(instance_type, info)

    @classmethod
    def from_csv_text(cls, text: str) -> PriceCatalog:
        rows = {}
        for row in csv.DictReader(text.splitlines()):
            info = InstanceTypeInfo(
                instance_type=row["instance_type"],
                region=row["region"],
                arch=row["arch"],
                vcpus=float(row["vcpus"] or 0),
                memory_gib=float(row["memory_gib"] or 0),
                gpu_name=row["gpu_name"] or None,
                gpu_count=int(float(row["gpu_count"] or 0)),
                on_demand_usd_per_hour=float(row["on_demand_usd_per_hour"]),
                spot_usd_per_hour_min=float(row["spot_usd_per_hour_min"]) if row["spot_usd_per_hour_min"] else None,
            )
            rows[(info.instance_type, info.region)] = info
        return cls(rows)

    @property
    def regions(self) -> frozenset[str]:
        return self._regions

    def info(self, instance_type: str, region: str | None = None) -> InstanceTypeInfo | None:
        """The catalog row for a type in a region, or (region=None) in any region."""
        if region is None:
            return self._types.get(instance_type)
        return self._rows.get((instance_type, region))

    def types_in(self, region: str) -> list[InstanceTypeInfo]:
        """Every type the catalog prices in a region."""
        return [info for (_, row_region), info in self._rows.items() if row_region == region]

    def hourly_usd(self, instance_type: str, region: str) -> float | None:
        """On-demand Linux USD per hour, or None when the type or region is not in the catalog."""
        info = self._rows.get((instance_type, region))
        return info.on_demand_usd_per_hour if info else None

    def is_gpu(self, instance_type: str) -> bool:
        info = self._types.get(instance_type)
        return bool(info and info.is_gpu)

    def volume_hourly_usd(self, volume_type: str, size_gib: float, region: str) -> float | None:
        """USD per hour of an EBS volume's storage, or None for an unknown type or region."""
        per_gb_month = EBS_USD_PER_GB_MONTH.get(volume_type)
        if per_gb_month is None or region not in self._regions:
            return None
        return size_gib * per_gb_month / HOURS_PER_MONTH


@lru_cache(maxsize=1)
def default_catalog() -> PriceCatalog:
    """The catalog shipped with vmguard."""
    text = resources.files("guard").joinpath("data/aws-ec2-prices.csv").read_text(encoding="utf-8")
    return PriceCatalog.from_csv_text(text)
