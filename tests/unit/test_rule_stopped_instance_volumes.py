"""rules.stopped_instance_volumes: instances stopped longer than min_stopped whose volumes keep billing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from guard.model import Instance, Severity, Snapshot, Volume, freeze_tags
from guard.pricing import EBS_USD_PER_GB_MONTH, HOURS_PER_MONTH, default_catalog
from guard.rule import Context
from rules.stopped_instance_volumes import StoppedInstanceVolumes

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CONTEXT = Context(prices=default_catalog())
LONG_AGO = timedelta(days=21)


def make_instance(instance_id: str = "i-1", state: str = "stopped", stopped_for: timedelta | None = LONG_AGO,
                  volume_ids: tuple[str, ...] = ("vol-root",), tags: Mapping[str, str] | None = None,
                  instance_type: str = "g4dn.xlarge") -> Instance:
    return Instance(id=instance_id, instance_type=instance_type, state=state, arch="x86_64",
                    launch_time=NOW - timedelta(days=60), tags=freeze_tags(tags if tags is not None else {}),
                    volume_ids=volume_ids, stopped_since=NOW - stopped_for if stopped_for is not None else None)


def make_volume(volume_id: str = "vol-root", volume_type: str = "gp2", size_gib: int = 8,
                attached_to: tuple[str, ...] = ("i-1",), tags: Mapping[str, str] | None = None) -> Volume:
    return Volume(id=volume_id, volume_type=volume_type, size_gib=size_gib, state="in-use",
                  create_time=NOW - timedelta(days=60), tags=freeze_tags(tags if tags is not None else {}),
                  attached_to=attached_to)


def evaluate(instances: Sequence[Instance], volumes: Sequence[Volume], rule: StoppedInstanceVolumes | None = None,
             region: str = "us-east-1", context: Context = CONTEXT):
    snapshot = Snapshot(account_id="123456789012", region=region, taken_at=NOW, instances=tuple(instances),
                        volumes=tuple(volumes))
    return (rule or StoppedInstanceVolumes()).evaluate(snapshot, context)


def test_long_stopped_instance_is_priced_with_all_its_volumes() -> None:
    instance = make_instance(volume_ids=("vol-root", "vol-data"), tags={"owner": "ana", "Name": "cv-test"})
    volumes = [make_volume("vol-root", "gp3", 100), make_volume("vol-data", "gp3", 500)]
    result = evaluate([instance], volumes)
    (finding,) = result.findings
    assert result.undetermined == frozenset()
    assert finding.waste_hourly_usd == pytest.approx(600 * 0.08 / 730)
    assert finding.waste_hourly_usd == pytest.approx(0.0658, abs=1e-4)
    assert (finding.rule, finding.resource_id, finding.resource_type, finding.region) == (
        "stopped-instance-volumes", "i-1", "instance", "us-east-1")
    assert finding.owner == "ana"
    assert finding.suggested_action == "snapshot-then-terminate"
    assert finding.severity is Severity.medium  # $48 a month
    evidence = finding.evidence
    assert evidence["instance_type"] == "g4dn.xlarge"
    assert evidence["stopped_since"] == (NOW - LONG_AGO).isoformat()
    assert evidence["stopped_for"] == "21d"
    assert evidence["volumes"] == [
        {"volume_id": "vol-root", "volume_type": "gp3", "size_gib": 100, "usd_per_hour": pytest.approx(8 / 730)},
        {"volume_id": "vol-data", "volume_type": "gp3", "size_gib": 500, "usd_per_hour": pytest.approx(40 / 730)},
    ]
    assert evidence["total_size_gib"] == 600
    assert evidence["priced_usd_per_hour"] == pytest.approx(48 / 730)
    assert evidence["monthly_usd"] == pytest.approx(48.0)
    assert evidence["price"] == "known"
    assert "g4dn.xlarge stopped 21.0 days ago" in finding.summary and "600 GiB" in finding.summary
    assert "$0.0658/hour" in finding.summary


def test_docstring_example_g4dn_with_root_and_data_volume() -> None:
    instance = make_instance(volume_ids=("vol-root", "vol-data"))
    volumes = [make_volume("vol-root", "gp2", 8), make_volume("vol-data", "gp3", 500)]
    (finding,) = evaluate([instance], volumes).findings
    assert finding.waste_hourly_usd == pytest.approx(0.0559, abs=1e-4)


def test_a_lone_8_gib_gp2_root_volume_is_low_severity() -> None:
    (finding,) = evaluate([make_instance()], [make_volume()]).findings
    assert finding.waste_hourly_usd == pytest.approx(8 * 0.10 / 730)
    assert finding.severity is Severity.low


def test_volumes_found_through_their_attachments_count_too() -> None:
    # a volume the instance's block device list misses but that says it is attached to the instance
    instance = make_instance(volume_ids=("vol-root",))
    volumes = [make_volume(), make_volume("vol-extra", "st1", 1000)]
    (finding,) = evaluate([instance], volumes).findings
    assert [v["volume_id"] for v in finding.evidence["volumes"]] == ["vol-root", "vol-extra"]
    assert finding.waste_hourly_usd == pytest.approx((8 * 0.10 + 1000 * 0.045) / 730)


@pytest.mark.parametrize(("stopped_for", "reported"), [
    (timedelta(days=6, hours=23, minutes=59), False),
    (timedelta(days=7), True),
    (timedelta(days=7, minutes=1), True),
    (timedelta(minutes=10), False),
])
def test_min_stopped_boundary_is_inclusive(stopped_for: timedelta, reported: bool) -> None:
    result = evaluate([make_instance(stopped_for=stopped_for)], [make_volume()])
    assert bool(result.findings) is reported
    assert result.undetermined == frozenset()


def test_custom_min_stopped() -> None:
    rule = StoppedInstanceVolumes(StoppedInstanceVolumes.Config(min_stopped="2 days"))
    assert len(evaluate([make_instance(stopped_for=timedelta(days=3))], [make_volume()], rule).findings) == 1
    assert evaluate([make_instance(stopped_for=timedelta(days=1))], [make_volume()], rule).findings == ()


def test_unknown_stop_time_is_undetermined() -> None:
    result = evaluate([make_instance(stopped_for=None)], [make_volume()])
    assert result.findings == ()
    assert result.undetermined == frozenset({"i-1"})


@pytest.mark.parametrize("state", ["running", "pending", "stopping", "shutting-down", "terminated"])
def test_instances_not_stopped_are_ignored(state: str) -> None:
    result = evaluate([make_instance(state=state)], [make_volume()])
    assert result.findings == () and result.undetermined == frozenset()


def test_stopped_instance_without_volumes_bills_nothing() -> None:
    result = evaluate([make_instance(volume_ids=())], [make_volume(attached_to=("i-other",))])
    assert result.findings == () and result.undetermined == frozenset()


def test_protected_instance_is_skipped() -> None:
    result = evaluate([make_instance(tags={"guard:protect": "true"})], [make_volume()])
    assert result.findings == () and result.undetermined == frozenset()


def test_instance_with_a_protected_volume_is_skipped() -> None:
    instance = make_instance(volume_ids=("vol-root", "vol-data"))
    volumes = [make_volume(), make_volume("vol-data", tags={"guard:protect": "true"})]
    assert evaluate([instance], volumes).findings == ()


def test_custom_owner_and_protect_tags_from_context() -> None:
    context = Context(prices=default_catalog(), owner_tag="user", protect_tag="keep", protect_value="yes")
    kept = make_instance("i-kept", volume_ids=("vol-a",), tags={"keep": "yes"})
    other = make_instance("i-other", volume_ids=("vol-b",), tags={"user": "bo"})
    volumes = [make_volume("vol-a", attached_to=("i-kept",)), make_volume("vol-b", attached_to=("i-other",))]
    (finding,) = evaluate([kept, other], volumes, context=context).findings
    assert (finding.resource_id, finding.owner) == ("i-other", "bo")


def test_owner_is_unknown_without_owner_tag() -> None:
    (finding,) = evaluate([make_instance()], [make_volume()]).findings
    assert finding.owner == "unknown"


# --- unknown prices ---


def test_one_unknown_volume_type_makes_the_whole_price_unknown() -> None:
    instance = make_instance(volume_ids=("vol-root", "vol-new"))
    volumes = [make_volume(), make_volume("vol-new", "gp9", 100)]
    (finding,) = evaluate([instance], volumes).findings
    assert finding.waste_hourly_usd is None
    assert finding.severity is Severity.medium
    evidence = finding.evidence
    assert evidence["price"] == "unknown" and evidence["monthly_usd"] is None
    assert evidence["priced_usd_per_hour"] == pytest.approx(0.8 / 730)  # the known part, as a lower bound
    assert evidence["volumes"][1] == {"volume_id": "vol-new", "volume_type": "gp9", "size_gib": 100,
                                      "usd_per_hour": None}
    assert "price unknown for 1 of 2 volumes" in finding.summary


def test_volume_missing_from_the_volume_list_makes_the_price_unknown() -> None:
    instance = make_instance(volume_ids=("vol-root", "vol-vanished"))
    (finding,) = evaluate([instance], [make_volume()]).findings
    assert finding.waste_hourly_usd is None
    assert finding.evidence["volumes"][1] == {"volume_id": "vol-vanished", "volume_type": None, "size_gib": None,
                                              "usd_per_hour": None}
    assert finding.evidence["total_size_gib"] == 8


def test_unknown_region_prices_as_none() -> None:
    (finding,) = evaluate([make_instance()], [make_volume()], region="xx-moon-1").findings
    assert finding.waste_hourly_usd is None and finding.evidence["price"] == "unknown"


# --- severity and config ---


@pytest.mark.parametrize(("size_gib", "severity"), [(99, Severity.low), (100, Severity.medium),
                                                    (499, Severity.medium), (500, Severity.high)])
def test_severity_bands_by_monthly_cost(size_gib: int, severity: Severity) -> None:
    # gp2 at $0.10/GB-month: 100 GiB is $10 a month (medium), 500 GiB $50 (high)
    (finding,) = evaluate([make_instance()], [make_volume(size_gib=size_gib)]).findings
    assert finding.severity is severity


def test_missing_parts_do_not_crash() -> None:
    result = StoppedInstanceVolumes().evaluate(Snapshot(account_id="1", region="us-east-1", taken_at=NOW), CONTEXT)
    assert result.findings == () and result.undetermined == frozenset()


@pytest.mark.parametrize("values", [
    {"min_stopped": "forever"}, {"min_stopped": -3}, {"medium_monthly_usd": -1},
    {"medium_monthly_usd": 100, "high_monthly_usd": 50}, {"grace_days": "1d"},
])
def test_bad_config_is_rejected(values: dict) -> None:
    with pytest.raises(ValidationError):
        StoppedInstanceVolumes.Config(**values)


def test_config_defaults() -> None:
    config = StoppedInstanceVolumes.Config()
    assert (config.min_stopped, config.medium_monthly_usd, config.high_monthly_usd) == (timedelta(days=7), 10.0,
                                                                                         50.0)


# --- property ---

VOLUME_TYPES = [*sorted(EBS_USD_PER_GB_MONTH), "gp9"]


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(st.tuples(
    st.sampled_from(["stopped", "stopped", "running"]),
    st.one_of(st.none(), st.integers(min_value=0, max_value=30)),
    st.lists(st.tuples(st.sampled_from(VOLUME_TYPES), st.integers(min_value=1, max_value=16384)), max_size=3),
    st.booleans()), max_size=6))
def test_findings_are_long_stopped_unprotected_instances_priced_with_their_volumes(specs: list[tuple]) -> None:
    instances, volumes = [], []
    for n, (state, stopped_days, disks, protected) in enumerate(specs):
        ids = tuple(f"vol-{n}-{k}" for k in range(len(disks)))
        instances.append(make_instance(f"i-{n}", state, timedelta(days=stopped_days) if stopped_days is not None
                                       else None, ids, {"guard:protect": "true"} if protected else {}))
        volumes.extend(make_volume(v, t, s, (f"i-{n}",)) for v, (t, s) in zip(ids, disks, strict=True))
    result = evaluate(instances, volumes)

    findings = {f.resource_id: f for f in result.findings}
    for n, (state, stopped_days, disks, protected) in enumerate(specs):
        eligible = state == "stopped" and disks and not protected
        assert (f"i-{n}" in result.undetermined) is bool(eligible and stopped_days is None)
        assert (f"i-{n}" in findings) is bool(eligible and stopped_days is not None and stopped_days >= 7)
        if f"i-{n}" in findings:
            prices = [EBS_USD_PER_GB_MONTH.get(t) for t, _ in disks]
            expected = (None if None in prices
                        else sum(p * s for p, (_, s) in zip(prices, disks, strict=True)) / HOURS_PER_MONTH)
            assert findings[f"i-{n}"].waste_hourly_usd == pytest.approx(expected)
