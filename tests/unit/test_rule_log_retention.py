"""rules.log_retention: log groups that never expire anything, where a retention policy would free data."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from guard.model import LogGroup, Severity, Snapshot, freeze_tags
from guard.pricing import GB, HOURS_PER_MONTH, LOGS_STORAGE_USD_PER_GB_MONTH, default_catalog
from guard.rule import Context
from rules.log_retention import RETENTION_DAYS, LogRetention

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CONTEXT = Context(prices=default_catalog())


def make_group(name: str = "/aws/lambda/etl-nightly", stored_gb: float = 340.0, retention_days: int | None = None,
               age: timedelta = timedelta(days=365), tags: Mapping[str, str] | None = None) -> LogGroup:
    return LogGroup(name=name, arn=f"arn:aws:logs:us-east-1:123456789012:log-group:{name}",
                    stored_bytes=round(stored_gb * GB), retention_days=retention_days, creation_time=NOW - age,
                    tags=freeze_tags(tags if tags is not None else {}))


def evaluate(*groups: LogGroup, rule: LogRetention | None = None, region: str = "us-east-1",
             context: Context = CONTEXT):
    snapshot = Snapshot(account_id="123456789012", region=region, taken_at=NOW, log_groups=tuple(groups))
    return (rule or LogRetention()).evaluate(snapshot, context)


def reclaimable(stored_gb: float, age_days: float, retention_days: int = 30) -> float:
    return stored_gb * (1 - retention_days / age_days)


def test_never_expiring_group_is_a_priced_finding_with_evidence() -> None:
    result = evaluate(make_group(tags={"owner": "maria"}))
    assert result.undetermined == frozenset()
    (finding,) = result.findings
    assert finding.waste_hourly_usd == pytest.approx(reclaimable(340, 365) * 0.03 / 730)
    assert finding.waste_hourly_usd == pytest.approx(0.0128, abs=1e-4)  # the docstring's example
    assert (finding.rule, finding.resource_id, finding.resource_type, finding.region) == (
        "log-retention", "/aws/lambda/etl-nightly", "log-group", "us-east-1")
    assert finding.owner == "maria"
    assert finding.suggested_action == "set-retention"
    assert finding.severity is Severity.medium  # $9.36 a month
    evidence = finding.evidence
    assert evidence["stored_bytes"] == 340 * GB
    assert evidence["stored_gb"] == 340.0
    assert evidence["reclaimable_gb"] == pytest.approx(312.055, abs=1e-3)
    assert evidence["retention_days"] is None
    assert evidence["suggested_retention_days"] == 30
    assert evidence["age"] == "365d"
    assert evidence["growth_gb_per_month"] == pytest.approx(340 / (365 * 24) * HOURS_PER_MONTH, abs=1e-3)
    assert "since creation" in evidence["growth_basis"]
    assert evidence["usd_per_gb_month"] == LOGS_STORAGE_USD_PER_GB_MONTH
    assert evidence["monthly_usd"] == pytest.approx(9.36)
    assert evidence["price"] == "known"
    assert finding.summary == ("340.0 GB kept forever (no retention policy), +28.3 GB/month; "
                               "30 days' retention frees 312.1 GB — $0.0128/hour ($9.36/month)")
    json.dumps(evidence)


@pytest.mark.parametrize("age", [timedelta(hours=20), timedelta(days=30)])
def test_a_group_younger_than_the_retention_frees_nothing_yet(age: timedelta) -> None:
    result = evaluate(make_group(stored_gb=5000, age=age))
    assert result.findings == () and result.undetermined == frozenset()


def test_a_group_just_past_a_day_has_a_growth_estimate_once_it_frees_something() -> None:
    rule = LogRetention(LogRetention.Config(retention_days=1))
    (finding,) = evaluate(make_group(age=timedelta(days=2)), rule=rule).findings
    assert finding.evidence["growth_gb_per_month"] == pytest.approx(340 / 48 * HOURS_PER_MONTH, abs=1e-3)
    assert finding.waste_hourly_usd == pytest.approx(170 * 0.03 / 730)


@pytest.mark.parametrize("stored_gb", [1.5, 42.0, 3000.0])
def test_waste_is_what_the_policy_frees_times_gb_month_price_over_730(stored_gb: float) -> None:
    (finding,) = evaluate(make_group(stored_gb=stored_gb)).findings
    assert finding.waste_hourly_usd == pytest.approx(
        reclaimable(stored_gb, 365) * LOGS_STORAGE_USD_PER_GB_MONTH / HOURS_PER_MONTH)


@pytest.mark.parametrize(("stored_bytes", "found"), [
    (2 * GB - 2, False), (2 * GB, False), (2 * GB + 2, True), (0, False), (10 * GB, True)])
def test_reclaimable_threshold_near_misses(stored_bytes: int, found: bool) -> None:
    group = LogGroup(name="/g", arn="arn:/g", stored_bytes=stored_bytes, retention_days=None,
                     creation_time=NOW - timedelta(days=60))  # 30 days' retention frees half
    assert bool(evaluate(group).findings) is found


@pytest.mark.parametrize("retention_days", [1, 30, 3653])
def test_any_retention_policy_is_fine(retention_days: int) -> None:
    result = evaluate(make_group(stored_gb=5000, retention_days=retention_days))
    assert result.findings == () and result.undetermined == frozenset()


@pytest.mark.parametrize(("stored_gb", "severity"), [
    (1112, Severity.high), (1110, Severity.medium), (112, Severity.medium), (110, Severity.low), (3, Severity.low)])
def test_severity_follows_the_monthly_cost(stored_gb: float, severity: Severity) -> None:
    # 300 days old: a 30-day policy frees 90%; high from 1,000 GB freed ($30/month), medium from 100 GB
    (finding,) = evaluate(make_group(stored_gb=stored_gb, age=timedelta(days=300))).findings
    assert finding.severity is severity


def test_custom_thresholds_apply() -> None:
    rule = LogRetention(LogRetention.Config(min_reclaimable_gb=500, retention_days=90, high_monthly_usd=5,
                                            medium_monthly_usd=1))
    assert evaluate(make_group(stored_gb=340), rule=rule).findings == ()  # 90 days' retention frees 256 GB
    (finding,) = evaluate(make_group(stored_gb=700), rule=rule).findings  # frees 527 GB
    assert finding.severity is Severity.high
    assert finding.evidence["suggested_retention_days"] == 90


@pytest.mark.parametrize("value", ["true", "True"])
def test_protected_group_is_skipped(value: str) -> None:
    result = evaluate(make_group(tags={"guard:protect": value}))
    assert result.findings == () and result.undetermined == frozenset()


def test_owner_is_unknown_without_owner_tag() -> None:
    (finding,) = evaluate(make_group()).findings
    assert finding.owner == "unknown"


def test_only_the_never_expiring_large_group_of_several_is_reported() -> None:
    groups = [make_group("/big-forever"), make_group("/big-kept-30d", retention_days=30),
              make_group("/small-forever", stored_gb=0.2), make_group("/kept", tags={"guard:protect": "true"})]
    assert [f.resource_id for f in evaluate(*groups).findings] == ["/big-forever"]


def test_no_log_groups_at_all() -> None:
    result = evaluate()
    assert result.findings == () and result.undetermined == frozenset()


def test_region_without_a_known_price_reports_unknown_waste() -> None:
    (finding,) = evaluate(make_group(), region="xx-moon-1").findings
    assert finding.waste_hourly_usd is None
    assert finding.evidence["price"] == "unknown"
    assert finding.evidence["monthly_usd"] is None and finding.evidence["usd_per_gb_month"] is None
    assert finding.severity is Severity.medium
    assert finding.summary.endswith("price unknown")


@pytest.mark.parametrize("values", [
    {"min_reclaimable_gb": -1}, {"retention_days": 10}, {"retention_days": 0}, {"high_monthly_usd": -5},
    {"medium_monthly_usd": 50, "high_monthly_usd": 30}, {"min_stored": 1}, {"min_reclaimable_gb": "lots"},
])
def test_bad_config_is_rejected(values: dict) -> None:
    with pytest.raises(ValidationError):
        LogRetention.Config.model_validate(values)


def test_every_retention_aws_accepts_is_accepted() -> None:
    for days in RETENTION_DAYS:
        assert LogRetention.Config(retention_days=days).retention_days == days
    config = LogRetention.Config()
    assert (config.min_reclaimable_gb, config.retention_days) == (1.0, 30)


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(st.tuples(st.integers(min_value=0, max_value=5000 * GB),
                                st.one_of(st.none(), st.sampled_from(RETENTION_DAYS)), st.booleans(),
                                st.integers(min_value=0, max_value=2000)), max_size=8),
       threshold=st.floats(min_value=0, max_value=2000), region=st.sampled_from(["us-east-1", "xx-moon-1"]))
def test_findings_are_exactly_the_large_unprotected_never_expiring_groups(
        specs: list[tuple[int, int | None, bool, int]], threshold: float, region: str) -> None:
    groups = [LogGroup(name=f"/g{index}", arn=f"arn:/g{index}", stored_bytes=stored, retention_days=retention,
                       creation_time=NOW - timedelta(days=age_days),
                       tags=freeze_tags({"guard:protect": "true"} if protected else {}))
              for index, (stored, retention, protected, age_days) in enumerate(specs)]
    result = evaluate(*groups, rule=LogRetention(LogRetention.Config(min_reclaimable_gb=threshold)), region=region)
    expected = {g.name for g in groups if g.retention_days is None and not CONTEXT.is_protected(g.tags)
                and reclaimable(g.stored_bytes / GB, max((NOW - g.creation_time).days, 30)) > threshold}
    assert [f.resource_id for f in result.findings] == [g.name for g in groups if g.name in expected]
    by_name = {g.name: g for g in groups}
    for finding in result.findings:
        if region == "us-east-1":
            group = by_name[finding.resource_id]
            freed = reclaimable(group.stored_bytes / GB, (NOW - group.creation_time).days)
            assert finding.waste_hourly_usd == pytest.approx(freed * 0.03 / 730)
        else:
            assert finding.waste_hourly_usd is None
