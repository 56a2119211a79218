"""EC2's vCPU quotas: which one an instance type counts against, its value, and how many more VMs it admits.

EC2 refuses a launch above a vCPU quota with ``VcpuLimitExceeded`` and says neither which quota nor its value.
Each market of each instance class has its own quota in Service Quotas (``service-quotas:GetServiceQuota``,
service code ``ec2``), counted in vCPUs of the region's running instances. :func:`read_quota` reads a value
before launch, best effort (no permission, or no Service Quotas endpoint: the value is just not known), so a
refusal can be answered with the count that fits (:func:`admitted`) and an error that names the quota, its
value and where to ask for more (:func:`describe`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)

SERVICE_CODE = "ec2"
INCREASE_URL = "https://console.aws.amazon.com/servicequotas/home/services/ec2/quotas/{code}?region={region}"
LIVE_STATES = ("pending", "running")
"""The instances a vCPU quota counts."""


@dataclass(frozen=True)
class Quota:
    """One vCPU quota of Service Quotas."""

    code: str
    name: str


_STANDARD = "standard"
QUOTAS: Mapping[tuple[str, bool], Quota] = {
    (_STANDARD, False): Quota("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
    (_STANDARD, True): Quota("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests"),
    ("g", False): Quota("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("g", True): Quota("L-3819A6DF", "All G and VT Spot Instance Requests"),
    ("p", False): Quota("L-417A185B", "Running On-Demand P instances"),
    ("p", True): Quota("L-7212CCBC", "All P Spot Instance Requests"),
}
"""(instance class, spot) → its quota; other classes (X, F, Inf, Trn, DL, high memory…) are not named."""
_NOT_STANDARD = frozenset({"dl", "hpc", "inf", "mac", "trn"})
"""Families whose first letter is a standard one but that have a quota of their own."""
_FAMILY_LETTERS = re.compile(r"^[a-z]+")


def instance_class(instance_type: str) -> str | None:
    """The quota class of a type: ``standard`` (A, C, D, H, I, M, R, T, Z), ``g`` (G and VT), ``p``, or None."""
    found = _FAMILY_LETTERS.match(instance_type.lower())
    letters = found.group(0) if found else ""
    if letters[:1] == "g" or letters == "vt":
        return "g"
    if letters[:1] == "p":
        return "p"
    if letters[:1] and letters[:1] in "acdhimrtz" and letters not in _NOT_STANDARD:
        return _STANDARD
    return None


def quota_for(instance_type: str, spot: bool) -> Quota | None:
    """The vCPU quota that instances of this type in this market count against (None: one vmguard does not name)."""
    kind = instance_class(instance_type)
    return QUOTAS.get((kind, spot)) if kind else None


def read_quota(client: Any, quota: Quota) -> float | None:
    """The quota's current value in the client's region, or None when it cannot be read (best effort)."""
    try:
        reply = client.get_service_quota(ServiceCode=SERVICE_CODE, QuotaCode=quota.code)
    except (ClientError, BotoCoreError) as exc:
        log.info("cannot read the vCPU quota %s (%s)", quota.code, exc)
        return None
    value = reply.get("Quota", {}).get("Value")
    return float(value) if isinstance(value, int | float) else None


def describe(quota: Quota, value: float | None, region: str) -> str:
    """The quota in one phrase: code, name, value, and the console page where an increase is asked for."""
    current = f" is {value:g} vCPUs" if value is not None else ""
    url = INCREASE_URL.format(code=quota.code, region=region)
    return f"vCPU quota {quota.code} \"{quota.name}\"{current} in {region}; ask for more at {url}"


def vcpus_in_use(ec2: Any, quota: Quota, vcpus_of: Mapping[str, int]) -> int | None:
    """The vCPUs of the region's live instances that count against ``quota`` (None if not known).

    One paginated DescribeInstances. An instance's vCPUs come from its ``CpuOptions`` or, failing that, from
    ``vcpus_of`` (type → vCPUs); an instance of a type in neither makes the count unknown.
    """
    used = 0
    try:
        for page in ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-state-name", "Values": list(LIVE_STATES)}]):
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    name = instance.get("InstanceType", "")
                    if quota_for(name, instance.get("InstanceLifecycle") == "spot") != quota:
                        continue
                    cpu = instance.get("CpuOptions") or {}
                    vcpus = cpu.get("CoreCount", 0) * cpu.get("ThreadsPerCore", 0) or vcpus_of.get(name)
                    if not vcpus:
                        return None
                    used += vcpus
    except (ClientError, BotoCoreError) as exc:
        log.info("cannot count the vCPUs in use against %s (%s)", quota.code, exc)
        return None
    return used


def admitted(value: float, in_use: int, vcpus: int) -> int:
    """How many more instances of ``vcpus`` vCPUs a quota of ``value`` vCPUs admits with ``in_use`` used."""
    return max(0, int(value - in_use) // max(1, vcpus))
