"""rules.debug_logging: expensive log groups whose sampled events are mostly DEBUG, and the level classifier."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from guard.model import (
    ClusterUsage,
    LogGroup,
    LogSample,
    MetricQuery,
    Series,
    Severity,
    Snapshot,
    UsageReport,
    freeze_tags,
)
from guard.pricing import GB, HOURS_PER_MONTH, LOGS_INGEST_USD_PER_GB, default_catalog
from guard.rule import Context
from rules.debug_logging import DebugLogging, billed_bytes, debug_share, is_debug, log_level

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CONTEXT = Context(prices=default_catalog())
POINTS = 12  # default window 1h / period 5 min

DEBUG_LINE = "2024-05-01 11:59:01,123 - distributed.worker - DEBUG - Heartbeat: tcp://10.0.0.1:8786"
INFO_LINE = "2024-05-01 11:59:01,123 - distributed.core - INFO - Starting Worker plugin shuffle!!!"
assert len(DEBUG_LINE) == len(INFO_LINE)  # equal sizes make byte shares equal event shares below


# --- the classifier ---


@pytest.mark.parametrize(("message", "level"), [
    (DEBUG_LINE, "debug"),
    (INFO_LINE, "info"),
    ("DEBUG:distributed.worker:Heartbeat", "debug"),
    ("2024-05-01T11:59:01.123Z DEBUG 1 --- [nio-8080-exec-3] c.t.App : cache miss", "debug"),
    ("2024-05-01T11:59:01.123Z TRACE 1 --- [main] c.t.App : resolved bean", "trace"),
    ("2024-05-01T11:59:01.123Z  WARN 1 --- [main] c.t.App : slow query", "warn"),
    ("[DEBUG]\t2024-05-01T11:59:01.123Z\t8f3c\tEvent: {}", "debug"),
    ("[debug] connecting to 10.0.0.1", "debug"),
    ("<Trace> entering loop", "trace"),
    ("[main] INFO org.apache.kafka.Worker - started", "info"),
    ('time=2024-05-01T11:59:01Z level=debug msg="ping"', "debug"),
    ("ts=1714564741 lvl=TRACE msg=tick", "trace"),
    ('time=2024-05-01T11:59:01Z level=info msg="level=debug requested"', "info"),
    ('{"level": "debug", "msg": "cache miss"}', "debug"),
    ('{"level": "DEBUG", "message": "cache miss"}', "debug"),
    ('{"levelname": "DEBUG", "name": "connect", "message": "sending"}', "debug"),
    ('{"Level": "Info", "msg": "ok"}', "info"),
    ('{"log.level": "trace", "message": "x"}', "trace"),
    ('{"severity": "ERROR", "message": "boom"}', "error"),
    ('{"level": 20, "msg": "pino debug"}', "debug"),
    ('{"level": 10, "msg": "pino trace"}', "trace"),
    ('{"level": 30, "msg": "pino info"}', "info"),
    ('{"level": "info", "msg": "level=debug toggled by [DEBUG] flag"}', "info"),
    ('{"log": "2024-05-01 11:59:01 DEBUG worker heartbeat\\n", "stream": "stderr"}', "debug"),
    ('{"level": "debug", "msg": "truncated', "debug"),  # not valid JSON: read as text
    ("INFO starting the debug server on :5678", "info"),
    ("ERROR could not reach scheduler; DEBUG details follow", "error"),
    ("starting debug mode", None),  # a lower-case bare word is prose, not a level
    ("Processed 42 records", None),
    ("", None),
    ('{"msg": "no level here"}', None),
])
def test_log_level(message: str, level: str | None) -> None:
    assert log_level(message) == level


@pytest.mark.parametrize(("message", "debug"), [
    (DEBUG_LINE, True), ("[TRACE] x", True), ('{"level":"trace"}', True),
    (INFO_LINE, False), ("Processed 42 records", False), ("INFO debug endpoint disabled", False),
])
def test_is_debug_counts_trace_and_not_unlevelled_lines(message: str, debug: bool) -> None:
    assert is_debug(message) is debug


def test_debug_share_is_by_billed_bytes_with_the_26_byte_event_overhead() -> None:
    short_debug, long_info = "DEBUG x", "INFO " + "y" * 200
    share = debug_share([short_debug, long_info])
    assert billed_bytes(short_debug) == 7 + 26 and billed_bytes("é") == 2 + 26
    assert share.share == pytest.approx(33 / (33 + 231))
    assert (share.debug_events, share.events) == (1, 2)


@given(level=st.sampled_from(["debug", "DEBUG", "trace", "info", "Warning", "error", "fatal"]),
       key=st.sampled_from(["level", "levelname", "severity", "LEVEL"]), text=st.text())
def test_structured_json_level_wins_over_any_message_text(level: str, key: str, text: str) -> None:
    message = json.dumps({key: level, "message": text})
    assert log_level(message) == level.lower()


@given(text=st.text())
def test_classifier_never_raises(text: str) -> None:
    assert log_level(text) in (None, "debug", "trace", "info", "notice", "warn", "warning", "error", "err",
                               "critical", "fatal", "panic", "severe", "alert", "emerg")


# --- building snapshots ---


def make_group(name: str = "/dask/prod/workers", tags: Mapping[str, str] | None = None) -> LogGroup:
    return LogGroup(name=name, arn=f"arn:aws:logs:us-east-1:123456789012:log-group:{name}", stored_bytes=0,
                    retention_days=None, creation_time=NOW - timedelta(days=3),
                    tags=freeze_tags(tags if tags is not None else {}))


def make_sample(name: str, messages: Sequence[str], streams: int = 400, capped: bool = False,
                truncated: bool = False) -> LogSample:
    return LogSample(log_group=name, messages=tuple(messages), bytes_read=sum(len(m.encode()) for m in messages),
                     truncated=truncated, active_streams=streams, active_streams_capped=capped)


def ingestion_points(gb_per_hour: float, points: int = POINTS) -> list[float]:
    """Per-5-minute IncomingBytes sums adding up to ``gb_per_hour`` over the one-hour window."""
    return [gb_per_hour * GB / points] * points


def snapshot_with(rule: DebugLogging, groups: Sequence[LogGroup], ingestion: Mapping[str, Sequence[float]],
                  samples: Sequence[LogSample] = (), region: str = "us-east-1",
                  context: Context = CONTEXT) -> Snapshot:
    """A snapshot whose metrics answer the rule's queries (groups missing from ``ingestion`` have no datapoints)."""
    bare = Snapshot(account_id="123456789012", region=region, taken_at=NOW, log_groups=tuple(groups), metrics={})
    metrics: dict[MetricQuery, Series] = {}
    for query in rule.metric_queries(bare, context):
        values = ingestion.get(dict(query.dimensions)["LogGroupName"])
        if values is not None:
            start = NOW - timedelta(seconds=query.period_seconds * len(values))
            metrics[query] = Series(tuple(start + timedelta(seconds=query.period_seconds * i)
                                          for i in range(len(values))), tuple(values))
    return dataclasses.replace(bare, metrics=metrics, log_samples={s.log_group: s for s in samples})


def evaluate(groups: Sequence[LogGroup], ingestion: Mapping[str, Sequence[float]], samples: Sequence[LogSample] = (),
             rule: DebugLogging | None = None, region: str = "us-east-1", context: Context = CONTEXT):
    rule = rule or DebugLogging()
    return rule.evaluate(snapshot_with(rule, groups, ingestion, samples, region, context), context)


def mostly_debug(debug: int = 3, info: int = 1) -> list[str]:
    return [DEBUG_LINE] * debug + [INFO_LINE] * info


# --- inputs ---


def test_one_incoming_bytes_sum_per_unprotected_log_group() -> None:
    groups = (make_group("/a"), make_group("/b"), make_group("/kept", tags={"guard:protect": "true"}))
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, log_groups=groups)
    queries = list(DebugLogging().metric_queries(snapshot, CONTEXT))
    assert [q.dimensions for q in queries] == [(("LogGroupName", "/a"),), (("LogGroupName", "/b"),)]
    for query in queries:
        assert (query.namespace, query.metric, query.stat) == ("AWS/Logs", "IncomingBytes", "Sum")
        assert (query.period_seconds, query.window_seconds) == (300, 3600)


def test_queries_follow_the_configured_window_and_period() -> None:
    rule = DebugLogging(DebugLogging.Config(window="6h", period="1h"))
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, log_groups=(make_group(),))
    assert {(q.period_seconds, q.window_seconds) for q in rule.metric_queries(snapshot, CONTEXT)} == {(3600, 21600)}


def test_samples_are_requested_for_expensive_groups_only_costliest_first_and_capped() -> None:
    rule = DebugLogging(DebugLogging.Config(max_groups_sampled=2, sample_max_events=50, sample_max_bytes=4096,
                                            max_stream_pages=3))
    groups = [make_group(name) for name in ("/cheap", "/mid", "/top", "/third", "/silent")]
    ingestion = {"/cheap": ingestion_points(0.99), "/mid": ingestion_points(5), "/top": ingestion_points(60),
                 "/third": ingestion_points(1.0)}
    requests = list(rule.log_sample_requests(snapshot_with(rule, groups, ingestion), CONTEXT))
    assert [r.log_group for r in requests] == ["/top", "/mid"]
    assert {(r.window_seconds, r.max_events, r.max_bytes, r.max_stream_pages) for r in requests} == {
        (3600, 50, 4096, 3)}


def test_no_sample_requests_without_metrics() -> None:
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, log_groups=(make_group(),))
    assert list(DebugLogging().log_sample_requests(snapshot, CONTEXT)) == []


# --- findings ---


def test_expensive_debug_heavy_group_is_a_priced_finding_with_evidence() -> None:
    group = make_group(tags={"owner": "maria"})
    result = evaluate([group], {group.name: ingestion_points(62)}, [make_sample(group.name, mostly_debug(3, 1))])

    assert result.undetermined == frozenset()
    (finding,) = result.findings
    assert finding.waste_hourly_usd == pytest.approx(62 * 0.50 * 0.75)  # $23.25
    assert (finding.rule, finding.resource_id, finding.resource_type, finding.region) == (
        "debug-logging", "/dask/prod/workers", "log-group", "us-east-1")
    assert finding.owner == "maria"
    assert finding.severity is Severity.high
    assert finding.suggested_action == "set-log-level"
    assert finding.summary == "75% DEBUG across 400 streams, $23.25/hour (of $31.00/hour ingested)"
    evidence = finding.evidence
    assert evidence["debug_share"] == 0.75
    assert (evidence["debug_events"], evidence["sampled_events"]) == (3, 4)
    assert evidence["sampled_bytes"] == 4 * len(DEBUG_LINE)
    assert evidence["sample_truncated"] is False
    assert (evidence["active_streams"], evidence["active_streams_capped"]) == (400, False)
    assert evidence["ingested_gb_per_hour"] == pytest.approx(62)
    assert evidence["ingestion_usd_per_hour"] == pytest.approx(31.0)
    assert evidence["usd_per_gb"] == LOGS_INGEST_USD_PER_GB
    assert evidence["window"] == "1h"
    assert evidence["monthly_usd"] == pytest.approx(round(23.25 * HOURS_PER_MONTH, 2))
    assert evidence["price"] == "known"
    json.dumps(evidence)


def test_rate_is_the_window_sum_even_when_periods_are_missing() -> None:
    # CloudWatch reports IncomingBytes only for periods with data: 6 GB in 3 periods is still 6 GB in the hour.
    group = make_group()
    result = evaluate([group], {group.name: [2 * GB] * 3}, [make_sample(group.name, mostly_debug(1, 0))])
    (finding,) = result.findings
    assert finding.waste_hourly_usd == pytest.approx(6 * 0.50)


def test_longer_window_divides_by_its_hours() -> None:
    rule = DebugLogging(DebugLogging.Config(window="2h"))
    group = make_group()
    result = evaluate([group], {group.name: ingestion_points(8, points=24)}, [make_sample(group.name, [DEBUG_LINE])],
                      rule=rule)
    (finding,) = result.findings
    assert finding.waste_hourly_usd == pytest.approx(4 * 0.50)
    assert finding.evidence["window"] == "2h"


@pytest.mark.parametrize(("streams", "capped", "severity", "text"), [
    (1000, True, Severity.high, "≥1000 streams"), (100, False, Severity.high, "100 streams"),
    (99, False, Severity.medium, "99 streams"), (10, False, Severity.medium, "10 streams"),
    (9, False, Severity.low, "9 streams"), (0, False, Severity.low, "0 streams"),
])
def test_severity_grows_with_active_streams(streams: int, capped: bool, severity: Severity, text: str) -> None:
    group = make_group()
    sample = make_sample(group.name, mostly_debug(), streams=streams, capped=capped)
    (finding,) = evaluate([group], {group.name: ingestion_points(10)}, [sample]).findings
    assert finding.severity is severity
    assert f"across {text}," in finding.summary


@pytest.mark.parametrize(("gb_per_hour", "requested"), [(0.99, False), (1.0, True), (1.01, True)])
def test_cost_threshold_near_misses(gb_per_hour: float, requested: bool) -> None:
    # the default min_hourly_usd $0.50 is 1 GB/hour at $0.50/GB
    rule = DebugLogging()
    group = make_group()
    snapshot = snapshot_with(rule, [group], {group.name: ingestion_points(gb_per_hour)},
                             [make_sample(group.name, mostly_debug())])
    assert bool(list(rule.log_sample_requests(snapshot, CONTEXT))) is requested
    result = rule.evaluate(snapshot, CONTEXT)
    assert bool(result.findings) is requested
    assert result.undetermined == frozenset()


@pytest.mark.parametrize(("debug", "info", "found"), [(1, 1, True), (49, 51, False), (51, 49, True), (0, 5, False)])
def test_debug_share_threshold_near_misses(debug: int, info: int, found: bool) -> None:
    group = make_group()
    result = evaluate([group], {group.name: ingestion_points(10)}, [make_sample(group.name, mostly_debug(debug, info))])
    assert bool(result.findings) is found
    assert result.undetermined == frozenset()


def test_custom_thresholds_apply() -> None:
    group = make_group()
    data = {group.name: ingestion_points(0.2)}
    sample = [make_sample(group.name, mostly_debug(1, 3))]  # 25% DEBUG, $0.10/hour
    assert evaluate([group], data, sample).findings == ()
    lenient = DebugLogging(DebugLogging.Config(min_hourly_usd=0.05, debug_share_min=0.2))
    (finding,) = evaluate([group], data, sample, rule=lenient).findings
    assert finding.waste_hourly_usd == pytest.approx(0.2 * 0.50 * 0.25)


def test_info_heavy_expensive_group_is_judged_fine() -> None:
    group = make_group()
    result = evaluate([group], {group.name: ingestion_points(80)}, [make_sample(group.name, mostly_debug(1, 19))])
    assert result.findings == () and result.undetermined == frozenset()


def test_only_the_debug_heavy_expensive_group_of_several_is_reported() -> None:
    groups = [make_group(name) for name in ("/debug", "/info", "/cheap-debug", "/quiet")]
    ingestion = {"/debug": ingestion_points(20), "/info": ingestion_points(20), "/cheap-debug": ingestion_points(0.5)}
    samples = [make_sample("/debug", mostly_debug()), make_sample("/info", mostly_debug(0, 4)),
               make_sample("/cheap-debug", mostly_debug(4, 0))]
    result = evaluate(groups, ingestion, samples)
    assert [f.resource_id for f in result.findings] == ["/debug"]
    assert result.undetermined == frozenset()


# --- missing data ---


def test_expensive_group_whose_sample_is_empty_is_undetermined() -> None:
    group = make_group()
    result = evaluate([group], {group.name: ingestion_points(10)}, [make_sample(group.name, [], streams=0)])
    assert result.findings == ()
    assert result.undetermined == frozenset({group.name})


def test_expensive_group_missing_from_the_samples_is_undetermined() -> None:
    group = make_group()
    result = evaluate([group], {group.name: ingestion_points(10)}, [])
    assert result.findings == () and result.undetermined == frozenset({group.name})


def test_expensive_groups_beyond_the_sampling_cap_are_undetermined() -> None:
    rule = DebugLogging(DebugLogging.Config(max_groups_sampled=1))
    groups = [make_group("/big"), make_group("/bigger")]
    ingestion = {"/big": ingestion_points(5), "/bigger": ingestion_points(50)}
    result = evaluate(groups, ingestion, [make_sample("/bigger", mostly_debug())], rule=rule)
    assert [f.resource_id for f in result.findings] == ["/bigger"]
    assert result.undetermined == frozenset({"/big"})


def test_group_without_datapoints_ingested_nothing_and_is_no_finding() -> None:
    group = make_group()
    result = evaluate([group], {}, [make_sample(group.name, mostly_debug())])
    assert result.findings == () and result.undetermined == frozenset()


def test_no_log_groups_at_all() -> None:
    result = evaluate([], {})
    assert result.findings == () and result.undetermined == frozenset()


# --- protection ---


@pytest.mark.parametrize("value", ["true", "TRUE"])
def test_protected_group_is_neither_queried_sampled_nor_reported(value: str) -> None:
    rule = DebugLogging()
    group = make_group(tags={"guard:protect": value})
    bare = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, log_groups=(group,))
    assert list(rule.metric_queries(bare, CONTEXT)) == []
    # even with expensive DEBUG data present for it
    unprotected = snapshot_with(rule, [make_group()], {group.name: ingestion_points(50)},
                                [make_sample(group.name, mostly_debug())])
    snapshot = dataclasses.replace(unprotected, log_groups=(group,))
    assert list(rule.log_sample_requests(snapshot, CONTEXT)) == []
    result = rule.evaluate(snapshot, CONTEXT)
    assert result.findings == () and result.undetermined == frozenset()


def test_owner_is_unknown_without_owner_tag() -> None:
    group = make_group()
    result = evaluate([group], {group.name: ingestion_points(10)}, [make_sample(group.name, mostly_debug())])
    assert [f.owner for f in result.findings] == ["unknown"]


# --- unknown price ---


def test_region_without_a_known_price_reports_unknown_waste() -> None:
    group = make_group()
    result = evaluate([group], {group.name: ingestion_points(10)}, [make_sample(group.name, mostly_debug())],
                      region="xx-moon-1")
    (finding,) = result.findings
    assert finding.waste_hourly_usd is None
    assert finding.evidence["price"] == "unknown"
    assert finding.evidence["ingestion_usd_per_hour"] is None and finding.evidence["monthly_usd"] is None
    assert finding.summary == "75% DEBUG across 400 streams, price unknown"


# --- config ---


@pytest.mark.parametrize("values", [
    {"period": "0s"}, {"period": "7s"}, {"period": "90s"}, {"window": "1m", "period": "5m"},
    {"debug_share_min": 0}, {"debug_share_min": 1.5}, {"min_hourly_usd": -1}, {"max_groups_sampled": 0},
    {"sample_max_events": 0}, {"sample_max_bytes": 0}, {"max_stream_pages": 0},
    {"medium_streams": 200, "high_streams": 100}, {"window": "soon"}, {"debug_share": 0.5},
])
def test_bad_config_is_rejected(values: dict) -> None:
    with pytest.raises(ValidationError):
        DebugLogging.Config.model_validate(values)


def test_config_defaults() -> None:
    config = DebugLogging.Config()
    assert (config.window, config.period) == (timedelta(hours=1), timedelta(minutes=5))
    assert (config.min_hourly_usd, config.debug_share_min, config.max_groups_sampled) == (0.5, 0.5, 20)
    assert (config.sample_max_events, config.sample_max_bytes, config.max_stream_pages) == (2000, 1_000_000, 20)
    assert (config.high_streams, config.medium_streams) == (100, 10)


# --- property ---


@st.composite
def group_spec(draw: st.DrawFn) -> dict:
    return {
        "gb_per_hour": draw(st.sampled_from([0.0, 0.5, 0.99, 1.0, 3.0, 40.0])),
        "points": draw(st.sampled_from([0, 1, 6, 12])),
        "sample": draw(st.one_of(st.none(), st.lists(st.sampled_from([DEBUG_LINE, INFO_LINE, "no level", "[TRACE] t",
                                                                      '{"level": "info"}']), max_size=8))),
        "streams": draw(st.integers(min_value=0, max_value=2000)),
        "protected": draw(st.booleans()),
    }


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(group_spec(), min_size=1, max_size=6), cap=st.integers(min_value=1, max_value=4),
       share_min=st.sampled_from([0.5, 0.01, 1.0]), region=st.sampled_from(["us-east-1", "xx-moon-1"]))
def test_evaluate_never_raises_and_prices_only_sampled_debug_heavy_groups(specs: list[dict], cap: int,
                                                                           share_min: float, region: str) -> None:
    rule = DebugLogging(DebugLogging.Config(max_groups_sampled=cap, debug_share_min=share_min))
    groups, ingestion, samples = [], {}, []
    for index, spec in enumerate(specs):
        group = make_group(f"/g{index}", tags={"guard:protect": "true"} if spec["protected"] else {})
        groups.append(group)
        if spec["points"]:
            ingestion[group.name] = [spec["gb_per_hour"] * GB / 12] * spec["points"]
        if spec["sample"] is not None:
            samples.append(make_sample(group.name, spec["sample"], streams=spec["streams"]))

    snapshot = snapshot_with(rule, groups, ingestion, samples, region=region)
    requested = {r.log_group for r in rule.log_sample_requests(snapshot, CONTEXT)}
    result = rule.evaluate(snapshot, CONTEXT)

    assert len(requested) <= cap
    found = {f.resource_id for f in result.findings}
    assert found <= requested
    assert not found & result.undetermined
    protected = {g.name for g in groups if CONTEXT.is_protected(g.tags)}
    assert not (found | result.undetermined | requested) & protected
    by_name = {s.log_group: s for s in samples}
    for finding in result.findings:
        assert finding.evidence["debug_share"] >= round(share_min, 4) - 1e-9
        total = sum(ingestion[finding.resource_id]) / GB * LOGS_INGEST_USD_PER_GB
        if region == "us-east-1":
            assert finding.waste_hourly_usd == pytest.approx(total * debug_share(
                by_name[finding.resource_id].messages).share)
            assert finding.waste_hourly_usd <= total + 1e-9
        else:
            assert finding.waste_hourly_usd is None
    for name in requested - found - result.undetermined:
        assert by_name[name].messages  # judged fine only on a non-empty sample


def test_infrequent_access_groups_are_priced_at_their_own_rate() -> None:
    group = dataclasses.replace(make_group(), log_group_class="INFREQUENT_ACCESS")
    sample = make_sample(group.name, mostly_debug())
    [finding] = evaluate([group], {group.name: ingestion_points(10.0)}, [sample]).findings
    assert finding.evidence["ingestion_usd_per_hour"] == pytest.approx(10.0 * 0.25)
    # $0.25/GB: 1.5 GB/h of IA ingestion stays under the default $0.50/h threshold, where STANDARD would not
    cheap = evaluate([group], {group.name: ingestion_points(1.5)}, [make_sample(group.name, mostly_debug())])
    assert cheap.findings == ()


# --- log volume the SDK's clusters report in their heartbeats ---


def cluster(cluster_id: str = "vmg-debug1", per_minute: Mapping[str, int] | None = None, minutes: int = 60,
            nodes: int = 401, region: str = "us-east-1", tags: Mapping[str, str] | None = None,
            registered_minutes_ago: int = 120) -> ClusterUsage:
    """A running cluster whose heartbeats, one a minute, each reported ``per_minute`` bytes by level."""
    per_minute = per_minute if per_minute is not None else {"debug": int(1.8 * GB / 60), "info": int(0.2 * GB / 60)}
    return ClusterUsage(cluster_id=cluster_id, owner="ana", region=region,
                        instance_ids=tuple(f"i-{n}" for n in range(nodes)),
                        registered_at=NOW - timedelta(minutes=registered_minutes_ago),
                        reports=tuple(UsageReport(at=NOW - timedelta(minutes=ago), log_bytes_by_level=per_minute)
                                      for ago in reversed(range(minutes))),
                        tags=freeze_tags(tags or {}))


def evaluate_clusters(clusters: Sequence[ClusterUsage], groups: Sequence[LogGroup] = (),
                      ingestion: Mapping[str, Sequence[float]] | None = None, samples: Sequence[LogSample] = (),
                      rule: DebugLogging | None = None):
    rule = rule or DebugLogging()
    snap = snapshot_with(rule, groups, ingestion or {}, samples)
    return rule.evaluate(dataclasses.replace(snap, clusters=tuple(clusters)), CONTEXT)


def test_a_cluster_reporting_mostly_debug_logs_is_a_priced_finding() -> None:
    (finding,) = evaluate_clusters([cluster()]).findings
    per_minute = int(1.8 * GB / 60) + int(0.2 * GB / 60)
    gb_per_hour = per_minute * 60 / GB
    share = int(1.8 * GB / 60) / per_minute
    assert finding.resource_id == "vmg-debug1" and finding.resource_type == "cluster"
    assert finding.owner == "ana"
    assert finding.waste_hourly_usd == pytest.approx(gb_per_hour * LOGS_INGEST_USD_PER_GB * share)
    assert finding.severity is Severity.high  # 401 VMs ≥ high_streams
    assert finding.evidence["source"] == "cluster-heartbeats"
    assert finding.evidence["debug_share"] == pytest.approx(0.9, abs=1e-4)
    assert "401 VMs" in finding.summary and "90% DEBUG" in finding.summary


def test_cluster_reports_are_judged_with_the_log_group_thresholds() -> None:
    info_heavy = cluster(per_minute={"debug": int(0.4 * GB / 60), "info": int(0.6 * GB / 60)})
    cheap = cluster("vmg-cheap1", per_minute={"debug": int(0.9 * GB / 60)}, nodes=3)  # $0.45/hour < $0.50
    assert evaluate_clusters([info_heavy, cheap]).findings == ()
    (finding,) = evaluate_clusters([cluster("vmg-small1", per_minute={"DEBUG": int(1.2 * GB / 60)}, nodes=3)]).findings
    assert finding.severity is Severity.low  # 3 VMs < medium_streams; levels are case-insensitive


def test_a_cluster_just_started_is_undetermined_and_one_elsewhere_is_not_judged_here() -> None:
    young = cluster("vmg-young1", minutes=1, registered_minutes_ago=0)
    west = cluster("vmg-west01", region="us-west-2")
    silent = cluster("vmg-quiet1", per_minute={})
    protected = cluster("vmg-prot01", tags={"guard:protect": "true"})
    evaluation = evaluate_clusters([young, west, silent, protected])
    assert evaluation.findings == ()
    assert evaluation.undetermined == frozenset({"vmg-young1"})


def test_a_cluster_whose_log_group_was_measured_is_not_counted_twice() -> None:
    group = make_group(tags={"vmguard:cluster": "vmg-debug1"})
    evaluation = evaluate_clusters([cluster()], [group], {group.name: ingestion_points(2.0)},
                                   [make_sample(group.name, mostly_debug())])
    assert [f.resource_id for f in evaluation.findings] == [group.name]
