"""Snapshots an Auto Scaling group or fleet launches from (any launch template version, a launch configuration)
are in use: orphaned-snapshots never reports them, the delete action never deletes them, and when the launch
templates cannot be read the rule is skipped rather than report every snapshot they name."""

from __future__ import annotations

import pytest
from faults import FaultProxy

from guard.actions.executors import EXECUTORS
from guard.aws import Aws
from guard.collectors.launch_sources import collect_launch_sources
from guard.engine import Scanner
from guard.sandbox import GroundTruth, SandboxServer, sandbox_client

RULE = "orphaned-snapshots"


def launched_from(team_account: GroundTruth, region: str) -> dict[str, str]:
    return {miss.resource_id: miss.reason for miss in team_account.near_misses
            if miss.rule == RULE and miss.region == region and miss.reason.startswith("used-by-launch-")}


def test_every_launch_template_version_and_configuration_is_read_in_few_calls(team_account: GroundTruth) -> None:
    aws = Aws()
    east = collect_launch_sources(aws, "us-east-1")
    [pinned] = launched_from(team_account, "us-east-1")
    # version 1 names the snapshot; $Default and $Latest (version 3) do not: a group pinned to 1 still needs it
    users = [source for source in east if pinned in source.snapshot_ids]
    assert [(source.kind, source.version) for source in users] == [("launch-template", 1)]
    assert {source.version for source in east if source.id == users[0].id} == {1, 2, 3}
    calls = aws.counter.by_operation("us-east-1")
    # one call for every template's $Latest and $Default, one more for the one template with older versions
    assert calls["ec2:DescribeLaunchTemplateVersions"] == 2
    assert calls["auto-scaling:DescribeLaunchConfigurations"] == 1

    [configured] = launched_from(team_account, "us-west-2")
    west = collect_launch_sources(aws, "us-west-2")
    assert [source.kind for source in west if configured in source.snapshot_ids] == ["launch-configuration"]


def test_unreadable_launch_templates_skip_the_rule(team_account: GroundTruth, sandbox: SandboxServer,
                                                    make_scanner, registry, make_settings,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    scanner = make_scanner()
    first = scanner.scan("us-east-1")
    reported = {finding.resource_id for finding in first.evaluations[RULE].findings}
    assert reported and not set(launched_from(team_account, "us-east-1")) & reported
    with FaultProxy(sandbox.endpoint_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", proxy.url)
        proxy.fail("DescribeLaunchTemplateVersions", 403, "UnauthorizedOperation")
        report = Scanner(make_settings(), registry, Aws(), scanner.store).scan("us-east-1")
    assert report.snapshot.launch_sources is None and report.snapshot.snapshots is not None
    assert RULE in report.skipped and RULE not in report.evaluations
    assert any(error["source"] == "collector:launch_sources" for error in report.errors)
    assert scanner.store.findings(state="resolved") == []


def test_the_delete_action_refuses_a_snapshot_a_launch_template_names(team_account: GroundTruth,
                                                                        sandbox: SandboxServer) -> None:
    [pinned] = launched_from(team_account, "us-east-1")
    delete = EXECUTORS["delete"]
    assert delete.resource_type == "snapshot"
    observed = delete.observe(Aws(), "us-east-1", pinned, {})
    assert observed.exists and observed.blocker and "launch template dask-workers-dataset" in observed.blocker
    assert "version 1" in observed.blocker

    # a template made after the scan counts too: the action reads them again
    [orphan, *_] = sorted(key[2] for key in team_account.expected(RULE) if key[1] == "us-east-1")
    assert delete.observe(Aws(), "us-east-1", orphan, {}).blocker is None
    sandbox_client(sandbox.endpoint_url, "ec2", "us-east-1").create_launch_template(
        LaunchTemplateName="restore-orphan", LaunchTemplateData={"BlockDeviceMappings": [
            {"DeviceName": "/dev/sdf", "Ebs": {"SnapshotId": orphan}}]})
    assert "restore-orphan" in delete.observe(Aws(), "us-east-1", orphan, {}).blocker
