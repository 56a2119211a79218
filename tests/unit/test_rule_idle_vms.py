"""rules.idle_vms: running instances with low CPU and almost no network over the window."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from guard.model import GPU_METRIC, Instance, MetricQuery, Series, Severity, Snapshot, freeze_tags
from guard.pricing import HOURS_PER_MONTH, default_catalog
from guard.rule import Context
from rules.idle_vms import IdleVMs

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CONTEXT = Context(prices=default_catalog())
MB = 1_000_000
POINTS = 12  # default window 1h / period 5 min


def make_instance(instance_id: str = "i-idle", instance_type: str = "m5.large", state: str = "running",
                  tags: Mapping[str, str] | None = None) -> Instance:
    return Instance(id=instance_id, instance_type=instance_type, state=state, arch="x86_64",
                    launch_time=NOW - timedelta(days=2), tags=freeze_tags(tags if tags is not None else {}))


def series(values: Sequence[float], period: int = 300) -> Series:
    start = NOW - timedelta(seconds=period * len(values))
    return Series(timestamps=tuple(start + timedelta(seconds=period * i) for i in range(len(values))),
                  values=tuple(float(v) for v in values))


def network_points(mb_per_hour: float, points: int = POINTS, period: int = 300) -> list[float]:
    """Per-period byte sums (one direction) so that in+out totals ``mb_per_hour`` over ``points`` periods."""
    total_bytes = mb_per_hour * MB * points * period / 3600
    return [total_bytes / 2 / points] * points


Data = Mapping[str, Mapping[str, Sequence[float]]]


def with_metrics(rule: IdleVMs, instances: Sequence[Instance], data: Data,
                 region: str = "us-east-1", context: Context = CONTEXT,
                 listings: Mapping | None = MappingProxyType({})) -> Snapshot:
    """A snapshot whose metrics answer exactly the queries the rule asks for.

    ``data`` maps instance id -> metric name (CPUUtilization/NetworkIn/NetworkOut) -> values; missing entries
    get no series at all (CloudWatch had no datapoints). ``listings`` are the metric listings (None: unknown).
    """
    bare = Snapshot(account_id="123456789012", region=region, taken_at=NOW, instances=tuple(instances),
                    metric_listings=listings, metrics={})
    metrics: dict[MetricQuery, Series] = {}
    for query in rule.metric_queries(bare, context):
        instance_id = dict(query.dimensions)["InstanceId"]
        values = data.get(instance_id, {}).get(query.metric)
        if values is not None:
            metrics[query] = series(values, query.period_seconds)
    return dataclasses.replace(bare, metrics=metrics)


def idle_data(cpu: float = 0.8, mb_per_hour: float = 0.2, points: int = POINTS) -> dict[str, list[float]]:
    return {"CPUUtilization": [cpu] * points, "NetworkIn": network_points(mb_per_hour, points),
            "NetworkOut": network_points(mb_per_hour, points)}


def evaluate(instances: Sequence[Instance], data: Data,
             rule: IdleVMs | None = None, region: str = "us-east-1", context: Context = CONTEXT,
             listings: Mapping | None = MappingProxyType({})):
    rule = rule or IdleVMs()
    return rule.evaluate(with_metrics(rule, instances, data, region, context, listings), context)


# --- metric queries ---


def test_metric_queries_are_cpu_average_and_network_sums_per_running_instance() -> None:
    rule = IdleVMs()
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW,
                        instances=(make_instance("i-a"), make_instance("i-b", state="stopped")))
    queries = list(rule.metric_queries(snapshot, CONTEXT))
    assert {(q.metric, q.stat) for q in queries} == {
        ("CPUUtilization", "Average"), ("NetworkIn", "Sum"), ("NetworkOut", "Sum")}
    assert len(queries) == 3
    for query in queries:
        assert query.namespace == "AWS/EC2"
        assert query.dimensions == (("InstanceId", "i-a"),)
        assert (query.period_seconds, query.window_seconds) == (300, 3600)


def test_metric_queries_follow_the_configured_window_and_period() -> None:
    rule = IdleVMs(IdleVMs.Config(window="2h", period="1 minute"))
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, instances=(make_instance(),))
    queries = list(rule.metric_queries(snapshot, CONTEXT))
    assert {(q.period_seconds, q.window_seconds) for q in queries} == {(60, 7200)}


# --- findings ---


def test_idle_m5_large_is_a_priced_medium_finding_with_evidence() -> None:
    instance = make_instance(tags={"owner": "ana", "Name": "notebook"})
    result = evaluate([instance], {"i-idle": idle_data(cpu=0.8, mb_per_hour=0.2)})

    assert result.undetermined == frozenset()
    (finding,) = result.findings
    price = default_catalog().hourly_usd("m5.large", "us-east-1")
    assert price == pytest.approx(0.096)
    assert finding.waste_hourly_usd == price
    assert finding.severity is Severity.medium
    assert (finding.rule, finding.resource_id, finding.resource_type, finding.region) == (
        "idle-vms", "i-idle", "instance", "us-east-1")
    assert finding.owner == "ana"
    assert finding.suggested_action == "stop"
    assert finding.key == ("idle-vms", "us-east-1", "i-idle")
    evidence = finding.evidence
    assert evidence["instance_type"] == "m5.large"
    assert evidence["gpu"] is False
    assert evidence["cpu_avg_percent"] == pytest.approx(0.8)
    assert evidence["network_mb_per_hour"] == pytest.approx(0.2)
    assert evidence["datapoints"] == POINTS
    assert evidence["window"] == "1h"
    assert evidence["on_demand_usd_per_hour"] == price
    assert evidence["monthly_usd"] == pytest.approx(round(price * HOURS_PER_MONTH, 2))
    assert evidence["price"] == "known"
    assert "m5.large" in finding.summary and "$0.096/hour" in finding.summary


def test_owner_is_unknown_without_owner_tag() -> None:
    (finding,) = evaluate([make_instance()], {"i-idle": idle_data()}).findings
    assert finding.owner == "unknown"


def test_idle_gpu_instance_is_high_severity() -> None:
    result = evaluate([make_instance("i-gpu", "g5.xlarge")], {"i-gpu": idle_data()})
    (finding,) = result.findings
    assert finding.severity is Severity.high
    assert finding.evidence["gpu"] is True
    assert finding.waste_hourly_usd == pytest.approx(1.006)
    assert "(GPU)" in finding.summary


def test_expensive_cpu_instance_is_high_severity() -> None:
    # m5.8xlarge costs $1.536/h in us-east-1: >= $1/h makes it high even without a GPU.
    (finding,) = evaluate([make_instance("i-big", "m5.8xlarge")], {"i-big": idle_data()}).findings
    assert finding.waste_hourly_usd == pytest.approx(1.536)
    assert finding.severity is Severity.high


def test_region_of_the_snapshot_prices_the_finding() -> None:
    (finding,) = evaluate([make_instance()], {"i-idle": idle_data()}, region="eu-west-1").findings
    assert finding.region == "eu-west-1"
    assert finding.waste_hourly_usd == pytest.approx(0.107)


def test_busy_cpu_is_not_a_finding() -> None:
    result = evaluate([make_instance()], {"i-idle": idle_data(cpu=42.0)})
    assert result.findings == ()
    assert result.undetermined == frozenset()


def test_network_above_threshold_is_not_a_finding() -> None:
    result = evaluate([make_instance()], {"i-idle": idle_data(cpu=0.5, mb_per_hour=800.0)})
    assert result.findings == ()
    assert result.undetermined == frozenset()


@pytest.mark.parametrize(("cpu", "idle"), [(4.99, True), (5.0, False), (5.01, False), (0.0, True)])
def test_cpu_threshold_near_misses(cpu: float, idle: bool) -> None:
    result = evaluate([make_instance()], {"i-idle": idle_data(cpu=cpu)})
    assert bool(result.findings) is idle
    assert result.undetermined == frozenset()


def test_cpu_threshold_uses_the_mean_not_the_peak() -> None:
    # one 30% spike in twelve 1% points averages 3.42%: still idle; two spikes average 5.83%: busy.
    data = idle_data()
    data["CPUUtilization"] = [1.0] * 11 + [30.0]
    (finding,) = evaluate([make_instance()], {"i-idle": data}).findings
    assert finding.evidence["cpu_avg_percent"] == pytest.approx(41 / 12, abs=1e-3)
    data["CPUUtilization"] = [1.0] * 10 + [30.0, 30.0]
    assert evaluate([make_instance()], {"i-idle": data}).findings == ()


@pytest.mark.parametrize(("mb_per_hour", "idle"), [(4.99, True), (5.0, False), (5.01, False)])
def test_network_threshold_near_misses(mb_per_hour: float, idle: bool) -> None:
    result = evaluate([make_instance()], {"i-idle": idle_data(mb_per_hour=mb_per_hour)})
    assert bool(result.findings) is idle


def test_network_counts_in_plus_out() -> None:
    # 3 MB/h in and 3 MB/h out: each alone is under 5 MB/h, together they are not.
    data = idle_data()
    data["NetworkIn"] = [3 * MB / POINTS] * POINTS
    data["NetworkOut"] = [3 * MB / POINTS] * POINTS
    assert evaluate([make_instance()], {"i-idle": data}).findings == ()
    data["NetworkOut"] = [1 * MB / POINTS] * POINTS
    (finding,) = evaluate([make_instance()], {"i-idle": data}).findings
    assert finding.evidence["network_mb_per_hour"] == pytest.approx(4.0)


def test_custom_thresholds_apply() -> None:
    rule = IdleVMs(IdleVMs.Config(cpu_percent_max=50, network_mb_per_hour_max=1000))
    busy_by_default = {"i-idle": idle_data(cpu=42.0, mb_per_hour=800)}
    assert len(evaluate([make_instance()], busy_by_default, rule).findings) == 1
    strict = IdleVMs(IdleVMs.Config(cpu_percent_max=0.5))
    assert evaluate([make_instance()], {"i-idle": idle_data(cpu=0.8)}, strict).findings == ()


# --- coverage ---


def test_no_datapoints_at_all_is_undetermined() -> None:
    result = evaluate([make_instance()], {})
    assert result.findings == ()
    assert result.undetermined == frozenset({"i-idle"})


@pytest.mark.parametrize("missing", ["CPUUtilization", "NetworkIn", "NetworkOut"])
def test_one_missing_series_is_undetermined(missing: str) -> None:
    data = idle_data()
    del data[missing]
    result = evaluate([make_instance()], {"i-idle": data})
    assert result.findings == ()
    assert result.undetermined == frozenset({"i-idle"})


@pytest.mark.parametrize(("points", "judged"), [(12, True), (10, True), (9, False), (1, False)])
def test_coverage_threshold(points: int, judged: bool) -> None:
    # default min_coverage 0.8 of 12 expected points: 10 needed (9.6 rounded up).
    result = evaluate([make_instance()], {"i-idle": idle_data(points=points)})
    assert bool(result.findings) is judged
    assert ("i-idle" in result.undetermined) is not judged


def test_coverage_gap_in_one_series_only_is_undetermined() -> None:
    data = idle_data()
    data["NetworkOut"] = data["NetworkOut"][:9]
    result = evaluate([make_instance()], {"i-idle": data})
    assert result.undetermined == frozenset({"i-idle"}) and result.findings == ()


def test_network_rate_is_normalised_by_observed_time() -> None:
    # 10 of 12 points, 0.4 MB in+out per 5 min = 4.8 MB/h: idle; the rate must not be diluted over 1h.
    data = idle_data(points=10)
    data["NetworkIn"] = [0.3 * MB] * 10
    data["NetworkOut"] = [0.1 * MB] * 10
    (finding,) = evaluate([make_instance()], {"i-idle": data}).findings
    assert finding.evidence["network_mb_per_hour"] == pytest.approx(4.8)
    data["NetworkIn"] = [0.32 * MB] * 10  # 5.04 MB/h over the 50 min observed
    assert evaluate([make_instance()], {"i-idle": data}).findings == ()


def test_coverage_is_never_rounded_below_min_coverage() -> None:
    rule = IdleVMs(IdleVMs.Config(window="50m", period="5m", min_coverage=0.85))
    result = evaluate([make_instance()], {"i-idle": idle_data(points=8)}, rule)
    assert result.undetermined == frozenset({"i-idle"})
    assert result.findings == ()


def test_zero_period_is_rejected_by_the_config() -> None:
    with pytest.raises(ValidationError):
        IdleVMs.Config(period="0s")


# --- skipped instances ---


@pytest.mark.parametrize("state", ["stopped", "stopping", "pending", "terminated", "shutting-down"])
def test_non_running_instance_is_ignored_and_not_queried(state: str) -> None:
    rule = IdleVMs()
    instance = make_instance(state=state)
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, instances=(instance,), metrics={})
    assert list(rule.metric_queries(snapshot, CONTEXT)) == []
    result = rule.evaluate(snapshot, CONTEXT)
    assert result.findings == () and result.undetermined == frozenset()


@pytest.mark.parametrize("value", ["true", "TRUE", "True"])
def test_protected_instance_is_skipped_and_not_queried(value: str) -> None:
    rule = IdleVMs()
    instance = make_instance(tags={"guard:protect": value})
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, instances=(instance,), metrics={})
    assert list(rule.metric_queries(snapshot, CONTEXT)) == []
    # even with idle metrics present for it, a protected instance is never a finding nor undetermined
    idle_metrics = with_metrics(rule, [make_instance()], {"i-idle": idle_data()})
    result = rule.evaluate(dataclasses.replace(idle_metrics, instances=(instance,)), CONTEXT)
    assert result.findings == () and result.undetermined == frozenset()


def test_protect_tag_with_other_value_does_not_protect() -> None:
    result = evaluate([make_instance(tags={"guard:protect": "false"})], {"i-idle": idle_data()})
    assert [f.resource_id for f in result.findings] == ["i-idle"]


def test_custom_protect_tag_from_context() -> None:
    context = Context(prices=default_catalog(), protect_tag="keep", protect_value="yes")
    kept = make_instance("i-kept", tags={"keep": "yes"})
    default_tagged = make_instance("i-other", tags={"guard:protect": "true"})
    data = {"i-kept": idle_data(), "i-other": idle_data()}
    result = evaluate([kept, default_tagged], data, context=context)
    assert [f.resource_id for f in result.findings] == ["i-other"]


def test_only_the_idle_instance_of_several_is_reported() -> None:
    instances = [make_instance("i-idle"), make_instance("i-busy"), make_instance("i-new"),
                 make_instance("i-off", state="stopped")]
    data = {"i-idle": idle_data(), "i-busy": idle_data(cpu=60.0), "i-new": idle_data(points=3)}
    result = evaluate(instances, data)
    assert [f.resource_id for f in result.findings] == ["i-idle"]
    assert result.undetermined == frozenset({"i-new"})


# --- unknown prices ---


def test_unknown_instance_type_is_a_finding_with_unknown_price() -> None:
    (finding,) = evaluate([make_instance("i-x", "zz9.mega")], {"i-x": idle_data()}).findings
    assert finding.waste_hourly_usd is None
    assert finding.evidence["price"] == "unknown"
    assert finding.evidence["on_demand_usd_per_hour"] is None
    assert finding.evidence["monthly_usd"] is None
    assert finding.severity is Severity.medium
    assert "price unknown" in finding.summary


def test_unknown_region_prices_as_none() -> None:
    (finding,) = evaluate([make_instance()], {"i-idle": idle_data()}, region="xx-moon-1").findings
    assert finding.waste_hourly_usd is None
    assert finding.evidence["price"] == "unknown"


# --- property ---

TYPES = ["m5.large", "g5.xlarge", "t3.micro", "p3.2xlarge", "zz9.mega"]
STATES = ["running", "running", "running", "stopped", "pending", "terminated"]


@st.composite
def instance_spec(draw: st.DrawFn) -> dict:
    """One instance and its series: enough datapoints most of the time, values often idle, sometimes busy."""
    points = draw(st.sampled_from([0, 3, 9, 10, 11, 12, 12, 12, 13]))
    gap = draw(st.sampled_from([0, 0, 0, min(points, 3)]))
    # one regime per instance (not per datapoint), so that wholly idle instances are common
    idle_cpu, any_cpu = st.floats(min_value=0, max_value=3), st.floats(min_value=0, max_value=100)
    cpu = draw(st.sampled_from([idle_cpu, idle_cpu, any_cpu]))
    bytes_per_period = draw(st.sampled_from(
        [st.floats(min_value=0, max_value=100_000), st.floats(min_value=0, max_value=5e6)]))
    return {
        "type": draw(st.sampled_from(TYPES)),
        "state": draw(st.sampled_from(STATES)),
        "protected": draw(st.sampled_from([False, False, True])),
        "owner": draw(st.one_of(st.none(), st.sampled_from(["ana", "bob"]))),
        "cpu": draw(st.lists(cpu, min_size=points, max_size=points)),
        "net_in": draw(st.lists(bytes_per_period, min_size=points, max_size=points)),
        # NetworkOut sometimes has gaps of its own
        "net_out": draw(st.lists(bytes_per_period, min_size=points - gap, max_size=points - gap)),
    }


instance_specs = st.lists(instance_spec(), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(specs=instance_specs, cpu_max=st.one_of(st.just(5.0), st.floats(min_value=0, max_value=100)),
       region=st.sampled_from(["us-east-1", "eu-west-1", "xx-moon-1"]))
def test_evaluate_never_raises_and_only_flags_running_unprotected_low_cpu(
        specs: list[dict], cpu_max: float, region: str) -> None:
    rule = IdleVMs(IdleVMs.Config(cpu_percent_max=cpu_max))
    instances, data = [], {}
    for index, spec in enumerate(specs):
        tags = {"owner": spec["owner"]} if spec["owner"] else {}
        if spec["protected"]:
            tags["guard:protect"] = "true"
        instance = make_instance(f"i-{index}", spec["type"], spec["state"], tags)
        instances.append(instance)
        data[instance.id] = {"CPUUtilization": spec["cpu"], "NetworkIn": spec["net_in"],
                             "NetworkOut": spec["net_out"]}

    result = evaluate(instances, data, rule, region=region)

    by_id = {instance.id: instance for instance in instances}
    eligible = {i.id for i in instances if i.state == "running" and not CONTEXT.is_protected(i.tags)}
    flagged = [finding.resource_id for finding in result.findings]
    assert len(flagged) == len(set(flagged))
    assert set(flagged) <= eligible
    assert result.undetermined <= eligible
    assert not set(flagged) & result.undetermined
    for finding in result.findings:
        cpu = data[finding.resource_id]["CPUUtilization"]
        assert cpu and sum(cpu) / len(cpu) < cpu_max
        instance_type = by_id[finding.resource_id].instance_type
        assert finding.waste_hourly_usd == default_catalog().hourly_usd(instance_type, region)
        assert finding.owner == (by_id[finding.resource_id].tags.get("owner") or "unknown")
    # an eligible instance with too few datapoints in any series is never judged
    for instance_id in eligible:
        series_lengths = [len(values) for values in data[instance_id].values()]
        if min(series_lengths) < 10:  # 80% of 12 points, rounded up
            assert instance_id in result.undetermined
        else:
            assert instance_id not in result.undetermined
    event(f"findings: {min(len(flagged), 2)}")


# --- instances that publish GPU use are idle-gpu's ---


def gpu_listing(instance_id: str, gpus: int) -> dict:
    return {GPU_METRIC: tuple(tuple(sorted({"InstanceId": instance_id, "index": str(n), "name": "NVIDIA A10G"}.items()))
                              for n in range(gpus))}


def test_busy_gpu_box_with_quiet_cpu_and_network_is_not_called_idle() -> None:
    # issue 13 item 1: a g5.12xlarge training from local NVMe, 4 GPUs at 95%, 2% CPU, no network to speak of
    box = make_instance("i-train", "g5.12xlarge")
    quiet = idle_data(cpu=2.0, mb_per_hour=0.1)
    result = evaluate([box], {"i-train": quiet}, listings=gpu_listing("i-train", 4))
    assert result.findings == () and result.undetermined == frozenset()
    # judged on its GPUs by idle-gpu, not on CPU here: none of its CPU or network series is even asked for
    snapshot = with_metrics(IdleVMs(), [box], {}, listings=gpu_listing("i-train", 4))
    assert list(IdleVMs().metric_queries(snapshot, CONTEXT)) == []
    # the same box without the agent's GPU series is judged on CPU and network, as before
    (finding,) = evaluate([box], {"i-train": quiet}).findings
    assert finding.resource_id == "i-train" and finding.waste_hourly_usd == pytest.approx(5.672)


def test_gpu_series_of_another_instance_change_nothing() -> None:
    (finding,) = evaluate([make_instance("i-gpu", "g5.xlarge")], {"i-gpu": idle_data()},
                          listings=gpu_listing("i-elsewhere", 1)).findings
    assert finding.resource_id == "i-gpu"


def test_unknown_metric_listing_leaves_gpu_types_undetermined_and_judges_the_rest() -> None:
    instances = [make_instance("i-gpu", "g5.12xlarge"), make_instance("i-cpu", "m5.large")]
    result = evaluate(instances, {"i-gpu": idle_data(), "i-cpu": idle_data()}, listings=None)
    assert [finding.resource_id for finding in result.findings] == ["i-cpu"]
    assert result.undetermined == frozenset({"i-gpu"})


def test_idle_vms_reads_the_gpu_listing_when_it_can() -> None:
    assert "metric_listings" in IdleVMs.uses and "metric_listings" not in IdleVMs.needs
    assert GPU_METRIC in IdleVMs.listings and "cloudwatch:ListMetrics" in IdleVMs.iam_permissions
