"""A resource's own EC2 tags in one lookup, where moto scans every tag of the region with a regex.

moto answers each instance, volume or snapshot of a Describe call by matching its id against every tag it holds
(``describe_tags(filters={"resource-id": [id]})``): a page of 1,000 instances takes seconds, and a scan test of a
large account spends most of its time there. The tags are held by resource id; reading that entry gives the same
list in the same order (an id has no wildcard, and moto's pattern is anchored), so no answer changes.
"""

from __future__ import annotations

from typing import Any


def install() -> None:
    """Make every moto EC2 resource read its tags by its id (idempotent)."""
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    def get_tags(self: Any) -> list[dict[str, str]]:
        if not self.id:
            return []
        tags = self.ec2_backend.tags.get(self.id)
        if not tags:
            return []
        resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
        return [{"resource_id": self.id, "key": key, "value": value, "resource_type": resource_type}
                for key, value in tags.items()]

    TaggedEC2Resource.get_tags = get_tags
