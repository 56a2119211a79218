"""``python -m bench.launchers sdk|naive WORKERS DAEMON_URL TOKEN``: launch a cluster, register it, print JSON.

- ``sdk``: vmguard's SDK as ``sdk.Cluster`` launches: ``sdk.launch.launch`` (the scheduler, then every worker in
  one RunInstances), then ``DaemonClient.register`` (one POST /v1/clusters);
- ``naive``: what dask-cloudprovider's EC2Cluster does: the default VPC, subnets and latest image looked up, one
  security group, then one RunInstances per VM (the scheduler, then the workers concurrently, 10 calls in flight:
  botocore's default connection pool), then the same registration with the daemon.

Both end when the daemon has accepted the cluster with all its instances: the printed ``wall_seconds`` is the time
from the first AWS call to that answer. The VMs themselves boot nowhere (this is the emulator): booting is the
same for both and is not measured.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3

REGION = "us-east-1"
INSTANCE_TYPE = "m5.large"
OWNER = "bench@example.com"
CLIENT_CIDRS = ["127.0.0.1/32"]
NAIVE_CONCURRENCY = 10


def _register(daemon_url: str, token: str, cluster_id: str, instances: list[dict[str, Any]],
              security_group_id: str | None) -> bool:
    from guard.wire import ClusterRegistration
    from sdk.daemon_client import DaemonClient

    registration = ClusterRegistration(
        cluster_id=cluster_id, owner=OWNER, region=REGION, instance_ids=[i["InstanceId"] for i in instances],
        instance_types=sorted({i["InstanceType"] for i in instances}), security_group_id=security_group_id,
        keepalive_seconds=1200, idle_timeout_seconds=3600, max_lifetime_seconds=86400)
    client = DaemonClient(daemon_url, token, timeout=60)
    try:
        return client.register(registration)
    finally:
        client.close()


def sdk_launch(workers: int, daemon_url: str, token: str) -> dict[str, Any]:
    from sdk.launch import launch
    from sdk.spec import ClusterSpec

    spec = ClusterSpec.from_kwargs(owner=OWNER, vm_type=INSTANCE_TYPE, n_workers=workers, region=REGION,
                                   max_hourly_usd=None)
    ec2 = boto3.client("ec2", region_name=REGION)
    cluster_id = f"vmg-{secrets.token_hex(5)}"
    clock = time.perf_counter()
    launched = launch(spec, [INSTANCE_TYPE], cluster_id, CLIENT_CIDRS, ec2)
    launched_at = time.perf_counter() - clock
    registered = _register(daemon_url, token, cluster_id, [launched.scheduler, *launched.workers],
                           launched.security_group_id)
    return {"cluster_id": cluster_id, "instances": 1 + len(launched.workers), "registered": registered,
            "launch_seconds": launched_at, "wall_seconds": time.perf_counter() - clock}


def naive_launch(workers: int, daemon_url: str, token: str) -> dict[str, Any]:
    ec2 = boto3.client("ec2", region_name=REGION)
    cluster_id = f"vmg-{secrets.token_hex(5)}"
    clock = time.perf_counter()
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    images = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["al2023-ami-2023.*-x86_64"]}])
    image = max(images["Images"], key=lambda i: i.get("CreationDate", ""))["ImageId"]
    group = ec2.create_security_group(GroupName=f"dask-{cluster_id}", Description="dask", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 8786, "ToPort": 8787, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535, "UserIdGroupPairs": [{"GroupId": group}]}])

    def run(role: str, number: int) -> dict[str, Any]:
        reply = ec2.run_instances(
            ImageId=image, InstanceType=INSTANCE_TYPE, MinCount=1, MaxCount=1, SecurityGroupIds=[group],
            SubnetId=subnets[number % len(subnets)]["SubnetId"],
            TagSpecifications=[{"ResourceType": "instance", "Tags": [
                {"Key": "Name", "Value": f"dask-{cluster_id}-{role}-{number}"},
                {"Key": "cluster-id", "Value": cluster_id},
                {"Key": "createdBy", "Value": "dask-cloudprovider"}]}])
        return reply["Instances"][0]

    scheduler = run("scheduler", 0)
    with ThreadPoolExecutor(NAIVE_CONCURRENCY) as pool:
        launched = list(pool.map(lambda number: run("worker", number), range(1, workers + 1)))
    launched_at = time.perf_counter() - clock
    registered = _register(daemon_url, token, cluster_id, [scheduler, *launched], group)
    return {"cluster_id": cluster_id, "instances": 1 + len(launched), "registered": registered,
            "launch_seconds": launched_at, "wall_seconds": time.perf_counter() - clock}


if __name__ == "__main__":
    how, count, url, owner_token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    print(json.dumps((sdk_launch if how == "sdk" else naive_launch)(count, url, owner_token)))
