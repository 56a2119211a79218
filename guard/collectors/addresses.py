"""The ``addresses`` collector: the region's Elastic IPs (DescribeAddresses has no paging: one call)."""

from __future__ import annotations

from guard.aws import Aws
from guard.model import Address, freeze_tags


def collect_addresses(aws: Aws, region: str) -> tuple[Address, ...]:
    reply = aws.client("ec2", region).describe_addresses()
    return tuple(
        Address(
            allocation_id=raw.get("AllocationId") or raw["PublicIp"],
            public_ip=raw["PublicIp"],
            association_id=raw.get("AssociationId") or None,
            instance_id=raw.get("InstanceId") or None,
            network_interface_id=raw.get("NetworkInterfaceId") or None,
            tags=freeze_tags(raw.get("Tags")),
        )
        for raw in reply.get("Addresses", [])
    )
