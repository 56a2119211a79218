"""The ``chatty-s3`` rule.

Two halves: *request count sources* (CloudWatch's request metrics; the S3 calls registered clusters report in
their heartbeats) turn snapshot data into ``BucketRequests`` records, and the pricing and judging below work on
those records only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from pydantic import Field

from guard.durations import Duration, Period, format_duration
from guard.model import Bucket, Evaluation, Finding, MetricQuery, Severity, Snapshot
from guard.pricing import HOURS_PER_MONTH, S3_TIER1_USD_PER_1000, S3_TIER2_USD_PER_1000
from guard.rule import Context, Rule, WindowedConfig

OPERATION_USD_PER_1000: Mapping[str, float] = {
    "PUT": S3_TIER1_USD_PER_1000,
    "COPY": S3_TIER1_USD_PER_1000,
    "POST": S3_TIER1_USD_PER_1000,
    "LIST": S3_TIER1_USD_PER_1000,
    "GET": S3_TIER2_USD_PER_1000,
    "SELECT": S3_TIER2_USD_PER_1000,
    "HEAD": S3_TIER2_USD_PER_1000,
    "DELETE": 0.0,
}
"""S3 Standard list prices per 1,000 requests by operation class; DELETE is free."""
OTHER_USD_PER_1000 = S3_TIER2_USD_PER_1000
"""AWS bills every request class not named above at the GET rate ("GET, SELECT and all other requests")."""
PRICE_BASIS = "S3 Standard us-east-1 list price per 1,000 requests"

LISTED_METRIC = ("AWS/S3", "AllRequests")
WHOLE_BUCKET_FILTER = "EntireBucket"
"""The filter id AWS's console and docs give a request-metrics configuration covering the whole bucket."""
CLOUDWATCH_METRICS: Mapping[str, str] = {
    "GetRequests": "GET",
    "PutRequests": "PUT",
    "ListRequests": "LIST",
    "PostRequests": "POST",
    "HeadRequests": "HEAD",
    "DeleteRequests": "DELETE",
    "SelectRequests": "SELECT",
}
"""The AWS/S3 request metrics (Sum = request count) and the operation class each one counts."""


@dataclass(frozen=True)
class BucketRequests:
    """What one source counted for one bucket over a window: requests by operation class (GET, LIST, …)."""

    bucket: str
    source: str
    window_seconds: int
    counts_by_operation: Mapping[str, float]
    detail: Mapping[str, object] = field(default_factory=dict)
    """Source-specific facts a person needs to trust the numbers (e.g. which CloudWatch filter was read)."""
    owner: str | None = None
    """Who made the requests, when the source knows (the bucket's owner tag is used when it has one)."""


class RequestCountSource(Protocol):
    """A pure source of S3 request counts: the series it needs, then records built from the snapshot."""

    def metric_queries(self, snapshot: Snapshot, buckets: Sequence[Bucket]) -> Iterable[MetricQuery]: ...

    def counts(self, snapshot: Snapshot, buckets: Sequence[Bucket]) -> Iterable[BucketRequests]: ...


@dataclass(frozen=True)
class CloudWatchRequestMetrics:
    """Counts from S3 request metrics, for buckets with a request-metrics configuration (listed by ListMetrics).

    The whole-bucket filter (``EntireBucket``) when there is one; otherwise every listed filter is read and the
    costliest one judged — each filter counts a subset of the bucket's requests, so the largest is the best
    lower bound (and a whole-bucket filter under another name wins by construction).
    """

    period_seconds: int
    window_seconds: int
    name: str = "cloudwatch"

    def filters(self, snapshot: Snapshot) -> dict[str, list[str]]:
        """Bucket name → the request-metrics filter ids CloudWatch lists for it, sorted."""
        listed = (snapshot.metric_listings or {}).get(LISTED_METRIC, ())
        filters: dict[str, set[str]] = {}
        for dimension_set in listed:
            dimensions = dict(dimension_set)
            if "BucketName" in dimensions and "FilterId" in dimensions:
                filters.setdefault(dimensions["BucketName"], set()).add(dimensions["FilterId"])
        return {bucket: sorted(ids) for bucket, ids in filters.items()}

    @staticmethod
    def chosen_filters(filter_ids: Sequence[str]) -> list[str]:
        return [WHOLE_BUCKET_FILTER] if WHOLE_BUCKET_FILTER in filter_ids else list(filter_ids)

    def _query(self, bucket: str, filter_id: str, metric: str) -> MetricQuery:
        return MetricQuery(namespace="AWS/S3", metric=metric,
                           dimensions=(("BucketName", bucket), ("FilterId", filter_id)), stat="Sum",
                           period_seconds=self.period_seconds, window_seconds=self.window_seconds)

    def metric_queries(self, snapshot: Snapshot, buckets: Sequence[Bucket]) -> Iterable[MetricQuery]:
        filters = self.filters(snapshot)
        for bucket in buckets:
            for filter_id in self.chosen_filters(filters.get(bucket.name, [])):
                for metric in CLOUDWATCH_METRICS:
                    yield self._query(bucket.name, filter_id, metric)

    def counts(self, snapshot: Snapshot, buckets: Sequence[Bucket]) -> Iterable[BucketRequests]:
        """A record per listed bucket; a period without datapoints had no requests (S3 publishes no zeros)."""
        filters = self.filters(snapshot)
        for bucket in buckets:
            if bucket.name not in filters:
                continue
            records = [
                BucketRequests(
                    bucket=bucket.name, source=self.name, window_seconds=self.window_seconds,
                    counts_by_operation={
                        operation: sum(snapshot.series(self._query(bucket.name, filter_id, metric)).values)
                        for metric, operation in CLOUDWATCH_METRICS.items()},
                    detail={"filter_id": filter_id, "whole_bucket": filter_id == WHOLE_BUCKET_FILTER,
                            "filters_available": filters[bucket.name]},
                )
                for filter_id in self.chosen_filters(filters[bucket.name])
            ]
            yield max(records, key=hourly_usd)


MIN_REPORTED_SECONDS = 60
"""Heartbeat reports covering less than this (a cluster that just started) are too short to price a rate from."""


@dataclass(frozen=True)
class ClusterReportedRequests:
    """Counts the SDK's clusters reported in their heartbeats (S3 calls made on their VMs), summed over clusters.

    Each cluster's count is its rate over the time its reports in the window cover, so a cluster that started ten
    minutes ago is judged on those ten minutes; the record carries the window's worth at the summed rate.
    """

    window_seconds: int
    name: str = "cluster-heartbeats"

    def metric_queries(self, snapshot: Snapshot, buckets: Sequence[Bucket]) -> Iterable[MetricQuery]:
        return ()

    def counts(self, snapshot: Snapshot, buckets: Sequence[Bucket]) -> Iterable[BucketRequests]:
        names = {bucket.name for bucket in buckets}
        start = snapshot.taken_at - timedelta(seconds=self.window_seconds)
        totals: dict[str, dict[str, float]] = {}
        clusters: dict[str, list[dict[str, object]]] = {}
        for cluster in snapshot.clusters or ():
            reports, covered = cluster.reported_since(start, snapshot.taken_at)
            if covered < MIN_REPORTED_SECONDS:
                continue
            scale = self.window_seconds / covered
            by_bucket: dict[str, float] = {}
            for report in reports:
                for bucket, operations in report.s3_requests.items():
                    if bucket not in names:
                        continue
                    for operation, count in operations.items():
                        totals.setdefault(bucket, {}).setdefault(operation.upper(), 0.0)
                        totals[bucket][operation.upper()] += count * scale
                        by_bucket[bucket] = by_bucket.get(bucket, 0.0) + count
            for bucket, requests in by_bucket.items():
                clusters.setdefault(bucket, []).append({
                    "cluster": cluster.cluster_id, "owner": cluster.owner, "region": cluster.region,
                    "requests": int(requests), "over": format_duration(timedelta(seconds=round(covered)))})
        for bucket, counts in sorted(totals.items()):
            ranked = sorted(clusters[bucket], key=lambda c: (-int(c["requests"]), str(c["cluster"])))
            yield BucketRequests(bucket=bucket, source=self.name, window_seconds=self.window_seconds,
                                 counts_by_operation=counts, detail={"clusters": ranked},
                                 owner=str(ranked[0]["owner"]))


def usd_per_1000(operation: str) -> float:
    return OPERATION_USD_PER_1000.get(operation, OTHER_USD_PER_1000)


def hourly_usd_by_operation(record: BucketRequests) -> dict[str, float]:
    """$ per hour each operation class costs at the record's request rate."""
    hours = record.window_seconds / 3600
    return {operation: count * usd_per_1000(operation) / 1000 / hours
            for operation, count in record.counts_by_operation.items()}


def hourly_usd(record: BucketRequests) -> float:
    return sum(hourly_usd_by_operation(record).values())


def _owner(bucket: Bucket, record: BucketRequests, context: Context) -> str:
    owner = context.owner_of(bucket.tags)
    return record.owner if owner == "unknown" and record.owner else owner


class ChattyS3Config(WindowedConfig):
    window: Duration = Field(timedelta(hours=1), description="how far back requests are counted")
    period: Period = Field(timedelta(minutes=5), description="CloudWatch period the request counts are summed by")
    min_hourly_usd: float = Field(0.10, ge=0, description="request cost per hour above which a bucket is reported")
    high_hourly_usd: float = Field(1.0, ge=0, description="request cost per hour from which a finding is high severity")


class ChattyS3(Rule):
    """Buckets whose request rate costs more than `min_hourly_usd`, priced per request class.

    What it detects
        A bucket whose S3 requests over the `window` cost more than `min_hourly_usd` per hour, counted from the
        CloudWatch `AWS/S3` request metrics (`GetRequests`, `PutRequests`, `ListRequests`, … per `BucketName` and
        `FilterId`; the whole-bucket filter `EntireBucket` when there is one), and from the S3 calls the SDK's
        clusters report in their heartbeats (the costlier of the two counts is judged). The finding names the
        dominant operation class, the requests per second, the projected $/month and, from heartbeats, the
        clusters and owners making the calls. Buckets measured by neither are listed once, as information (not
        waste), with the command that enables request metrics.
    Why it costs money
        S3 bills every request: PUT, COPY, POST and LIST at $0.005 per 1,000, GET, SELECT and HEAD at $0.0004 per
        1,000. A Dask job listing a prefix in a loop at 100 requests/s is $1.80 an hour, $1,314 a month, for a
        bucket whose storage may cost a few dollars.
    Example
        `forecasting-features` answering 40 LIST/s from a workers' polling loop: $0.72/hour, $526/month.
    Fix
        Cache listings (list once, pass the keys to the workers), batch small objects into larger files, and read
        through a single manifest instead of HEAD/GET per object; enable request metrics where they are off.
    """

    id = "chatty-s3"
    resource_type = "bucket"
    needs = frozenset({"buckets", "metric_listings", "metrics"})
    uses = frozenset({"clusters"})
    listings = (LISTED_METRIC,)
    inputs = ("S3 buckets and their tags; CloudWatch AWS/S3 request metrics (GetRequests, PutRequests, ListRequests, "
              "PostRequests, HeadRequests, DeleteRequests, SelectRequests: Sum) per BucketName and FilterId; S3 "
              "requests by bucket and operation class from registered clusters' heartbeats, when they report them")
    waste_formula = ("requests per hour × the class's $/1,000 (PUT/COPY/POST/LIST $0.005, GET/SELECT/HEAD $0.0004, "
                     "DELETE free) ÷ 1,000")
    suggested_action = "reduce-requests"
    iam_permissions = ("s3:ListAllMyBuckets", "tag:GetResources", "cloudwatch:ListMetrics",
                       "cloudwatch:GetMetricData")
    Config = ChattyS3Config
    config: ChattyS3Config

    def __init__(self, config: ChattyS3Config | None = None):
        super().__init__(config)
        self.cloudwatch = CloudWatchRequestMetrics(period_seconds=int(self.config.period.total_seconds()),
                                                   window_seconds=int(self.config.window.total_seconds()))
        self.sources: tuple[RequestCountSource, ...] = (
            self.cloudwatch, ClusterReportedRequests(window_seconds=int(self.config.window.total_seconds())))

    @staticmethod
    def _buckets(snapshot: Snapshot, context: Context) -> list[Bucket]:
        return [bucket for bucket in snapshot.buckets or () if not context.is_protected(bucket.tags)]

    def metric_queries(self, snapshot: Snapshot, context: Context) -> Iterable[MetricQuery]:
        buckets = self._buckets(snapshot, context)
        for source in self.sources:
            yield from source.metric_queries(snapshot, buckets)

    def evaluate(self, snapshot: Snapshot, context: Context) -> Evaluation:
        buckets = self._buckets(snapshot, context)
        records: dict[str, list[BucketRequests]] = {}
        for source in self.sources:
            for record in source.counts(snapshot, buckets):
                records.setdefault(record.bucket, []).append(record)
        findings = []
        for bucket in buckets:
            if bucket.name not in records:
                findings.append(self._not_measurable(bucket, snapshot.region, context))
                continue
            # Sources overlap (a cluster's calls are also in the bucket's CloudWatch counts): judge on the costliest.
            record = max(records[bucket.name], key=hourly_usd)
            if hourly_usd(record) > self.config.min_hourly_usd:
                findings.append(self._finding(bucket, record, snapshot.region, context))
        return Evaluation(findings=tuple(findings))

    def _finding(self, bucket: Bucket, record: BucketRequests, region: str, context: Context) -> Finding:
        by_operation = hourly_usd_by_operation(record)
        hourly = sum(by_operation.values())
        dominant = max(by_operation, key=lambda operation: (by_operation[operation], operation))
        total = sum(record.counts_by_operation.values())
        per_second = total / record.window_seconds
        monthly = hourly * HOURS_PER_MONTH
        share = by_operation[dominant] / hourly
        window = format_duration(timedelta(seconds=record.window_seconds))
        return Finding(
            rule=self.id,
            resource_id=bucket.name,
            resource_type=self.resource_type,
            region=region,
            owner=_owner(bucket, record, context),
            severity=Severity.high if hourly >= self.config.high_hourly_usd else Severity.medium,
            waste_hourly_usd=hourly,
            summary=(f"s3://{bucket.name}: {per_second:,.1f} requests/s, mostly {dominant} ({share:.0%} of the cost) — "
                     f"${hourly:.3f}/hour, ${monthly:,.0f}/month"),
            suggested_action=self.suggested_action,
            evidence={
                "bucket": bucket.name,
                "source": record.source,
                **record.detail,
                "window": window,
                "dominant_operation": dominant,
                "dominant_cost_share": round(share, 4),
                "requests": {operation: count for operation, count in record.counts_by_operation.items() if count},
                "requests_per_second": round(per_second, 3),
                "hourly_usd_by_operation": {operation: round(usd, 6) for operation, usd in by_operation.items()
                                            if usd},
                "usd_per_1000": {operation: usd_per_1000(operation) for operation in record.counts_by_operation},
                "price_basis": PRICE_BASIS,
                "monthly_usd": round(monthly, 2),
            },
        )

    def _not_measurable(self, bucket: Bucket, region: str, context: Context) -> Finding:
        command = (f"aws s3api put-bucket-metrics-configuration --bucket {bucket.name} --id {WHOLE_BUCKET_FILTER} "
                   f"--metrics-configuration Id={WHOLE_BUCKET_FILTER}")
        return Finding(
            rule=self.id,
            resource_id=bucket.name,
            resource_type=self.resource_type,
            region=region,
            owner=context.owner_of(bucket.tags),
            severity=Severity.info,
            waste_hourly_usd=None,
            summary="not measurable: request metrics are off",
            suggested_action="enable-request-metrics",
            evidence={
                "bucket": bucket.name,
                "reason": ("CloudWatch lists no AWS/S3 request metrics for this bucket in the last 3 hours: "
                           "request metrics are off (or on, with no request since)"),
                "fix": command,
                "note": "CloudWatch charges for these metrics (per metric per month, like any custom metric)",
            },
        )
