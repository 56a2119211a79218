"""rules.idle_nat_gateways: available NAT gateways processing almost nothing over the window."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from guard.model import MetricQuery, NatGateway, Series, Severity, Snapshot, freeze_tags
from guard.pricing import HOURS_PER_MONTH, default_catalog
from guard.rule import Context
from rules.idle_nat_gateways import IdleNatGateways

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CONTEXT = Context(prices=default_catalog())
GB = 1_000_000_000
POINTS = 24  # default window 24h / period 1h
SOURCE, DESTINATION = "BytesInFromSource", "BytesInFromDestination"


def make_gateway(gateway_id: str = "nat-1", state: str = "available", age: timedelta = timedelta(days=10),
                 tags: Mapping[str, str] | None = None) -> NatGateway:
    return NatGateway(id=gateway_id, state=state, create_time=NOW - age, vpc_id="vpc-1", subnet_id="subnet-1",
                      tags=freeze_tags(tags if tags is not None else {}))


def hourly(gb_per_day: float, points: int = POINTS) -> list[float]:
    """Hourly sums of one metric carrying ``gb_per_day``."""
    return [gb_per_day * GB / 24] * points


def traffic(source_gb_per_day: float = 0.0, destination_gb_per_day: float = 0.0,
            points: int = POINTS) -> dict[str, list[float]]:
    return {SOURCE: hourly(source_gb_per_day, points), DESTINATION: hourly(destination_gb_per_day, points)}


Data = Mapping[str, Mapping[str, Sequence[float]]]


def with_metrics(rule: IdleNatGateways, gateways: Sequence[NatGateway], data: Data,
                 region: str = "us-east-1") -> Snapshot:
    """A snapshot whose metrics answer the rule's queries from ``data`` (gateway id → metric → values)."""
    bare = Snapshot(account_id="123456789012", region=region, taken_at=NOW, nat_gateways=tuple(gateways),
                    metrics={})
    metrics: dict[MetricQuery, Series] = {}
    for query in rule.metric_queries(bare, CONTEXT):
        values = data.get(dict(query.dimensions)["NatGatewayId"], {}).get(query.metric)
        if values is not None:
            start = NOW - timedelta(seconds=query.period_seconds * len(values))
            metrics[query] = Series(tuple(start + timedelta(seconds=query.period_seconds * i)
                                          for i in range(len(values))), tuple(values))
    return dataclasses.replace(bare, metrics=metrics)


def evaluate(gateways: Sequence[NatGateway], data: Data, rule: IdleNatGateways | None = None,
             region: str = "us-east-1", context: Context = CONTEXT):
    rule = rule or IdleNatGateways()
    return rule.evaluate(with_metrics(rule, gateways, data, region), context)


# --- queries ---


def test_two_hourly_sums_over_a_day_per_gateway() -> None:
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, nat_gateways=(make_gateway(),))
    queries = list(IdleNatGateways().metric_queries(snapshot, CONTEXT))
    assert [q.metric for q in queries] == [SOURCE, DESTINATION]
    for query in queries:
        assert query.namespace == "AWS/NATGateway"
        assert query.dimensions == (("NatGatewayId", "nat-1"),)
        assert query.stat == "Sum"
        assert (query.period_seconds, query.window_seconds) == (3600, 86400)


def test_queries_follow_the_configured_window_and_period() -> None:
    rule = IdleNatGateways(IdleNatGateways.Config(window="6h", period="5 minutes"))
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, nat_gateways=(make_gateway(),))
    assert {(q.period_seconds, q.window_seconds) for q in rule.metric_queries(snapshot, CONTEXT)} == {(300, 21600)}


# --- findings ---


def test_idle_gateway_costs_its_hours_plus_the_little_it_processes() -> None:
    # 0.24 GB/day out from the VPC and 0.72 GB/day back: 0.04 GB/hour processed
    gateway = make_gateway(tags={"owner": "ana", "Name": "test-vpc-nat"})
    result = evaluate([gateway], {"nat-1": traffic(0.24, 0.72)})
    (finding,) = result.findings
    assert result.undetermined == frozenset()
    assert finding.waste_hourly_usd == pytest.approx(0.045 + 0.04 * 0.045)
    assert (finding.rule, finding.resource_id, finding.resource_type, finding.region) == (
        "idle-nat-gateways", "nat-1", "nat-gateway", "us-east-1")
    assert finding.owner == "ana"
    assert finding.severity is Severity.medium
    assert finding.suggested_action == "delete"
    evidence = finding.evidence
    assert evidence["gb_per_day"] == pytest.approx(0.96)
    assert evidence["bytes_per_hour"] == {SOURCE: pytest.approx(0.01 * GB), DESTINATION: pytest.approx(0.03 * GB)}
    assert evidence["datapoints"] == POINTS
    assert evidence["window"] == "1d" and evidence["age"] == "10d"
    assert evidence["gateway_usd_per_hour"] == 0.045
    assert evidence["processing_usd_per_hour"] == pytest.approx(0.0018)
    assert evidence["monthly_usd"] == pytest.approx(round(0.0468 * HOURS_PER_MONTH, 2))
    assert (evidence["vpc_id"], evidence["subnet_id"], evidence["connectivity_type"]) == ("vpc-1", "subnet-1", "public")
    assert "vpc-1" in finding.summary and "0.960 GB/day" in finding.summary and "$0.0468/hour" in finding.summary


def test_gateway_without_any_traffic_costs_exactly_its_hourly_price() -> None:
    (finding,) = evaluate([make_gateway()], {"nat-1": traffic()}).findings
    assert finding.waste_hourly_usd == 0.045
    assert finding.owner == "unknown"


@pytest.mark.parametrize(("gb_per_day", "idle"), [(0.0, True), (0.99, True), (1.01, False), (500.0, False)])
def test_threshold_near_misses(gb_per_day: float, idle: bool) -> None:
    result = evaluate([make_gateway()], {"nat-1": traffic(gb_per_day / 2, gb_per_day / 2)})
    assert bool(result.findings) is idle
    assert result.undetermined == frozenset()


@pytest.mark.parametrize(("gb_per_day", "idle"), [(0.959, True), (0.96, False)])
def test_threshold_is_exclusive(gb_per_day: float, idle: bool) -> None:
    # 0.96 GB/day is 20 MB an hour each way: exact in binary floating point, unlike 1 GB/day
    rule = IdleNatGateways(IdleNatGateways.Config(max_gb_per_day=0.96))
    result = evaluate([make_gateway()], {"nat-1": traffic(gb_per_day / 2, gb_per_day / 2)}, rule)
    assert bool(result.findings) is idle


def test_both_directions_count_towards_the_threshold() -> None:
    # 0.6 GB/day each way: each alone is under 1 GB/day, together they are not
    assert evaluate([make_gateway()], {"nat-1": traffic(0.6, 0.6)}).findings == ()
    assert len(evaluate([make_gateway()], {"nat-1": traffic(0.6, 0.3)}).findings) == 1


def test_custom_threshold_applies() -> None:
    lenient = IdleNatGateways(IdleNatGateways.Config(max_gb_per_day=10))
    assert len(evaluate([make_gateway()], {"nat-1": traffic(2, 3)}, lenient).findings) == 1
    strict = IdleNatGateways(IdleNatGateways.Config(max_gb_per_day=0))
    assert evaluate([make_gateway()], {"nat-1": traffic()}, strict).findings == ()


# --- coverage ---


def test_no_datapoints_at_all_is_undetermined() -> None:
    result = evaluate([make_gateway()], {})
    assert result.findings == ()
    assert result.undetermined == frozenset({"nat-1"})


@pytest.mark.parametrize("missing", [SOURCE, DESTINATION])
def test_one_missing_series_is_undetermined(missing: str) -> None:
    data = traffic()
    del data[missing]
    result = evaluate([make_gateway()], {"nat-1": data})
    assert result.findings == () and result.undetermined == frozenset({"nat-1"})


@pytest.mark.parametrize(("points", "judged"), [(24, True), (20, True), (19, False), (1, False)])
def test_coverage_threshold(points: int, judged: bool) -> None:
    # default min_coverage 0.8 of 24 expected points: 20 needed (19.2 rounded up)
    result = evaluate([make_gateway()], {"nat-1": traffic(points=points)})
    assert bool(result.findings) is judged
    assert ("nat-1" in result.undetermined) is not judged


def test_rate_is_normalised_by_each_series_observed_hours() -> None:
    # 20 hourly points of 0.045 GB is 1.08 GB/day: over the threshold, though 0.9 GB/day if diluted over 24 hours
    data = {SOURCE: [0.045 * GB] * 20, DESTINATION: [0.0] * 22}
    assert evaluate([make_gateway()], {"nat-1": data}).findings == ()
    data = {SOURCE: [0.02 * GB] * 20, DESTINATION: [0.0] * 22}
    (finding,) = evaluate([make_gateway()], {"nat-1": data}).findings
    assert finding.evidence["gb_per_day"] == pytest.approx(0.48)
    assert finding.evidence["datapoints"] == 20


# --- skipped gateways ---


@pytest.mark.parametrize("age", [timedelta(minutes=5), timedelta(hours=23, minutes=59)])
def test_young_gateway_is_neither_queried_nor_judged(age: timedelta) -> None:
    rule = IdleNatGateways()
    gateway = make_gateway(age=age)
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, nat_gateways=(gateway,), metrics={})
    assert list(rule.metric_queries(snapshot, CONTEXT)) == []
    result = rule.evaluate(snapshot, CONTEXT)
    assert result.findings == () and result.undetermined == frozenset()


def test_min_age_boundary_is_inclusive_and_configurable() -> None:
    assert len(evaluate([make_gateway(age=timedelta(hours=24))], {"nat-1": traffic()}).findings) == 1
    patient = IdleNatGateways(IdleNatGateways.Config(min_age="7 days"))
    assert evaluate([make_gateway(age=timedelta(days=6))], {"nat-1": traffic()}, patient).findings == ()


@pytest.mark.parametrize("state", ["pending", "deleting", "deleted", "failed"])
def test_gateway_not_available_is_ignored(state: str) -> None:
    rule = IdleNatGateways()
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, nat_gateways=(make_gateway(state=state),),
                        metrics={})
    assert list(rule.metric_queries(snapshot, CONTEXT)) == []
    assert rule.evaluate(snapshot, CONTEXT) == rule.evaluate(dataclasses.replace(snapshot, nat_gateways=()), CONTEXT)


def test_protected_gateway_is_not_queried_nor_reported() -> None:
    rule = IdleNatGateways()
    protected = make_gateway(tags={"guard:protect": "true"})
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, nat_gateways=(protected,), metrics={})
    assert list(rule.metric_queries(snapshot, CONTEXT)) == []
    idle = with_metrics(rule, [make_gateway()], {"nat-1": traffic()})
    result = rule.evaluate(dataclasses.replace(idle, nat_gateways=(protected,)), CONTEXT)
    assert result.findings == () and result.undetermined == frozenset()


def test_only_the_idle_gateway_of_several_is_reported() -> None:
    gateways = [make_gateway("nat-idle"), make_gateway("nat-busy"), make_gateway("nat-gap"),
                make_gateway("nat-new", age=timedelta(hours=2))]
    data = {"nat-idle": traffic(0.1, 0.1), "nat-busy": traffic(40, 200), "nat-gap": traffic(points=5),
            "nat-new": traffic()}
    result = evaluate(gateways, data)
    assert [f.resource_id for f in result.findings] == ["nat-idle"]
    assert result.undetermined == frozenset({"nat-gap"})


def test_price_is_the_same_in_every_region() -> None:
    (finding,) = evaluate([make_gateway()], {"nat-1": traffic()}, region="ap-southeast-2").findings
    assert (finding.region, finding.waste_hourly_usd) == ("ap-southeast-2", 0.045)


# --- config ---


@pytest.mark.parametrize("values", [
    {"period": "30s"}, {"period": "0s"}, {"period": "90s"}, {"window": "30m"}, {"max_gb_per_day": -1},
    {"min_coverage": 0}, {"min_coverage": 1.5}, {"min_age": "soon"}, {"threshold": 1},
])
def test_bad_config_is_rejected(values: dict) -> None:
    with pytest.raises(ValidationError):
        IdleNatGateways.Config(**values)


def test_config_defaults() -> None:
    config = IdleNatGateways.Config()
    assert (config.window, config.period, config.min_age) == (timedelta(days=1), timedelta(hours=1),
                                                              timedelta(days=1))
    assert (config.max_gb_per_day, config.min_coverage) == (1.0, 0.8)


# --- property ---


@st.composite
def gateway_spec(draw: st.DrawFn) -> dict:
    points = draw(st.sampled_from([0, 5, 19, 20, 24, 24]))
    per_hour = st.floats(min_value=0, max_value=draw(st.sampled_from([0.01 * GB, 0.1 * GB, 10 * GB])))
    return {
        "state": draw(st.sampled_from(["available", "available", "pending"])),
        "age_hours": draw(st.sampled_from([1, 23, 24, 240])),
        "protected": draw(st.booleans()),
        SOURCE: draw(st.lists(per_hour, min_size=points, max_size=points)),
        DESTINATION: draw(st.lists(per_hour, min_size=points, max_size=points)),
    }


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(gateway_spec(), min_size=1, max_size=5))
def test_findings_are_eligible_gateways_under_the_threshold_priced_from_their_traffic(specs: list[dict]) -> None:
    gateways, data = [], {}
    for n, spec in enumerate(specs):
        gateway = make_gateway(f"nat-{n}", spec["state"], timedelta(hours=spec["age_hours"]),
                               {"guard:protect": "true"} if spec["protected"] else {})
        gateways.append(gateway)
        data[gateway.id] = {SOURCE: spec[SOURCE], DESTINATION: spec[DESTINATION]}
    result = evaluate(gateways, data)

    eligible = {f"nat-{n}" for n, spec in enumerate(specs)
                if spec["state"] == "available" and spec["age_hours"] >= 24 and not spec["protected"]}
    flagged = {f.resource_id for f in result.findings}
    assert flagged <= eligible and result.undetermined <= eligible and not flagged & result.undetermined
    for n, spec in enumerate(specs):
        gateway_id = f"nat-{n}"
        if gateway_id in eligible:
            assert (gateway_id in result.undetermined) is (len(spec[SOURCE]) < 20)
    for finding in result.findings:
        series = data[finding.resource_id]
        gb_per_hour = sum(sum(values) / len(values) for values in series.values()) / GB
        assert gb_per_hour * 24 < 1.0
        assert finding.waste_hourly_usd == pytest.approx(0.045 + gb_per_hour * 0.045)
