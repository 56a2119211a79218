"""The shipped read-only IAM policy covers every AWS operation the daemon calls in observe mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from guard.iam import NO_PERMISSION_NEEDED, iam_action, observe_policy
from guard.sandbox import GroundTruth


def test_observe_policy_covers_every_operation_called(team_account: GroundTruth, make_scanner, registry) -> None:
    scanner = make_scanner()
    called: set[str] = set()
    for region in ("us-east-1", "us-west-2"):
        report = scanner.scan(region)
        assert report.status == "ok", report.errors
        called |= set(report.api_calls)
    assert len(scanner.rules) == len(registry.rules)  # every rule enabled: the widest observe-mode footprint
    allowed = set(observe_policy(registry.rules.values())["Statement"][0]["Action"])
    needed = {iam_action(*op.split(":", 1)) for op in called} - NO_PERMISSION_NEEDED
    assert needed <= allowed, f"missing from the policy: {sorted(needed - allowed)}"
    assert not any(action.split(":", 1)[1].startswith(("Create", "Delete", "Put", "Stop", "Terminate", "Modify"))
                   for action in allowed)


def test_iam_policy_command_prints_the_policy(registry) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    result = subprocess.run([sys.executable, "-m", "guard", "iam-policy", "--mode", "observe"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # keepalive enforcement is on by default: the policy also allows terminating expired SDK clusters
    assert json.loads(result.stdout) == observe_policy(registry.rules.values(), keepalive=True)


def test_the_dry_run_policy_covers_what_a_dry_run_with_instance_actions_reads(team_account: GroundTruth,
                                                                               make_scanner) -> None:
    """Dry-run reads each instance type's instance store (to say which stops it would not make): the read-only
    policy of rules configured to stop or terminate allows that read, and nothing mutating is called."""
    scanner = make_scanner(mode="dry-run", rules={"idle-vms": {"action": "stop"}, "idle-gpu": {"action": "stop"}})
    called: set[str] = set()
    for region in ("us-east-1", "us-west-2"):
        report = scanner.scan(region)
        assert report.status == "ok", report.errors
        called |= set(report.api_calls)
    assert "ec2:DescribeInstanceTypes" in called
    allowed = set(observe_policy(scanner.rules)["Statement"][0]["Action"])
    needed = {iam_action(*op.split(":", 1)) for op in called} - NO_PERMISSION_NEEDED
    assert needed <= allowed, f"missing from the policy: {sorted(needed - allowed)}"
