"""A cluster whose VM dies while it boots fails at once, with the end of that VM's console, and is torn down: in the
sandbox (each VM a local process whose output is its console), never a silent wait for the whole boot timeout."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from rich.console import Console

import sdk
import sdk.launch
from guard.sandbox import SandboxServer, VmRunner
from sdk.bootstrap import user_data
from sdk.console import console_tail
from sdk.errors import SdkError

pytestmark = pytest.mark.integration

REGION = "us-east-1"
ALIVE = ["pending", "running", "stopping", "stopped", "shutting-down"]


@pytest.fixture
def runner(sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VmRunner]:
    sandbox.reset()
    monkeypatch.delenv("VMGUARD_DAEMON_URL", raising=False)
    with VmRunner(sandbox.endpoint_url, log_dir=tmp_path / "vms") as vms:
        yield vms


@pytest.fixture
def ec2(sandbox: SandboxServer) -> Any:
    return boto3.client("ec2", region_name=REGION)


def _bad_scheduler_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler's agent refuses its config and exits at once, as an agent with a broken config does."""
    good = sdk.launch.vm_config

    def bad(spec: Any, role: str, cluster_id: str) -> dict[str, Any]:
        config = good(spec, role, cluster_id)
        return config | {"nthreads": 0} if role == "scheduler" else config

    monkeypatch.setattr(sdk.launch, "vm_config", bad)


def test_a_scheduler_that_dies_at_boot_fails_the_launch_within_seconds_with_its_console(
        runner: VmRunner, sdk_env: dict[str, str], ec2: Any, sandbox: SandboxServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _bad_scheduler_config(monkeypatch)
    sandbox.clear_requests()
    started = time.monotonic()
    with pytest.raises(SdkError) as error:
        sdk.Cluster(vm_type="m5.large", region=REGION, n_workers=2, environment=False, boot_timeout="5 minutes",
                    owner="alice@example.com", max_hourly_usd=None, console=Console(quiet=True))
    elapsed = time.monotonic() - started
    message = str(error.value)
    assert elapsed < 30, f"took {elapsed:.0f}s: {message}"
    assert re.search(r"the scheduler i-[0-9a-f]+ of vmg-[0-9a-f]+ is (shutting-down|terminated)", message), message
    assert "its console ends: " in message and "nthreads must be a positive integer, not 0" in message, message
    assert message.endswith("the cluster was torn down") and "\n" not in message
    cluster_id = re.search(r"vmg-[0-9a-f]+", message).group(0)  # type: ignore[union-attr]
    reply = ec2.describe_instances(Filters=[{"Name": "tag:vmguard:cluster", "Values": [cluster_id]},
                                            {"Name": "instance-state-name", "Values": ALIVE}])
    assert reply["Reservations"] == []  # every VM terminated, not just the dead one
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [f"vmguard-{cluster_id}"]}])
    assert groups["SecurityGroups"] == []
    described = [r for r in sandbox.requests() if r.operation == "DescribeInstances"
                 and r.params.get("Filter.2.Value.1") == "shutting-down"]
    assert 1 <= len(described) <= elapsed / 3 + 2  # looked at, throttled


def test_the_sandbox_answers_get_console_output_with_the_vm_log_in_ec2_wire_format(
        runner: VmRunner, ec2: Any, tmp_path: Path) -> None:
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, InstanceType="m5.large", MinCount=1, MaxCount=1)["Instances"][0]
    try:
        (tmp_path / "vms" / f"{instance['InstanceId']}.log").write_text("booting\n\nsdk.vm: error: boom\n")
        reply = ec2.get_console_output(InstanceId=instance["InstanceId"], Latest=True)
        assert reply["InstanceId"] == instance["InstanceId"] and reply["Timestamp"].year >= 2024
        assert reply["Output"] == "booting\n\nsdk.vm: error: boom\n"  # sent base64, as EC2 does: botocore decodes it
        assert console_tail(ec2, instance["InstanceId"]) == "booting | sdk.vm: error: boom"
    finally:
        ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])


def test_the_boot_script_writes_its_log_to_the_serial_console_too() -> None:
    script = user_data({"role": "scheduler", "cluster_id": "vmg-0123456789"}, None)
    assert "exec > >(tee -a /var/log/vmguard-boot.log /dev/console >/dev/null) 2>&1" in script.splitlines()
