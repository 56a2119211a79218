"""The ``instances`` collector: every live EC2 instance of a region, paged at the API maximum."""

from __future__ import annotations

from guard.aws import Aws
from guard.model import Instance, freeze_tags

PAGE_SIZE = 1000
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


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
                    )
                )
    return tuple(instances)
