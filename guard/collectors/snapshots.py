"""The ``snapshots`` collector: EBS snapshots owned by the scanned account, paged at the API maximum.

Filtered by the ``owner-id`` of the account rather than ``OwnerIds=['self']``: the filter means the same on
AWS and is honoured by every implementation of the API.
"""

from __future__ import annotations

from guard.aws import Aws
from guard.model import EbsSnapshot, freeze_tags

PAGE_SIZE = 1000


def collect_snapshots(aws: Aws, region: str) -> tuple[EbsSnapshot, ...]:
    account_id = aws.account_id(region)
    paginator = aws.client("ec2", region).get_paginator("describe_snapshots")
    pages = paginator.paginate(Filters=[{"Name": "owner-id", "Values": [account_id]}],
                               PaginationConfig={"PageSize": PAGE_SIZE})
    return tuple(
        EbsSnapshot(
            id=raw["SnapshotId"],
            volume_id=raw.get("VolumeId") or None,
            size_gib=int(raw.get("VolumeSize", 0)),
            start_time=raw["StartTime"],
            state=raw.get("State", "completed"),
            description=raw.get("Description", ""),
            tags=freeze_tags(raw.get("Tags")),
            storage_tier=raw.get("StorageTier", "standard"),
        )
        for page in pages
        for raw in page.get("Snapshots", [])
    )
