"""rules.chatty_s3: buckets whose requests cost more than a threshold, from request count records."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from guard.model import Bucket, ClusterUsage, MetricQuery, Series, Severity, Snapshot, UsageReport, freeze_tags
from guard.pricing import HOURS_PER_MONTH, S3_TIER1_USD_PER_1000, S3_TIER2_USD_PER_1000, default_catalog
from guard.rule import Context
from rules.chatty_s3 import (
    CLOUDWATCH_METRICS,
    BucketRequests,
    ChattyS3,
    CloudWatchRequestMetrics,
    hourly_usd,
    hourly_usd_by_operation,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CONTEXT = Context(prices=default_catalog())
LISTING = ("AWS/S3", "AllRequests")
HOUR = 3600

Counts = Mapping[str, float]
"""Request counts over the window by CloudWatch metric name (GetRequests, ListRequests, …)."""


def make_bucket(name: str = "chatty", tags: Mapping[str, str] | None = None) -> Bucket:
    return Bucket(name=name, creation_date=NOW - timedelta(days=30), tags=freeze_tags(tags or {}))


def listing(filters: Mapping[str, Sequence[str]]) -> dict:
    """metric_listings with AllRequests listed for each bucket's filters (dimension sets sorted, as collected)."""
    return {LISTING: tuple(sorted((("BucketName", bucket), ("FilterId", filter_id))
                                  for bucket, ids in filters.items() for filter_id in ids))}


def snapshot(buckets: Sequence[Bucket], filters: Mapping[str, Sequence[str]],
             counts: Mapping[tuple[str, str], Counts], rule: ChattyS3 | None = None,
             region: str = "us-east-1", points: int = 12) -> Snapshot:
    """A snapshot whose metrics hold ``counts[(bucket, filter)]`` spread over ``points`` datapoints."""
    rule = rule or ChattyS3()
    bare = Snapshot(account_id="123456789012", region=region, taken_at=NOW, buckets=tuple(buckets),
                    metric_listings=listing(filters), metrics={})
    metrics: dict[MetricQuery, Series] = {}
    for query in rule.metric_queries(bare, CONTEXT):
        dimensions = dict(query.dimensions)
        total = counts.get((dimensions["BucketName"], dimensions["FilterId"]), {}).get(query.metric)
        if total is not None:
            stamps = tuple(NOW - timedelta(minutes=5 * (points - k)) for k in range(points))
            metrics[query] = Series(stamps, tuple(total / points for _ in range(points)))
    return dataclasses.replace(bare, metrics=metrics)


def evaluate(buckets, filters, counts, rule: ChattyS3 | None = None, context: Context = CONTEXT, **kwargs):
    rule = rule or ChattyS3()
    return rule.evaluate(snapshot(buckets, filters, counts, rule, **kwargs), context)


def per_hour(per_second: float) -> float:
    return per_second * HOUR


# --- pricing on records ---


def test_records_are_priced_per_operation_class() -> None:
    record = BucketRequests("b", "test", HOUR, {"LIST": 1000, "PUT": 1000, "POST": 1000, "COPY": 1000,
                                                "GET": 1000, "HEAD": 1000, "SELECT": 1000, "DELETE": 1_000_000})
    by_operation = hourly_usd_by_operation(record)
    for tier1 in ("LIST", "PUT", "POST", "COPY"):
        assert by_operation[tier1] == pytest.approx(S3_TIER1_USD_PER_1000) == pytest.approx(0.005)
    for tier2 in ("GET", "HEAD", "SELECT"):
        assert by_operation[tier2] == pytest.approx(S3_TIER2_USD_PER_1000) == pytest.approx(0.0004)
    assert by_operation["DELETE"] == 0
    assert hourly_usd(record) == pytest.approx(4 * 0.005 + 3 * 0.0004)


def test_rate_is_normalised_by_the_record_window() -> None:
    # 36,000 LISTs over 2 hours is 18,000 an hour: $0.09/hour.
    assert hourly_usd(BucketRequests("b", "test", 2 * HOUR, {"LIST": 36_000})) == pytest.approx(0.09)
    assert hourly_usd(BucketRequests("b", "test", HOUR // 4, {"LIST": 36_000})) == pytest.approx(0.72)


def test_an_operation_the_price_list_does_not_name_is_billed_as_other_requests() -> None:
    # AWS: "GET, SELECT, and all other requests" share the lower rate.
    assert hourly_usd(BucketRequests("b", "sdk", HOUR, {"RESTORE": 10_000})) == pytest.approx(0.004)


# --- the CloudWatch source ---


def test_queries_are_request_metric_sums_for_the_whole_bucket_filter() -> None:
    rule = ChattyS3()
    bare = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, buckets=(make_bucket("b"),),
                    metric_listings=listing({"b": ["EntireBucket", "logs-prefix"]}))
    queries = list(rule.metric_queries(bare, CONTEXT))
    assert {q.metric for q in queries} == set(CLOUDWATCH_METRICS) == {
        "GetRequests", "PutRequests", "ListRequests", "PostRequests", "HeadRequests", "DeleteRequests",
        "SelectRequests"}
    assert len(queries) == 7
    for query in queries:
        assert (query.namespace, query.stat) == ("AWS/S3", "Sum")
        assert query.dimensions == (("BucketName", "b"), ("FilterId", "EntireBucket"))
        assert (query.period_seconds, query.window_seconds) == (300, 3600)


def test_without_a_whole_bucket_filter_every_filter_is_read_and_the_costliest_judged() -> None:
    rule = ChattyS3(ChattyS3.Config(window="2h", period="1 minute"))
    bare = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, buckets=(make_bucket("b"),),
                    metric_listings=listing({"b": ["tmp-prefix", "whole"]}))
    queries = list(rule.metric_queries(bare, CONTEXT))
    assert {q.dimensions for q in queries} == {(("BucketName", "b"), ("FilterId", "tmp-prefix")),
                                               (("BucketName", "b"), ("FilterId", "whole"))}
    assert {(q.period_seconds, q.window_seconds) for q in queries} == {(60, 7200)}
    # "whole" is a whole-bucket filter under another name: it counts more than the prefix filter, so it is judged
    result = evaluate([make_bucket("b")], {"b": ["tmp-prefix", "whole"]},
                      {("b", "tmp-prefix"): {"ListRequests": 10_000}, ("b", "whole"): {"ListRequests": 90_000}})
    (finding,) = result.findings
    assert finding.evidence["filter_id"] == "whole"
    assert finding.waste_hourly_usd == pytest.approx(90_000 * 0.005 / 1000)


def test_unlisted_and_protected_buckets_are_not_queried() -> None:
    rule = ChattyS3()
    bare = Snapshot(account_id="1", region="us-east-1", taken_at=NOW,
                    buckets=(make_bucket("off"), make_bucket("kept", {"guard:protect": "true"})),
                    metric_listings=listing({"kept": ["EntireBucket"], "elsewhere": ["EntireBucket"]}))
    assert list(rule.metric_queries(bare, CONTEXT)) == []


def test_the_cloudwatch_source_makes_one_record_per_listed_bucket() -> None:
    source = CloudWatchRequestMetrics(period_seconds=300, window_seconds=HOUR)
    buckets = [make_bucket("a"), make_bucket("b"), make_bucket("off")]
    snap = snapshot(buckets, {"a": ["EntireBucket"], "b": ["x"]},
                    {("a", "EntireBucket"): {"ListRequests": 500, "GetRequests": 20}})
    records = {r.bucket: r for r in source.counts(snap, buckets)}
    assert set(records) == {"a", "b"}
    assert records["a"].counts_by_operation["LIST"] == pytest.approx(500)
    assert records["a"].counts_by_operation["GET"] == pytest.approx(20)
    assert records["a"].counts_by_operation["DELETE"] == 0
    assert records["a"].detail["filter_id"] == "EntireBucket" and records["a"].detail["whole_bucket"] is True
    assert sum(records["b"].counts_by_operation.values()) == 0  # listed, quiet in the window: zero requests
    assert records["b"].detail == {"filter_id": "x", "whole_bucket": False, "filters_available": ["x"]}
    assert {r.source for r in records.values()} == {"cloudwatch"}
    assert {r.window_seconds for r in records.values()} == {HOUR}


# --- findings ---


def test_list_hammering_bucket_is_a_priced_finding_with_evidence() -> None:
    bucket = make_bucket("features", {"owner": "maria.garcia"})
    # 40 LIST/s and 20 GET/s for an hour: 144,000 × $0.005/1000 + 72,000 × $0.0004/1000 = $0.7488/hour
    counts = {("features", "EntireBucket"): {"ListRequests": per_hour(40), "GetRequests": per_hour(20)}}
    result = evaluate([bucket], {"features": ["EntireBucket"]}, counts)

    assert result.undetermined == frozenset()
    (finding,) = result.findings
    assert finding.waste_hourly_usd == pytest.approx(0.7488, abs=1e-12)
    assert (finding.rule, finding.resource_id, finding.resource_type, finding.region) == (
        "chatty-s3", "features", "bucket", "us-east-1")
    assert finding.owner == "maria.garcia"
    assert finding.severity is Severity.medium
    assert finding.suggested_action == "reduce-requests"
    evidence = finding.evidence
    assert evidence["dominant_operation"] == "LIST"
    assert evidence["dominant_cost_share"] == pytest.approx(0.72 / 0.7488, abs=1e-4)
    assert evidence["requests_per_second"] == pytest.approx(60)
    assert evidence["requests"] == {"LIST": pytest.approx(144_000), "GET": pytest.approx(72_000)}
    assert evidence["hourly_usd_by_operation"] == {"LIST": pytest.approx(0.72), "GET": pytest.approx(0.0288)}
    assert evidence["monthly_usd"] == pytest.approx(round(0.7488 * HOURS_PER_MONTH, 2))
    assert evidence["source"] == "cloudwatch" and evidence["filter_id"] == "EntireBucket"
    assert evidence["whole_bucket"] is True
    assert evidence["window"] == "1h"
    assert evidence["usd_per_1000"]["LIST"] == 0.005 and evidence["usd_per_1000"]["GET"] == 0.0004
    json.dumps(evidence)
    assert "features" in finding.summary and "60.0 requests/s" in finding.summary
    assert "LIST" in finding.summary and "$0.749/hour" in finding.summary and "$547/month" in finding.summary


def test_get_heavy_bucket_names_get_as_dominant_even_with_fewer_cheap_list_calls() -> None:
    # 800 GET/s ($1.152/h) beats 10 LIST/s ($0.18/h) on cost: GET dominates; >= $1/hour is high severity.
    counts = {("shards", "EntireBucket"): {"GetRequests": per_hour(800), "ListRequests": per_hour(10)}}
    (finding,) = evaluate([make_bucket("shards")], {"shards": ["EntireBucket"]}, counts).findings
    assert finding.evidence["dominant_operation"] == "GET"
    assert finding.waste_hourly_usd == pytest.approx(1.152 + 0.18)
    assert finding.severity is Severity.high
    assert finding.owner == "unknown"


def test_dominance_is_by_cost_not_by_count() -> None:
    # 100 GET/s cost $0.144/h; 10 PUT/s cost $0.18/h: PUT dominates with a tenth of the requests.
    counts = {("b", "EntireBucket"): {"GetRequests": per_hour(100), "PutRequests": per_hour(10)}}
    (finding,) = evaluate([make_bucket("b")], {"b": ["EntireBucket"]}, counts).findings
    assert finding.evidence["dominant_operation"] == "PUT"


def test_evidence_says_a_partial_filter_was_read() -> None:
    counts = {("b", "checkpoints"): {"ListRequests": per_hour(10)}}
    (finding,) = evaluate([make_bucket("b")], {"b": ["checkpoints", "logs"]}, counts).findings
    assert finding.evidence["filter_id"] == "checkpoints"
    assert finding.evidence["whole_bucket"] is False
    assert finding.evidence["filters_available"] == ["checkpoints", "logs"]


def test_the_whole_bucket_filter_wins_over_a_busier_prefix_filter() -> None:
    counts = {("b", "EntireBucket"): {"ListRequests": per_hour(2)},  # $0.036/h: under the threshold
              ("b", "a-prefix"): {"ListRequests": per_hour(50)}}
    result = evaluate([make_bucket("b")], {"b": ["EntireBucket", "a-prefix"]}, counts)
    assert result.findings == ()


@pytest.mark.parametrize(("list_per_hour", "found"), [
    (19_999, False),   # $0.099995/h
    (20_000, False),   # exactly $0.10/h: not *more* than the threshold
    (20_001, True),    # $0.100005/h
    (0, False),
])
def test_threshold_near_misses(list_per_hour: float, found: bool) -> None:
    counts = {("b", "EntireBucket"): {"ListRequests": list_per_hour}}
    result = evaluate([make_bucket("b")], {"b": ["EntireBucket"]}, counts, points=10)  # exact per-period values
    assert bool(result.findings) is found
    assert result.undetermined == frozenset()


def test_deletes_are_free() -> None:
    counts = {("b", "EntireBucket"): {"DeleteRequests": per_hour(5000), "ListRequests": per_hour(5)}}
    # 18,000 LISTs = $0.09/h; 18 million DELETEs add nothing
    assert evaluate([make_bucket("b")], {"b": ["EntireBucket"]}, counts).findings == ()


def test_severity_follows_high_hourly_usd() -> None:
    counts = {("b", "EntireBucket"): {"ListRequests": per_hour(40)}}  # $0.72/h
    args = ([make_bucket("b")], {"b": ["EntireBucket"]}, counts)
    (default,) = evaluate(*args).findings
    (strict,) = evaluate(*args, rule=ChattyS3(ChattyS3.Config(high_hourly_usd=0.5))).findings
    assert (default.severity, strict.severity) == (Severity.medium, Severity.high)


def test_custom_threshold_and_window_apply() -> None:
    # 7,200 LISTs in a 2-hour window: 3,600/h = $0.018/h.
    rule = ChattyS3(ChattyS3.Config(window="2h", min_hourly_usd=0.01))
    counts = {("b", "EntireBucket"): {"ListRequests": 7200}}
    (finding,) = evaluate([make_bucket("b")], {"b": ["EntireBucket"]}, counts, rule=rule, points=24).findings
    assert finding.waste_hourly_usd == pytest.approx(0.018)
    assert finding.evidence["requests_per_second"] == pytest.approx(1.0)
    assert finding.evidence["window"] == "2h"


def test_listed_bucket_without_datapoints_is_quiet_not_unknown() -> None:
    # S3 publishes request metrics only for periods with requests: no datapoint means no request.
    result = evaluate([make_bucket("b")], {"b": ["EntireBucket"]}, {})
    assert result.findings == () and result.undetermined == frozenset()


# --- not measurable ---


def test_bucket_without_request_metrics_is_one_info_finding_with_the_fix() -> None:
    bucket = make_bucket("dark", {"owner": "tom.becker"})
    result = evaluate([bucket], {"other": ["EntireBucket"]}, {})
    (finding,) = result.findings
    assert finding.severity is Severity.info
    assert finding.waste_hourly_usd is None
    assert finding.summary == "not measurable: request metrics are off"
    assert finding.owner == "tom.becker"
    assert finding.key == ("chatty-s3", "us-east-1", "dark")
    assert finding.evidence["fix"] == ("aws s3api put-bucket-metrics-configuration --bucket dark --id EntireBucket "
                                       "--metrics-configuration Id=EntireBucket")
    assert "CloudWatch charges" in finding.evidence["note"]
    json.dumps(finding.evidence)


def test_no_listing_at_all_makes_every_bucket_not_measurable() -> None:
    rule = ChattyS3()
    snap = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, buckets=(make_bucket("a"), make_bucket("b")),
                    metric_listings={}, metrics={})
    result = rule.evaluate(snap, CONTEXT)
    assert [(f.resource_id, f.severity) for f in result.findings] == [("a", Severity.info), ("b", Severity.info)]


def test_protected_buckets_are_skipped_measured_or_not() -> None:
    protected = {"guard:protect": "TRUE"}
    counts = {("loud", "EntireBucket"): {"ListRequests": per_hour(100)}}
    result = evaluate([make_bucket("loud", protected), make_bucket("dark", protected)],
                      {"loud": ["EntireBucket"]}, counts)
    assert result.findings == () and result.undetermined == frozenset()


def test_custom_protect_tag_from_context() -> None:
    context = Context(prices=default_catalog(), protect_tag="keep", protect_value="yes")
    result = evaluate([make_bucket("kept", {"keep": "yes"}), make_bucket("other", {"guard:protect": "true"})],
                      {}, {}, context=context)
    assert [f.resource_id for f in result.findings] == ["other"]


def test_no_buckets_no_findings() -> None:
    assert evaluate([], {"ghost": ["EntireBucket"]}, {}).findings == ()


# --- more sources ---


def test_another_source_plugs_in_and_the_costliest_record_is_judged() -> None:
    class Heartbeats:
        """A stand-in for the SDK's per-cluster counters: no metric queries, records from elsewhere."""

        def metric_queries(self, snapshot, buckets):
            return ()

        def counts(self, snapshot, buckets):
            for bucket in buckets:
                yield BucketRequests(bucket.name, "sdk", 600, {"LIST": 6000}, {"clusters": ["dask-etl"]})

    rule = ChattyS3()
    rule.sources = (*rule.sources, Heartbeats())
    # CloudWatch: 1 LIST/s ($0.018/h); the SDK: 10 LIST/s over 10 minutes ($0.18/h); "dark" has no metrics at all.
    counts = {("b", "EntireBucket"): {"ListRequests": per_hour(1)}}
    result = evaluate([make_bucket("b"), make_bucket("dark")], {"b": ["EntireBucket"]}, counts, rule=rule)
    by_id = {f.resource_id: f for f in result.findings}
    assert set(by_id) == {"b", "dark"}
    assert by_id["b"].waste_hourly_usd == pytest.approx(0.18)
    assert by_id["b"].evidence["source"] == "sdk" and by_id["b"].evidence["clusters"] == ["dask-etl"]
    assert by_id["b"].evidence["window"] == "10m"
    assert by_id["dark"].severity is Severity.medium  # measurable through the SDK: judged, not informational


# --- config ---


@pytest.mark.parametrize("bad", [
    {"min_hourly_usd": -0.01},
    {"high_hourly_usd": -1},
    {"period": "30s"},
    {"period": "90s"},
    {"period": "0s"},
    {"window": "1m", "period": "5m"},
    {"window": "soon"},
    {"threshold": 1},
])
def test_bad_config_is_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        ChattyS3.Config(**bad)


def test_defaults() -> None:
    config = ChattyS3.Config()
    assert (config.window, config.period) == (timedelta(hours=1), timedelta(minutes=5))
    assert (config.min_hourly_usd, config.high_hourly_usd) == (0.10, 1.0)


# --- property ---

METRICS = sorted(CLOUDWATCH_METRICS)


@st.composite
def bucket_spec(draw: st.DrawFn) -> dict:
    return {
        "filters": draw(st.sampled_from([[], ["EntireBucket"], ["p"], ["EntireBucket", "p"]])),
        "protected": draw(st.booleans()),
        "counts": draw(st.dictionaries(st.sampled_from(METRICS), st.floats(min_value=0, max_value=5e6), max_size=4)),
    }


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(bucket_spec(), min_size=1, max_size=5), threshold=st.floats(min_value=0, max_value=5))
def test_findings_are_exactly_the_measured_buckets_over_the_threshold_and_the_unmeasured(
        specs: list[dict], threshold: float) -> None:
    rule = ChattyS3(ChattyS3.Config(min_hourly_usd=threshold))
    buckets, filters, counts = [], {}, {}
    for index, spec in enumerate(specs):
        name = f"b{index}"
        buckets.append(make_bucket(name, {"guard:protect": "true"} if spec["protected"] else {}))
        if spec["filters"]:
            filters[name] = spec["filters"]
            chosen = "EntireBucket" if "EntireBucket" in spec["filters"] else spec["filters"][0]
            counts[(name, chosen)] = spec["counts"]

    result = evaluate(buckets, filters, counts, rule=rule)

    by_id = {f.resource_id: f for f in result.findings}
    assert len(by_id) == len(result.findings)
    for index, spec in enumerate(specs):
        name = f"b{index}"
        if spec["protected"]:
            assert name not in by_id
        elif not spec["filters"]:
            assert by_id[name].severity is Severity.info and by_id[name].waste_hourly_usd is None
        else:
            expected = hourly_usd(BucketRequests(name, "x", HOUR, {
                CLOUDWATCH_METRICS[metric]: count for metric, count in spec["counts"].items()}))
            if abs(expected - threshold) > 1e-9:  # rounding of the per-period split decides ties
                assert (name in by_id) is (expected > threshold)
            if name in by_id:
                assert by_id[name].waste_hourly_usd == pytest.approx(expected)
                assert by_id[name].waste_hourly_usd >= 0


# --- counts the SDK's clusters report in their heartbeats ---


def cluster(cluster_id: str, reports: Sequence[tuple[int, Mapping[str, Mapping[str, int]]]], owner: str = "ana",
            registered_minutes_ago: int = 120, region: str = "us-west-2") -> ClusterUsage:
    """A running cluster whose heartbeats (``minutes ago``, s3_requests) reported S3 calls."""
    return ClusterUsage(cluster_id=cluster_id, owner=owner, region=region, instance_ids=("i-1", "i-2"),
                        registered_at=NOW - timedelta(minutes=registered_minutes_ago),
                        reports=tuple(UsageReport(at=NOW - timedelta(minutes=ago), s3_requests=counts)
                                      for ago, counts in sorted(reports, reverse=True)))


def with_clusters(buckets: Sequence[Bucket], clusters: Sequence[ClusterUsage], filters=None, counts=None) -> Snapshot:
    return dataclasses.replace(snapshot(buckets, filters or {}, counts or {}), clusters=tuple(clusters))


def test_heartbeat_counts_alone_make_a_priced_finding_naming_the_clusters() -> None:
    # two clusters LISTing one bucket: 60 reports a minute apart, 100 LIST/s between them over the last hour
    busy = cluster("vmg-busy01", [(ago, {"chatty": {"LIST": 4_200}}) for ago in range(60)], owner="ana")
    quiet = cluster("vmg-quiet1", [(ago, {"chatty": {"LIST": 1_800, "GET": 600}}) for ago in range(60)], owner="bo")
    evaluation = ChattyS3().evaluate(with_clusters([make_bucket()], [busy, quiet]), CONTEXT)
    (finding,) = evaluation.findings
    lists_per_hour = (4_200 + 1_800) * 60
    expected = lists_per_hour * S3_TIER1_USD_PER_1000 / 1000 + 600 * 60 * S3_TIER2_USD_PER_1000 / 1000
    assert finding.waste_hourly_usd == pytest.approx(expected)
    assert finding.evidence["source"] == "cluster-heartbeats"
    assert finding.evidence["dominant_operation"] == "LIST"
    assert [c["cluster"] for c in finding.evidence["clusters"]] == ["vmg-busy01", "vmg-quiet1"]
    assert finding.owner == "ana"  # the bucket has no owner tag: the cluster making most of the calls
    assert finding.severity is Severity.high


def test_the_bucket_owner_tag_wins_over_the_clusters_owner() -> None:
    busy = cluster("vmg-busy01", [(ago, {"chatty": {"LIST": 4_200}}) for ago in range(60)], owner="ana")
    (finding,) = ChattyS3().evaluate(
        with_clusters([make_bucket(tags={"owner": "data-eng"})], [busy]), CONTEXT).findings
    assert finding.owner == "data-eng"


def test_a_young_cluster_is_judged_on_the_minutes_it_has_reported() -> None:
    # registered 10 minutes ago: 10 × 2,000 LISTs = 20,000 in 10 min → 120,000/hour → $0.60/hour
    young = cluster("vmg-young1", [(ago, {"chatty": {"LIST": 2_000}}) for ago in range(10)],
                    registered_minutes_ago=10)
    (finding,) = ChattyS3().evaluate(with_clusters([make_bucket()], [young]), CONTEXT).findings
    assert finding.waste_hourly_usd == pytest.approx(120_000 * S3_TIER1_USD_PER_1000 / 1000)


def test_reports_older_than_the_window_and_too_short_coverage_are_not_priced() -> None:
    old = cluster("vmg-old001", [(ago, {"chatty": {"LIST": 100_000}}) for ago in range(61, 120)])
    just_started = cluster("vmg-new001", [(0, {"chatty": {"LIST": 100_000}})], registered_minutes_ago=0)
    evaluation = ChattyS3().evaluate(with_clusters([make_bucket()], [old, just_started]), CONTEXT)
    assert [f.severity for f in evaluation.findings] == [Severity.info]  # neither counts: not measurable


def test_the_costlier_source_is_judged_when_cloudwatch_also_counts() -> None:
    rule = ChattyS3()
    cloudwatch_lists = per_hour(10)  # 10 LIST/s measured by CloudWatch: $0.18/hour
    busy = cluster("vmg-busy01", [(ago, {"chatty": {"LIST": 3_000}}) for ago in range(60)])  # 50 LIST/s
    snap = with_clusters([make_bucket()], [busy], {"chatty": ["EntireBucket"]},
                         {("chatty", "EntireBucket"): {"ListRequests": cloudwatch_lists}})
    (finding,) = rule.evaluate(snap, CONTEXT).findings
    assert finding.evidence["source"] == "cluster-heartbeats"
    assert finding.evidence["requests_per_second"] == pytest.approx(50)
    quiet = cluster("vmg-quiet1", [(ago, {"chatty": {"LIST": 60}}) for ago in range(60)])  # 1 LIST/s
    snap = dataclasses.replace(snap, clusters=(quiet,))
    (finding,) = rule.evaluate(snap, CONTEXT).findings
    assert finding.evidence["source"] == "cloudwatch"


def test_buckets_of_other_regions_or_accounts_and_protected_buckets_are_ignored() -> None:
    busy = cluster("vmg-busy01", [(ago, {"elsewhere": {"LIST": 100_000}, "guarded": {"LIST": 100_000}})
                                  for ago in range(60)])
    protected = make_bucket("guarded", tags={"guard:protect": "true"})
    evaluation = ChattyS3().evaluate(with_clusters([protected], [busy]), CONTEXT)
    assert evaluation.findings == ()


def test_cheap_heartbeat_counts_are_quiet() -> None:
    light = cluster("vmg-light1", [(ago, {"chatty": {"GET": 1_000}}) for ago in range(60)])  # $0.024/hour
    assert ChattyS3().evaluate(with_clusters([make_bucket()], [light]), CONTEXT).findings == ()
