"""The ``volumes`` collector: every EBS volume of a region, paged at the API maximum."""

from __future__ import annotations

from guard.aws import Aws
from guard.model import Volume, freeze_tags

PAGE_SIZE = 1000


def collect_volumes(aws: Aws, region: str) -> tuple[Volume, ...]:
    paginator = aws.client("ec2", region).get_paginator("describe_volumes")
    volumes = []
    for page in paginator.paginate(PaginationConfig={"PageSize": PAGE_SIZE}):
        for raw in page.get("Volumes", []):
            volumes.append(
                Volume(
                    id=raw["VolumeId"],
                    volume_type=raw["VolumeType"],
                    size_gib=int(raw["Size"]),
                    state=raw["State"],
                    create_time=raw["CreateTime"],
                    tags=freeze_tags(raw.get("Tags")),
                    attached_to=tuple(a["InstanceId"] for a in raw.get("Attachments", []) if "InstanceId" in a),
                )
            )
    return tuple(volumes)
