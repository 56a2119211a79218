"""The ``images`` collector: AMIs owned by the scanned account, with the EBS snapshots they are built on."""

from __future__ import annotations

from guard.aws import Aws
from guard.model import Image, freeze_tags

PAGE_SIZE = 1000


def collect_images(aws: Aws, region: str) -> tuple[Image, ...]:
    paginator = aws.client("ec2", region).get_paginator("describe_images")
    # Disabled AMIs still hold their snapshots: without them, those snapshots would look orphaned.
    pages = paginator.paginate(Owners=["self"], IncludeDisabled=True, PaginationConfig={"PageSize": PAGE_SIZE})
    return tuple(
        Image(
            id=raw["ImageId"],
            name=raw.get("Name", ""),
            state=raw.get("State", "available"),
            snapshot_ids=tuple(m["Ebs"]["SnapshotId"] for m in raw.get("BlockDeviceMappings", [])
                               if m.get("Ebs", {}).get("SnapshotId")),
            tags=freeze_tags(raw.get("Tags")),
        )
        for page in pages
        for raw in page.get("Images", [])
    )
