"""GetMetricData batching: 500 queries a call, NextToken followed, per-query errors fail the collector."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import boto3
import pytest
from botocore.stub import ANY, Stubber

from guard.aws import Aws
from guard.collectors.metrics import MetricsError, collect_metrics
from guard.model import MetricQuery

NOW = datetime(2026, 5, 1, 12, 3, 30, tzinfo=timezone.utc)


def queries(n: int, window: int = 3600, period: int = 300) -> list[MetricQuery]:
    return [MetricQuery("AWS/EC2", "CPUUtilization", (("InstanceId", f"i-{k:05d}"),), "Average", period, window)
            for k in range(n)]


@pytest.fixture
def aws() -> Aws:
    session = boto3.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
    return Aws(session=session)


def test_batches_of_500_with_next_token_and_window_on_complete_periods(aws: Aws) -> None:
    wanted = queries(1201)
    client = aws.client("cloudwatch", "us-east-1")
    t1, t2 = NOW - timedelta(minutes=13, seconds=30), NOW - timedelta(minutes=8, seconds=30)
    reported: list[int] = []
    with Stubber(client) as stub:
        for _ in range(3):
            expected = {"MetricDataQueries": ANY, "StartTime": datetime(2026, 5, 1, 10, 55, tzinfo=timezone.utc),
                        "EndTime": datetime(2026, 5, 1, 11, 55, tzinfo=timezone.utc), "ScanBy": "TimestampAscending"}
            stub.add_response("get_metric_data", {"MetricDataResults": [
                {"Id": "q0", "Timestamps": [t2], "Values": [2.0], "StatusCode": "PartialData"}],
                "NextToken": "more"}, expected)
            stub.add_response("get_metric_data", {"MetricDataResults": [
                {"Id": "q0", "Timestamps": [t1], "Values": [1.0], "StatusCode": "Complete"}]},
                expected | {"NextToken": "more"})
        series = collect_metrics(aws, "us-east-1", wanted + wanted[:10], NOW, progress=reported.append)
        stub.assert_no_pending_responses()
    assert reported == [500, 500, 201]  # batch sizes; a query asked twice is fetched once
    assert len(series) == 1201
    first_of_each_batch = [wanted[0], wanted[500], wanted[1000]]
    for query in first_of_each_batch:
        assert series[query].values == (1.0, 2.0) and series[query].timestamps == (t1, t2)  # merged, oldest first
    assert len(series[wanted[1]]) == 0  # no datapoints: an empty series, not an error


def test_a_forbidden_query_fails_the_collector(aws: Aws) -> None:
    client = aws.client("cloudwatch", "us-east-1")
    with Stubber(client) as stub:
        stub.add_response("get_metric_data", {"MetricDataResults": [
            {"Id": "q0", "Timestamps": [], "Values": [], "StatusCode": "Forbidden"}]})
        with pytest.raises(MetricsError, match="Forbidden"):
            collect_metrics(aws, "us-east-1", queries(1), NOW)
