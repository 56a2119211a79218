"""rules.detached_volumes: EBS volumes attached to nothing for longer than min_age."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

import pytest

from guard.model import Severity, Snapshot, Volume, freeze_tags
from guard.pricing import EBS_USD_PER_GB_MONTH, HOURS_PER_MONTH, default_catalog
from guard.rule import Context
from rules.detached_volumes import DetachedVolumes

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CONTEXT = Context(prices=default_catalog())
OLD = timedelta(days=10)


def make_volume(volume_id: str = "vol-1", volume_type: str = "gp3", size_gib: int = 500,
                state: str = "available", age: timedelta = OLD, tags: Mapping[str, str] | None = None,
                attached_to: tuple[str, ...] = ()) -> Volume:
    return Volume(id=volume_id, volume_type=volume_type, size_gib=size_gib, state=state,
                  create_time=NOW - age, tags=freeze_tags(tags if tags is not None else {}),
                  attached_to=attached_to)


def evaluate(*volumes: Volume, rule: DetachedVolumes | None = None, region: str = "us-east-1",
             context: Context = CONTEXT):
    snapshot = Snapshot(account_id="123456789012", region=region, taken_at=NOW, volumes=tuple(volumes))
    return (rule or DetachedVolumes()).evaluate(snapshot, context)


def test_old_available_volume_is_a_priced_finding() -> None:
    result = evaluate(make_volume(volume_type="gp2", size_gib=500, tags={"owner": "ana"}))
    (finding,) = result.findings
    assert result.undetermined == frozenset()
    expected_hourly = 500 * 0.10 / 730
    assert finding.waste_hourly_usd == pytest.approx(expected_hourly)
    assert finding.waste_hourly_usd == pytest.approx(0.0685, abs=1e-4)  # the docstring's example
    assert (finding.rule, finding.resource_id, finding.resource_type, finding.region) == (
        "detached-volumes", "vol-1", "volume", "us-east-1")
    assert finding.owner == "ana"
    assert finding.suggested_action == "snapshot-then-delete"
    assert finding.severity is Severity.high  # $50.00 a month
    evidence = finding.evidence
    assert evidence["volume_type"] == "gp2"
    assert evidence["size_gib"] == 500
    assert evidence["age"] == "10d"
    assert evidence["usd_per_gb_month"] == 0.10
    assert evidence["monthly_usd"] == pytest.approx(50.0)
    assert evidence["price"] == "known"
    assert "500 GiB gp2" in finding.summary and "10.0 days" in finding.summary


@pytest.mark.parametrize("volume_type", sorted(EBS_USD_PER_GB_MONTH))
def test_waste_is_size_times_gb_month_price_over_730(volume_type: str) -> None:
    (finding,) = evaluate(make_volume(volume_type=volume_type, size_gib=123)).findings
    expected = 123 * EBS_USD_PER_GB_MONTH[volume_type] / HOURS_PER_MONTH
    assert finding.waste_hourly_usd == pytest.approx(expected)


@pytest.mark.parametrize("state", ["in-use", "creating", "deleting", "error"])
def test_volume_not_available_is_not_a_finding(state: str) -> None:
    assert evaluate(make_volume(state=state, attached_to=("i-1",))).findings == ()


def test_too_young_volume_is_not_a_finding() -> None:
    assert evaluate(make_volume(age=timedelta(hours=3))).findings == ()


@pytest.mark.parametrize(
    ("age", "reported"),
    [(timedelta(hours=24), True), (timedelta(hours=24) - timedelta(seconds=1), False),
     (timedelta(hours=24, seconds=1), True)],
)
def test_min_age_boundary_is_inclusive(age: timedelta, reported: bool) -> None:
    assert bool(evaluate(make_volume(age=age)).findings) is reported


def test_custom_min_age() -> None:
    rule = DetachedVolumes(DetachedVolumes.Config(min_age="2h"))
    assert len(evaluate(make_volume(age=timedelta(hours=3)), rule=rule).findings) == 1
    assert evaluate(make_volume(age=timedelta(minutes=119)), rule=rule).findings == ()


def test_volume_created_after_the_snapshot_is_not_a_finding() -> None:
    # clock skew: a negative age is younger than any min_age
    assert evaluate(make_volume(age=-timedelta(minutes=5))).findings == ()


@pytest.mark.parametrize("value", ["true", "TRUE"])
def test_protected_volume_is_not_a_finding(value: str) -> None:
    assert evaluate(make_volume(tags={"guard:protect": value})).findings == ()


def test_custom_protect_tag_from_context() -> None:
    context = Context(prices=default_catalog(), protect_tag="keep", protect_value="yes")
    result = evaluate(make_volume("vol-kept", tags={"keep": "yes"}), make_volume("vol-gone"), context=context)
    assert [f.resource_id for f in result.findings] == ["vol-gone"]


def test_unknown_volume_type_has_unknown_waste() -> None:
    (finding,) = evaluate(make_volume(volume_type="gp9")).findings
    assert finding.waste_hourly_usd is None
    assert finding.severity is Severity.medium
    assert finding.evidence["price"] == "unknown"
    assert finding.evidence["monthly_usd"] is None
    assert finding.evidence["usd_per_gb_month"] is None
    assert "price unknown" in finding.summary


def test_unknown_region_has_unknown_waste() -> None:
    (finding,) = evaluate(make_volume(), region="xx-moon-1").findings
    assert finding.waste_hourly_usd is None
    assert finding.evidence["price"] == "unknown"


@pytest.mark.parametrize(
    ("volume_type", "size_gib", "severity"),
    [
        ("gp3", 625, Severity.high),    # $50.00/month: exactly the high band
        ("gp3", 624, Severity.medium),  # $49.92
        ("gp3", 125, Severity.medium),  # $10.00: exactly the medium band
        ("gp3", 124, Severity.low),     # $9.92
        ("gp3", 1, Severity.low),
        ("sc1", 16000, Severity.high),  # $240
        ("io2", 100, Severity.medium),  # $12.50
    ],
)
def test_severity_bands_by_monthly_cost(volume_type: str, size_gib: int, severity: Severity) -> None:
    (finding,) = evaluate(make_volume(volume_type=volume_type, size_gib=size_gib)).findings
    assert finding.severity is severity


def test_custom_severity_bands() -> None:
    rule = DetachedVolumes(DetachedVolumes.Config(high_monthly_usd=5, medium_monthly_usd=1))
    assert evaluate(make_volume(size_gib=100), rule=rule).findings[0].severity is Severity.high  # $8
    assert evaluate(make_volume(size_gib=20), rule=rule).findings[0].severity is Severity.medium  # $1.60
    assert evaluate(make_volume(size_gib=10), rule=rule).findings[0].severity is Severity.low  # $0.80


def test_owner_from_owner_tag_else_unknown() -> None:
    result = evaluate(make_volume("vol-a", tags={"owner": "ana"}), make_volume("vol-b"),
                      make_volume("vol-c", tags={"owner": ""}))
    assert {f.resource_id: f.owner for f in result.findings} == {"vol-a": "ana", "vol-b": "unknown",
                                                                 "vol-c": "unknown"}


def test_custom_owner_tag_from_context() -> None:
    context = Context(prices=default_catalog(), owner_tag="team")
    result = evaluate(make_volume("vol-a", tags={"team": "nlp", "owner": "ana"}), make_volume("vol-b",
                      tags={"owner": "bob"}), context=context)
    assert {f.resource_id: f.owner for f in result.findings} == {"vol-a": "nlp", "vol-b": "unknown"}


def test_mixed_inventory_reports_only_old_detached_unprotected() -> None:
    result = evaluate(
        make_volume("vol-old"),
        make_volume("vol-attached", state="in-use", attached_to=("i-1",)),
        make_volume("vol-young", age=timedelta(hours=1)),
        make_volume("vol-kept", tags={"guard:protect": "true"}),
    )
    assert [f.resource_id for f in result.findings] == ["vol-old"]


def test_no_volumes_no_findings() -> None:
    assert evaluate().findings == ()
