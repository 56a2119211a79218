"""The ``nat_gateways`` collector: NAT gateways that bill (pending or available), paged at the API maximum."""

from __future__ import annotations

from guard.aws import Aws
from guard.model import NatGateway, freeze_tags

PAGE_SIZE = 1000


def collect_nat_gateways(aws: Aws, region: str) -> tuple[NatGateway, ...]:
    paginator = aws.client("ec2", region).get_paginator("describe_nat_gateways")
    pages = paginator.paginate(Filters=[{"Name": "state", "Values": ["pending", "available"]}],
                               PaginationConfig={"PageSize": PAGE_SIZE})
    return tuple(
        NatGateway(
            id=raw["NatGatewayId"],
            state=raw["State"],
            create_time=raw["CreateTime"],
            vpc_id=raw.get("VpcId", ""),
            subnet_id=raw.get("SubnetId", ""),
            connectivity_type=raw.get("ConnectivityType", "public"),
            tags=freeze_tags(raw.get("Tags")),
        )
        for page in pages
        for raw in page.get("NatGateways", [])
    )
