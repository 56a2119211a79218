"""EC2 vCPU quotas in the sandbox account: what EC2 and Service Quotas do that moto does not.

Moto launches any number of instances and answers ``GetServiceQuota`` for VPC quotas only. A test imposes an EC2
vCPU quota with ``SandboxServer.limit_vcpus(code, vcpus)``; from then on, in front of moto:

- an ``ec2:RunInstances`` whose ``MinCount`` instances would take the region's live (pending or running) vCPUs
  counted by that quota above its value is refused as EC2 refuses it: HTTP 400, ``VcpuLimitExceeded`` in EC2's
  error document with EC2's message, nothing launched (moto launches ``MinCount`` instances, so a call asking for
  no more than fits launches all it asks);
- ``servicequotas:GetServiceQuota`` for that code answers its value in Service Quotas' JSON (``Quota``).

Which quota an instance type counts against is AWS's classification, as ``sdk.quotas`` spells it. The check and the
launch are not one atomic step: two launches at the same moment may both fit.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from sdk.quotas import QUOTAS, Quota, quota_for

if TYPE_CHECKING:
    from guard.sandbox.server import Reply, ServedRequest

_LIVE = ("pending", "running")
VCPU_LIMIT_MESSAGE = ("You have requested more vCPU capacity than your current vCPU limit of {limit:g} allows for the "
                      "instance bucket that the specified instance type belongs to. Please visit "
                      "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.")
SERVICE_NAME = "Amazon Elastic Compute Cloud (Amazon EC2)"


class VcpuQuotas:
    """The vCPU quotas imposed on the sandbox account, by quota code; an ``Answer`` for the sandbox server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[str, float] = {}

    def limit(self, code: str, vcpus: float | None) -> None:
        known = sorted(quota.code for quota in QUOTAS.values())
        if code not in known:
            raise ValueError(f"{code} is not an EC2 vCPU quota the sandbox knows; pass one of {', '.join(known)}")
        with self._lock:
            if vcpus is None:
                self._limits.pop(code, None)
            else:
                self._limits[code] = float(vcpus)

    def clear(self) -> None:
        with self._lock:
            self._limits.clear()

    def answer(self, request: ServedRequest) -> Reply | None:
        """Refuse a RunInstances above an imposed quota; answer GetServiceQuota for one. Else let moto answer."""
        with self._lock:
            limits = dict(self._limits)
        if not limits:
            return None
        if request.service == "ec2" and request.operation == "RunInstances":
            return self._run_instances(request, limits)
        if request.service == "servicequotas" and request.operation == "GetServiceQuota":
            return _service_quota(request, limits)
        return None

    def _run_instances(self, request: ServedRequest, limits: dict[str, float]) -> Reply | None:
        params = request.params
        instance_type = str(params.get("InstanceType", ""))
        quota = quota_for(instance_type, params.get("InstanceMarketOptions.MarketType") == "spot")
        if quota is None or quota.code not in limits:
            return None
        limit = limits[quota.code]
        asked = _vcpus(instance_type) * int(params.get("MinCount", 1))
        if _in_use(request.region, quota) + asked <= limit:
            return None
        from guard.sandbox.server import Reply

        return Reply(400, "text/xml;charset=UTF-8", _ec2_error("VcpuLimitExceeded",
                                                               VCPU_LIMIT_MESSAGE.format(limit=limit)))


def _vcpus(instance_type: str) -> int:
    from moto.ec2.models.instance_types import INSTANCE_TYPES

    return int(INSTANCE_TYPES.get(instance_type, {}).get("VCpuInfo", {}).get("DefaultVCpus", 1))


def _in_use(region: str, quota: Quota) -> int:
    """The vCPUs of the region's live instances that count against ``quota``, read on moto's own objects."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    instances: list[Any] = list(ec2_backends[DEFAULT_ACCOUNT_ID][region].all_instances())
    return sum(_vcpus(i.instance_type) for i in instances
               if i.state in _LIVE and quota_for(i.instance_type, i.lifecycle == "spot") == quota)


def _ec2_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID>"
            "</Response>").encode()


def _service_quota(request: ServedRequest, limits: dict[str, float]) -> Reply | None:
    from moto.core import DEFAULT_ACCOUNT_ID

    from guard.sandbox.server import Reply

    code = request.params.get("QuotaCode")
    quota = next((q for q in QUOTAS.values() if q.code == code), None)
    if request.params.get("ServiceCode") != "ec2" or quota is None or code not in limits:
        return None
    body = {"Quota": {
        "ServiceCode": "ec2", "ServiceName": SERVICE_NAME, "QuotaCode": quota.code, "QuotaName": quota.name,
        "QuotaArn": f"arn:aws:servicequotas:{request.region}:{DEFAULT_ACCOUNT_ID}:ec2/{quota.code}",
        "Value": limits[quota.code], "Unit": "None", "Adjustable": True, "GlobalQuota": False,
    }}
    return Reply(200, "application/x-amz-json-1.1", json.dumps(body).encode())
