"""Tags of resources whose describe calls do not return them, in one paged call per resource type.

The Resource Groups Tagging API answers for a whole region (100 resources a page), where the services'
own ``ListTagsForResource``/``GetBucketTagging`` would cost one call per resource.
"""

from __future__ import annotations

from guard.aws import Aws
from guard.model import Tags, freeze_tags

PAGE_SIZE = 100


def tags_by_arn(aws: Aws, region: str, resource_type: str) -> dict[str, Tags]:
    paginator = aws.client("resourcegroupstaggingapi", region).get_paginator("get_resources")
    pages = paginator.paginate(ResourceTypeFilters=[resource_type], ResourcesPerPage=PAGE_SIZE)
    return {
        mapping["ResourceARN"]: freeze_tags(mapping.get("Tags"))
        for page in pages
        for mapping in page.get("ResourceTagMappingList", [])
    }
