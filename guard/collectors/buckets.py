"""The ``buckets`` collector: the S3 buckets located in the scanned region, and their tags.

``ListBuckets`` filtered by ``BucketRegion`` (so each region scan sees its own buckets once), tags through the
Resource Groups Tagging API: calls grow with pages, not with buckets.
"""

from __future__ import annotations

from guard.aws import Aws
from guard.collectors.tags import tags_by_arn
from guard.model import Bucket, freeze_tags

PAGE_SIZE = 10000


def collect_buckets(aws: Aws, region: str) -> tuple[Bucket, ...]:
    paginator = aws.client("s3", region).get_paginator("list_buckets")
    raw_buckets = [raw for page in paginator.paginate(BucketRegion=region, PaginationConfig={"PageSize": PAGE_SIZE})
                   for raw in page.get("Buckets", [])]
    # Bucket ARNs are arn:<partition>:s3:::<name>; match on the name so aws-cn and aws-us-gov work too.
    by_arn = tags_by_arn(aws, region, "s3") if raw_buckets else {}
    tags = {arn.rpartition(":")[2]: value for arn, value in by_arn.items()}
    return tuple(
        Bucket(name=raw["Name"], creation_date=raw["CreationDate"], tags=tags.get(raw["Name"], freeze_tags(None)))
        for raw in raw_buckets
    )
