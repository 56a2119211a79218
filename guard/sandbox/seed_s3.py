"""S3 buckets for ``chatty-s3``: chatty ones, near misses, a protected one, and some without request metrics.

Each measured bucket gets what S3 publishes once request metrics are on: ``AWS/S3`` request counts per
(``BucketName``, ``FilterId``), fed with PutMetricData. Its requests fall in nine 5-minute periods ending 5 to
10 minutes before seeding, so a scan in the next few minutes counts every one of them in its one-hour window,
and nothing else: the expected $ is exact. Kept going live, that hour repeats, and so does the count.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from guard.pricing import S3_TIER1_USD_PER_1000, S3_TIER2_USD_PER_1000
from guard.sandbox import metrics
from guard.sandbox.account import PROTECT_TAG, REGIONS, TEAMS
from guard.sandbox.server import seeding_client
from guard.sandbox.truth import UNKNOWN_OWNER, ExpectedFinding, LiveSeries, NearMiss, SeedContext, Seeded

RULE = "chatty-s3"
NAMESPACE = "AWS/S3"
MIN_HOURLY_USD = 0.10
"""chatty-s3's default ``min_hourly_usd``; its default window is one hour, so a bucket's requests per window
are its requests per hour."""
WHOLE_BUCKET = "EntireBucket"
USD_PER_1000 = {
    "PutRequests": S3_TIER1_USD_PER_1000,
    "PostRequests": S3_TIER1_USD_PER_1000,
    "ListRequests": S3_TIER1_USD_PER_1000,
    "GetRequests": S3_TIER2_USD_PER_1000,
    "HeadRequests": S3_TIER2_USD_PER_1000,
    "SelectRequests": S3_TIER2_USD_PER_1000,
    "DeleteRequests": 0.0,
}
IN_WINDOW = [timedelta(minutes=5 * k) for k in range(2, 11)]
"""Datapoints 10 to 50 minutes before the seeding time's 5-minute period: the newest complete periods are in
the window of a scan shortly after, however its end is aligned."""
EARLIER = [timedelta(hours=2) + offset for offset in IN_WINDOW]
"""A burst two hours ago: listed by ListMetrics (last 3h) but outside the window. It is not repeated live: the
emulator keeps listing a metric whatever ``RecentlyActive`` asks, so the bucket stays measured and silent."""
REQUESTS_CYCLE = timedelta(hours=1)
"""Live, a bucket's hour of requests repeats every hour: each one-hour window, however aligned, holds exactly one
hour's datapoints, so its count stays the hour's requests."""

Requests = Mapping[str, int]
"""Requests in the hour before seeding, by AWS/S3 metric name."""


@dataclass(frozen=True)
class _BucketSpec:
    """A bucket; ``filters`` maps request-metrics filter ids to their requests (none: metrics are off)."""

    region: str
    name: str
    owner: str | None
    filters: Mapping[str, Requests] = field(default_factory=dict)
    protect: bool = False
    earlier: bool = False


_E, _W = REGIONS
BUCKETS = (
    # LIST-hammering: Dask workers polling a prefix — $0.72 LIST + $0.0288 GET an hour
    _BucketSpec(_E, "forecasting-features-raw", "maria.garcia",
                {WHOLE_BUCKET: {"ListRequests": 144_000, "GetRequests": 72_000}}),
    # GET-heavy: 800 GET/s of small shards plus HEADs — $1.314 an hour, high severity
    _BucketSpec(_E, "nlp-tokenized-shards", "wei.chen",
                {WHOLE_BUCKET: {"GetRequests": 2_880_000, "HeadRequests": 360_000, "PutRequests": 3_600}}),
    # only a prefix filter: read, and said so in the evidence — $0.153 an hour
    _BucketSpec(_E, "priya-model-artifacts", "priya.patel",
                {"checkpoints": {"ListRequests": 28_800, "PutRequests": 1_800}}),
    # just under $0.10/hour: $0.09948
    _BucketSpec(_E, "vision-labels", "priya.patel",
                {WHOLE_BUCKET: {"PutRequests": 19_800, "GetRequests": 1_200}}),
    # 720,000 DELETEs are free: $0.094
    _BucketSpec(_E, "etl-staging-cleanup", "tom.becker",
                {WHOLE_BUCKET: {"DeleteRequests": 720_000, "ListRequests": 18_000, "GetRequests": 10_000}}),
    # chatty ($1.80/hour) but protected
    _BucketSpec(_E, "data-platform-lake", "tom.becker", {WHOLE_BUCKET: {"ListRequests": 360_000}}, protect=True),
    # chatty two hours ago, silent in the window
    _BucketSpec(_E, "forecast-exports", "sara.okafor", {WHOLE_BUCKET: {"ListRequests": 360_000}}, earlier=True),
    _BucketSpec(_E, "maria-notebooks-backup", "maria.garcia"),
    _BucketSpec(_E, "tmp-export-2024-03", None),
    # whole bucket $0.468 an hour; the busier-looking prefix filter is not the one read
    _BucketSpec(_W, "embeddings-serving-usw2", "wei.chen",
                {WHOLE_BUCKET: {"GetRequests": 1_080_000, "ListRequests": 7_200},
                 "hot-prefix": {"GetRequests": 900_000}}),
    # multipart checkpoint uploads: $0.288 PUT + $0.216 POST an hour
    _BucketSpec(_W, "checkpoint-uploads-usw2", "wei.chen",
                {WHOLE_BUCKET: {"PutRequests": 57_600, "PostRequests": 43_200}}),
    # just under: $0.054 LIST + $0.0456 GET = $0.0996
    _BucketSpec(_W, "sim-results-usw2", "sara.okafor",
                {WHOLE_BUCKET: {"ListRequests": 10_800, "GetRequests": 114_000}}),
    _BucketSpec(_W, "kafka-archive-usw2", "tom.becker", {WHOLE_BUCKET: {"GetRequests": 3_600, "PutRequests": 360}}),
    _BucketSpec(_W, "sara-scratch-usw2", "sara.okafor"),
    _BucketSpec(_W, "golden-datasets-usw2", "priya.patel", protect=True),
)


def _tags(spec: _BucketSpec) -> list[dict[str, str]]:
    tags = [{"Key": "owner", "Value": spec.owner}, {"Key": "team", "Value": TEAMS[spec.owner]}] if spec.owner else []
    return [*tags, PROTECT_TAG] if spec.protect else tags


def _counted_filter(spec: _BucketSpec) -> str:
    return WHOLE_BUCKET if WHOLE_BUCKET in spec.filters else sorted(spec.filters)[0]


def _hourly_usd(requests: Requests) -> float:
    return sum(count * USD_PER_1000[metric] / 1000 for metric, count in requests.items())


def _split(total: int, parts: int, rng: random.Random) -> list[int]:
    """``total`` as ``parts`` uneven non-negative integers that add up exactly."""
    weights = [rng.uniform(0.8, 1.2) for _ in range(parts)]
    shares = [int(total * weight / sum(weights)) for weight in weights[:-1]]
    return [*shares, total - sum(shares)]


def _datums(spec: _BucketSpec, now: datetime, rng: random.Random) -> Iterator[dict]:
    """Each filter's request counts, and their AllRequests total, at each datapoint (on the 5-minute grid)."""
    period_start = metrics.timestamps(now, metrics.PERIOD)[-1]
    offsets = EARLIER if spec.earlier else IN_WINDOW
    for filter_id, requests in spec.filters.items():
        dimensions = [{"Name": "BucketName", "Value": spec.name}, {"Name": "FilterId", "Value": filter_id}]
        per_point = {metric: _split(count, len(offsets), rng) for metric, count in requests.items()}
        for index, offset in enumerate(offsets):
            counts = {metric: values[index] for metric, values in per_point.items()}
            for metric, value in (*counts.items(), ("AllRequests", sum(counts.values()))):
                yield {"MetricName": metric, "Dimensions": dimensions, "Timestamp": period_start - offset,
                       "Value": float(value), "Unit": "Count"}


def _create(endpoint_url: str, spec: _BucketSpec) -> None:
    s3 = seeding_client(endpoint_url, "s3", spec.region)
    location = {} if spec.region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": spec.region}}
    s3.create_bucket(Bucket=spec.name, **location)
    tags = _tags(spec)
    if tags:
        s3.put_bucket_tagging(Bucket=spec.name, Tagging={"TagSet": tags})
    if spec.filters:
        _enable_request_metrics(s3, spec)


def _enable_request_metrics(s3: BaseClient, spec: _BucketSpec) -> None:
    """What a user does to get request metrics; the emulator keeps nothing of it (the series are fed below).

    Moto 5.2.5 takes PutBucketMetricsConfiguration for a CreateBucket: a no-op in us-east-1, rejected elsewhere.
    """
    for filter_id in spec.filters:
        try:
            s3.put_bucket_metrics_configuration(Bucket=spec.name, Id=filter_id,
                                                MetricsConfiguration={"Id": filter_id})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "IllegalLocationConstraintException":
                raise


def _truth(spec: _BucketSpec) -> ExpectedFinding | NearMiss:
    owner = spec.owner or UNKNOWN_OWNER
    if spec.protect:
        return NearMiss(RULE, spec.region, spec.name, "protected")
    if not spec.filters:
        return ExpectedFinding(RULE, spec.region, spec.name, owner, None)  # informational: not measurable
    if spec.earlier:
        return NearMiss(RULE, spec.region, spec.name, "no-requests-in-window")
    hourly = _hourly_usd(spec.filters[_counted_filter(spec)])
    if hourly > MIN_HOURLY_USD:
        return ExpectedFinding(RULE, spec.region, spec.name, owner, hourly)
    return NearMiss(RULE, spec.region, spec.name, "under-threshold")


def seed(context: SeedContext) -> Seeded:
    rng = random.Random("guard.sandbox.seed_s3")
    data: dict[str, list[dict]] = {region: [] for region in REGIONS}
    live: list[LiveSeries] = []
    for spec in BUCKETS:
        _create(context.endpoint_url, spec)
        datums = list(_datums(spec, context.now, rng))
        data[spec.region].extend(datums)
        if not spec.earlier:
            live.extend(LiveSeries.of(spec.region, NAMESPACE, REQUESTS_CYCLE, datums))
    for region, datums in data.items():
        metrics.put(context.endpoint_url, region, datums, namespace=NAMESPACE)
    truths = [_truth(spec) for spec in BUCKETS]
    return Seeded(findings=tuple(t for t in truths if isinstance(t, ExpectedFinding)),
                  near_misses=tuple(t for t in truths if isinstance(t, NearMiss)), live_series=tuple(live))
