"""Capacity and vCPU quotas at launch, against the emulated AWS over HTTP: spot refused everywhere still ends in
on-demand workers, a vCPU quota that admits part of the cluster launches that part when ``min_workers`` allows it
(and tears everything down when it does not), and the error names the quota, its value and where to raise it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from faults import FaultProxy, error_body

from guard.sandbox import SandboxServer
from guard.sandbox.server import Reply, ServedRequest
from sdk.errors import CapacityError, SdkError
from sdk.launch import MAX_WORKER_CALLS, QUOTA_RETRIES, PartialLaunch, launch, teardown
from sdk.quotas import instance_class
from sdk.spec import ClusterSpec

pytestmark = pytest.mark.integration

REGION = "us-east-1"
CLIENT_CIDRS = ["203.0.113.7/32"]
ALIVE = ["pending", "running", "stopping", "stopped"]
ON_DEMAND_STANDARD = "L-1216C47A"
SPOT_STANDARD = "L-34B43A08"
INCREASE_URL = f"https://console.aws.amazon.com/servicequotas/home/services/ec2/quotas/{ON_DEMAND_STANDARD}" \
               f"?region={REGION}"


@pytest.fixture
def ec2(sandbox: SandboxServer) -> Iterator[Any]:
    """An EC2 client that does not retry (each refused call is one call), on an empty account (instances left by
    earlier tests would count against a vCPU quota); the account's quotas lifted after."""
    sandbox.reset()
    yield boto3.client("ec2", region_name=REGION, config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
    sandbox.quotas.clear()


@pytest.fixture
def cluster_id() -> str:
    return f"vmg-{secrets.token_hex(5)}"


def _spec(**kwargs: Any) -> ClusterSpec:
    return ClusterSpec.from_kwargs(**{"owner": "alice@example.com", "max_hourly_usd": None, **kwargs})


def _alive(ec2: Any, cluster_id: str) -> list[str]:
    reply = ec2.describe_instances(Filters=[{"Name": "tag:vmguard:cluster", "Values": [cluster_id]},
                                            {"Name": "instance-state-name", "Values": ALIVE}])
    return [i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"]]


def _runs(sandbox: SandboxServer) -> list[ServedRequest]:
    return [r for r in sandbox.requests() if r.operation == "RunInstances"]


@pytest.fixture
def no_spot(sandbox: SandboxServer) -> Iterator[None]:
    """Every spot RunInstances refused for capacity (HTTP 500, as EC2 answers it), in every AZ and type."""
    def refuse(request: ServedRequest) -> Reply | None:
        if request.operation == "RunInstances" and request.params.get("InstanceMarketOptions.MarketType") == "spot":
            return Reply(500, "text/xml", error_body("InsufficientInstanceCapacity", "no spot capacity"))
        return None

    sandbox.add_answer(refuse)
    yield
    sandbox.remove_answer(refuse)


# -- markets -----------------------------------------------------------------------------------------------------


def test_spot_refused_everywhere_still_ends_in_on_demand_workers(sandbox: SandboxServer, ec2: Any, no_spot: None,
                                                                 cluster_id: str) -> None:
    types = ["m5.large", "m5a.large", "m6i.large", "c5.large"]
    offers = ec2.describe_instance_type_offerings(LocationType="availability-zone", Filters=[
        {"Name": "instance-type", "Values": types}])["InstanceTypeOfferings"]
    assert 1 + len(offers) > MAX_WORKER_CALLS  # the spot attempts alone would use up one shared budget
    sandbox.clear_requests()

    launched = launch(_spec(vm_type=types, n_workers=10, spot_policy="spot_with_fallback"), types, cluster_id,
                      CLIENT_CIDRS, ec2)
    try:
        assert len(launched.workers) == 10 and {w["Lifecycle"] for w in launched.workers} == {"on-demand"}
        runs = _runs(sandbox)
        spot = [r for r in runs if r.params.get("InstanceMarketOptions.MarketType") == "spot"]
        assert len(spot) == MAX_WORKER_CALLS and len(runs) <= 1 + 2 * MAX_WORKER_CALLS
    finally:
        teardown(ec2, launched)


def test_a_spot_quota_of_zero_moves_the_workers_on_demand_after_one_refusal(sandbox: SandboxServer, ec2: Any,
                                                                            cluster_id: str) -> None:
    sandbox.limit_vcpus(SPOT_STANDARD, 0)
    sandbox.clear_requests()
    launched = launch(_spec(vm_type="m5.large", n_workers=3, spot_policy="spot_with_fallback"), ["m5.large"],
                      cluster_id, CLIENT_CIDRS, ec2)
    try:
        assert {w["Lifecycle"] for w in launched.workers} == {"on-demand"} and len(launched.workers) == 3
        spot = [r for r in _runs(sandbox) if r.params.get("InstanceMarketOptions.MarketType") == "spot"]
        assert len(spot) == 1  # a quota refuses the whole market: no other AZ or retry is asked (none fits)
    finally:
        teardown(ec2, launched)


# -- vCPU quotas --------------------------------------------------------------------------------------------------


def test_the_sandbox_imposes_a_vcpu_quota_in_aws_wire_format(sandbox: SandboxServer, ec2: Any) -> None:
    sandbox.limit_vcpus(ON_DEMAND_STANDARD, 4)
    quota = boto3.client("service-quotas", region_name=REGION).get_service_quota(
        ServiceCode="ec2", QuotaCode=ON_DEMAND_STANDARD)["Quota"]
    assert quota["Value"] == 4.0 and quota["QuotaName"].startswith("Running On-Demand Standard")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    with pytest.raises(ClientError) as refused:
        ec2.run_instances(ImageId=image, InstanceType="m5.xlarge", MinCount=2, MaxCount=2)
    assert refused.value.response["Error"]["Code"] == "VcpuLimitExceeded"
    assert "current vCPU limit of 4 allows" in refused.value.response["Error"]["Message"]
    reply = ec2.run_instances(ImageId=image, InstanceType="m5.xlarge", MinCount=1, MaxCount=1)
    ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in reply["Instances"]])
    with pytest.raises(ClientError, match="NoSuchResource"):  # a quota not imposed is moto's again
        boto3.client("service-quotas", region_name=REGION).get_service_quota(ServiceCode="ec2",
                                                                              QuotaCode=SPOT_STANDARD)


def test_a_vcpu_quota_that_admits_part_launches_that_part_with_min_workers(sandbox: SandboxServer, ec2: Any,
                                                                           cluster_id: str) -> None:
    sandbox.limit_vcpus(ON_DEMAND_STANDARD, 8)  # m5.large has 2 vCPUs: the scheduler and 3 workers
    sandbox.clear_requests()
    with pytest.warns(PartialLaunch, match=r"launched 3 of 10 workers") as warned:
        launched = launch(_spec(vm_type="m5.large", n_workers=10, min_workers=2), ["m5.large"], cluster_id,
                          CLIENT_CIDRS, ec2)
    try:
        assert len(launched.workers) == 3
        message = str(warned[0].message)
        assert f'{ON_DEMAND_STANDARD} "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances" is 8 vCPUs' \
               in message and INCREASE_URL in message
        workers = _runs(sandbox)[1:]
        assert [(w.params["MinCount"], w.params["MaxCount"]) for w in workers] == [("10", "10"), ("3", "3")]
        assert [r.operation for r in sandbox.requests()].count("GetServiceQuota") == 1  # read once, before launch
    finally:
        teardown(ec2, launched)


def test_a_vcpu_quota_below_min_workers_tears_the_launch_down_and_names_the_quota(sandbox: SandboxServer, ec2: Any,
                                                                                 cluster_id: str) -> None:
    sandbox.limit_vcpus(ON_DEMAND_STANDARD, 8)
    with pytest.raises(CapacityError) as error:
        launch(_spec(vm_type="m5.large", n_workers=10, min_workers=5), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
    message = str(error.value)
    assert "launched only 3 of the 10 worker(s)" in message and "pass min_workers=3" in message
    assert f"{ON_DEMAND_STANDARD} \"Running On-Demand Standard" in message and "is 8 vCPUs in us-east-1" in message
    assert INCREASE_URL in message and "terminated 4 instance(s)" in message and "\n" not in message
    assert _alive(ec2, cluster_id) == []


def test_by_default_every_worker_is_required(sandbox: SandboxServer, ec2: Any, cluster_id: str) -> None:
    sandbox.limit_vcpus(ON_DEMAND_STANDARD, 8)
    with pytest.raises(CapacityError, match=r"fewer than min_workers=10 \(pass min_workers=3"):
        launch(_spec(vm_type="m5.large", n_workers=10), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
    assert _alive(ec2, cluster_id) == []


def test_an_unreadable_quota_is_left_out_and_the_count_is_halved(sandbox: SandboxServer, ec2: Any,
                                                                cluster_id: str) -> None:
    sandbox.limit_vcpus(ON_DEMAND_STANDARD, 8)
    with FaultProxy(sandbox.endpoint_url) as proxy:
        proxy.fail("GetServiceQuota", 400, "AccessDeniedException", "not authorized to perform GetServiceQuota")
        quotas = boto3.client("service-quotas", region_name=REGION, endpoint_url=proxy.url)
        sandbox.clear_requests()
        with pytest.warns(PartialLaunch) as warned:
            launched = launch(_spec(vm_type="m5.large", n_workers=10, min_workers=1), ["m5.large"], cluster_id,
                              CLIENT_CIDRS, ec2, quotas_client=quotas)
    try:
        message = str(warned[0].message)
        assert ON_DEMAND_STANDARD in message and INCREASE_URL in message and "vCPUs in" not in message
        counts = [w.params["MaxCount"] for w in _runs(sandbox)[1:]]
        assert counts == ["10", "5", "2"] and len(launched.workers) == 2  # 10 refused, 5 refused, 2 fit
        assert len(counts) <= 1 + QUOTA_RETRIES
    finally:
        teardown(ec2, launched)


# -- the argument -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_workers": 4, "min_workers": 5}, "min_workers=5 is more than n_workers=4; pass min_workers from 1 to 4"),
    ({"n_workers": 4, "min_workers": 0}, "min_workers=0 must be a whole number from 1 to n_workers"),
    ({"n_workers": 4, "min_workers": "two"}, "min_workers='two' must be a whole number"),
])
def test_min_workers_is_checked_in_one_line(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SdkError) as error:
        _spec(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_min_workers_defaults_to_every_worker() -> None:
    assert _spec(n_workers=7).required_workers == 7
    assert _spec(n_workers=7, min_workers=2).required_workers == 2


@pytest.mark.parametrize(("instance_type", "kind"), [
    ("m7g.large", "standard"), ("c7i.xlarge", "standard"), ("t3.micro", "standard"), ("im4gn.large", "standard"),
    ("z1d.large", "standard"), ("g5.xlarge", "g"), ("g5g.xlarge", "g"), ("vt1.3xlarge", "g"), ("p4d.24xlarge", "p"),
    ("inf2.xlarge", None), ("trn1.2xlarge", None), ("dl1.24xlarge", None), ("hpc7g.4xlarge", None),
    ("mac1.metal", None), ("x2idn.16xlarge", None), ("u-6tb1.metal", None), ("f1.2xlarge", None),
])
def test_each_instance_type_counts_against_its_class_quota(instance_type: str, kind: str | None) -> None:
    assert instance_class(instance_type) == kind
