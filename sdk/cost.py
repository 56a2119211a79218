"""What a cluster will cost, shown and capped before anything is launched.

The estimate is the on-demand list price (``guard.pricing``) of one scheduler plus ``n_workers`` workers, each with
its encrypted gp3 root volume and its public IPv4 address. The scheduler is priced at its own type (by default a
small non-GPU one, see ``sdk.types.resolve_scheduler_types``), the workers at theirs. Decisions:

- Spot workers are priced at the on-demand price: that is what AWS caps a spot price at by default, so the cap
  holds whatever the spot market does; the catalog's lowest spot price is shown as a hint only.
- With fallback types (a ``vm_type`` list, or automatic fallbacks) the cap is checked against the priciest type
  in the list, since capacity may decide which one launches; likewise for the scheduler, whose fallbacks are the
  workers' types.
- A type without a list price is never priced as $0: the estimate says "unknown" and ``check_cap`` refuses to
  launch, unless the cap is turned off explicitly with ``max_hourly_usd=None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from guard.pricing import GB, LOGS_INGEST_USD_PER_GB, PUBLIC_IPV4_USD_PER_HOUR, PriceCatalog, default_catalog
from sdk.errors import SdkError
from sdk.spec import MAX_HOURLY_ENV, ClusterSpec

HOURS_PER_DAY = 24
ROOT_VOLUME_TYPE = "gp3"
DEBUG_BYTES_PER_VM_HOUR = 85_000_000
"""What one Dask process logs an hour at DEBUG while working: measured on a 2-worker cluster running about 100
small tasks a second (85 MB/hour per process; 6 MB/hour idle). Busier clusters log more."""
DEBUG_WARN_VMS = 10
"""Clusters of more VMs than this get the DEBUG-logging warning before launch."""


@dataclass(frozen=True)
class CostEstimate:
    """The estimated USD per hour of a whole cluster (None: some price is unknown)."""

    region: str
    n_workers: int
    instance_types: tuple[str, ...]
    hourly_usd: float | None
    """With the first-choice types for the scheduler and every worker."""
    worst_hourly_usd: float | None
    """With the priciest types of the lists for the scheduler and every worker (= hourly_usd for one type each)."""
    per_vm_extra_usd: float | None
    """Root volume and public IPv4 address of one VM, per hour."""
    spot_hourly_usd: float | None = None
    """With workers at the catalog's lowest spot price: a hint, not a bound (None: on-demand, or unknown)."""
    unpriced: tuple[str, ...] = ()
    """Types (or the volume) without a list price in this region."""
    scheduler_types: tuple[str, ...] = ()
    """The scheduler's types, first choice first (empty: the workers')."""

    @property
    def daily_usd(self) -> float | None:
        return None if self.hourly_usd is None else self.hourly_usd * HOURS_PER_DAY

    @property
    def capped_hourly_usd(self) -> float | None:
        """The figure the cap is checked against: the worst case over the fallback types."""
        return self.worst_hourly_usd

    def __str__(self) -> str:
        if self.hourly_usd is None:
            return f"an unknown amount (no list price for {', '.join(self.unpriced)} in {self.region})"
        text = f"{_usd(self.hourly_usd)}/hour ({_usd(self.hourly_usd * HOURS_PER_DAY)}/day)"
        worst = self.worst_hourly_usd
        if worst is None:
            text += f", more if a fallback type launches (no list price for {', '.join(self.unpriced)})"
        elif worst > self.hourly_usd + 0.005:
            text += f", up to {_usd(worst)}/hour if a fallback type launches"
        if self.spot_hourly_usd is not None:
            text += f"; spot workers usually cost less (about {_usd(self.spot_hourly_usd)}/hour)"
        return text


def estimate_cost(spec: ClusterSpec, instance_types: list[str] | tuple[str, ...],
                  catalog: PriceCatalog | None = None, *,
                  scheduler_types: list[str] | tuple[str, ...] = ()) -> CostEstimate:
    """The cluster's $/hour: scheduler + n_workers × worker, each with its disk and public address.

    ``instance_types``: the workers' types; ``scheduler_types``: the scheduler's (empty: the workers')."""
    if not instance_types:
        raise SdkError("no instance type to price; pass vm_type or cpu/memory")
    catalog = catalog or default_catalog()
    region, types = spec.region, tuple(instance_types)
    schedulers = tuple(scheduler_types) or types
    disk = catalog.volume_hourly_usd(ROOT_VOLUME_TYPE, spec.disk_size, region)
    prices = {name: catalog.hourly_usd(name, region) for name in dict.fromkeys([*schedulers, *types])}
    unpriced = tuple(name for name, price in prices.items() if price is None)
    if disk is None:
        unpriced += (f"{ROOT_VOLUME_TYPE} volumes",)
    extra = None if disk is None else disk + PUBLIC_IPV4_USD_PER_HOUR

    def cluster(scheduler: float | None, worker: float | None) -> float | None:
        if scheduler is None or worker is None or extra is None:
            return None
        return (scheduler + extra) + spec.n_workers * (worker + extra)

    def priciest(names: tuple[str, ...]) -> float:
        return max(prices[name] for name in names)  # type: ignore[type-var]

    hourly = cluster(prices[schedulers[0]], prices[types[0]])
    worst = None if unpriced else cluster(priciest(schedulers), priciest(types))
    spot = None
    if spec.spot_policy != "on-demand":
        info = catalog.info(types[0], region)
        if info is not None and info.spot_usd_per_hour_min is not None:
            spot = cluster(prices[schedulers[0]], info.spot_usd_per_hour_min)
    return CostEstimate(region=region, n_workers=spec.n_workers, instance_types=types, hourly_usd=hourly,
                        worst_hourly_usd=worst, per_vm_extra_usd=extra, spot_hourly_usd=spot, unpriced=unpriced,
                        scheduler_types=tuple(scheduler_types))


def check_cap(estimate: CostEstimate, max_hourly_usd: float | None) -> None:
    """Refuse a cluster above ``max_hourly_usd`` (None: no cap), or one whose price is unknown while capped."""
    if max_hourly_usd is None:
        return
    figure = estimate.capped_hourly_usd
    if figure is None:
        raise SdkError(f"no list price is known for {', '.join(estimate.unpriced)} in {estimate.region}, so the cost "
                       f"cap max_hourly_usd={max_hourly_usd:g} cannot be checked; pass max_hourly_usd=None to launch "
                       "without a cost cap, or pick a priced vm_type")
    if figure > max_hourly_usd:
        allow = _round_up(figure)
        would = "could cost up to" if estimate.hourly_usd is not None and figure > estimate.hourly_usd else "would cost"
        raise SdkError(f"this cluster {would} {_usd(figure)}/hour ({_usd(figure * HOURS_PER_DAY)}/day), above "
                       f"max_hourly_usd={max_hourly_usd:g}; pass max_hourly_usd={allow:g} or set "
                       f"{MAX_HOURLY_ENV}={allow:g} to allow it")


class VerboseLogging(UserWarning):
    """A cluster is about to log at DEBUG on many VMs (see ``debug_logging_warning``)."""


def debug_logging_warning(spec: ClusterSpec, client_level: str) -> str | None:
    """A warning when a cluster of more than ``DEBUG_WARN_VMS`` VMs will log at DEBUG: what that costs in
    CloudWatch Logs ingestion per hour, and how to avoid it; None otherwise."""
    vms = 1 + spec.n_workers
    if spec.log_level != "DEBUG" or vms <= DEBUG_WARN_VMS:
        return None
    gb_per_hour = vms * DEBUG_BYTES_PER_VM_HOUR / GB
    why = "your Dask logger is at DEBUG, so the cluster logs at DEBUG too" if client_level == "DEBUG" else \
        "log_level='DEBUG'"
    return (f"{why}: {vms} VMs log about {gb_per_hour:,.1f} GB/hour, {_usd(gb_per_hour * LOGS_INGEST_USD_PER_GB)}/hour "
            f"({_usd(gb_per_hour * LOGS_INGEST_USD_PER_GB * HOURS_PER_DAY)}/day) if CloudWatch Logs ingests them; "
            "pass log_level='INFO' unless you need DEBUG on every VM")


def _round_up(value: float) -> float:
    """A cap a person would type that admits ``value``: 3.41 → 4, 123.4 → 130, 0.42 → 0.5."""
    if value < 1:
        return math.ceil(value * 10) / 10
    step = 10 ** max(0, math.floor(math.log10(value)) - 1)
    return float(math.ceil(value / step) * step)


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 0.1 else f"${value:,.3f}"
