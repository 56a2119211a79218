"""The emulator's request log: every AWS request it answered, from any process, with its operation and parameters."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from botocore.exceptions import ClientError

from guard.sandbox import SandboxServer, sandbox_client
from guard.sandbox.server import ServedRequest

pytestmark = pytest.mark.integration


@pytest.fixture
def server(sandbox: SandboxServer) -> SandboxServer:
    sandbox.reset()
    sandbox.clear_requests()
    return sandbox


def test_records_service_region_operation_and_parameters(server: SandboxServer) -> None:
    ec2 = sandbox_client(server.endpoint_url, "ec2", "us-west-2")
    logs = sandbox_client(server.endpoint_url, "logs", "us-east-1")
    volume_id = ec2.create_volume(AvailabilityZone="us-west-2a", Size=7)["VolumeId"]
    ec2.describe_volumes(VolumeIds=[volume_id])
    logs.create_log_group(logGroupName="/app/api")
    logs.put_retention_policy(logGroupName="/app/api", retentionInDays=30)
    sandbox_client(server.endpoint_url, "cloudwatch", "eu-west-1").list_metrics()
    with pytest.raises(ClientError):
        ec2.delete_volume(VolumeId="vol-00000000000000000")
    server.reset()  # the emulator's control API: not an AWS request

    served = server.requests()
    assert [(r.service, r.region, r.operation, r.mutating, r.status) for r in served] == [
        ("ec2", "us-west-2", "CreateVolume", True, 200),
        ("ec2", "us-west-2", "DescribeVolumes", False, 200),
        ("logs", "us-east-1", "CreateLogGroup", True, 200),
        ("logs", "us-east-1", "PutRetentionPolicy", True, 200),
        ("monitoring", "eu-west-1", "ListMetrics", False, 200),
        ("ec2", "us-west-2", "DeleteVolume", True, 400),
    ]
    create, describe, _, retention, _, delete = served
    assert create.params["Size"] == "7" and create.params["AvailabilityZone"] == "us-west-2a"
    assert describe.params["VolumeId.1"] == volume_id
    assert retention.params == {"logGroupName": "/app/api", "retentionInDays": 30}
    assert delete.params["VolumeId"] == "vol-00000000000000000"
    assert retention.name == "logs:PutRetentionPolicy"

    server.clear_requests()
    assert server.requests() == []


def test_moto_still_reads_the_bodies_the_log_parsed(server: SandboxServer) -> None:
    ec2 = sandbox_client(server.endpoint_url, "ec2", "us-east-1")
    logs = sandbox_client(server.endpoint_url, "logs", "us-east-1")
    volume_id = ec2.create_volume(AvailabilityZone="us-east-1b", Size=13, VolumeType="st1")["VolumeId"]
    logs.create_log_group(logGroupName="/app/batch")
    logs.put_retention_policy(logGroupName="/app/batch", retentionInDays=14)

    [volume] = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    assert (volume["Size"], volume["VolumeType"], volume["AvailabilityZone"]) == (13, "st1", "us-east-1b")
    [group] = logs.describe_log_groups(logGroupNamePrefix="/app/batch")["logGroups"]
    assert group["retentionInDays"] == 14


def test_records_requests_of_another_process(server: SandboxServer) -> None:
    script = ("import boto3; ec2 = boto3.client('ec2', region_name='ap-south-1'); "
              "a = ec2.allocate_address(Domain='vpc')['AllocationId']; ec2.release_address(AllocationId=a); print(a)")
    result = subprocess.run([sys.executable, "-c", script], env=server.env, capture_output=True, text=True,
                            timeout=120, check=True)
    allocation_id = result.stdout.strip()
    assert [(r.name, r.region, r.params.get("AllocationId")) for r in server.requests()] == [
        ("ec2:AllocateAddress", "ap-south-1", None),
        ("ec2:ReleaseAddress", "ap-south-1", allocation_id),
    ]


def test_concurrent_requests_are_each_recorded_once(server: SandboxServer) -> None:
    logs = sandbox_client(server.endpoint_url, "logs", "us-east-1")

    def make_groups(worker: int) -> None:
        for n in range(10):
            logs.create_log_group(logGroupName=f"/worker-{worker}/{n}")

    threads = [threading.Thread(target=make_groups, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    names = Counter(r.params["logGroupName"] for r in server.requests())
    assert len(names) == 60 and set(names.values()) == {1}


def test_latency_holds_the_answers_it_is_asked_to(server: SandboxServer) -> None:
    ec2 = sandbox_client(server.endpoint_url, "ec2", "us-east-1")
    ec2.describe_addresses()  # a first request pays for the connection
    seen: list[ServedRequest] = []

    def hold(request: ServedRequest) -> float:
        seen.append(request)
        return 0.3 if request.mutating else 0.0

    server.latency = hold
    try:
        started = time.monotonic()
        allocation_id = ec2.allocate_address(Domain="vpc")["AllocationId"]
        held = time.monotonic() - started
        started = time.monotonic()
        ec2.describe_addresses(AllocationIds=[allocation_id])
        answered = time.monotonic() - started
    finally:
        server.latency = None
    assert held >= 0.3 and answered < 0.3
    # the request was carried out and logged before its answer was held
    assert [r.operation for r in seen] == ["AllocateAddress", "DescribeAddresses"]
