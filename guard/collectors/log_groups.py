"""The ``log_groups`` collector: CloudWatch Logs groups (50 a page, the API maximum) and their tags."""

from __future__ import annotations

from datetime import datetime, timezone

from guard.aws import Aws
from guard.collectors.tags import tags_by_arn
from guard.model import LogGroup, freeze_tags

PAGE_SIZE = 50


def collect_log_groups(aws: Aws, region: str) -> tuple[LogGroup, ...]:
    paginator = aws.client("logs", region).get_paginator("describe_log_groups")
    raw_groups = [raw for page in paginator.paginate(PaginationConfig={"PageSize": PAGE_SIZE})
                  for raw in page.get("logGroups", [])]
    tags = tags_by_arn(aws, region, "logs") if raw_groups else {}
    groups = []
    for raw in raw_groups:
        arn = raw.get("logGroupArn") or raw.get("arn", "").removesuffix(":*")
        groups.append(LogGroup(
            name=raw["logGroupName"],
            arn=arn,
            stored_bytes=int(raw.get("storedBytes", 0)),
            retention_days=raw.get("retentionInDays"),
            creation_time=datetime.fromtimestamp(raw.get("creationTime", 0) / 1000, tz=timezone.utc),
            tags=tags.get(arn, freeze_tags(None)),
            log_group_class=raw.get("logGroupClass", "STANDARD"),
        ))
    return tuple(groups)
