"""guard.model: frozen resources, tags and snapshots."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from guard.model import Instance, MetricQuery, Series, Snapshot, Volume, freeze_tags

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def test_freeze_tags_accepts_aws_tag_lists_and_dicts() -> None:
    aws_tags = [{"Key": "owner", "Value": "ana"}, {"Key": "empty"}]
    assert dict(freeze_tags(aws_tags)) == {"owner": "ana", "empty": ""}
    assert dict(freeze_tags({"owner": "ana"})) == {"owner": "ana"}
    assert dict(freeze_tags(None)) == {}


def test_frozen_tags_are_read_only() -> None:
    tags = freeze_tags({"owner": "ana"})
    with pytest.raises(TypeError):
        tags["owner"] = "bob"  # type: ignore[index]


def test_resources_default_to_no_tags() -> None:
    instance = Instance(id="i-1", instance_type="m5.large", state="running", arch="x86_64", launch_time=NOW)
    volume = Volume(id="vol-1", volume_type="gp3", size_gib=1, state="available", create_time=NOW)
    assert dict(instance.tags) == {} and dict(volume.tags) == {}


def test_snapshot_series_is_empty_for_missing_query_and_raises_when_metrics_unknown() -> None:
    query = MetricQuery("AWS/EC2", "CPUUtilization", (("InstanceId", "i-1"),), "Average", 300, 3600)
    known = Snapshot(account_id="1", region="us-east-1", taken_at=NOW, metrics={})
    assert len(known.series(query)) == 0
    assert known.known("metrics") and not known.known("instances")
    unknown = Snapshot(account_id="1", region="us-east-1", taken_at=NOW)
    with pytest.raises(LookupError):
        unknown.series(query)
    assert len(Series(timestamps=(NOW,), values=(1.0,))) == 1
