"""The ``instances`` collector: every live EC2 instance of a region, paged at the API maximum."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timezone

from guard.aws import Aws
from guard.model import Instance, freeze_tags

PAGE_SIZE = 1000
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
_TRANSITION_TIME = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")


def stopped_since(reason: str | None) -> datetime | None:
    """The time in AWS's StateTransitionReason, e.g. 'User initiated (2024-05-01 12:00:00 GMT)'."""
    match = _TRANSITION_TIME.search(reason or "")
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)


def collect_instances(aws: Aws, region: str) -> tuple[Instance, ...]:
    paginator = aws.client("ec2", region).get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[{"Name": "instance-state-name", "Values": LIVE_STATES}],
        PaginationConfig={"PageSize": PAGE_SIZE},
    )
    instances = []
    for page in pages:
        for reservation in page.get("Reservations", []):
            for raw in reservation.get("Instances", []):
                instances.append(
                    Instance(
                        id=raw["InstanceId"],
                        instance_type=raw["InstanceType"],
                        state=raw["State"]["Name"],
                        arch=raw.get("Architecture", "unknown"),
                        launch_time=raw["LaunchTime"],
                        tags=freeze_tags(raw.get("Tags")),
                        volume_ids=tuple(m["Ebs"]["VolumeId"] for m in raw.get("BlockDeviceMappings", [])
                                         if m.get("Ebs", {}).get("VolumeId")),
                        stopped_since=(stopped_since(raw.get("StateTransitionReason"))
                                       if raw["State"]["Name"] == "stopped" else None),
                        lifecycle=raw.get("InstanceLifecycle"),
                        spot_request_id=raw.get("SpotInstanceRequestId"),
                    )
                )
    return tuple(instances)


TYPES_PAGE_SIZE = 100
"""DescribeInstanceTypes' maximum page."""
TYPES_PER_FILTER = 200
"""Values per Describe filter (EC2 accepts at most 200)."""


def collect_instance_storage(aws: Aws, region: str, instance_types: Iterable[str]) -> dict[str, bool]:
    """Type → InstanceStorageSupported, for the given types: one paged call per 200 types, never one per instance.

    Filtered by ``instance-type`` rather than listed by ``InstanceTypes`` so that a type AWS does not know (or no
    longer offers) is merely absent from the answer instead of failing the whole call.
    """
    wanted = sorted(set(instance_types))
    paginator = aws.client("ec2", region).get_paginator("describe_instance_types")
    found: dict[str, bool] = {}
    for start in range(0, len(wanted), TYPES_PER_FILTER):
        chunk = wanted[start:start + TYPES_PER_FILTER]
        pages = paginator.paginate(Filters=[{"Name": "instance-type", "Values": chunk}],
                                   PaginationConfig={"PageSize": TYPES_PAGE_SIZE})
        for page in pages:
            for info in page.get("InstanceTypes", []):
                found[info["InstanceType"]] = bool(info.get("InstanceStorageSupported"))
    return found
