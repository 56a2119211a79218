"""Collectors: each fetches one part of a region's snapshot, one file per collector.

A collector is a function ``(aws, region) -> tuple`` registered by the snapshot part it fills. Its failure
leaves that part unknown and is recorded on the scan; it never hides the other collectors.
"""

from guard.collectors.instances import collect_instances
from guard.collectors.metrics import MAX_QUERIES_PER_CALL, collect_metrics
from guard.collectors.volumes import collect_volumes

RESOURCE_COLLECTORS = {
    "instances": collect_instances,
    "volumes": collect_volumes,
}

__all__ = ["MAX_QUERIES_PER_CALL", "RESOURCE_COLLECTORS", "collect_instances", "collect_metrics", "collect_volumes"]
