"""A scan's AWS API calls grow with pages and metric queries / 500 — never with the number of resources."""

from __future__ import annotations

import math

from guard.collectors import MAX_QUERIES_PER_CALL
from guard.collectors.instances import PAGE_SIZE as INSTANCE_PAGE
from guard.collectors.volumes import PAGE_SIZE as VOLUME_PAGE
from guard.sandbox import SandboxServer, seed_fleet


def only(registry, *rule_ids: str) -> dict[str, dict[str, bool]]:
    return {rule_id: {"enabled": rule_id in rule_ids} for rule_id in registry.rules}


def test_1000_instances_and_100_volumes_cost_at_most_11_calls(sandbox: SandboxServer, make_scanner,
                                                                registry) -> None:
    sandbox.reset()
    seed_fleet(sandbox.endpoint_url, "us-east-1", instances=1000, volumes=100)
    scanner = make_scanner(regions=["us-east-1"], rules=only(registry, "idle-vms", "detached-volumes"))
    report = scanner.scan("us-east-1")
    assert report.status == "ok", report.errors
    instances, volumes = report.snapshot.instances, report.snapshot.volumes
    assert len(instances) == 1000
    assert len([v for v in volumes if v.state == "available"]) == 100
    # AWS pages DescribeInstances by instance and DescribeVolumes by volume (the 1,000 root volumes count too);
    # the emulator may answer in fewer pages, never in more.
    calls = report.api_calls
    assert set(calls) == {"sts:GetCallerIdentity", "ec2:DescribeInstances", "ec2:DescribeVolumes",
                          "cloudwatch:ListMetrics", "cloudwatch:GetMetricData"}
    assert calls["sts:GetCallerIdentity"] == 1
    # idle-vms lists which instances publish GPU series (left to idle-gpu): one listing, one page here
    assert calls["cloudwatch:ListMetrics"] == 1
    assert calls["ec2:DescribeInstances"] <= math.ceil(len(instances) / INSTANCE_PAGE)
    assert calls["ec2:DescribeVolumes"] <= math.ceil(len(volumes) / VOLUME_PAGE)
    # 3 series per running instance (CPU, NetworkIn, NetworkOut): 3,000 queries in calls of 500.
    assert calls["cloudwatch:GetMetricData"] == math.ceil(3 * 1000 / MAX_QUERIES_PER_CALL) == 6
    assert sum(calls.values()) <= 11

    again = scanner.scan("us-east-1")
    assert "sts:GetCallerIdentity" not in again.api_calls  # the account id is cached
    assert sum(again.api_calls.values()) == sum(calls.values()) - 1


def test_series_are_fetched_again_only_every_metrics_refresh(sandbox: SandboxServer, make_scanner,
                                                             registry) -> None:
    sandbox.reset()
    fleet = seed_fleet(sandbox.endpoint_url, "us-east-1", instances=20, volumes=0)
    scanner = make_scanner(regions=["us-east-1"], metrics_refresh="5 minutes", rules=only(registry, "idle-vms"))
    first = scanner.scan("us-east-1")
    assert first.api_calls["cloudwatch:GetMetricData"] == 1
    second = scanner.scan("us-east-1")
    assert "cloudwatch:GetMetricData" not in second.api_calls  # GetMetricData bills per metric: reuse
    assert second.snapshot.metrics == first.snapshot.metrics

    seed_fleet(sandbox.endpoint_url, "us-east-1", instances=1, volumes=0)
    third = scanner.scan("us-east-1")
    new_ids = {i.id for i in third.snapshot.instances} - set(fleet.instance_ids)
    assert len(new_ids) == 1 and third.api_calls["cloudwatch:GetMetricData"] == 1
    fetched_for = {dict(q.dimensions)["InstanceId"] for q in third.snapshot.metrics}
    assert fetched_for == {i.id for i in third.snapshot.instances}


def test_every_rule_enabled_costs_pages_and_queries_not_resources(team_account, make_scanner) -> None:
    """The exact call budget per operation of a full scan of the team account, derived from what it holds."""
    scanner = make_scanner(regions=["us-east-1"])
    report = scanner.scan("us-east-1")
    assert report.status == "ok", report.errors
    snap = report.snapshot
    windows: dict[tuple[int, int], int] = {}
    for query in snap.metrics:
        windows[(query.window_seconds, query.period_seconds)] = windows.get(
            (query.window_seconds, query.period_seconds), 0) + 1
    sampled = len(snap.log_samples)
    assert 0 < sampled <= 20
    versions: dict[str, set[int]] = {}
    for source in snap.launch_sources:
        if source.kind == "launch-template":
            versions.setdefault(source.id, set()).add(source.version)
    assert versions and any(len(numbers) > 2 for numbers in versions.values())
    expected = {
        "sts:GetCallerIdentity": 1,
        "ec2:DescribeInstances": math.ceil(len(snap.instances) / INSTANCE_PAGE),
        "ec2:DescribeVolumes": math.ceil(len(snap.volumes) / VOLUME_PAGE),
        "ec2:DescribeAddresses": 1,
        "ec2:DescribeNatGateways": 1,
        "ec2:DescribeSnapshots": 1,
        "ec2:DescribeImages": 1,
        # every template's $Latest and $Default in one page, then one page per template with older versions
        "ec2:DescribeLaunchTemplateVersions": 1 + sum(1 for numbers in versions.values() if len(numbers) > 2),
        "auto-scaling:DescribeLaunchConfigurations": 1,
        "cloudwatch-logs:DescribeLogGroups": math.ceil(len(snap.log_groups) / 50),
        "resource-groups-tagging-api:GetResources": 2,  # log groups and buckets, one page each
        "s3:ListBuckets": 1,
        "cloudwatch:ListMetrics": len(snap.metric_listings),  # one page per (namespace, metric) listed
        "cloudwatch:GetMetricData": sum(math.ceil(n / MAX_QUERIES_PER_CALL) for n in windows.values()),
        "cloudwatch-logs:FilterLogEvents": sampled,  # one bounded page per expensive log group
        "cloudwatch-logs:DescribeLogStreams": report.api_calls["cloudwatch-logs:DescribeLogStreams"],
    }
    assert report.api_calls == expected
    # Active streams are counted 50 a page, capped: pages ≤ ceil(streams / 50) per sampled group, never per event.
    pages = sum(math.ceil((s.active_streams + 1) / 50) for s in snap.log_samples.values())
    assert sampled <= report.api_calls["cloudwatch-logs:DescribeLogStreams"] <= pages
