"""The network and storage rules (unattached-eips, idle-nat-gateways, orphaned-snapshots, stopped-instance-volumes)
against the emulated team account: their findings equal the ground truth, their near misses are not reported, and
fixing the waste resolves the findings."""

from __future__ import annotations

import pytest

from guard.engine import Scanner
from guard.model import Finding
from guard.sandbox import GroundTruth, SandboxServer, sandbox_client

REGIONS = ("us-east-1", "us-west-2")
RULES = ("unattached-eips", "idle-nat-gateways", "orphaned-snapshots", "stopped-instance-volumes")
ACTIONS = {"unattached-eips": "release", "idle-nat-gateways": "delete", "orphaned-snapshots": "delete",
           "stopped-instance-volumes": "snapshot-then-terminate"}


Key = tuple[str, str, str]


def scan(scanner: Scanner) -> tuple[dict[str, dict[Key, Finding]], set[Key]]:
    """Scan both regions: each rule's findings by key, and the keys the rules left undetermined."""
    found: dict[str, dict[Key, Finding]] = {rule: {} for rule in RULES}
    undetermined: set[Key] = set()
    for region in REGIONS:
        report = scanner.scan(region)
        assert not set(RULES) & set(report.skipped), report.errors
        for rule in RULES:
            evaluation = report.evaluations[rule]
            found[rule].update({finding.key: finding for finding in evaluation.findings})
            undetermined |= {(rule, region, resource_id) for resource_id in evaluation.undetermined}
    return found, undetermined


def test_findings_equal_the_ground_truth_and_near_misses_are_not_reported(team_account: GroundTruth,
                                                                          make_scanner) -> None:
    results, undetermined = scan(make_scanner())
    for rule in RULES:
        found, expected = results[rule], team_account.expected(rule)
        assert len(expected) >= 2, rule
        assert set(found) == set(expected), rule
        for key, truth in expected.items():
            finding = found[key]
            assert finding.waste_hourly_usd == pytest.approx(truth.waste_hourly_usd, abs=1e-9), key
            assert finding.owner == truth.owner, key
            assert finding.suggested_action == ACTIONS[rule]
        misses = [miss for miss in team_account.near_misses if miss.rule == rule]
        assert len(misses) >= 2, rule
        assert not {miss.key for miss in misses} & set(found), rule
    # the seeded hourly series fill the NAT rule's whole default window
    assert {finding.evidence["datapoints"] for finding in results["idle-nat-gateways"].values()} == {24}
    # a NAT gateway without any datapoints is neither idle nor busy: the rule cannot judge it
    no_data = {miss.key for miss in team_account.near_misses if miss.reason == "no-data"
               and miss.rule == "idle-nat-gateways"}
    assert no_data and no_data == undetermined


def test_fixing_the_waste_resolves_the_findings(team_account: GroundTruth, sandbox: SandboxServer,
                                                make_scanner) -> None:
    scanner = make_scanner()
    before, _ = scan(scanner)
    fixed = {rule: next(iter(sorted(team_account.expected(rule)))) for rule in RULES}
    for rule, (_, region, resource_id) in fixed.items():
        ec2 = sandbox_client(sandbox.endpoint_url, "ec2", region)
        if rule == "unattached-eips":
            ec2.release_address(AllocationId=resource_id)
        elif rule == "idle-nat-gateways":
            ec2.delete_nat_gateway(NatGatewayId=resource_id)
        elif rule == "orphaned-snapshots":
            ec2.delete_snapshot(SnapshotId=resource_id)
        else:
            ec2.terminate_instances(InstanceIds=[resource_id])
    after, _ = scan(scanner)
    for rule, key in fixed.items():
        assert key not in after[rule], rule
        # the rest stays (on AWS a deleted NAT gateway also leaves its Elastic IP unassociated: one finding more)
        assert set(before[rule]) - {key} <= set(after[rule]), rule
    resolved = {(row.rule, row.region, row.resource_id) for row in scanner.store.findings(state="resolved")}
    assert set(fixed.values()) <= resolved
