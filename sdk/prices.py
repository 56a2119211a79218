"""``sdk.price_table``: which instance types match a shape, and what each costs per hour in each region.

Hardware and region experiments start here — "ARM vs Intel vs AMD, this GPU or that one, east or west" is one
call, answered from the price catalog shipped with vmguard (no AWS call). The shape means what it means for
``sdk.Cluster``: ``cpu`` exactly N vCPUs (or a ``[min, max]`` range), ``memory`` at least that much, ``gpu`` a count
of GPUs (``True``: at least one), ``arm`` True for Graviton, False for x86 (``None``: both). Burstable (T family)
and bare-metal types are left out, as ``sdk.Cluster`` never picks them.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from guard.pricing import HOURS_PER_MONTH, PriceCatalog, default_catalog
from sdk.errors import SdkError
from sdk.spec import ClusterSpec

DEFAULT_REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
DEFAULT_LIMIT = 15
NOT_NVIDIA = ("Inferentia", "Trainium", "Radeon", "Virtex", "Gaudi")
"""Accelerators in the catalog that are not NVIDIA GPUs: ``gpu=`` asks for CUDA, as in ``sdk.Cluster``."""
_FAMILY = re.compile(r"^(?P<series>[a-z]+?)(?P<generation>\d+)(?P<options>[a-z-]*)$")


@dataclass(frozen=True)
class PriceRow:
    """One matching instance type: its shape and its on-demand $/hour in each asked region (None: not sold there)."""

    instance_type: str
    arch: str
    processor: str
    """Graviton, AMD or Intel (from the family name: ``m7g`` Graviton, ``m7a`` AMD, ``m7i`` Intel)."""
    vcpus: int
    memory_gib: float
    gpus: int
    gpu_name: str | None
    hourly_usd: dict[str, float | None]

    @property
    def cheapest(self) -> tuple[str, float] | None:
        """The region where it is cheapest, and the price there."""
        priced = [(price, region) for region, price in self.hourly_usd.items() if price is not None]
        return (min(priced)[1], min(priced)[0]) if priced else None


@dataclass(frozen=True)
class PriceTable:
    """Matching instance types, cheapest first; prints as a table (rich) in a terminal or a notebook."""

    regions: tuple[str, ...]
    rows: tuple[PriceRow, ...]
    asked: str
    more: int = 0
    """Matching types left out by ``limit``."""

    def __rich__(self) -> Table:
        table = Table(title=f"Instance types with {self.asked}: on-demand $/hour", title_justify="left")
        for column in ("type", "CPU", "vCPU", "GiB", "GPU"):
            table.add_column(column, justify="left" if column in ("type", "CPU", "GPU") else "right", no_wrap=True)
        for region in self.regions:
            table.add_column(region, justify="right", no_wrap=True)
        table.add_column("$/month", justify="right", no_wrap=True)
        for row in self.rows:
            gpu = f"{row.gpus}× {row.gpu_name}" if row.gpus else ""
            prices = [f"{price:.4f}" if price is not None else "—" for price in row.hourly_usd.values()]
            cheapest = row.cheapest
            monthly = f"{cheapest[1] * HOURS_PER_MONTH:,.0f}" if cheapest else "—"
            table.add_row(row.instance_type, row.processor, str(row.vcpus), f"{row.memory_gib:g}", gpu, *prices,
                          monthly)
        if self.more:
            table.caption = f"{self.more} more match; pass limit= to see them"
        return table

    def __str__(self) -> str:
        console = Console(width=160, record=True, file=io.StringIO())
        console.print(self)
        return console.export_text()


def price_table(cpu: int | Sequence[int] | None = None, memory: str | None = None, gpu: bool | int | None = None,
                arm: bool | None = None, regions: Sequence[str] | str | None = None, limit: int = DEFAULT_LIMIT,
                show: bool = True, catalog: PriceCatalog | None = None) -> PriceTable:
    """The instance types matching a shape with their $/hour in each region, cheapest first; printed unless
    ``show=False``. With no shape: 2 vCPUs and at least 8 GiB, as ``sdk.Cluster`` picks by default."""
    asked_regions = [regions] if isinstance(regions, str) else list(DEFAULT_REGIONS if regions is None else regions)
    if not asked_regions:
        raise SdkError("regions=[] names no region; pass regions=['us-east-1', 'eu-west-1'] or leave it out")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise SdkError(f"limit={limit!r} must be a positive number of rows")
    specs = [ClusterSpec.from_kwargs(cpu=cpu, memory=memory, gpu=gpu, arm=arm, region=region, max_hourly_usd=None)
             for region in asked_regions]
    spec = specs[0]
    asked = tuple(dict.fromkeys(s.region for s in specs))
    catalog = catalog or default_catalog()
    nothing_asked = cpu is None and memory is None and gpu is None
    cpu_range = (2, 2) if nothing_asked else spec.cpu_range
    memory_mib = 8 * 1024 if nothing_asked else spec.memory_mib
    rows = []
    for name in sorted({info.instance_type for region in asked for info in catalog.types_in(region)}):
        info = next(catalog.info(name, region) for region in asked if catalog.info(name, region) is not None)
        nvidia = info.gpu_count if info.gpu_name and not info.gpu_name.startswith(NOT_NVIDIA) else 0
        if info.gpu_count and not nvidia and gpu:
            continue
        if not _matches(name, info.arch, info.vcpus, info.memory_gib, nvidia if gpu else info.gpu_count, arm,
                        cpu_range, memory_mib, gpu):
            continue
        rows.append(PriceRow(instance_type=name, arch=info.arch, processor=processor(name, info.arch),
                             vcpus=int(info.vcpus), memory_gib=info.memory_gib, gpus=info.gpu_count,
                             gpu_name=info.gpu_name, hourly_usd={r: catalog.hourly_usd(name, r) for r in asked}))
    rows.sort(key=lambda row: ((row.cheapest or ("", math.inf))[1], row.instance_type))
    table = PriceTable(regions=asked, rows=tuple(rows[:limit]), asked=_asked_text(cpu_range, memory_mib, gpu, arm),
                       more=max(len(rows) - limit, 0))
    if not rows:
        raise SdkError(f"no instance type in the catalog has {table.asked} in {', '.join(asked)}; relax cpu/memory/"
                       "gpu or ask other regions")
    if show:
        Console().print(table)
    return table


def processor(instance_type: str, arch: str) -> str:
    """Graviton for arm64; AMD when the family's options say so (``m7a``, ``c6a``, ``r5ad``); else Intel.

    From the name alone (the catalog has no processor column), so a family whose name does not say it (``g5``
    runs on AMD) shows as Intel.
    """
    if arch == "arm64":
        return "Graviton"
    match = _FAMILY.match(instance_type.partition(".")[0])
    return "AMD" if match and "a" in match.group("options") else "Intel"


def _matches(name: str, arch: str, vcpus: float, memory_gib: float, gpus: int, arm: bool | None,
             cpu_range: tuple[int, int] | None, memory_mib: int | None, gpu: bool | int | None) -> bool:
    family, _, size = name.partition(".")
    if arch not in ("x86_64", "arm64") or (arm is not None and arch != ("arm64" if arm else "x86_64")):
        return False
    if re.match(r"^t\d", family) or "metal" in size:
        return False
    if cpu_range and not cpu_range[0] <= vcpus <= cpu_range[1]:
        return False
    if memory_mib and memory_gib * 1024 < memory_mib:
        return False
    if not gpu:
        return gpus == 0
    return gpus >= 1 if gpu is True else gpus == gpu


def _asked_text(cpu_range: tuple[int, int] | None, memory_mib: int | None, gpu: bool | int | None,
                arm: bool | None) -> str:
    parts = []
    if cpu_range:
        low, high = cpu_range
        parts.append(f"{low} vCPU" if low == high else f"{low}-{high} vCPU")
    if memory_mib:
        parts.append(f"≥ {memory_mib / 1024:g} GiB")
    if gpu is True:
        parts.append("a GPU")
    elif gpu:
        parts.append(f"{gpu} GPU{'s' if gpu > 1 else ''}")
    parts.append({True: "ARM", False: "x86", None: "ARM or x86"}[arm])
    return ", ".join(parts)
