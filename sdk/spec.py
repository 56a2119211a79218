"""What a cluster should be: ``ClusterSpec``, every launch argument checked before anything is launched.

``ClusterSpec.from_kwargs(**kwargs)`` is how ``sdk.Cluster`` and ``@sdk.function`` read their arguments: a wrong
one raises :class:`sdk.errors.SdkError` with ONE line saying what is wrong and how to fix it (an unknown argument
gets a "did you mean"). Defaults are chosen to be safe and cheap without thinking:

- ``n_workers=1``: the smallest cluster that runs anything; ask for more. ``min_workers=None``: all of them or
  the launch fails; a number lets a launch short of capacity or vCPU quota go ahead with at least that many.
- ``keepalive="20 minutes"``: the cluster shuts down that long after its client stopped heartbeating.
- ``idle_timeout="1 hour"``: and when no task ran for that long (``None``: never for idleness).
- ``max_lifetime="24h"``: a hard cap armed on every VM at boot; it cannot be turned off.
- ``spot_policy="on-demand"``; ``disk_size=50`` (GiB, gp3, encrypted).
- ``max_hourly_usd``: ``VMGUARD_MAX_HOURLY_USD`` or $10/hour; ``None`` launches without a cost cap.
- ``region``: ``AWS_DEFAULT_REGION`` (or the AWS config's region), else ``us-east-1``; a list is tried in order,
  the next region only when the one before had no capacity (``fallback_regions`` holds the rest).
- ``owner``: ``VMGUARD_OWNER``, else the OS user name.
- ``allow_ingress_from=None``: only this machine's own address may reach the scheduler (resolved at launch).
- ``daemon_url``/``token``: ``VMGUARD_DAEMON_URL``/``VMGUARD_TOKEN``; the token is never shown or serialised.
- ``environment=True``: the VMs run this Python environment, replicated (``sdk.environment``); one too large for
  the user-data goes to ``env_s3`` (``VMGUARD_ENV_S3``).
- Instance type: ``vm_type`` (one, or a list whose later entries are fallbacks when capacity runs out), or
  ``cpu``/``memory``/``gpu``/``arm`` resolved to the cheapest matching type (see :mod:`sdk.types`). With neither,
  the cheapest x86_64 type with 2 vCPUs and at least 8 GiB.
- ``scheduler_vm_type=None``: the scheduler runs on the cheapest non-GPU type with 2 vCPUs and at least 8 GiB of
  the workers' architecture (it schedules; a GPU there would bill for nothing).
- ``image=None``: GPU types boot AWS's Deep Learning Base AMI with the NVIDIA driver, the others Amazon Linux
  2023; an ``ami-…`` id boots every VM from that image instead.
- ``subnet_ids=None``: the default VPC's default subnets; ``security_group_ids=[]``: only the cluster's own group;
  ``use_private_ip=False``: the client reaches the scheduler at its public address (True: at its private one,
  over a VPN or Direct Connect, which needs ``allow_ingress_from`` naming the networks it comes from).
"""

from __future__ import annotations

import difflib
import getpass
import ipaddress
import logging
import math
import os
import re
from datetime import timedelta
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guard.durations import Duration, format_duration, parse_duration
from sdk.errors import SdkError

REGION_ENV = "AWS_DEFAULT_REGION"
MAX_HOURLY_ENV = "VMGUARD_MAX_HOURLY_USD"
OWNER_ENV = "VMGUARD_OWNER"
DAEMON_URL_ENV = "VMGUARD_DAEMON_URL"
TOKEN_ENV = "VMGUARD_TOKEN"
ENV_S3_ENV = "VMGUARD_ENV_S3"

DEFAULT_REGION = "us-east-1"
DEFAULT_MAX_HOURLY_USD = 10.0
"""Enough for a few dozen general-purpose VMs; a typo that asks for 1,000 GPUs stops here."""
MAX_WORKERS = 10_000
"""CreateFleet's ceiling per request; beyond it no single launch makes sense."""
MIN_DISK_GIB, MAX_DISK_GIB = 8, 16_384
"""An Amazon Linux root volume needs 8 GiB; gp3 volumes end at 16 TiB."""
MAX_USER_TAGS = 40
"""AWS allows 50 tags per resource; vmguard adds up to 8 of its own."""
RESERVED_TAG_KEYS = frozenset({"guard:managed", "owner"})
RESERVED_TAG_PREFIX = "vmguard:"

SpotPolicy = Literal["on-demand", "spot", "spot_with_fallback"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

_REGION_SHAPE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+$")
"""The shape ``guard.wire.ClusterRegistration`` accepts."""
_VM_TYPE_SHAPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
_RESOURCE_ID = {"image": re.compile(r"^ami-[0-9a-f]{8}(?:[0-9a-f]{9})?$"),
                "subnet_ids": re.compile(r"^subnet-[0-9a-f]{8}(?:[0-9a-f]{9})?$"),
                "security_group_ids": re.compile(r"^sg-[0-9a-f]{8}(?:[0-9a-f]{9})?$")}
"""EC2 ids: a prefix and 8 (older) or 17 hex digits."""
_ID_EXAMPLE = {"image": "ami-0123456789abcdef0", "subnet_ids": "subnet-0123456789abcdef0",
               "security_group_ids": "sg-0123456789abcdef0"}
MAX_EXTRA_GROUPS = 4
"""AWS allows 5 security groups per network interface; the cluster's own group is one of them."""
_TAG_TEXT = re.compile(r"^[\w .:/=+\-@]*$")
"""The characters AWS allows in tag keys and values on every resource type."""
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_MIB_PER_UNIT = {
    "": 1024, "g": 1024, "gi": 1024, "gib": 1024, "gb": 1e9 / 2**20,
    "m": 1, "mi": 1, "mib": 1, "mb": 1e6 / 2**20,
    "t": 2**20, "ti": 2**20, "tib": 2**20, "tb": 1e12 / 2**20,
    "k": 1 / 1024, "ki": 1 / 1024, "kib": 1 / 1024, "kb": 1e3 / 2**20,
}
"""MiB per unit: binary (GiB) and decimal (GB) units as written; a bare number or a single letter is binary."""
_SPOT_ALIASES = {"ondemand": "on-demand", "on_demand": "on-demand", "spot-with-fallback": "spot_with_fallback",
                 "spotwithfallback": "spot_with_fallback"}
_ARGUMENT_ALIASES = {
    "instance_type": "vm_type", "instance_types": "vm_type", "vm_types": "vm_type",
    "worker_vm_types": "vm_type", "worker_vm_type": "vm_type", "workers": "n_workers", "memory_gib": "memory",
    "gpus": "gpu", "spot": "spot_policy", "use_spot": "spot_policy", "disk": "disk_size",
    "worker_disk_size": "disk_size", "no_client_timeout": "keepalive", "timeout": "idle_timeout",
    "ingress": "allow_ingress_from", "allow_ingress": "allow_ingress_from", "api_token": "token",
    "scheduler_instance_type": "scheduler_vm_type", "ami": "image", "image_id": "image", "ami_id": "image",
    "subnet_id": "subnet_ids", "subnets": "subnet_ids", "security_groups": "security_group_ids",
    "security_group_id": "security_group_ids", "private_ip": "use_private_ip", "use_private_ips": "use_private_ip",
}
"""Names people bring from other tools (Coiled, dask-cloudprovider), mapped to ours for the "did you mean"."""


def parse_size_mib(value: object, what: str) -> int:
    """MiB in a size like ``"16GiB"``, ``"16 GB"``, ``"512MiB"``, or a number of GiB; rounded up."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{what} must be a size like '16GiB' or '16 GB', not {value!r}")
    if isinstance(value, (int, float)):
        mib = float(value) * 1024
    else:
        match = _SIZE.match(str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _MIB_PER_UNIT:
            raise ValueError(f"{what}={value!r} is not a size; write it like '16GiB' or '16 GB'")
        mib = float(match.group(1)) * _MIB_PER_UNIT[unit]
    if not math.isfinite(mib) or mib <= 0:
        raise ValueError(f"{what}={value!r} must be a positive size like '16GiB'")
    return math.ceil(mib - 1e-9)


@cache
def known_regions() -> frozenset[str]:
    """Every EC2 region of every partition botocore knows (read from its bundled data; no API call)."""
    import boto3.session

    session = boto3.session.Session()
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("ec2", partition_name=partition))
    return frozenset(region for region in regions if _REGION_SHAPE.match(region))


def _default_region() -> str:
    """``AWS_DEFAULT_REGION``, else the region of the AWS config profile, else us-east-1."""
    region = os.environ.get(REGION_ENV)
    if region:
        return region
    try:
        import botocore.session

        region = botocore.session.get_session().get_config_variable("region")
    except Exception:  # a broken profile must not hide the default; the launch reports the profile itself
        region = None
    return region or DEFAULT_REGION


def _default_max_hourly_usd() -> float:
    raw = os.environ.get(MAX_HOURLY_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_HOURLY_USD
    try:
        value = float(raw)
    except ValueError:
        raise SdkError(f"{MAX_HOURLY_ENV}={raw!r} is not a number; set it to dollars per hour, e.g. 25") from None
    if not math.isfinite(value) or value <= 0:
        raise SdkError(f"{MAX_HOURLY_ENV}={raw!r} must be a positive number of dollars per hour, e.g. 25")
    return value


def _default_owner() -> str:
    owner = os.environ.get(OWNER_ENV)
    if owner:
        return owner
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        raise SdkError(f"cannot tell who is launching this cluster; pass owner='you@example.com' or set {OWNER_ENV}")\
            from None


def _seconds(value: timedelta | None) -> int | None:
    return None if value is None else math.ceil(value.total_seconds())


def client_log_level() -> str:
    """The level this process logs Dask's ``distributed`` messages at (Dask's config, else the root logger's)."""
    import distributed  # noqa: F401 - importing it applies Dask's logging config (``distributed: info``)

    level = logging.getLogger("distributed").getEffectiveLevel()
    for name in ("DEBUG", "INFO", "WARNING", "ERROR"):
        if level <= logging.getLevelName(name):
            return name
    return "CRITICAL"


class ClusterSpec(BaseModel):
    """A cluster to launch: instance type(s), size, lifetime guards, cost cap, network and tags. Immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    vm_type: list[str] | None = Field(None, description="an instance type, or a list: later ones are fallbacks")
    scheduler_vm_type: str | None = Field(None, description="the scheduler's instance type; None: the cheapest "
                                          "non-GPU type with 2 vCPUs and at least 8 GiB of the workers' architecture")
    image: str | None = Field(None, description="an AMI id every VM boots from; None: the Deep Learning Base AMI "
                              "(NVIDIA driver) for GPU types, Amazon Linux 2023 for the others")
    cpu: int | tuple[int, int] | None = Field(None, description="vCPUs per VM: exactly N, or a [min, max] range")
    memory: str | None = Field(None, description="memory per VM, at least this much: '16GiB', '16 GB'")
    gpu: bool | int | None = Field(None, description="NVIDIA GPUs per VM: a count, or True for at least one")
    arm: bool | None = Field(None, description="True: Graviton (arm64); False/None: x86_64")
    region: str = Field(default_factory=_default_region, description="a region, or a list tried in order when "
                        "capacity runs out")
    fallback_regions: list[str] = Field(default_factory=list, description="tried in order, each only when the one "
                                        "before had no capacity (``region=[a, b, c]`` sets it to [b, c])")
    n_workers: int = Field(1, description="workers besides the scheduler")
    min_workers: int | None = Field(None, description="launch with fewer workers (down to this many) when "
                                    "capacity or a vCPU quota admits only part; None: all n_workers or none")
    keepalive: Duration = Field(timedelta(minutes=20), description="shut down this long after heartbeats stop")
    idle_timeout: Duration | None = Field(timedelta(hours=1), description="shut down when idle this long")
    max_lifetime: Duration = Field(timedelta(hours=24), description="hard cap armed on every VM at boot")
    boot_timeout: Duration = Field(timedelta(minutes=10), description="how long to wait for the scheduler")
    spot_policy: SpotPolicy = "on-demand"
    disk_size: int = Field(50, description="GiB of encrypted gp3 root volume per VM")
    tags: dict[str, str] = Field(default_factory=dict)
    max_hourly_usd: float | None = Field(default_factory=_default_max_hourly_usd)
    owner: str = Field(default_factory=_default_owner)
    allow_ingress_from: list[str] | None = Field(None, description="CIDRs that may reach the scheduler; None: mine")
    subnet_ids: list[str] | None = Field(None, description="subnets of one VPC to launch into; None: the default "
                                         "VPC's default subnets")
    security_group_ids: list[str] = Field(default_factory=list, description="groups added to the cluster's own "
                                          "on every VM")
    use_private_ip: bool = Field(False, description="reach the scheduler at its private address (VPN, Direct "
                                 "Connect)")
    daemon_url: str | None = Field(default_factory=lambda: os.environ.get(DAEMON_URL_ENV) or None)
    token: str | None = Field(default_factory=lambda: os.environ.get(TOKEN_ENV) or None, repr=False, exclude=True)
    credentials: Literal["local"] | None = Field("local", description="'local': the workers get this client's AWS "
                                                 "identity as short-lived credentials; None: no credentials")
    instance_profile: str | None = Field(None, description="an IAM instance profile for the VMs instead of "
                                         "forwarded credentials")
    environ: dict[str, str] = Field(default_factory=dict, repr=False, description="variables set in every worker "
                                    "process, sent over the cluster's TLS connection (never in the user-data)")
    env_s3: str | None = Field(default_factory=lambda: os.environ.get(ENV_S3_ENV) or None,
                               description="s3://bucket/prefix/ for replicated environments too large for the "
                                           "user-data")
    environment: bool = Field(True, description="replicate this Python environment on the VMs (sdk.environment); "
                              "False: the VMs run their image's python3, which must have vmguard installed")
    log_level: LogLevel = Field(default_factory=lambda: client_log_level(),
                                description="the VMs' log level; by default the client's own Dask log level")

    # -- construction -----------------------------------------------------------------------------------------

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ClusterSpec:
        """A spec from the caller's arguments; any bad argument raises ``SdkError`` with one line."""
        for name in kwargs:
            if name not in cls.model_fields:
                raise SdkError(_unknown_argument(name, sorted(cls.model_fields)))
        region = kwargs.get("region")
        if isinstance(region, (list, tuple)):
            if not region:
                raise SdkError("region=[] names no region; pass one like 'us-east-1', or a list of them")
            kwargs = {**kwargs, "region": region[0], "fallback_regions": list(region[1:])}
        try:
            return cls(**kwargs)
        except ValidationError as exc:
            raise SdkError(_one_line(exc)) from None

    # -- instance type ----------------------------------------------------------------------------------------

    @field_validator("vm_type", mode="before")
    @classmethod
    def _vm_type(cls, value: object) -> list[str] | None:
        if value is None:
            return None
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
            raise ValueError(f"vm_type must be an instance type like 'm7g.large' or a list of them, not {value!r}")
        if not names:
            raise ValueError("vm_type=[] names no instance type; pass one like 'm7g.large', or leave it out")
        cleaned: list[str] = []
        for name in names:
            name = name.strip().lower()
            if not _VM_TYPE_SHAPE.match(name):
                raise ValueError(f"vm_type={name!r} is not an instance type name; write it like 'm7g.large'")
            if name not in cleaned:
                cleaned.append(name)
        return cleaned

    @field_validator("scheduler_vm_type", mode="before")
    @classmethod
    def _scheduler_vm_type(cls, value: object) -> str | None:
        if value is None:
            return None
        name = value.strip().lower() if isinstance(value, str) else None
        if name is None or not _VM_TYPE_SHAPE.match(name):
            raise ValueError(f"scheduler_vm_type={value!r} is not an instance type name; write it like 'm7g.large'")
        return name

    @field_validator("image", mode="before")
    @classmethod
    def _image(cls, value: object) -> str | None:
        return None if value is None else _resource_id("image", value)

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, value: object) -> int | tuple[int, int] | None:
        if value is None:
            return None
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value):
            low, high = int(value[0]), int(value[1])
            if low < 1 or high < low:
                raise ValueError(f"cpu={list(value)!r} must be a range [min, max] with 1 <= min <= max")
            return (low, high)
        if not _is_int(value) or int(value) < 1:
            raise ValueError(f"cpu={value!r} must be a number of vCPUs (e.g. 4) or a range like [4, 8]")
        return int(value)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> str | None:
        return None if value is None else f"{parse_size_mib(value, 'memory')}MiB"

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu(cls, value: object) -> bool | int | None:
        if value is None or isinstance(value, bool):
            return value
        if not _is_int(value) or int(value) < 0:
            raise ValueError(f"gpu={value!r} must be a number of GPUs (e.g. 1) or True")
        return int(value) or False

    # -- where and how long -----------------------------------------------------------------------------------

    @field_validator("fallback_regions", mode="before")
    @classmethod
    def _fallback_regions(cls, value: object) -> list[str]:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"fallback_regions must be a list of regions, not {value!r}")
        return list(dict.fromkeys(cls._region(region) for region in value))

    @property
    def regions(self) -> list[str]:
        """Where to launch, in order: ``region``, then the fallbacks."""
        return list(dict.fromkeys([self.region, *self.fallback_regions]))

    @field_validator("region", mode="before")
    @classmethod
    def _region(cls, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"region must be an AWS region name like 'us-east-1', not {value!r}")
        region = value.strip().lower()
        known = known_regions()
        if region not in known:
            close = difflib.get_close_matches(region, sorted(known), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else "pass one like 'us-east-1' or 'eu-west-1'"
            raise ValueError(f"unknown region {value!r}; {hint}")
        return region

    @field_validator("n_workers", mode="before")
    @classmethod
    def _n_workers(cls, value: object) -> int:
        if not _is_int(value) or not 0 <= int(value) <= MAX_WORKERS:
            raise ValueError(f"n_workers={value!r} must be a whole number from 0 to {MAX_WORKERS:,}")
        return int(value)

    @field_validator("min_workers", mode="before")
    @classmethod
    def _min_workers(cls, value: object) -> int | None:
        if value is not None and (not _is_int(value) or int(value) < 1):
            raise ValueError(f"min_workers={value!r} must be a whole number from 1 to n_workers, or None for all")
        return None if value is None else int(value)

    @field_validator("keepalive", "idle_timeout", "max_lifetime", "boot_timeout", mode="before")
    @classmethod
    def _duration(cls, value: object, info: Any) -> timedelta | None:
        name = info.field_name
        if value is None:
            if name == "idle_timeout":
                return None
            if name == "max_lifetime":
                raise ValueError("max_lifetime=None would let the cluster run forever; pass a duration like '7 days'")
            raise ValueError(f"{name} must be a duration like '20 minutes', not None")
        try:
            duration = parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"{name}={value!r}: {exc}") from None
        minimum = timedelta(seconds=10) if name in ("boot_timeout", "keepalive") else timedelta(seconds=60)
        if duration < minimum:
            why = " (heartbeats come every few seconds)" if name == "keepalive" else ""
            raise ValueError(f"{name}={value!r} is shorter than {format_duration(minimum)}{why}; "
                             f"pass at least '{format_duration(minimum)}'")
        return duration

    @field_validator("spot_policy", mode="before")
    @classmethod
    def _spot_policy(cls, value: object) -> str:
        allowed = ("on-demand", "spot", "spot_with_fallback")
        text = str(value).strip().lower() if isinstance(value, str) else value
        text = _SPOT_ALIASES.get(text, text) if isinstance(text, str) else text
        if text not in allowed:
            close = difflib.get_close_matches(str(value).lower(), allowed, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"spot_policy={value!r} is not a policy; {hint}use one of {', '.join(allowed)}")
        return text

    @field_validator("disk_size", mode="before")
    @classmethod
    def _disk_size(cls, value: object) -> int:
        gib = value if _is_int(value) else math.ceil(parse_size_mib(value, "disk_size") / 1024)
        if not MIN_DISK_GIB <= int(gib) <= MAX_DISK_GIB:
            raise ValueError(f"disk_size={value!r} must be {MIN_DISK_GIB} to {MAX_DISK_GIB:,} GiB")
        return int(gib)

    # -- money, people, network -------------------------------------------------------------------------------

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: object) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"tags must be a dict like {{'project': 'churn'}}, not {type(value).__name__}")
        if len(value) > MAX_USER_TAGS:
            raise ValueError(f"tags has {len(value)} entries; AWS allows 50 per resource and vmguard needs a few, "
                             f"so pass at most {MAX_USER_TAGS}")
        tags: dict[str, str] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not 1 <= len(key) <= 128 or not _TAG_TEXT.match(key):
                raise ValueError(f"tag key {key!r} must be 1-128 letters, digits, spaces or _.:/=+-@")
            if key.lower().startswith("aws:"):
                raise ValueError(f"tag key {key!r}: the aws: prefix is reserved by AWS; pick another key")
            if key in RESERVED_TAG_KEYS or key.startswith(RESERVED_TAG_PREFIX):
                raise ValueError(f"tag key {key!r} is set by vmguard itself; use owner=... for the owner, "
                                 "or pick another key")
            text = item if isinstance(item, str) else str(item) if isinstance(item, (int, float)) else None
            if text is None or len(text) > 256 or not _TAG_TEXT.match(text):
                raise ValueError(f"tag {key!r}={item!r}: values must be text of at most 256 letters, digits, "
                                 "spaces or _.:/=+-@")
            tags[key] = text
        return tags

    @field_validator("max_hourly_usd", mode="before")
    @classmethod
    def _max_hourly_usd(cls, value: object) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"max_hourly_usd={value!r} must be a positive number of dollars per hour (e.g. 25), "
                             "or None for no cost cap")
        return float(value)

    @field_validator("owner", mode="before")
    @classmethod
    def _owner(cls, value: object) -> str:
        if not isinstance(value, str) or not 1 <= len(value.strip()) <= 256 or not _TAG_TEXT.match(value.strip()):
            raise ValueError(f"owner={value!r} must be a name or e-mail address (letters, digits, spaces, _.:/=+-@)")
        return value.strip()

    @field_validator("allow_ingress_from", mode="before")
    @classmethod
    def _allow_ingress_from(cls, value: object) -> list[str] | None:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise ValueError("allow_ingress_from must be a list of CIDRs like ['203.0.113.7/32']; "
                             "leave it out to admit only this machine")
        cidrs: list[str] = []
        for item in items:
            try:
                network = ipaddress.ip_network(str(item).strip(), strict=False)
            except ValueError:
                raise ValueError(f"allow_ingress_from: {item!r} is not a CIDR like '203.0.113.7/32'") from None
            if network.prefixlen < (8 if network.version == 4 else 16):
                raise ValueError(f"allow_ingress_from: {item!r} would let much of the internet run code on the cluster "
                                 "(Dask's scheduler port has no authentication); list the networks that need it, "
                                 "e.g. '203.0.113.7/32', or leave it out to admit only this machine")
            if str(network) not in cidrs:
                cidrs.append(str(network))
        return cidrs

    @field_validator("subnet_ids", mode="before")
    @classmethod
    def _subnet_ids(cls, value: object) -> list[str] | None:
        if value is None:
            return None
        ids = _resource_ids("subnet_ids", value)
        if not ids:
            raise ValueError("subnet_ids=[] names no subnet; pass subnets like ['subnet-0123456789abcdef0'], or "
                             "leave it out for the default VPC")
        return ids

    @field_validator("security_group_ids", mode="before")
    @classmethod
    def _security_group_ids(cls, value: object) -> list[str]:
        ids = [] if value is None else _resource_ids("security_group_ids", value)
        if len(ids) > MAX_EXTRA_GROUPS:
            raise ValueError(f"security_group_ids has {len(ids)} groups; AWS allows 5 per VM and the cluster needs "
                             f"one of its own, so pass at most {MAX_EXTRA_GROUPS}")
        return ids

    @field_validator("daemon_url", mode="before")
    @classmethod
    def _daemon_url(cls, value: object) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str) or not re.match(r"^https?://[^/\s:]+(:\d+)?(/\S*)?$", value.strip()):
            raise ValueError(f"daemon_url={value!r} must be an http(s) URL like 'http://127.0.0.1:9464' "
                             f"(or set {DAEMON_URL_ENV})")
        return value.strip().rstrip("/")

    @field_validator("env_s3", mode="before")
    @classmethod
    def _env_s3(cls, value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?$", value.strip()):
            raise ValueError(f"env_s3={value!r} must look like 's3://team-bucket/vmguard-envs/' (or set {ENV_S3_ENV})")
        return value.strip()

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> str:
        allowed = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        text = value.strip().upper() if isinstance(value, str) else value
        text = "WARNING" if text == "WARN" else text
        if text not in allowed:
            raise ValueError(f"log_level={value!r} must be one of {', '.join(allowed)}")
        return text

    @model_validator(mode="before")
    @classmethod
    def _one_source_of_credentials(cls, data: Any) -> Any:
        """An instance profile replaces the forwarded credentials (which would hide the role's)."""
        if isinstance(data, dict) and data.get("instance_profile") is not None:
            if data.get("credentials") is not None:
                raise ValueError("pass credentials='local' or instance_profile=..., not both: forwarded credentials "
                                 "would hide the instance role's")
            data = {**data, "credentials": None}
        return data

    @field_validator("credentials", mode="before")
    @classmethod
    def _credentials(cls, value: object) -> str | None:
        if value is not None and value != "local":
            raise ValueError(f"credentials={value!r} must be 'local' (forward this client's AWS identity) or None")
        return value

    @field_validator("instance_profile", mode="before")
    @classmethod
    def _instance_profile(cls, value: object) -> str | None:
        if value is not None and (not isinstance(value, str) or not re.fullmatch(r"[\w+=,.@-]{1,128}", value)):
            raise ValueError(f"instance_profile={value!r} must be an instance profile's name, like 'team-data-read'")
        return value

    @field_validator("environ", mode="before")
    @classmethod
    def _environ(cls, value: object) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"environ must be a dict of variable names to strings, not {type(value).__name__}")
        for name, text in value.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"environ: {name!r} is not a variable name (letters, digits and _)")
            if not isinstance(text, str):
                raise ValueError(f"environ[{name!r}] must be a string, not {type(text).__name__}")
        return dict(value)

    @model_validator(mode="after")
    def _min_workers_within_n_workers(self) -> ClusterSpec:
        if self.min_workers is not None and self.min_workers > self.n_workers:
            raise ValueError(f"min_workers={self.min_workers} is more than n_workers={self.n_workers}; pass "
                             f"min_workers from 1 to {self.n_workers}, or leave it out for all")
        return self

    @model_validator(mode="after")
    def _private_ip_needs_its_networks(self) -> ClusterSpec:
        if self.use_private_ip and self.allow_ingress_from is None:
            raise ValueError("use_private_ip=True: pass allow_ingress_from=['10.0.0.0/8'] with the networks this "
                             "client reaches the VPC from (its VPN or on-premises range); its public address is not "
                             "where it will connect from")
        return self

    @model_validator(mode="after")
    def _one_way_to_choose_the_type(self) -> ClusterSpec:
        asked = [name for name in ("cpu", "memory", "gpu") if getattr(self, name) is not None]
        if self.vm_type is not None and asked:
            raise ValueError(f"pass either vm_type or {'/'.join(asked)}, not both: vm_type={self.vm_type[0]!r} "
                             f"already fixes the {'/'.join(asked)}")
        return self

    # -- derived ----------------------------------------------------------------------------------------------

    @property
    def required_workers(self) -> int:
        """The fewest workers a launch may end with: ``min_workers``, by default all ``n_workers``."""
        return self.n_workers if self.min_workers is None else self.min_workers

    @property
    def memory_mib(self) -> int | None:
        return None if self.memory is None else int(self.memory.removesuffix("MiB"))

    @property
    def cpu_range(self) -> tuple[int, int] | None:
        if self.cpu is None:
            return None
        return self.cpu if isinstance(self.cpu, tuple) else (self.cpu, self.cpu)

    @property
    def keepalive_seconds(self) -> int:
        return math.ceil(self.keepalive.total_seconds())

    @property
    def idle_timeout_seconds(self) -> int | None:
        return _seconds(self.idle_timeout)

    @property
    def max_lifetime_seconds(self) -> int:
        return math.ceil(self.max_lifetime.total_seconds())


def _is_int(value: object) -> bool:
    return not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and value.is_integer()))


def _resource_id(field: str, value: object) -> str:
    """One EC2 id of the field's kind (``ami-…``, ``subnet-…``, ``sg-…``), or a one-line error with an example."""
    text = value.strip() if isinstance(value, str) else None
    if text is None or not _RESOURCE_ID[field].match(text):
        raise ValueError(f"{field}: {value!r} is not an id like '{_ID_EXAMPLE[field]}'")
    return text


def _resource_ids(field: str, value: object) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{field} must be a list of ids like ['{_ID_EXAMPLE[field]}'], not {value!r}")
    return list(dict.fromkeys(_resource_id(field, item) for item in items))


def _unknown_argument(name: str, fields: list[str]) -> str:
    suggestion = _ARGUMENT_ALIASES.get(name) or next(iter(difflib.get_close_matches(name, fields, n=1, cutoff=0.6)),
                                                     None)
    hint = f"did you mean {suggestion}?" if suggestion else f"the arguments are {', '.join(fields)}"
    return f"unknown argument {name!r}; {hint}"


def _one_line(exc: ValidationError) -> str:
    """The validation errors as one line: our own messages as written, pydantic's with the argument named."""
    parts = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        field = ".".join(str(part) for part in error["loc"])
        if error["type"] != "value_error" and field:
            message = f"{field}={error.get('input')!r}: {message[:1].lower()}{message[1:]}"
        if message not in parts:
            parts.append(message)
    return "; ".join(parts[:3])
