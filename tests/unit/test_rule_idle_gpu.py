"""rules.idle_gpu: running GPU instances idle on their GPUs (agent metrics) or, without them, on CPU."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from guard.model import Instance, MetricQuery, Series, Severity, Snapshot, freeze_tags
from guard.pricing import HOURS_PER_MONTH, default_catalog
from guard.rule import Context
from rules.idle_gpu import GPU_METRIC, IdleGPU
from rules.idle_vms import IdleVMs

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CONTEXT = Context(prices=default_catalog())
POINTS = 12  # default window 1h / period 5 min

Gpus = Mapping[str, Sequence[Sequence[float]]]
"""Instance id → one list of utilisation datapoints per GPU (index 0, 1, …)."""


def make_instance(instance_id: str = "i-gpu", instance_type: str = "g5.xlarge", state: str = "running",
                  tags: Mapping[str, str] | None = None) -> Instance:
    return Instance(id=instance_id, instance_type=instance_type, state=state, arch="x86_64",
                    launch_time=NOW - timedelta(days=2), tags=freeze_tags(tags if tags is not None else {}))


def gpu_dimensions(instance_id: str, index: int, **extra: str) -> tuple[tuple[str, str], ...]:
    """The dimension set the CloudWatch agent publishes for one GPU (sorted, as the listing collector keeps it)."""
    base = {"InstanceId": instance_id, "index": str(index), "name": "NVIDIA A10G", "arch": "Ampere", **extra}
    return tuple(sorted(base.items()))


def series(values: Sequence[float], period: int = 300) -> Series:
    start = NOW - timedelta(seconds=period * len(values))
    return Series(timestamps=tuple(start + timedelta(seconds=period * i) for i in range(len(values))),
                  values=tuple(float(v) for v in values))


def make_snapshot(instances: Sequence[Instance], cpu: Mapping[str, Sequence[float]] | None = None,
                  gpus: Gpus | None = None, rule: IdleGPU | None = None, region: str = "us-east-1",
                  context: Context = CONTEXT, extra_listed: Sequence[tuple[tuple[str, str], ...]] = ()) -> Snapshot:
    """Listings name each GPU in ``gpus``; metrics answer the rule's queries from ``cpu`` and ``gpus``."""
    rule = rule or IdleGPU()
    gpus = gpus or {}
    dimension_sets = [gpu_dimensions(i, n) for i, per_gpu in gpus.items() for n in range(len(per_gpu))]
    bare = Snapshot(account_id="123456789012", region=region, taken_at=NOW, instances=tuple(instances),
                    metric_listings={GPU_METRIC: tuple(sorted([*dimension_sets, *extra_listed]))}, metrics={})
    metrics: dict[MetricQuery, Series] = {}
    for query in rule.metric_queries(bare, context):
        dims = dict(query.dimensions)
        if query.namespace == "AWS/EC2":
            values = (cpu or {}).get(dims["InstanceId"])
        else:
            per_gpu = gpus.get(dims["InstanceId"], ())
            index = int(dims["index"])
            values = per_gpu[index] if index < len(per_gpu) else None
        if values is not None:
            metrics[query] = series(values, query.period_seconds)
    return dataclasses.replace(bare, metrics=metrics)


def evaluate(instances, cpu=None, gpus=None, rule: IdleGPU | None = None, region: str = "us-east-1",
             context: Context = CONTEXT, **kwargs):
    rule = rule or IdleGPU()
    return rule.evaluate(make_snapshot(instances, cpu, gpus, rule, region, context, **kwargs), context)


def flat(value: float, points: int = POINTS) -> list[float]:
    return [value] * points


# --- metric queries ---


def test_without_gpu_metrics_only_cpu_is_asked_and_it_is_idle_vms_own_query() -> None:
    bare = Snapshot(account_id="1", region="us-east-1", taken_at=NOW,
                    instances=(make_instance("i-g"), make_instance("i-cpu", "m5.large"),
                               make_instance("i-off", state="stopped")),
                    metric_listings={GPU_METRIC: ()})
    (query,) = IdleGPU().metric_queries(bare, CONTEXT)
    assert (query.namespace, query.metric, query.stat) == ("AWS/EC2", "CPUUtilization", "Average")
    assert query.dimensions == (("InstanceId", "i-g"),)
    assert (query.period_seconds, query.window_seconds) == (300, 3600)
    # identical to idle-vms' CPU query: the engine fetches the series once for both rules
    assert query in set(IdleVMs().metric_queries(bare, CONTEXT))


def test_with_gpu_metrics_each_listed_gpu_series_is_asked_as_listed() -> None:
    instance = make_instance("i-4", "g5.12xlarge")
    listed = tuple(gpu_dimensions("i-4", n) for n in range(4))
    bare = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, instances=(instance,),
                    metric_listings={GPU_METRIC: (*listed, gpu_dimensions("i-elsewhere", 0))})
    queries = list(IdleGPU(IdleGPU.Config(window="2h", period="1m")).metric_queries(bare, CONTEXT))
    assert {q.dimensions for q in queries} == set(listed)
    assert {(q.namespace, q.metric, q.stat, q.period_seconds, q.window_seconds) for q in queries} == {
        ("CWAgent", "nvidia_smi_utilization_gpu", "Average", 60, 7200)}


# --- findings ---


def test_idle_gpus_on_a_busy_cpu_are_a_finding_via_gpu_metrics() -> None:
    instance = make_instance("i-4", "g5.12xlarge", tags={"owner": "wei.chen"})
    gpus = {"i-4": [flat(1.0), flat(2.0), flat(0.0), flat(9.9)]}
    result = evaluate([instance], cpu={"i-4": flat(85.0)}, gpus=gpus)

    assert result.undetermined == frozenset()
    (finding,) = result.findings
    assert finding.waste_hourly_usd == pytest.approx(5.672)
    assert finding.severity is Severity.high
    assert (finding.rule, finding.resource_id, finding.resource_type, finding.region, finding.owner) == (
        "idle-gpu", "i-4", "instance", "us-east-1", "wei.chen")
    assert finding.suggested_action == "stop"
    evidence = finding.evidence
    assert evidence["signal"] == "gpu"
    assert evidence["gpus_reporting"] == 4 and evidence["gpu_count"] == 4 and evidence["gpu_name"] == "A10G"
    assert evidence["busiest_gpu_percent"] == pytest.approx(9.9)
    assert evidence["gpu_avg_percent_by_index"] == {"0": 1.0, "1": 2.0, "2": 0.0, "3": 9.9}
    assert evidence["datapoints"] == POINTS
    assert evidence["monthly_usd"] == pytest.approx(round(5.672 * HOURS_PER_MONTH, 2))
    assert evidence["price"] == "known" and evidence["window"] == "1h"
    json.dumps(evidence)
    assert "g5.12xlarge (4× A10G)" in finding.summary and "busiest GPU 9.9%" in finding.summary
    assert "$5.672/hour" in finding.summary


def test_idle_cpu_without_gpu_metrics_is_a_finding_via_cpu() -> None:
    (finding,) = evaluate([make_instance()], cpu={"i-gpu": flat(1.2)}).findings
    assert finding.waste_hourly_usd == pytest.approx(1.006)
    assert finding.severity is Severity.high
    assert finding.evidence["signal"] == "cpu"
    assert finding.evidence["cpu_avg_percent"] == pytest.approx(1.2)
    assert "no CWAgent" in finding.evidence["why_cpu"]
    assert "CPU 1.2%, no GPU metrics" in finding.summary
    assert finding.owner == "unknown"


def test_gpu_metrics_outrank_an_idle_cpu() -> None:
    # a GPU job can leave the CPU nearly idle: with GPU metrics, the GPU decides
    result = evaluate([make_instance()], cpu={"i-gpu": flat(0.5)}, gpus={"i-gpu": [flat(65.0)]})
    assert result.findings == () and result.undetermined == frozenset()


def test_one_busy_gpu_keeps_a_multi_gpu_box_off_the_list() -> None:
    # 7 of 8 GPUs idle, one at 40%: under-used, not idle — stopping it would kill the job.
    gpus = {"i-8": [flat(0.0)] * 7 + [flat(40.0)]}
    result = evaluate([make_instance("i-8", "g5.48xlarge")], gpus=gpus)
    assert result.findings == () and result.undetermined == frozenset()
    (finding,) = evaluate([make_instance("i-8", "g5.48xlarge")], gpus={"i-8": [flat(0.0)] * 8}).findings
    assert finding.evidence["gpus_reporting"] == 8


@pytest.mark.parametrize(("utilisation", "idle"), [(9.99, True), (10.0, False), (10.5, False), (0.0, True)])
def test_gpu_threshold_near_misses(utilisation: float, idle: bool) -> None:
    result = evaluate([make_instance()], cpu={"i-gpu": flat(80)}, gpus={"i-gpu": [flat(utilisation)]})
    assert bool(result.findings) is idle
    assert result.undetermined == frozenset()


@pytest.mark.parametrize(("cpu", "idle"), [(4.99, True), (5.0, False), (5.01, False)])
def test_cpu_threshold_near_misses(cpu: float, idle: bool) -> None:
    result = evaluate([make_instance()], cpu={"i-gpu": flat(cpu)})
    assert bool(result.findings) is idle


def test_gpu_threshold_uses_each_gpus_mean() -> None:
    # one 100% spike in twelve 1% points averages 9.25%: idle; two spikes average 17.5%: not.
    spiky = [1.0] * 11 + [100.0]
    (finding,) = evaluate([make_instance()], gpus={"i-gpu": [spiky]}).findings
    assert finding.evidence["busiest_gpu_percent"] == pytest.approx(111 / 12, abs=1e-3)
    assert evaluate([make_instance()], gpus={"i-gpu": [[1.0] * 10 + [100.0, 100.0]]}).findings == ()


def test_custom_thresholds_apply() -> None:
    rule = IdleGPU(IdleGPU.Config(gpu_percent_max=50, cpu_percent_max=0.5))
    assert len(evaluate([make_instance()], gpus={"i-gpu": [flat(40)]}, rule=rule).findings) == 1
    assert evaluate([make_instance()], cpu={"i-gpu": flat(1.0)}, rule=rule).findings == ()


def test_non_gpu_and_unknown_types_are_ignored() -> None:
    instances = [make_instance("i-cpu", "m5.large"), make_instance("i-x", "zz9.mega")]
    snapshot = make_snapshot(instances, cpu={"i-cpu": flat(0.1), "i-x": flat(0.1)})
    assert list(IdleGPU().metric_queries(snapshot, CONTEXT)) == []
    result = IdleGPU().evaluate(snapshot, CONTEXT)
    assert result.findings == () and result.undetermined == frozenset()


def test_gpu_series_pooled_across_dimension_sets_of_the_same_gpu() -> None:
    # the agent was reconfigured (a dimension added): the old set has the first half of the window, the new the rest
    instance = make_instance()
    old, new = gpu_dimensions("i-gpu", 0), gpu_dimensions("i-gpu", 0, host="ip-10-0-0-1")
    rule = IdleGPU()
    bare = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, instances=(instance,),
                    metric_listings={GPU_METRIC: (old, new)}, metrics={})
    metrics = {q: series(flat(2.0, 6)) for q in rule.metric_queries(bare, CONTEXT)}
    assert len(metrics) == 2
    (finding,) = rule.evaluate(dataclasses.replace(bare, metrics=metrics), CONTEXT).findings
    assert finding.evidence["gpus_reporting"] == 1 and finding.evidence["datapoints"] == 12


# --- coverage ---


def test_no_cpu_datapoints_is_undetermined() -> None:
    result = evaluate([make_instance()])
    assert result.findings == () and result.undetermined == frozenset({"i-gpu"})


@pytest.mark.parametrize(("points", "judged"), [(12, True), (10, True), (9, False), (0, False)])
def test_gpu_coverage_threshold(points: int, judged: bool) -> None:
    result = evaluate([make_instance()], cpu={"i-gpu": flat(1.0)}, gpus={"i-gpu": [flat(1.0, points)]})
    assert bool(result.findings) is judged
    assert ("i-gpu" in result.undetermined) is not judged


def test_one_gpu_short_of_datapoints_makes_the_instance_undetermined() -> None:
    gpus = {"i-4": [flat(1.0), flat(1.0), flat(1.0, 3), flat(1.0)]}
    result = evaluate([make_instance("i-4", "g5.12xlarge")], cpu={"i-4": flat(1.0)}, gpus=gpus)
    assert result.findings == () and result.undetermined == frozenset({"i-4"})


def test_listed_gpu_series_without_datapoints_do_not_fall_back_to_cpu() -> None:
    # the agent published recently but not in the window: undetermined, not judged on an idle-looking CPU
    result = evaluate([make_instance()], cpu={"i-gpu": flat(0.5)}, extra_listed=[gpu_dimensions("i-gpu", 0)])
    assert result.findings == () and result.undetermined == frozenset({"i-gpu"})


# --- skipped instances ---


@pytest.mark.parametrize("state", ["stopped", "stopping", "pending", "shutting-down"])
def test_non_running_instances_are_ignored(state: str) -> None:
    result = evaluate([make_instance(state=state)], cpu={"i-gpu": flat(0.1)}, gpus={"i-gpu": [flat(0.0)]})
    assert result.findings == () and result.undetermined == frozenset()


def test_protected_instance_is_skipped_and_not_queried() -> None:
    instance = make_instance(tags={"guard:protect": "true"})
    snapshot = make_snapshot([instance], cpu={"i-gpu": flat(0.1)}, gpus={"i-gpu": [flat(0.0)]})
    assert list(IdleGPU().metric_queries(snapshot, CONTEXT)) == []
    # even with idle series present for it
    idle = make_snapshot([make_instance()], gpus={"i-gpu": [flat(0.0)]})
    result = IdleGPU().evaluate(dataclasses.replace(idle, instances=(instance,)), CONTEXT)
    assert result.findings == () and result.undetermined == frozenset()


def test_custom_protect_tag_from_context() -> None:
    context = Context(prices=default_catalog(), protect_tag="keep", protect_value="yes")
    instances = [make_instance("i-kept", tags={"keep": "yes"}), make_instance("i-other", tags={"guard:protect": "1"})]
    result = evaluate(instances, cpu={"i-kept": flat(0.1), "i-other": flat(0.1)}, context=context)
    assert [f.resource_id for f in result.findings] == ["i-other"]


# --- prices ---


def test_gpu_type_priced_in_another_region() -> None:
    (finding,) = evaluate([make_instance()], cpu={"i-gpu": flat(0.1)}, region="us-west-2").findings
    assert finding.waste_hourly_usd == default_catalog().hourly_usd("g5.xlarge", "us-west-2")


def test_unknown_region_prices_as_none_but_stays_high() -> None:
    (finding,) = evaluate([make_instance()], cpu={"i-gpu": flat(0.1)}, region="xx-moon-1").findings
    assert finding.waste_hourly_usd is None
    assert finding.severity is Severity.high
    assert finding.evidence["price"] == "unknown" and finding.evidence["monthly_usd"] is None
    assert finding.evidence["gpu_count"] == 1  # the type is known elsewhere: still a GPU box
    assert "price unknown" in finding.summary


# --- config ---


@pytest.mark.parametrize("bad", [
    {"gpu_percent_max": -1},
    {"gpu_percent_max": 101},
    {"cpu_percent_max": -0.1},
    {"min_coverage": 0},
    {"min_coverage": 1.5},
    {"period": "0s"},
    {"period": "90s"},
    {"window": "1m"},
    {"gpu_max": 3},
])
def test_bad_config_is_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        IdleGPU.Config(**bad)


# --- property ---

TYPES = ["g5.xlarge", "g5.12xlarge", "g4dn.xlarge", "m5.large", "zz9.mega"]


@st.composite
def instance_spec(draw: st.DrawFn) -> dict:
    instance_type = draw(st.sampled_from(TYPES))
    gpu_count = {"g5.12xlarge": 4}.get(instance_type, 1)
    points = st.sampled_from([0, 9, 10, 12, 12])
    level = draw(st.sampled_from([st.floats(0, 12), st.floats(0, 100)]))
    return {
        "type": instance_type,
        "state": draw(st.sampled_from(["running", "running", "stopped"])),
        "protected": draw(st.booleans()),
        "cpu": draw(st.lists(level, min_size=draw(points), max_size=12)),
        "gpus": draw(st.one_of(st.none(), st.lists(st.lists(level, min_size=draw(points), max_size=12),
                                                   min_size=gpu_count, max_size=gpu_count))),
    }


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(instance_spec(), min_size=1, max_size=5))
def test_findings_are_running_unprotected_gpu_boxes_below_the_threshold_of_their_signal(specs: list[dict]) -> None:
    instances, cpu, gpus = [], {}, {}
    for index, spec in enumerate(specs):
        instance = make_instance(f"i-{index}", spec["type"], spec["state"],
                                 {"guard:protect": "true"} if spec["protected"] else {})
        instances.append(instance)
        cpu[instance.id] = spec["cpu"]
        if spec["gpus"] is not None:
            gpus[instance.id] = spec["gpus"]

    result = evaluate(instances, cpu=cpu, gpus=gpus)

    flagged = {f.resource_id: f for f in result.findings}
    assert not flagged.keys() & result.undetermined
    for instance, spec in zip(instances, specs, strict=True):
        # a type with GPUs, or any instance that publishes GPU series (idle-vms leaves those to this rule)
        eligible = (spec["state"] == "running" and not spec["protected"]
                    and (default_catalog().is_gpu(spec["type"]) or spec["gpus"] is not None))
        if not eligible:
            assert instance.id not in flagged and instance.id not in result.undetermined
            continue
        series_list = spec["gpus"] if spec["gpus"] is not None else [spec["cpu"]]
        threshold = 10.0 if spec["gpus"] is not None else 5.0
        if min(len(values) for values in series_list) < 10:
            assert instance.id in result.undetermined
        elif max(sum(values) / len(values) for values in series_list) < threshold:
            assert flagged[instance.id].evidence["signal"] == ("gpu" if spec["gpus"] is not None else "cpu")
            assert flagged[instance.id].severity is Severity.high
        else:
            assert instance.id not in flagged and instance.id not in result.undetermined


# --- issue 13 item 1: the busy g5.12xlarge idle-vms used to call idle ---


def test_busy_gpus_with_quiet_cpu_are_not_idle_and_idle_gpus_are() -> None:
    box = make_instance("i-train", "g5.12xlarge")
    busy = evaluate([box], cpu={"i-train": flat(2.0)}, gpus={"i-train": [flat(95.0)] * 4})
    assert busy.findings == () and busy.undetermined == frozenset()
    # near miss: the same box with its 4 GPUs at 0% is idle, judged on its GPUs
    (finding,) = evaluate([box], cpu={"i-train": flat(2.0)}, gpus={"i-train": [flat(0.0)] * 4}).findings
    assert finding.evidence["signal"] == "gpu" and finding.evidence["gpus_reporting"] == 4
    assert finding.waste_hourly_usd == pytest.approx(5.672)


def test_an_instance_with_gpu_series_is_judged_whatever_the_catalog_says() -> None:
    # a type the catalog does not know (or does not call a GPU type) still publishes GPU use: idle-vms leaves it
    # to this rule, so this rule must judge it
    odd = make_instance("i-new", "p9.unknown")
    assert not CONTEXT.prices.is_gpu("p9.unknown")
    (finding,) = evaluate([odd], gpus={"i-new": [flat(1.0), flat(2.0)]}).findings
    assert finding.resource_id == "i-new" and finding.evidence["signal"] == "gpu"
    assert evaluate([odd], gpus={"i-new": [flat(1.0), flat(60.0)]}).findings == ()
    # without GPU series such a type is not this rule's at all
    assert evaluate([odd], cpu={"i-new": flat(0.5)}) == evaluate([], cpu={})


def test_gpu_series_are_one_helper_on_the_snapshot() -> None:
    listed = (gpu_dimensions("i-a", 0), gpu_dimensions("i-a", 1), gpu_dimensions("i-b", 0),
              (("index", "0"),))  # a set without an instance is nobody's
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, metric_listings={GPU_METRIC: listed})
    assert dict(snapshot.gpu_series()) == {"i-a": listed[:2], "i-b": listed[2:3]}
    assert Snapshot(account_id="1", region="us-east-1", taken_at=NOW).gpu_series() is None
    assert dict(Snapshot(account_id="1", region="us-east-1", taken_at=NOW, metric_listings={}).gpu_series()) == {}
