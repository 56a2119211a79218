"""The SDK user's IAM policy (``guard iam-policy --sdk``) covers every AWS call a cluster's life makes: launch (spot
with fallback, an instance profile, the environment and TLS keys through S3), use, close, and a launch that fails
because a VM died at boot."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from rich.console import Console

import sdk
import sdk.launch
from guard.sandbox import SandboxServer, VmRunner, sandbox_client
from sdk.environment.ship import parse_location
from sdk.errors import SdkError
from sdk.permissions import NO_PERMISSION_NEEDED, allowed_actions, sdk_policy

REGION = "us-east-1"
PROFILE = "team-data-read"


def s3_action(method: str, path: str, params: dict[str, Any]) -> str:
    """The IAM action that authorises one S3 REST request."""
    is_object = "/" in path.strip("/")
    if "lifecycle" in params:
        return "s3:GetLifecycleConfiguration" if method == "GET" else "s3:PutLifecycleConfiguration"
    if "tagging" in params:
        return f"s3:{'Get' if method == 'GET' else 'Put'}{'Object' if is_object else 'Bucket'}Tagging"
    if not is_object:
        return "s3:ListBucket" if method in ("GET", "HEAD") else f"s3:{method.title()}Bucket"
    return {"GET": "s3:GetObject", "HEAD": "s3:GetObject", "PUT": "s3:PutObject", "DELETE": "s3:DeleteObject"}[method]


def called_actions(sandbox: SandboxServer) -> tuple[set[str], set[str]]:
    """The IAM actions of every signed request since the log was cleared, and the S3 paths they touched."""
    actions, paths = set(), set()
    for request in sandbox.requests():
        if not request.service:
            continue
        if request.service == "s3":
            method, _, path = request.operation.partition(" ")
            actions.add(s3_action(method, path.split("?")[0], dict(request.params)))
            paths.add(path.split("?")[0])
        else:
            actions.add(f"{request.service}:{request.operation}")
    return actions, paths


def test_the_sdk_policy_covers_every_call_of_a_clusters_life(sandbox: SandboxServer, runner: VmRunner,
                                                           sdk_env: dict[str, str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    iam = sandbox_client(sdk_env["AWS_ENDPOINT_URL"], "iam", REGION)
    iam.create_role(RoleName=PROFILE, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}))
    iam.create_instance_profile(InstanceProfileName=PROFILE)
    iam.add_role_to_instance_profile(InstanceProfileName=PROFILE, RoleName=PROFILE)
    monkeypatch.delenv("VMGUARD_DAEMON_URL", raising=False)
    sandbox.clear_requests()
    quiet = Console(file=io.StringIO())

    with sdk.Cluster(vm_type="m5.large", region=REGION, n_workers=1, keepalive="2 minutes", console=quiet,
                     spot_policy="spot_with_fallback", instance_profile=PROFILE) as cluster:
        assert cluster.get_client().submit(sum, [1, 2]).result(timeout=60) == 3
    profiles = {r.params.get("IamInstanceProfile.Name") for r in sandbox.requests() if r.operation == "RunInstances"}
    assert profiles == {PROFILE}  # every VM of that cluster runs with the role, and none gets forwarded credentials
    with sdk.Cluster(vm_type="m5.large", region=REGION, n_workers=1, keepalive="2 minutes", console=quiet,
                     environment=False) as cluster:  # credentials forwarded: GetSessionToken
        assert cluster.get_client().submit(sum, [1, 2]).result(timeout=60) == 3

    good = sdk.launch.vm_config
    monkeypatch.setattr(sdk.launch, "vm_config", lambda spec, role, cluster_id: good(spec, role, cluster_id) | (
        {"nthreads": 0} if role == "scheduler" else {}))  # its agent exits at once: the console is read
    with pytest.raises(SdkError, match="console"):
        sdk.Cluster(vm_type="m5.large", region=REGION, n_workers=1, console=quiet, environment=False)

    called, paths = called_actions(sandbox)
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:GetConsoleOutput", "iam:GetInstanceProfile",
            "sts:GetSessionToken", "s3:PutObject", "s3:DeleteObject"} <= called
    policy = sdk_policy(sdk_env["VMGUARD_ENV_S3"])
    needed = called - NO_PERMISSION_NEEDED
    assert needed <= allowed_actions(policy), f"missing from the policy: {sorted(needed - allowed_actions(policy))}"
    bucket, prefix = parse_location(sdk_env["VMGUARD_ENV_S3"])
    assert all(path == f"/{bucket}" or path.startswith(f"/{bucket}/{prefix}") for path in paths), paths


def test_guard_prints_the_sdk_policy_for_the_configured_location() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")} | {
        "VMGUARD_ENV_S3": "s3://team-bucket/vmguard/"}
    result = subprocess.run([sys.executable, "-m", "guard", "iam-policy", "--sdk"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    policy = json.loads(result.stdout)
    assert policy == sdk_policy("s3://team-bucket/vmguard/")
    objects = next(s for s in policy["Statement"] if s["Sid"] == "VmguardSdkEnvironmentObjects")
    assert objects["Resource"] == "arn:aws:s3:::team-bucket/vmguard/*"
    terminate = next(s for s in policy["Statement"] if "ec2:TerminateInstances" in s["Action"])
    assert terminate["Condition"] == {"StringEquals": {"aws:ResourceTag/guard:managed": "true"}}
