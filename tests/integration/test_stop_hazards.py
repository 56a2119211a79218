"""Instances a rule's stop must leave alone, end to end in the emulated account: a spot instance, an Auto Scaling group
member and an instance-store instance idle like any other are found, never stopped; each is a ``skipped-…`` result
counted in guard_actions_total once, and its finding says why. An instance-store instance is stopped where the rule
opts in (``act_on_instance_store = true``); the check is made again right before the call."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_actions import (
    ACCOUNT,
    REGION,
    Make,
    audit,
    ec2,
    finding,
    idle_instance,
    instance_state,
    mutations,
    now,
    results,
    rows,
    scan,
)

from guard.aws import Aws
from guard.engine import Scanner
from guard.metrics import DaemonMetrics
from guard.sandbox import metrics as sandbox_metrics
from guard.sandbox import sandbox_client
from guard.sandbox.backdate import backdate
from guard.sandbox.images import image_for
from guard.store import Store


@pytest.fixture
def account(sandbox) -> str:
    """An empty emulated account."""
    sandbox.reset()
    return sandbox.endpoint_url


@pytest.fixture
def make(registry, make_settings) -> Make:
    """A scanner of REGION with only the given rules enabled; enforce mode, the other gates opened wide."""

    def build(actions: dict[str, dict], **overrides) -> Scanner:
        rules = {rule_id: {"enabled": False} for rule_id in registry.rules}
        for rule_id, section in actions.items():
            rules[rule_id] = {"grace": "0s", "act_on_unmanaged": True} | section
        values = {"regions": [REGION], "mode": "enforce", "allowed_accounts": ACCOUNT, "min_resource_age": "0s",
                  "max_actions_per_cycle": 100, "max_actions_per_hour": 1000, "rules": rules} | overrides
        settings = make_settings(**values)
        return Scanner(settings, registry, Aws(), Store(settings.database_url))

    return build


def group_member(endpoint: str) -> str:
    """The one instance of an Auto Scaling group (the group tags it aws:autoscaling:groupName), idle."""
    ec2(endpoint).create_launch_template(LaunchTemplateName="workers", LaunchTemplateData={
        "ImageId": image_for("m5.large"), "InstanceType": "m5.large"})
    autoscaling = sandbox_client(endpoint, "autoscaling", REGION)
    autoscaling.create_auto_scaling_group(AutoScalingGroupName="workers", MinSize=1, MaxSize=1, DesiredCapacity=1,
                                          LaunchTemplate={"LaunchTemplateName": "workers"},
                                          AvailabilityZones=[f"{REGION}a"])
    [group] = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["workers"])["AutoScalingGroups"]
    [member] = group["Instances"]
    instance_id = member["InstanceId"]
    ec2(endpoint).create_tags(Resources=[instance_id], Tags=[{"Key": "owner", "Value": "maria.garcia"}])
    sandbox_metrics.put(endpoint, REGION, sandbox_metrics.datums(
        instance_id, sandbox_metrics.IDLE, sandbox_metrics.timestamps(now()), random.Random(instance_id)))
    backdate(endpoint, REGION, instances={instance_id: now() - timedelta(days=2)})
    return instance_id


def action_counts(scanner, *reports) -> Counter:
    """guard_actions_total by (rule, action, result), as the daemon's registry renders it after these scans."""
    metrics = DaemonMetrics(scanner.store, scanner.aws.counter, rules=["idle-vms"], regions=[REGION])
    for report in reports:
        metrics.observe_actions(report.actions)
    counts: Counter = Counter()
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "guard_actions_total":
                counts[(sample.labels["rule"], sample.labels["action"], sample.labels["result"])] += int(sample.value)
    return counts


def test_spot_group_member_and_instance_store_instances_are_never_stopped(account: str, make: Make) -> None:
    spot = idle_instance(account, InstanceMarketOptions={"MarketType": "spot"})
    member = group_member(account)
    store = idle_instance(account, "m5d.large")
    plain = idle_instance(account)
    scanner = make({"idle-vms": {"action": "stop"}})
    first = scan(scanner)
    second = scan(scanner)  # held back again, counted once

    assert results(first) == sorted([("idle-vms", "stop", "done"), ("idle-vms", "stop", "skipped-spot"),
                                     ("idle-vms", "stop", "skipped-autoscaling"),
                                     ("idle-vms", "stop", "skipped-instance-store")])
    assert results(second) == []
    assert mutations(scanner) == {"ec2:StopInstances": 1}
    assert instance_state(account, plain) == "stopped"
    for instance_id in (spot, member, store):
        assert instance_state(account, instance_id) == "running"
    assert [row.resource_id for row in rows(scanner)] == [plain]

    counts = action_counts(scanner, first, second)
    for result in ("skipped-spot", "skipped-autoscaling", "skipped-instance-store", "done"):
        assert counts[("idle-vms", "stop", result)] == 1, counts

    why = {instance_id: finding(scanner, "idle-vms", instance_id).evidence.get("not_acted_on")
           for instance_id in (spot, member, store, plain)}
    assert why[plain] is None
    assert why[spot]["result"] == "skipped-spot" and "spot" in why[spot]["reason"]
    assert why[member]["result"] == "skipped-autoscaling" and "workers" in why[member]["reason"]
    assert why[store]["result"] == "skipped-instance-store" and "m5d.large" in why[store]["reason"]
    # the instance types were read once, in one call, for every instance of the scan
    assert scanner.aws.counter.by_operation()["ec2:DescribeInstanceTypes"] == 2  # the scan's, and the stop's look


def test_an_instance_store_instance_is_stopped_where_the_rule_opts_in(account: str, make: Make) -> None:
    store = idle_instance(account, "m5d.large")
    spot = idle_instance(account, "m5d.large", InstanceMarketOptions={"MarketType": "spot"})
    scanner = make({"idle-vms": {"action": "stop", "act_on_instance_store": True}})
    report = scan(scanner)
    assert results(report) == [("idle-vms", "stop", "done"), ("idle-vms", "stop", "skipped-spot")]
    assert instance_state(account, store) == "stopped" and instance_state(account, spot) == "running"
    assert finding(scanner, "idle-vms", store).evidence.get("not_acted_on") is None


def test_the_check_is_made_again_right_before_the_call(account: str, make: Make) -> None:
    """An approved dry-run stop of an instance that became a group member since it was planned is not carried out."""
    instance_id = idle_instance(account)
    scanner = make({"idle-vms": {"action": "stop"}}, mode="dry-run")
    scan(scanner)
    [planned] = rows(scanner)
    audit(scanner).approve(planned.id, by="cli:alice", now=now())
    row = audit(scanner).get(planned.id)
    # what a crash between the intent and the call leaves, after the instance joined a group
    audit(scanner).move(row.id, ("approved",), "pending", started_at=now())
    ec2(account).create_tags(Resources=[instance_id], Tags=[{"Key": "aws:autoscaling:groupName", "Value": "late"}])
    report = scan(scanner)
    assert ("idle-vms", "stop", "skipped-autoscaling") in results(report)
    row = audit(scanner).get(planned.id)
    assert row.status == "skipped" and "late" in row.error and row.detail["called"] is False
    assert instance_state(account, instance_id) == "running" and mutations(scanner) == {}
