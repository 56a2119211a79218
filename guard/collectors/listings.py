"""The ``metric_listings`` collector: which dimension sets CloudWatch has recent data for (ListMetrics).

Rules use it where the series' dimensions are not known in advance — S3 request metrics per
(BucketName, FilterId), GPU metrics the CloudWatch agent publishes per (InstanceId, index, …).
"""

from __future__ import annotations

from collections.abc import Iterable

from guard.aws import Aws


def collect_listings(aws: Aws, region: str, wanted: Iterable[tuple[str, str]]
                     ) -> dict[tuple[str, str], tuple[tuple[tuple[str, str], ...], ...]]:
    paginator = aws.client("cloudwatch", region).get_paginator("list_metrics")
    listings = {}
    for namespace, metric in dict.fromkeys(wanted):
        # Not RecentlyActive=PT3H: a bucket with request metrics on but no request for 3 hours would look unmeasured.
        pages = paginator.paginate(Namespace=namespace, MetricName=metric)
        dimension_sets = {
            tuple(sorted((d["Name"], d["Value"]) for d in raw.get("Dimensions", [])))
            for page in pages
            for raw in page.get("Metrics", [])
        }
        listings[(namespace, metric)] = tuple(sorted(dimension_sets))
    return listings
