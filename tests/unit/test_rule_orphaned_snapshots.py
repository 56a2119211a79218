"""rules.orphaned_snapshots: snapshots of deleted volumes that no AMI of the account uses, older than min_age."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from guard.model import EbsSnapshot, Image, LaunchSource, Severity, Snapshot, Volume, freeze_tags
from guard.pricing import HOURS_PER_MONTH, default_catalog
from guard.rule import Context
from rules.orphaned_snapshots import OrphanedSnapshots

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CONTEXT = Context(prices=default_catalog())
OLD = timedelta(days=30)


def make_snapshot(snapshot_id: str = "snap-1", volume_id: str | None = "vol-gone", size_gib: int = 500,
                  age: timedelta = OLD, state: str = "completed", description: str = "",
                  tags: Mapping[str, str] | None = None) -> EbsSnapshot:
    return EbsSnapshot(id=snapshot_id, volume_id=volume_id, size_gib=size_gib, start_time=NOW - age, state=state,
                       description=description, tags=freeze_tags(tags if tags is not None else {}))


def make_volume(volume_id: str) -> Volume:
    return Volume(id=volume_id, volume_type="gp3", size_gib=100, state="in-use", create_time=NOW - OLD)


def make_image(*snapshot_ids: str, state: str = "available") -> Image:
    return Image(id="ami-1", name="golden", state=state, snapshot_ids=snapshot_ids)


def evaluate(snapshots: Sequence[EbsSnapshot], volumes: Sequence[Volume] = (), images: Sequence[Image] = (),
             rule: OrphanedSnapshots | None = None, region: str = "us-east-1", context: Context = CONTEXT,
             launch_sources: Sequence[LaunchSource] = ()):
    snapshot = Snapshot(account_id="123456789012", region=region, taken_at=NOW, snapshots=tuple(snapshots),
                        volumes=tuple(volumes), images=tuple(images), launch_sources=tuple(launch_sources))
    return (rule or OrphanedSnapshots()).evaluate(snapshot, context)


def test_old_snapshot_of_a_deleted_volume_is_a_priced_finding() -> None:
    ebs = make_snapshot(description="before deleting training-data", tags={"owner": "ana"})
    result = evaluate([ebs], [make_volume("vol-other")], [make_image("snap-other")])
    (finding,) = result.findings
    assert result.undetermined == frozenset()
    assert finding.waste_hourly_usd == pytest.approx(500 * 0.05 / 730)
    assert finding.waste_hourly_usd == pytest.approx(0.0342, abs=1e-4)  # the docstring's example
    assert (finding.rule, finding.resource_id, finding.resource_type, finding.region) == (
        "orphaned-snapshots", "snap-1", "snapshot", "us-east-1")
    assert finding.owner == "ana"
    assert finding.suggested_action == "delete"
    assert finding.severity is Severity.medium  # $25 a month
    evidence = finding.evidence
    assert (evidence["size_gib"], evidence["volume_id"]) == (500, "vol-gone")
    assert evidence["description"] == "before deleting training-data"
    assert evidence["age"] == "30d"
    assert evidence["usd_per_gb_month"] == 0.05
    assert evidence["monthly_usd"] == pytest.approx(25.0)
    assert evidence["price"] == "upper-bound" and "incremental" in evidence["price_basis"]
    assert "500 GiB" in finding.summary and "vol-gone" in finding.summary and "at most $0.0342/hour" in finding.summary


def test_snapshot_of_an_existing_volume_is_not_a_finding() -> None:
    assert evaluate([make_snapshot(volume_id="vol-live")], [make_volume("vol-live")]).findings == ()


@pytest.mark.parametrize("image_state", ["available", "pending", "disabled", "failed"])
def test_snapshot_behind_an_image_of_the_account_is_not_a_finding(image_state: str) -> None:
    image = make_image("snap-0", "snap-1", state=image_state)
    assert evaluate([make_snapshot()], images=[image]).findings == ()


@pytest.mark.parametrize("source", [
    LaunchSource("launch-template", "lt-1", "trainers", 3, ("snap-0", "snap-1")),  # $Default or $Latest
    LaunchSource("launch-template", "lt-1", "trainers", 1, ("snap-1",)),  # an older version a group may pin
    LaunchSource("launch-configuration", "trainers-2023", "trainers-2023", None, ("snap-1",)),
])
def test_snapshot_a_launch_template_or_configuration_names_is_in_use(source: LaunchSource) -> None:
    # deleting it breaks the next launch of every Auto Scaling group or fleet launching from it
    other = LaunchSource("launch-template", "lt-2", "notebooks", 1, ("snap-other",))
    assert evaluate([make_snapshot()], launch_sources=[other, source]).findings == ()
    (finding,) = evaluate([make_snapshot()], launch_sources=[other]).findings
    assert "no AMI or launch template" in finding.summary


def test_the_rule_needs_the_launch_sources() -> None:
    # unknown launch templates must skip the rule, never make every snapshot they name look orphaned
    assert "launch_sources" in OrphanedSnapshots.needs
    assert {"ec2:DescribeLaunchTemplateVersions", "autoscaling:DescribeLaunchConfigurations"} <= set(
        OrphanedSnapshots.iam_permissions)


def test_snapshot_without_a_source_volume_id_is_an_orphan() -> None:
    # copied snapshots report no usable volume (AWS shows vol-ffffffff)
    (finding,) = evaluate([make_snapshot(volume_id=None)]).findings
    assert finding.evidence["volume_id"] is None
    assert "unknown volume" in finding.summary


@pytest.mark.parametrize("state", ["pending", "error", "recoverable", "recovering"])
def test_snapshot_not_completed_is_not_a_finding(state: str) -> None:
    assert evaluate([make_snapshot(state=state)]).findings == ()


@pytest.mark.parametrize(("age", "reported"), [
    (timedelta(days=6, hours=23, minutes=59), False),
    (timedelta(days=7), True),
    (timedelta(days=7, minutes=1), True),
    (timedelta(hours=1), False),
    (-timedelta(minutes=5), False),  # started after the scan's clock
])
def test_min_age_boundary_is_inclusive(age: timedelta, reported: bool) -> None:
    assert bool(evaluate([make_snapshot(age=age)]).findings) is reported


def test_custom_min_age() -> None:
    rule = OrphanedSnapshots(OrphanedSnapshots.Config(min_age="90 days"))
    assert evaluate([make_snapshot(age=timedelta(days=60))], rule=rule).findings == ()
    assert len(evaluate([make_snapshot(age=timedelta(days=91))], rule=rule).findings) == 1


@pytest.mark.parametrize("value", ["true", "True"])
def test_protected_snapshot_is_not_a_finding(value: str) -> None:
    assert evaluate([make_snapshot(tags={"guard:protect": value})]).findings == ()


def test_custom_owner_and_protect_tags_from_context() -> None:
    context = Context(prices=default_catalog(), owner_tag="createdBy", protect_tag="keep", protect_value="yes")
    kept = make_snapshot("snap-kept", tags={"keep": "yes"})
    other = make_snapshot("snap-other", tags={"createdBy": "bo"})
    (finding,) = evaluate([kept, other], context=context).findings
    assert (finding.resource_id, finding.owner) == ("snap-other", "bo")


@pytest.mark.parametrize("managed", [
    {"tags": {"aws:dlm:lifecycle-policy-id": "policy-1"}},
    {"tags": {"aws:backup:source-resource": "vol-gone"}},
    {"description": "This snapshot is created by the AWS Backup service."},
])
def test_snapshots_managed_by_a_backup_policy_are_left_to_it(managed: dict) -> None:
    assert evaluate([make_snapshot(**managed)]).findings == ()


@pytest.mark.parametrize(("size_gib", "severity"), [
    (1, Severity.low), (199, Severity.low), (200, Severity.medium), (999, Severity.medium), (1000, Severity.high),
])
def test_severity_bands_by_monthly_cost(size_gib: int, severity: Severity) -> None:
    # $0.05/GB-month: 200 GiB is $10 a month (medium), 1000 GiB $50 (high)
    (finding,) = evaluate([make_snapshot(size_gib=size_gib)]).findings
    assert finding.severity is severity


def test_custom_severity_bands() -> None:
    rule = OrphanedSnapshots(OrphanedSnapshots.Config(medium_monthly_usd=1, high_monthly_usd=2))
    severities = [f.severity for f in evaluate([make_snapshot("a", size_gib=10), make_snapshot("b", size_gib=20),
                                                make_snapshot("c", size_gib=40)], rule=rule).findings]
    assert severities == [Severity.low, Severity.medium, Severity.high]


def test_zero_size_snapshot_is_a_finding_worth_nothing() -> None:
    (finding,) = evaluate([make_snapshot(size_gib=0)]).findings
    assert finding.waste_hourly_usd == 0.0 and finding.severity is Severity.low


def test_price_is_the_same_in_every_region() -> None:
    (finding,) = evaluate([make_snapshot(size_gib=730)], region="sa-east-1").findings
    assert (finding.region, finding.waste_hourly_usd) == ("sa-east-1", pytest.approx(0.05))


def test_missing_parts_do_not_crash() -> None:
    snapshot = Snapshot(account_id="1", region="us-east-1", taken_at=NOW)
    result = OrphanedSnapshots().evaluate(snapshot, CONTEXT)
    assert result.findings == () and result.undetermined == frozenset()


@pytest.mark.parametrize("values", [
    {"min_age": "a week"}, {"min_age": -1}, {"medium_monthly_usd": -1}, {"high_monthly_usd": -5},
    {"medium_monthly_usd": 60, "high_monthly_usd": 50}, {"max_age": "7d"},
])
def test_bad_config_is_rejected(values: dict) -> None:
    with pytest.raises(ValidationError):
        OrphanedSnapshots.Config(**values)


def test_config_defaults() -> None:
    config = OrphanedSnapshots.Config()
    assert (config.min_age, config.medium_monthly_usd, config.high_monthly_usd) == (timedelta(days=7), 10.0, 50.0)


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(st.tuples(st.sampled_from(["vol-a", "vol-b", None]), st.booleans(),
                                st.integers(min_value=0, max_value=20), st.booleans(),
                                st.integers(min_value=0, max_value=16384)), max_size=8),
       live_volumes=st.sets(st.sampled_from(["vol-a", "vol-b"])))
def test_a_finding_exactly_for_each_old_unused_orphan(specs: list[tuple], live_volumes: set[str]) -> None:
    snapshots, used = [], []
    for n, (volume_id, in_image, age_days, protected, size) in enumerate(specs):
        snapshots.append(make_snapshot(f"snap-{n}", volume_id, size, timedelta(days=age_days),
                                       tags={"guard:protect": "true"} if protected else {}))
        if in_image:
            used.append(f"snap-{n}")
    result = evaluate(snapshots, [make_volume(v) for v in sorted(live_volumes)], [make_image(*used)])
    expected = [f"snap-{n}" for n, (volume_id, in_image, age_days, protected, _) in enumerate(specs)
                if volume_id not in live_volumes and not in_image and age_days >= 7 and not protected]
    assert [f.resource_id for f in result.findings] == expected
    for finding in result.findings:
        assert finding.waste_hourly_usd == pytest.approx(finding.evidence["size_gib"] * 0.05 / HOURS_PER_MONTH)


def test_archived_snapshots_are_priced_at_the_archive_rate() -> None:
    ebs = dataclasses.replace(make_snapshot(), storage_tier="archive")
    (finding,) = evaluate([ebs]).findings
    assert finding.waste_hourly_usd == pytest.approx(500 * 0.0125 / 730)
    assert finding.evidence["storage_tier"] == "archive"


def test_a_copied_snapshot_says_it_is_a_copy_not_a_deleted_volume() -> None:
    (finding,) = evaluate([make_snapshot(volume_id="vol-ffffffff")]).findings
    assert "a copy" in finding.summary and "deleted volume" not in finding.summary
