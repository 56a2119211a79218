"""Which instance types a cluster launches: checked against the region through ``DescribeInstanceTypes``.

With ``vm_type`` the names are checked as given: the region must offer each (an unknown one gets its close
matches), each must match ``arm`` (a contradiction names the counterpart family, found in the region's own list:
"g5.xlarge is x86_64; ARM GPU instances are the g5g family, e.g. g5g.xlarge") and support the spot policy.

With ``cpu``/``memory``/``gpu``/``arm`` (or nothing) the cheapest matching type by the price catalog is chosen,
among the types the region offers, plus up to two more within 25 % of its price as fallbacks when capacity
runs out. Rules of the match, so a choice never surprises:

- ``cpu=N``: exactly N vCPUs (``[min, max]``: a range); ``memory``: at least that much.
- ``gpu=N``: exactly N NVIDIA GPUs (CUDA), ``gpu=True``: at least one; without ``gpu``, no GPU type is chosen.
- ``arm=True``: Graviton (arm64); ``arm=False`` or unset: x86_64.
- Never burstable (T family: CPU credits run out under a steady load), bare-metal, or unpriced types.
- With nothing asked: 2 vCPUs and at least 8 GiB (a general-purpose VM with room for a Dask worker).

The scheduler gets a type of its own (``resolve_scheduler_types``): ``scheduler_vm_type`` checked as above, or
the cheapest non-GPU type of the default shape in the workers' architecture, found among the catalog's types
of the region and checked with one ``DescribeInstanceTypes``; the workers' types follow it as its fallbacks.

The region's list is fetched once per process and region (paginated; about 900 types on AWS).
"""

from __future__ import annotations

import difflib
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from guard.pricing import PriceCatalog, default_catalog
from sdk.errors import SdkError
from sdk.spec import DEFAULT_REGION, ClusterSpec

FALLBACK_PRICE_RATIO = 1.25
"""Automatic fallbacks cost at most this much more than the cheapest match."""
MAX_FALLBACKS = 2
SCHEDULER_CANDIDATES = 10
"""The catalog's cheapest types of the scheduler's shape checked against the region in one call."""
DEFAULT_CPU = 2
DEFAULT_MEMORY_MIB = 8 * 1024
ARCH_NAMES = {"arm64": "ARM", "x86_64": "x86"}
_LINUX_ARCHES = ("arm64", "x86_64")


@dataclass(frozen=True)
class InstanceType:
    """What the SDK needs to know of one type, from a ``DescribeInstanceTypes`` item."""

    name: str
    arch: str
    """``x86_64`` or ``arm64`` (``arm64_mac``/``x86_64_mac`` for Mac types, which vmguard does not launch)."""
    vcpus: int
    memory_mib: int
    gpus: int
    gpu_maker: str | None
    burstable: bool
    bare_metal: bool
    usage_classes: frozenset[str]
    ebs_root: bool

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> InstanceType:
        arches = item.get("ProcessorInfo", {}).get("SupportedArchitectures") or []
        arch = next((a for a in _LINUX_ARCHES if a in arches), arches[0] if arches else "unknown")
        gpus = item.get("GpuInfo", {}).get("Gpus") or []
        return cls(
            name=item["InstanceType"],
            arch=arch,
            vcpus=int(item.get("VCpuInfo", {}).get("DefaultVCpus") or 0),
            memory_mib=int(item.get("MemoryInfo", {}).get("SizeInMiB") or 0),
            gpus=sum(int(gpu.get("Count") or 0) for gpu in gpus),
            gpu_maker=gpus[0].get("Manufacturer") if gpus else None,
            burstable=bool(item.get("BurstablePerformanceSupported")),
            bare_metal=bool(item.get("BareMetal")),
            usage_classes=frozenset(item.get("SupportedUsageClasses") or ()),
            ebs_root="ebs" in (item.get("SupportedRootDeviceTypes") or ["ebs"]),
        )

    @property
    def family(self) -> str:
        return self.name.partition(".")[0]

    @property
    def size(self) -> str:
        return self.name.partition(".")[2]

    @property
    def linux(self) -> bool:
        return self.arch in _LINUX_ARCHES

    def describe(self, price: float | None = None) -> str:
        """``m5.xlarge (4 vCPU, 16 GiB, $0.192/h)``."""
        parts = [f"{self.vcpus} vCPU", f"{_gib(self.memory_mib)} GiB"]
        if self.gpus:
            parts.append(f"{self.gpus} GPU")
        if price is not None:
            parts.append(f"${price:.3f}/h")
        return f"{self.name} ({', '.join(parts)})"


class _RegionTypes:
    """Per-process cache of what each (endpoint, region) offers: some types, or all of them once listed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.types: dict[tuple[str, str], dict[str, InstanceType]] = {}
        self.complete: set[tuple[str, str]] = set()


_cache = _RegionTypes()


def _key(ec2: Any) -> tuple[str, str]:
    return (ec2.meta.endpoint_url, ec2.meta.region_name)


def _api_error(exc: Exception, region: str) -> SdkError:
    """An AWS failure while looking at the region's types, as one line."""
    if isinstance(exc, NoCredentialsError):
        return SdkError("no AWS credentials found; configure them (aws configure, AWS_PROFILE) or use the sandbox")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "Error"), error.get("Message", "")
        if code in ("OptInRequired", "AuthFailure", "UnrecognizedClientException", "InvalidClientTokenId"):
            return SdkError(f"region {region} refused the request ({code}); enable the region for this account "
                            "or pick another one")
        return SdkError(f"cannot list the instance types of {region}: {code}: {message}")
    detail = " ".join(str(exc).split())
    detail = detail if len(detail) <= 160 else detail[:157] + "..."
    return SdkError(f"cannot reach EC2 in {region} ({type(exc).__name__}: {detail}); check the region and network")


def region_types(ec2: Any) -> dict[str, InstanceType]:
    """Every type the client's region offers (``DescribeInstanceTypes``, all pages), cached per process."""
    key = _key(ec2)
    with _cache.lock:
        if key in _cache.complete:
            return dict(_cache.types[key])
    found: dict[str, InstanceType] = {}
    try:
        for page in ec2.get_paginator("describe_instance_types").paginate(PaginationConfig={"PageSize": 100}):
            for item in page.get("InstanceTypes", []):
                info = InstanceType.from_api(item)
                found[info.name] = info
    except (ClientError, BotoCoreError) as exc:
        raise _api_error(exc, key[1]) from None
    with _cache.lock:
        _cache.types[key] = found
        _cache.complete.add(key)
    return dict(found)


def describe_types(ec2: Any, names: Iterable[str]) -> dict[str, InstanceType]:
    """These types in the client's region (one ``DescribeInstanceTypes`` call for those not cached yet).

    A name the region does not offer is missing from the answer (AWS answers ``InvalidInstanceType``; the full
    list is then fetched once to tell which).
    """
    key = _key(ec2)
    wanted = list(dict.fromkeys(names))
    with _cache.lock:
        known = dict(_cache.types.get(key, {}))
        complete = key in _cache.complete
    missing = [name for name in wanted if name not in known]
    if missing and not complete:
        try:
            items = ec2.describe_instance_types(InstanceTypes=missing).get("InstanceTypes", [])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidInstanceType":
                raise _api_error(exc, key[1]) from None
            known = region_types(ec2)
        except BotoCoreError as exc:
            raise _api_error(exc, key[1]) from None
        else:
            fetched = {info.name: info for info in map(InstanceType.from_api, items)}
            with _cache.lock:
                _cache.types.setdefault(key, {}).update(fetched)
            known.update(fetched)
    return {name: known[name] for name in wanted if name in known}


def resolve_instance_types(spec: ClusterSpec, ec2: Any, catalog: PriceCatalog | None = None) -> list[str]:
    """The types to launch, first choice first: ``spec.vm_type`` checked, or the cheapest match of the spec."""
    if ec2.meta.region_name != spec.region:
        raise SdkError(f"the EC2 client is for {ec2.meta.region_name} but the cluster is for {spec.region}; "
                       f"make the client with region_name={spec.region!r}")
    catalog = catalog or default_catalog()
    if spec.vm_type is not None:
        return _check_named(spec, ec2, catalog)
    return _cheapest(spec, region_types(ec2), catalog)


def resolve_scheduler_types(spec: ClusterSpec, ec2: Any, worker_types: list[str],
                            catalog: PriceCatalog | None = None) -> list[str]:
    """The scheduler's types, first choice first: its own type, then the workers' types as fallbacks.

    Its own: ``spec.scheduler_vm_type`` checked like a ``vm_type``, or the cheapest on-demand, non-GPU type with
    2 vCPUs and at least 8 GiB of the first worker type's architecture (a scheduler needs no GPU, and one of the
    workers' architecture runs the same replicated environment).
    """
    catalog = catalog or default_catalog()
    first = describe_types(ec2, worker_types[:1]).get(worker_types[0])
    if first is None:
        raise SdkError(f"{worker_types[0]} is not offered in {spec.region}; check vm_type")
    arch = first.arch
    if spec.scheduler_vm_type is not None:
        checked = spec.model_copy(update={"vm_type": [spec.scheduler_vm_type], "arm": arch == "arm64",
                                          "spot_policy": "on-demand"})
        try:
            own = _check_named(checked, ec2, catalog)[0]
        except SdkError as exc:
            raise SdkError(f"scheduler_vm_type: {exc}") from None
    else:
        own = _cheapest_scheduler(spec.region, arch, ec2, catalog)
    return list(dict.fromkeys([own, *worker_types]))


def _cheapest_scheduler(region: str, arch: str, ec2: Any, catalog: PriceCatalog) -> str:
    want = _Want(arch=arch, cpu=(DEFAULT_CPU, DEFAULT_CPU), memory_mib=DEFAULT_MEMORY_MIB, gpu=None,
                 market="on-demand")
    names = _scheduler_candidates(region, arch, catalog)
    offered = describe_types(ec2, names[:SCHEDULER_CANDIDATES]) if names else {}
    if not any(_eligible(info, want) and _matches(info, want) for info in offered.values()):
        offered = region_types(ec2)  # none of the cheapest is offered here: look through the region's whole list
    for name in names:
        if name in offered and _eligible(offered[name], want) and _matches(offered[name], want):
            return name
    raise SdkError(f"{region} offers no {arch} type with {want.text()} and no GPU for the scheduler; pass "
                   "scheduler_vm_type")


def _scheduler_candidates(region: str, arch: str, catalog: PriceCatalog) -> list[str]:
    """The catalog's non-GPU types of the default shape and ``arch``, cheapest first: by the region's list prices,
    or by those of the default region where the catalog prices nothing in this one (their order is much alike)."""
    priced_in = region if any(True for _ in catalog.types_in(region)) else DEFAULT_REGION
    candidates = sorted((price, info.instance_type) for info in catalog.types_in(priced_in)
                        if info.arch == arch and not info.gpu_count and info.vcpus == DEFAULT_CPU
                        and info.memory_gib * 1024 >= DEFAULT_MEMORY_MIB
                        for price in [catalog.hourly_usd(info.instance_type, priced_in)] if price is not None)
    return [name for _, name in candidates]


# -- named types ----------------------------------------------------------------------------------------------


def _check_named(spec: ClusterSpec, ec2: Any, catalog: PriceCatalog) -> list[str]:
    names = list(spec.vm_type or ())
    found = describe_types(ec2, names)
    for name in names:
        if name not in found:
            raise SdkError(_unknown_type(name, spec.region, region_types(ec2), catalog))
    for name in names:
        info = found[name]
        if not info.linux:
            raise SdkError(f"{name} is {info.arch}: it runs only on dedicated Mac hosts and vmguard launches Linux "
                           "VMs; pick a type like m7i.large or m7g.large")
        wanted = None if spec.arm is None else ("arm64" if spec.arm else "x86_64")
        if wanted is not None and info.arch != wanted:
            raise SdkError(_arch_mismatch(info, wanted, region_types(ec2), catalog, spec.region))
        if spec.spot_policy != "on-demand" and "spot" not in info.usage_classes:
            raise SdkError(f"{name} cannot run as spot in {spec.region}; pass spot_policy='on-demand' or another "
                           "vm_type")
        if spec.spot_policy != "spot" and info.usage_classes and "on-demand" not in info.usage_classes:
            raise SdkError(f"{name} is not sold on-demand in {spec.region}; pass spot_policy='spot' or another "
                           "vm_type")
        if not info.ebs_root:
            raise SdkError(f"{name} cannot boot from an EBS volume; pick a current-generation type like m7i.large")
    return names


def _unknown_type(name: str, region: str, offered: Mapping[str, InstanceType], catalog: PriceCatalog) -> str:
    elsewhere = sorted(r for r in catalog.regions if r != region and catalog.info(name, r) is not None)
    if elsewhere:
        shown = ", ".join(elsewhere[:4]) + (", …" if len(elsewhere) > 4 else "")
        return f"{name} is not offered in {region}; it is offered in {shown}: pass one of those as region"
    close = difflib.get_close_matches(name, sorted(offered), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see `aws ec2 describe-instance-types` for the names"
    return f"unknown instance type {name!r} in {region}; {hint}"


def _arch_mismatch(info: InstanceType, wanted: str, offered: Mapping[str, InstanceType], catalog: PriceCatalog,
                   region: str) -> str:
    """``g5.xlarge is x86_64; ARM GPU instances are the g5g family, e.g. g5g.xlarge`` — found in the region's list."""
    flag = "arm=True" if wanted == "arm64" else "arm=False"
    head = f"{info.name} is {info.arch} but {flag} asks for {wanted}"
    counterpart = _counterpart(info, wanted, offered, catalog, region)
    if counterpart is None:
        kind = "GPU instances" if info.gpus else "instances"
        return f"{head}; {region} offers no {ARCH_NAMES[wanted]} {kind} like it: drop {flag} or pick another vm_type"
    family, example = counterpart
    if info.gpus:
        return f"{info.name} is {info.arch}; {ARCH_NAMES[wanted]} GPU instances are the {family} family, e.g. {example}"
    return f"{info.name} is {info.arch}; the nearest {ARCH_NAMES[wanted]} family is {family}, e.g. {example}"


def _counterpart(info: InstanceType, wanted: str, offered: Mapping[str, InstanceType], catalog: PriceCatalog,
                 region: str) -> tuple[str, str] | None:
    """The family of the other architecture most like ``info`` (same kind: GPU or not), and its closest size."""
    families: dict[str, list[InstanceType]] = {}
    for other in offered.values():
        same_kind = bool(other.gpus) == bool(info.gpus) and not other.bare_metal and not other.burstable
        if other.arch == wanted and same_kind:
            families.setdefault(other.family, []).append(other)
    if not families:
        return None

    def example(members: list[InstanceType]) -> InstanceType:
        same = [m for m in members if m.size == info.size]
        return same[0] if same else min(members, key=lambda m: (abs(math.log2(max(m.vcpus, 1) / max(info.vcpus, 1))),
                                                                 m.vcpus))

    def rank(family: str) -> tuple:
        related = family.startswith(info.family) or info.family.startswith(family)
        similarity = difflib.SequenceMatcher(None, family, info.family).ratio()
        price = catalog.hourly_usd(example(families[family]).name, region)
        return (not related, -round(similarity, 3), price if price is not None else math.inf, family)

    family = min(families, key=rank)
    return family, example(families[family]).name


# -- chosen by shape ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Want:
    arch: str
    cpu: tuple[int, int] | None
    memory_mib: int | None
    gpu: bool | int | None
    market: str

    def text(self) -> str:
        parts = []
        if self.cpu:
            low, high = self.cpu
            parts.append(f"{low} vCPUs" if low == high else f"{low}-{high} vCPUs")
        if self.memory_mib:
            parts.append(f"at least {_gib(self.memory_mib)} GiB")
        if self.gpu is True:
            parts.append("an NVIDIA GPU")
        elif self.gpu:
            parts.append(f"{self.gpu} NVIDIA GPUs")
        return " and ".join(parts) or "the default shape"


def _want(spec: ClusterSpec) -> _Want:
    nothing_asked = spec.cpu is None and spec.memory is None and spec.gpu is None
    return _Want(
        arch="arm64" if spec.arm else "x86_64",
        cpu=(DEFAULT_CPU, DEFAULT_CPU) if nothing_asked else spec.cpu_range,
        memory_mib=DEFAULT_MEMORY_MIB if nothing_asked else spec.memory_mib,
        gpu=spec.gpu,
        market="spot" if spec.spot_policy == "spot" else "on-demand",
    )


def _eligible(info: InstanceType, want: _Want) -> bool:
    """May be chosen at all (whatever its size): the architecture, launchable, not burstable or bare metal."""
    return (info.arch == want.arch and info.ebs_root and not info.burstable and not info.bare_metal
            and (not info.usage_classes or want.market in info.usage_classes))


def _gpu_ok(info: InstanceType, gpu: bool | int | None) -> bool:
    if not gpu:
        return info.gpus == 0
    nvidia = (info.gpu_maker or "").upper() == "NVIDIA"
    return nvidia and (info.gpus >= 1 if gpu is True else info.gpus == gpu)


def _matches(info: InstanceType, want: _Want) -> bool:
    if want.cpu and not want.cpu[0] <= info.vcpus <= want.cpu[1]:
        return False
    if want.memory_mib and info.memory_mib < want.memory_mib:
        return False
    return _gpu_ok(info, want.gpu)


def _distance(info: InstanceType, want: _Want) -> float:
    """How far a type is from the wish (0: it matches), for naming the closest offers."""
    distance = 0.0
    if want.cpu:
        low, high = want.cpu
        vcpus = max(info.vcpus, 1)
        distance += math.log2(low / vcpus) if vcpus < low else math.log2(vcpus / high) if vcpus > high else 0.0
    if want.memory_mib and info.memory_mib < want.memory_mib:
        distance += math.log2(want.memory_mib / max(info.memory_mib, 1))
    if not _gpu_ok(info, want.gpu):
        nvidia = info.gpus if (info.gpu_maker or "").upper() == "NVIDIA" else 0
        wanted = 1 if want.gpu is True else int(want.gpu or 0)
        distance += abs(math.log2(nvidia / wanted)) if nvidia and wanted else 3.0
    return distance


def _cheapest(spec: ClusterSpec, offered: Mapping[str, InstanceType], catalog: PriceCatalog) -> list[str]:
    want = _want(spec)
    priced = [(price, info) for info in offered.values() if _eligible(info, want)
              for price in [catalog.hourly_usd(info.name, spec.region)] if price is not None]
    matching = sorted((price, info.name) for price, info in priced if _matches(info, want))
    if matching:
        cheapest = matching[0][0]
        fallbacks = [name for price, name in matching[1:] if price <= cheapest * FALLBACK_PRICE_RATIO]
        return [matching[0][1], *fallbacks[:MAX_FALLBACKS]]
    arch = f"{want.arch} "
    if not priced:
        raise SdkError(f"{spec.region} offers no priced {arch}instance types for spot_policy={spec.spot_policy!r}; "
                       "pick another region or pass vm_type")
    closest = sorted(priced, key=lambda pair: (round(_distance(pair[1], want), 3), pair[0]))[:3]
    offers = ", ".join(info.describe(price) for price, info in closest)
    raise SdkError(f"no {arch}instance type in {spec.region} has {want.text()}; closest: {offers}; "
                   "relax cpu/memory/gpu or pass vm_type")


def _gib(mib: int) -> str:
    gib = mib / 1024
    return f"{gib:g}" if gib >= 10 or gib == int(gib) else f"{gib:.1f}"
