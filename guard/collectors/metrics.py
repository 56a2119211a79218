"""The ``metrics`` collector: every series the rules asked for, through GetMetricData, 500 queries a call."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from guard.aws import Aws
from guard.model import MetricQuery, Series

MAX_QUERIES_PER_CALL = 500


class MetricsError(RuntimeError):
    """CloudWatch answered, but not with the data asked for."""


def _batches(queries: list[MetricQuery], size: int) -> Iterable[list[MetricQuery]]:
    for start in range(0, len(queries), size):
        yield queries[start:start + size]


def _request(query: MetricQuery, query_id: str) -> dict:
    return {
        "Id": query_id,
        "MetricStat": {
            "Metric": {
                "Namespace": query.namespace,
                "MetricName": query.metric,
                "Dimensions": [{"Name": name, "Value": value} for name, value in query.dimensions],
            },
            "Period": query.period_seconds,
            "Stat": query.stat,
        },
        "ReturnData": True,
    }


def collect_metrics(aws: Aws, region: str, queries: Iterable[MetricQuery], now: datetime,
                    progress: Callable[[int], None] | None = None) -> dict[MetricQuery, Series]:
    """Fetch each distinct query once; queries sharing a window and period share calls of up to 500 queries.

    The window ends at the last *complete* period before the current one: CloudWatch publishes basic-monitoring
    datapoints minutes late, and a half-filled newest period would read as missing data.
    """
    by_window: dict[tuple[int, int], list[MetricQuery]] = defaultdict(list)
    for query in dict.fromkeys(queries):
        by_window[(query.window_seconds, query.period_seconds)].append(query)
    client = aws.client("cloudwatch", region)
    results: dict[MetricQuery, Series] = {}
    for (window, period), window_queries in by_window.items():
        epoch = int(now.timestamp())
        end = datetime.fromtimestamp(epoch - epoch % period - period, tz=now.tzinfo)
        start = end - timedelta(seconds=window)
        for batch in _batches(window_queries, MAX_QUERIES_PER_CALL):
            ids = {f"q{index}": query for index, query in enumerate(batch)}
            points: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
            kwargs = {
                "MetricDataQueries": [_request(query, query_id) for query_id, query in ids.items()],
                "StartTime": start,
                "EndTime": end,
                "ScanBy": "TimestampAscending",
            }
            while True:
                reply = client.get_metric_data(**kwargs)
                for result in reply.get("MetricDataResults", []):
                    if result.get("StatusCode") in ("InternalError", "Forbidden"):
                        raise MetricsError(f"GetMetricData {result['Id']}: {result.get('StatusCode')}")
                    pairs = zip(result.get("Timestamps", []), result.get("Values", []), strict=True)
                    points[result["Id"]].extend(pairs)
                token = reply.get("NextToken")
                if not token:
                    break
                kwargs["NextToken"] = token
            for query_id, query in ids.items():
                ordered = sorted(points.get(query_id, ()))
                results[query] = Series(tuple(t for t, _ in ordered), tuple(v for _, v in ordered))
            if progress:
                progress(len(batch))
    return results
