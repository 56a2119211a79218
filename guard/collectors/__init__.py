"""Collectors: each fetches one part of a region's snapshot, one file per collector.

Resource collectors are functions ``(aws, region) -> tuple`` keyed by the snapshot part they fill. The derived
parts — metric listings, metric series, log samples — are fetched afterwards from what the rules ask for.
A collector's failure leaves its part unknown and is recorded on the scan; it never hides the others.
"""

from guard.collectors.addresses import collect_addresses
from guard.collectors.buckets import collect_buckets
from guard.collectors.images import collect_images
from guard.collectors.instances import collect_instances
from guard.collectors.launch_sources import collect_launch_sources
from guard.collectors.listings import collect_listings
from guard.collectors.log_groups import collect_log_groups
from guard.collectors.log_samples import collect_log_samples
from guard.collectors.metrics import MAX_QUERIES_PER_CALL, collect_metrics
from guard.collectors.nat_gateways import collect_nat_gateways
from guard.collectors.snapshots import collect_snapshots
from guard.collectors.volumes import collect_volumes

RESOURCE_COLLECTORS = {
    "instances": collect_instances,
    "volumes": collect_volumes,
    "addresses": collect_addresses,
    "nat_gateways": collect_nat_gateways,
    "snapshots": collect_snapshots,
    "images": collect_images,
    "launch_sources": collect_launch_sources,
    "log_groups": collect_log_groups,
    "buckets": collect_buckets,
}
DERIVED_PARTS = ("metric_listings", "metrics", "log_samples")
"""Fetched in this order, after the resources, from what the rules request."""
ALL_PARTS = (*RESOURCE_COLLECTORS, *DERIVED_PARTS)

__all__ = [
    "ALL_PARTS",
    "DERIVED_PARTS",
    "MAX_QUERIES_PER_CALL",
    "RESOURCE_COLLECTORS",
    "collect_listings",
    "collect_log_samples",
    "collect_metrics",
]
