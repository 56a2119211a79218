"""Accounts that are not the tutorial account, against the emulated AWS over HTTP: launching into given subnets of
one VPC, with extra security groups, reaching the scheduler at its private address, a region without a default
VPC, and workers that capacity pushed into other AZs."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from test_sdk_launch import ScriptedCapacity

from guard.sandbox import SandboxServer
from sdk.cluster import Cluster
from sdk.errors import SdkError
from sdk.launch import CrossAzTraffic, Launched, launch, teardown
from sdk.spec import ClusterSpec

pytestmark = pytest.mark.integration

REGION = "us-east-1"
CLIENT_CIDRS = ["203.0.113.7/32"]
NOTHING_MADE = ("RunInstances", "CreateSecurityGroup")


def _spec(**kwargs: Any) -> ClusterSpec:
    return ClusterSpec.from_kwargs(**{"owner": "alice@example.com", "max_hourly_usd": None, "vm_type": "m5.large",
                                      **kwargs})


@pytest.fixture
def ec2(sandbox: SandboxServer) -> Any:
    return boto3.client("ec2", region_name=REGION)


@pytest.fixture
def cluster_id() -> str:
    return f"vmg-{secrets.token_hex(5)}"


@pytest.fixture
def launched(sandbox: SandboxServer) -> Iterator[list[tuple[Any, Launched]]]:
    """Launches to tear down after the test, as (EC2 client, Launched)."""
    made: list[tuple[Any, Launched]] = []
    yield made
    for client, cluster in made:
        teardown(client, cluster)


def _vpc(ec2: Any, zones: list[str], public: bool = True) -> tuple[str, list[str]]:
    """A VPC of the team's own with one subnet per zone (assigning public addresses or not)."""
    second = secrets.randbelow(200) + 10
    vpc_id = ec2.create_vpc(CidrBlock=f"10.{second}.0.0/16")["Vpc"]["VpcId"]
    subnets = []
    for n, zone in enumerate(zones):
        subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.{second}.{n}.0/24",
                                      AvailabilityZone=zone)["Subnet"]["SubnetId"]
        if public:
            ec2.modify_subnet_attribute(SubnetId=subnet_id, MapPublicIpOnLaunch={"Value": True})
        subnets.append(subnet_id)
    return vpc_id, subnets


def _made_nothing(sandbox: SandboxServer) -> bool:
    return not [r for r in sandbox.requests() if r.operation in NOTHING_MADE]


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_subnet_ids_launch_into_those_subnets_and_their_vpc(sandbox: SandboxServer, ec2: Any, launched: list,
                                                          cluster_id: str) -> None:
    vpc_id, subnets = _vpc(ec2, [f"{REGION}c", f"{REGION}b"])
    sandbox.clear_requests()
    cluster = launch(_spec(n_workers=2, subnet_ids=subnets), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
    launched.append((ec2, cluster))

    runs = [r.params for r in sandbox.requests() if r.operation == "RunInstances"]
    assert [run["SubnetId"] for run in runs] == [subnets[0], subnets[0]]  # the first subnet given comes first
    [group] = ec2.describe_security_groups(GroupIds=[cluster.security_group_id])["SecurityGroups"]
    assert group["VpcId"] == vpc_id
    for reservation in ec2.describe_instances(InstanceIds=cluster.instance_ids)["Reservations"]:
        for instance in reservation["Instances"]:
            assert (instance["VpcId"], instance["SubnetId"]) == (vpc_id, subnets[0])


def test_subnets_of_two_vpcs_are_one_line_before_anything_is_made(sandbox: SandboxServer, ec2: Any,
                                                                  cluster_id: str) -> None:
    first, [one] = _vpc(ec2, [f"{REGION}a"])
    second, [other] = _vpc(ec2, [f"{REGION}b"])
    sandbox.clear_requests()
    with pytest.raises(SdkError) as error:
        launch(_spec(subnet_ids=[one, other]), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
    assert _one_line(error) == (f"subnet_ids span 2 VPCs ({', '.join(sorted([first, second]))}); pass subnets of "
                                "one VPC; nothing was launched")
    assert _made_nothing(sandbox)


def test_an_unknown_subnet_is_one_line(sandbox: SandboxServer, ec2: Any, cluster_id: str) -> None:
    sandbox.clear_requests()
    with pytest.raises(SdkError) as error:
        launch(_spec(subnet_ids=["subnet-0123456789abcdef0"]), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
    assert _one_line(error).startswith("subnet_ids: InvalidSubnetID.NotFound")
    assert _made_nothing(sandbox)


def test_a_private_subnet_needs_use_private_ip(sandbox: SandboxServer, ec2: Any, launched: list,
                                               cluster_id: str) -> None:
    _, [private] = _vpc(ec2, [f"{REGION}a"], public=False)
    sandbox.clear_requests()
    with pytest.raises(SdkError) as error:
        launch(_spec(subnet_ids=[private]), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
    assert _one_line(error).startswith(f"{private} assigns no public IPv4 address, so this client could not reach "
                                       "the scheduler; pass use_private_ip=True")
    assert _made_nothing(sandbox)

    spec = _spec(subnet_ids=[private], use_private_ip=True, allow_ingress_from=["10.0.0.0/8"])
    launched.append((ec2, launch(spec, ["m5.large"], cluster_id, ["10.0.0.0/8"], ec2)))


def test_security_group_ids_join_the_clusters_own_group_on_every_vm(ec2: Any, launched: list,
                                                                    cluster_id: str) -> None:
    vpc_id = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    extra = ec2.create_security_group(GroupName=f"team-endpoints-{cluster_id}", Description="VPC endpoints",
                                      VpcId=vpc_id)["GroupId"]
    cluster = launch(_spec(n_workers=2, security_group_ids=[extra]), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
    for reservation in ec2.describe_instances(InstanceIds=cluster.instance_ids)["Reservations"]:
        for instance in reservation["Instances"]:
            assert {g["GroupId"] for g in instance["SecurityGroups"]} == {cluster.security_group_id, extra}
    teardown(ec2, cluster)
    assert ec2.describe_security_groups(GroupIds=[extra])["SecurityGroups"]  # the team's group is not ours to delete


def test_a_security_group_of_another_vpc_is_one_line(sandbox: SandboxServer, ec2: Any, cluster_id: str) -> None:
    other_vpc, _ = _vpc(ec2, [f"{REGION}a"])
    elsewhere = ec2.create_security_group(GroupName=f"elsewhere-{cluster_id}", Description="another VPC",
                                          VpcId=other_vpc)["GroupId"]
    sandbox.clear_requests()
    with pytest.raises(SdkError) as error:
        launch(_spec(security_group_ids=[elsewhere]), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
    assert _one_line(error).startswith(f"security_group_ids: {elsewhere} is not in vpc-")
    assert _made_nothing(sandbox)


def test_a_region_without_a_default_vpc_names_subnet_ids(sandbox: SandboxServer, cluster_id: str) -> None:
    region = "ap-south-2"
    ec2 = boto3.client("ec2", region_name=region)
    default = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    for subnet in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [default]}])["Subnets"]:
        ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    for gateway in ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id",
                                                            "Values": [default]}])["InternetGateways"]:
        ec2.detach_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"], VpcId=default)
        ec2.delete_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"])
    ec2.delete_vpc(VpcId=default)
    try:
        sandbox.clear_requests()
        with pytest.raises(SdkError) as error:
            launch(_spec(region=region), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
        assert _one_line(error).startswith(
            f"{region} has no default VPC to launch into; pass subnet_ids=['subnet-…'] (subnets of one VPC), or "
            f"create a default VPC with `aws ec2 create-default-vpc --region {region}`")
        assert _made_nothing(sandbox)

        vpc_id, [subnet] = _vpc(ec2, [f"{region}a"])
        teardown(ec2, launch(_spec(region=region, subnet_ids=[subnet]), ["m5.large"], cluster_id, CLIENT_CIDRS,
                             ec2))
        ec2.delete_subnet(SubnetId=subnet)
        ec2.delete_vpc(VpcId=vpc_id)
    finally:
        ec2.create_default_vpc()  # the region as the other tests know it


def test_workers_pushed_into_other_azs_are_warned_about_cross_az_traffic(ec2: Any, launched: list,
                                                                         cluster_id: str) -> None:
    # the scheduler launches; the workers' all-or-nothing call and the retry in its AZ are refused; the next AZ serves
    proxy = ScriptedCapacity(ec2.meta.endpoint_url, ["ok", "InsufficientInstanceCapacity",
                                                     "InsufficientInstanceCapacity"]).start()
    try:
        client = boto3.client("ec2", region_name=REGION, endpoint_url=proxy.url,
                              config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
        with pytest.warns(CrossAzTraffic) as warned:
            cluster = launch(_spec(n_workers=3), ["m5.large"], cluster_id, CLIENT_CIDRS, client)
        launched.append((ec2, cluster))
    finally:
        proxy.stop()
    home = cluster.scheduler["AvailabilityZone"]
    zones = {home, *(worker["AvailabilityZone"] for worker in cluster.workers)}
    assert len(cluster.workers) == 3 and len(zones) >= 2
    assert str(warned[0].message) == cluster.spread == (
        f"{cluster_id}: workers spread over {len(zones)} AZs (3 outside the scheduler's {home}): cross-AZ traffic "
        "bills $0.01/GB each way")


def test_one_az_is_no_spread(ec2: Any, launched: list, cluster_id: str) -> None:
    cluster = launch(_spec(n_workers=2), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
    launched.append((ec2, cluster))
    assert cluster.spread is None


class _Describe:
    """An EC2 client that knows one instance with both addresses."""

    def describe_instances(self, InstanceIds: list[str]) -> dict[str, Any]:  # noqa: N803 - boto3's spelling
        return {"Reservations": [{"Instances": [{"InstanceId": InstanceIds[0], "PublicIpAddress": "198.51.100.4",
                                                 "PrivateIpAddress": "10.1.2.3"}]}]}


@pytest.mark.parametrize(("private", "address"), [(False, "198.51.100.4"), (True, "10.1.2.3")])
def test_use_private_ip_connects_to_the_schedulers_private_address(private: bool, address: str) -> None:
    cluster = object.__new__(Cluster)  # the address step alone
    cluster.spec = _spec(use_private_ip=private, allow_ingress_from=["10.0.0.0/8"])
    cluster._ec2 = _Describe()
    cluster.launched = Launched(cluster_id="vmg-x", region=REGION, security_group_id="sg-1",
                                scheduler={"InstanceId": "i-0123456789abcdef0"})
    assert cluster._refresh_scheduler_ip() == address
