"""Indexes over the emulator's CloudWatch datapoints and EC2 tags: the same answers as stock moto, without its scans.

Stock moto answers every GetMetricStatistics by scanning every stored datapoint, and every GetMetricData query by
scanning every datapoint of the window once per period; and it finds an EC2 resource's tags by scanning the tags of
every resource, for every resource it describes. At 1,000 instances with three 3-hour series each (108,000
datapoints) vmguard's GetMetricData calls outlast botocore's read timeout, and at 10,000 instances one
DescribeInstances takes minutes: a scan's wall time would measure the emulator, not the client.

``install()`` (in the emulator's process) keeps, per metric name and dimension, the datapoints in the order moto
stored them and runs moto's own code for each query over the few datapoints that can match: moto's code still does
all the filtering, so its answers are unchanged, only which datapoints it looks at changes. A resource's tags are
read from moto's own tag table by its id, in moto's order, when moto asks for one resource id's tags. Both clients
of a benchmark talk to the same indexed emulator; ``tests/integration/test_bench.py`` compares the answers with
stock moto's.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

_local = threading.local()
_lock = threading.Lock()
_originals: dict[str, Callable] = {}


class _Index:
    """The backend's ``metric_data`` (append-only) by (namespace, name) and by (name, dimension name, value)."""

    def __init__(self, source: list) -> None:
        self.source = source
        self.count = 0
        self.by_metric: dict[tuple[str, str], list] = defaultdict(list)
        self.by_dimension: dict[tuple[str, str, str], list] = defaultdict(list)

    def update(self) -> None:
        for datum in self.source[self.count:]:
            self.by_metric[(datum.namespace, datum.name)].append(datum)
            for name, value in {(d.name, d.value) for d in datum.dimensions}:
                self.by_dimension[(datum.name, name, value)].append(datum)
        self.count = len(self.source)


def _candidates(backend: Any, namespace: str | None, name: str, dimensions: Iterable[tuple[str, Any]]) -> list:
    """A superset, in moto's order, of the stored datapoints a query can match, then moto's generated ones."""
    with _lock:
        index = backend.__dict__.get("_bench_index")
        if index is None or index.source is not backend.metric_data or index.count > len(backend.metric_data):
            index = backend.__dict__["_bench_index"] = _Index(backend.metric_data)
        index.update()
        known = [(key, value) for key, value in dimensions if key is not None and value is not None]
        if known:
            stored = list(index.by_dimension.get((name, *known[0]), ()))
        elif namespace is not None:
            stored = list(index.by_metric.get((namespace, name), ()))
        else:  # no way to narrow it down
            stored = list(backend.metric_data)
    return stored + list(backend.aws_metric_data)


def _run_over(candidates: list, call: Callable[[], Any]) -> Any:
    _local.candidates = candidates
    try:
        return call()
    finally:
        _local.candidates = None


def _get_all_metrics(self: Any) -> list:
    candidates = getattr(_local, "candidates", None)
    return candidates if candidates is not None else _originals["CloudWatchBackend.get_all_metrics"](self)


def _get_metric_statistics(self: Any, namespace: str, metric_name: str, start_time: Any, end_time: Any, period: int,
                           stats: list[str], dimensions: list[dict[str, str]], unit: str | None = None) -> Any:
    # moto keeps a datapoint when every asked dimension is among its own: one asked (name, value) narrows it down
    candidates = _candidates(self, namespace, metric_name,
                             [(d.get("Name"), d.get("Value")) for d in dimensions or ()])
    return _run_over(candidates, lambda: _originals["CloudWatchBackend.get_metric_statistics"](
        self, namespace, metric_name, start_time, end_time, period, stats, dimensions=dimensions, unit=unit))


def _get_metric_data(self: Any, queries: list[dict[str, Any]], start_time: Any, end_time: Any,
                     scan_by: str = "TimestampAscending") -> list[dict[str, Any]]:
    original = _originals["CloudWatchBackend.get_metric_data"]
    if not queries or any("MetricStat" not in query for query in queries):
        return original(self, queries, start_time, end_time, scan_by)  # expressions read every query's result
    results: list[dict[str, Any]] = []
    for query in queries:  # moto answers MetricStat queries one by one, in order: the same, query by query
        metric = query["MetricStat"]["Metric"]
        dimensions = [(d.get("Name"), d.get("Value")) for d in metric.get("Dimensions", ())]
        # with dimensions moto matches the name and the exact dimension set (not the namespace)
        candidates = _candidates(self, None if dimensions else metric["Namespace"], metric["MetricName"], dimensions)
        results.extend(_run_over(candidates, lambda query=query: original(self, [query], start_time, end_time,
                                                                           scan_by)))
    return results


_WILDCARDS = frozenset("*?[]\\")


def _describe_tags(self: Any, filters: dict[str, list[str]] | None = None) -> list[dict[str, str]]:
    """One resource's tags straight from moto's table (what every described resource asks for), else moto's scan."""
    from moto.ec2.models import tags as moto_tags

    if filters is not None and list(filters) == ["resource-id"] and len(filters["resource-id"]) == 1:
        resource_id = filters["resource-id"][0]
        if not _WILDCARDS.intersection(resource_id):  # moto matches the id as an exact fnmatch pattern
            kind = moto_tags.EC2_PREFIX_TO_RESOURCE.get(moto_tags.get_prefix(resource_id), "")
            return [{"resource_id": resource_id, "key": key, "value": value, "resource_type": kind}
                    for key, value in dict(self.tags.get(resource_id) or {}).items()]
    return _originals["TagBackend.describe_tags"](self, filters)


def _patches() -> list[tuple[type, str, Callable]]:
    from moto.cloudwatch.models import CloudWatchBackend
    from moto.ec2.models.tags import TagBackend

    return [(CloudWatchBackend, "get_all_metrics", _get_all_metrics),
            (CloudWatchBackend, "get_metric_statistics", _get_metric_statistics),
            (CloudWatchBackend, "get_metric_data", _get_metric_data),
            (TagBackend, "describe_tags", _describe_tags)]


def install() -> None:
    """Index moto's CloudWatch and EC2 tags in this process (idempotent)."""
    with _lock:
        if _originals:
            return
        for owner, name, replacement in _patches():
            _originals[f"{owner.__name__}.{name}"] = owner.__dict__[name]
            setattr(owner, name, replacement)


def uninstall() -> None:
    """Back to stock moto."""
    with _lock:
        if not _originals:
            return
        for owner, name, _ in _patches():
            setattr(owner, name, _originals[f"{owner.__name__}.{name}"])
        _originals.clear()
