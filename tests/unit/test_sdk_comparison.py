"""sdk.compare without AWS: a comparison's rows (cost of a run, order, table, DataFrame), the cap over all the
configurations, and the arguments refused in one line before anything is asked of AWS."""

from __future__ import annotations

import sys
import types

import pytest

import sdk
from sdk.cost import CostEstimate
from sdk.errors import SdkError
from sdk.experiments import COLUMNS, ComparisonRow, _check_cap_of_all, _hourly_total, _money, _Plan
from sdk.spec import ClusterSpec


def row(vm_type: str, wall: float | None = 10.0, hourly: float | None = 0.36, **fields) -> ComparisonRow:
    ran = {"workers": 2, "failures": 0} if wall is not None else {"workers": 0}
    return ComparisonRow(**({"vm_type": vm_type, "region": "us-east-1", "arch": "x86_64", "inputs": 100,
                             "wall_seconds": wall, "hourly_usd": hourly} | ran | fields))


def test_a_run_costs_its_hourly_estimate_times_its_wall_time() -> None:
    done = row("m5.large", wall=90.0, hourly=0.40)
    assert done.run_usd == pytest.approx(0.01) and done.usd_per_input == pytest.approx(0.0001)
    assert row("m5.large", wall=None).run_usd is None and row("m5.large", wall=None).usd_per_input is None
    assert row("x1.large", hourly=None).run_usd is None  # an unknown price is never $0
    assert done.record() == {name: getattr(done, name) for name in COLUMNS}


def test_rows_are_cheapest_per_input_first_after_fewer_failures_and_those_that_did_not_run_last() -> None:
    comparison = sdk.Comparison("score", (
        row("m5.large", wall=None, error="could not launch: InsufficientInstanceCapacity"),
        row("c7i.large", wall=20.0, hourly=0.30),
        row("m7g.large", wall=12.0, hourly=0.30),
        row("c7g.large", wall=0.5, hourly=0.30, failures=100, error="input 0: ModuleNotFoundError: No module"),
        row("r7i.large", wall=11.0, hourly=0.50),
    ))
    assert [r.vm_type for r in comparison.rows] == ["m7g.large", "r7i.large", "c7i.large", "c7g.large", "m5.large"]


def test_the_table_shows_every_figure_and_why_a_configuration_did_not_run() -> None:
    comparison = sdk.Comparison("score", (
        row("m7g.large", wall=12.5, hourly=0.18, failures=2, error="input 7: KeyError: 'x'"),
        row("m5.large", wall=None, hourly=0.2, error="could not launch: InsufficientInstanceCapacity"),
    ))
    text = str(comparison)
    assert "score over 100 input(s)" in text and "12.50 s" in text and "$0.180" in text
    assert "$0.000625" in text and "$0.00000625" in text  # 0.18 $/h × 12.5 s, and per input
    assert "2 of 100" in text and "input 7: KeyError: 'x'" in text
    assert "could not launch: InsufficientInstanceCapacity" in text and "—" in text
    assert "boot and shutdown not counted" in text


def test_money_keeps_three_significant_digits_without_exponents() -> None:
    assert [_money(v) for v in (1234.5, 0.21, 0.000583, 1.2e-7, 0.0, None)] == [
        "$1,234.50", "$0.210", "$0.000583", "$0.000000120", "$0", "—"]


def test_to_pandas_builds_a_dataframe_of_the_rows_and_says_when_pandas_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    comparison = sdk.Comparison("score", (row("m5.large", wall=3.0), row("m7g.large", wall=2.0)))
    built = []
    pandas = types.ModuleType("pandas")
    pandas.DataFrame = lambda data, columns: built.append((data, columns)) or "frame"
    monkeypatch.setitem(sys.modules, "pandas", pandas)
    assert comparison.to_pandas() == "frame"
    assert built == [([r.record() for r in comparison.rows], list(COLUMNS))]
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas fails
    with pytest.raises(ImportError, match=r"^Comparison.to_pandas\(\) needs pandas, which is not installed; pip"):
        comparison.to_pandas()


def plan(vm_type: str, hourly: float | None) -> _Plan:
    spec = ClusterSpec.from_kwargs(vm_type=vm_type, region="us-east-1", max_hourly_usd=1)
    estimate = CostEstimate(region="us-east-1", n_workers=1, instance_types=(vm_type,), hourly_usd=hourly,
                            worst_hourly_usd=hourly, per_vm_extra_usd=0.01)
    return _Plan({}, spec, "x86_64", estimate)


def test_the_cap_is_checked_against_all_the_configurations_together() -> None:
    plans = [plan("m5.large", 0.4), plan("c5.large", 0.45), plan("p3.2xlarge", 3.2),
             _Plan({}, plan("x9.large", None).spec, error="could not launch: unknown instance type")]
    assert _hourly_total(plans[:2]) == pytest.approx(0.85)
    _check_cap_of_all(plans[:2], 0.85, 1.0)
    _check_cap_of_all(plans, _hourly_total(plans), None)  # no cap
    with pytest.raises(SdkError) as refused:
        _check_cap_of_all(plans, _hourly_total(plans), 1.0)
    assert str(refused.value) == (
        "these 3 configuration(s) run at once and could cost up to $4.05/hour together ($97.20/day; the priciest, "
        "p3.2xlarge in us-east-1, $3.20/hour), above max_hourly_usd=1; pass max_hourly_usd=5 or set "
        "VMGUARD_MAX_HOURLY_USD=5 to allow it, or compare fewer configurations at once")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"vm_types": []}, r"^vm_types=\[\] names nothing to compare; pass a list like \['m5.large', 'm7g.large'\]$"),
    ({"vm_types": ["m5.large", "M5.large "]}, r"^vm_types names 'm5.large' twice; list each once$"),
    ({"vm_types": ["m5.large"], "regions": ["us-east-1", "us-east-1"]}, r"^regions names 'us-east-1' twice"),
    ({"vm_types": ["m5.large"], "regions": []}, r"^regions=\[\] names nothing to compare"),
    ({"vm_types": ["m5.large"], "regions": ["us-east-1", "mars-north-1"]}, r"unknown region 'mars-north-1'"),
    ({"vm_types": "m5.large", "vm_type": "m7g.large"}, r"^compare\(\) takes vm_types=\[...\], not vm_type="),
    ({"vm_types": ["m5.large"], "region": "us-east-1"}, r"^compare\(\) takes regions=\[...\], not region="),
    ({"vm_types": ["m5.large"], "n_workers": 0}, r"^n_workers=0 must be a whole number of 1 or more"),
    ({"vm_types": ["m5.large"], "cpu": 4}, r"pass either vm_type or cpu"),
    ({"vm_types": ["m5.large"], "max_hourly": 5}, r"unknown argument 'max_hourly'; did you mean max_hourly_usd"),
    ({"vm_types": 5}, r"^vm_types must be a list like"),
    ({"vm_types": ["m5.large"], "inputs": []}, r"^inputs is empty; pass what to map fn over"),
    ({"vm_types": ["m5.large"], "inputs": 7}, r"^inputs must be an iterable"),
    ({"vm_types": ["m5.large"], "fn": "score"}, r"^fn must be a function"),
])
def test_wrong_arguments_are_one_line_before_any_aws_call(kwargs: dict, message: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing answers there: no call may be made
    arguments = {"fn": abs, "inputs": range(3)} | kwargs
    with pytest.raises(SdkError, match=message) as refused:
        sdk.compare(arguments.pop("fn"), arguments.pop("inputs"), **arguments)
    assert "\n" not in str(refused.value)
