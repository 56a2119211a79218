"""Which image and which type each VM of a cluster boots, against the emulated AWS over HTTP: GPU types on AWS's Deep
Learning Base AMI (read from its public SSM parameter in the cluster's region), CPU types on Amazon Linux 2023,
``image=`` for all of them; the scheduler on a small non-GPU type of its own, priced as such."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config
from rich.console import Console
from test_sdk_launch import ScriptedCapacity

from guard.pricing import default_catalog
from guard.sandbox import SandboxServer, create_env_location
from guard.sandbox.images import ARM64_IMAGE_ID, DLAMI_IMAGE_IDS, X86_64_IMAGE_ID, seed_image_parameters
from sdk.cluster import Cluster
from sdk.cost import estimate_cost
from sdk.errors import SdkError
from sdk.launch import GPU_IMAGE_PARAMETER, _Image, _Run, launch, teardown
from sdk.security import ClusterTls
from sdk.spec import ClusterSpec
from sdk.types import describe_types, resolve_scheduler_types

pytestmark = pytest.mark.integration

CLIENT_CIDRS = ["203.0.113.7/32"]


def _spec(**kwargs: Any) -> ClusterSpec:
    return ClusterSpec.from_kwargs(**{"owner": "alice@example.com", "max_hourly_usd": None, **kwargs})


def _runs(sandbox: SandboxServer, region: str) -> list[dict[str, Any]]:
    """The RunInstances requests the emulator answered in ``region``, as their parameters."""
    return [r.params for r in sandbox.requests() if r.operation == "RunInstances" and r.region == region]


def _parameter(region: str, arch: str) -> str:
    return boto3.client("ssm", region_name=region).get_parameter(
        Name=GPU_IMAGE_PARAMETER.format(arch=arch))["Parameter"]["Value"]


@pytest.fixture
def cluster_id() -> str:
    return f"vmg-{secrets.token_hex(5)}"


@pytest.fixture
def launched(sandbox: SandboxServer) -> Iterator[list[tuple[Any, Any]]]:
    """Launches to tear down after the test, as (EC2 client, Launched)."""
    made: list[tuple[Any, Any]] = []
    yield made
    for ec2, cluster in made:
        teardown(ec2, cluster)


@pytest.mark.parametrize(("region", "vm_type", "arch"), [
    ("us-east-1", "g5.xlarge", "x86_64"), ("us-east-1", "g5g.xlarge", "arm64"), ("us-west-2", "g5g.xlarge", "arm64"),
])
def test_a_gpu_type_boots_the_regions_deep_learning_ami_of_its_architecture(
        sandbox: SandboxServer, launched: list, cluster_id: str, region: str, vm_type: str, arch: str) -> None:
    ec2 = boto3.client("ec2", region_name=region)
    sandbox.clear_requests()
    cluster = launch(_spec(vm_type=vm_type, region=region), [vm_type], cluster_id, CLIENT_CIDRS, ec2)
    launched.append((ec2, cluster))

    reads = [(r.name, r.region) for r in sandbox.requests() if r.service == "ssm"]
    assert reads == [("ssm:GetParameter", region)]  # one read, in the cluster's region
    scheduler, worker = _runs(sandbox, region)
    assert worker["InstanceType"] == vm_type and worker["ImageId"] == _parameter(region, arch)
    assert worker["ImageId"] == DLAMI_IMAGE_IDS[arch]
    # the scheduler needs no GPU: a CPU type of the same architecture, on plain Amazon Linux 2023
    assert describe_types(ec2, [scheduler["InstanceType"]])[scheduler["InstanceType"]].gpus == 0
    assert scheduler["ImageId"] == (ARM64_IMAGE_ID if arch == "arm64" else X86_64_IMAGE_ID)
    [instance] = ec2.describe_instances(InstanceIds=[cluster.workers[0]["InstanceId"]])["Reservations"][0][
        "Instances"]
    assert (instance["ImageId"], instance["Architecture"]) == (DLAMI_IMAGE_IDS[arch], arch)


def test_a_cpu_cluster_keeps_amazon_linux_and_reads_no_parameter(sandbox: SandboxServer, launched: list,
                                                                 cluster_id: str) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    sandbox.clear_requests()
    launched.append((ec2, launch(_spec(vm_type="m5.large", n_workers=2), ["m5.large"], cluster_id, CLIENT_CIDRS,
                                 ec2)))
    assert {run["ImageId"] for run in _runs(sandbox, "us-east-1")} == {X86_64_IMAGE_ID}
    assert not [r for r in sandbox.requests() if r.service == "ssm"]


@pytest.mark.parametrize("vm_type", ["m5.large", "g5.xlarge"])
def test_image_overrides_the_image_of_every_vm(sandbox: SandboxServer, launched: list, cluster_id: str,
                                               vm_type: str) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    custom = ec2.register_image(Name=f"team-cuda-{cluster_id}", Architecture="x86_64", RootDeviceName="/dev/xvda",
                                VirtualizationType="hvm")["ImageId"]
    sandbox.clear_requests()
    launched.append((ec2, launch(_spec(vm_type=vm_type, image=custom), [vm_type], cluster_id, CLIENT_CIDRS, ec2)))
    assert {run["ImageId"] for run in _runs(sandbox, "us-east-1")} == {custom}
    assert not [r for r in sandbox.requests() if r.service == "ssm"]


def test_an_image_of_the_other_architecture_is_one_line_before_any_launch(sandbox: SandboxServer,
                                                                          cluster_id: str) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    sandbox.clear_requests()
    with pytest.raises(SdkError) as error:
        launch(_spec(vm_type="m7g.large", image=X86_64_IMAGE_ID), ["m7g.large"], cluster_id, CLIENT_CIDRS, ec2)
    assert str(error.value).startswith(f"image='{X86_64_IMAGE_ID}' is x86_64, but the cluster has arm64 types")
    assert "\n" not in str(error.value) and not _runs(sandbox, "us-east-1")


def test_an_image_the_region_does_not_have_is_one_line(sandbox: SandboxServer, cluster_id: str) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    sandbox.clear_requests()
    with pytest.raises(SdkError) as error:
        launch(_spec(vm_type="m5.large", image="ami-0123456789abcdef0"), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
    assert str(error.value).startswith("no image ami-0123456789abcdef0 is available in us-east-1; pass image='ami-…'")
    assert "\n" not in str(error.value) and not _runs(sandbox, "us-east-1")


def test_a_region_without_the_parameter_is_one_line_naming_image(sandbox: SandboxServer, cluster_id: str) -> None:
    region = "eu-west-3"
    ssm = boto3.client("ssm", region_name=region)
    ssm.delete_parameter(Name=GPU_IMAGE_PARAMETER.format(arch="x86_64"))  # as in a region AWS has not published to
    try:
        sandbox.clear_requests()
        with pytest.raises(SdkError) as error:
            launch(_spec(vm_type="g5.xlarge", region=region), ["g5.xlarge"], cluster_id, CLIENT_CIDRS,
                   boto3.client("ec2", region_name=region))
        message = str(error.value)
        assert message.startswith(f"{region} has no Deep Learning Base AMI for x86_64 GPUs")
        assert "pass image='ami-…'" in message and "\n" not in message
        assert not [r for r in sandbox.requests() if r.operation in ("RunInstances", "CreateSecurityGroup")]
    finally:
        seed_image_parameters()


def test_an_explicit_disk_smaller_than_the_image_is_refused(sandbox: SandboxServer, cluster_id: str) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    with pytest.raises(SdkError, match=r"^disk_size=10 GiB is smaller than the 15 GiB root volume of ami-"):
        launch(_spec(vm_type="g5.xlarge", disk_size=10), ["g5.xlarge"], cluster_id, CLIENT_CIDRS, ec2)


def test_the_default_disk_grows_to_a_larger_image_root() -> None:
    """The DLAMI's root snapshot is 75 GiB: the default disk_size (50) grows to it rather than refusing."""
    run = _Run(_spec(), "vmg-0", None, ["g5.xlarge"], ["g5.xlarge"], {}, None, None)
    [root] = run._block_devices(_Image("ami-0b7c5e1d9e2f4a3c1", "/dev/xvda", (), root_size=75))
    assert root["Ebs"]["VolumeSize"] == 75
    [root] = run._block_devices(_Image("ami-0b7c5e1d9e2f4a3c1", "/dev/xvda", (), root_size=15))
    assert root["Ebs"]["VolumeSize"] == 50


# -- the scheduler's own type ------------------------------------------------------------------------------------


def test_one_gpu_worker_is_priced_with_a_small_cpu_scheduler(sandbox: SandboxServer) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    spec = _spec(vm_type="g5.xlarge")
    schedulers = resolve_scheduler_types(spec, ec2, ["g5.xlarge"])
    own, *fallbacks = schedulers
    info = describe_types(ec2, [own])[own]
    assert (info.arch, info.vcpus, info.gpus) == ("x86_64", 2, 0) and info.memory_mib >= 8 * 1024
    assert fallbacks == ["g5.xlarge"]  # the workers' type if the scheduler's has no capacity
    catalog = default_catalog()
    cheaper = [i.instance_type for i in catalog.types_in("us-east-1") if i.arch == "x86_64" and i.vcpus == 2
               and i.memory_gib >= 8 and not i.gpu_count and not i.instance_type.startswith("t")
               and catalog.hourly_usd(i.instance_type, "us-east-1") < catalog.hourly_usd(own, "us-east-1")]
    assert not describe_types(ec2, cheaper)  # nothing cheaper of that shape is offered

    estimate = estimate_cost(spec, ["g5.xlarge"], scheduler_types=schedulers)
    assert estimate.hourly_usd == pytest.approx(catalog.hourly_usd(own, "us-east-1")
                                                + catalog.hourly_usd("g5.xlarge", "us-east-1")
                                                + 2 * estimate.per_vm_extra_usd)
    assert 1.05 < estimate.hourly_usd < 1.15  # not $2.03: the scheduler no longer takes the worker's GPU type
    assert estimate.worst_hourly_usd == pytest.approx(estimate_cost(spec, ["g5.xlarge"]).hourly_usd)


def test_scheduler_vm_type_is_launched_on_demand_and_checked(sandbox: SandboxServer, launched: list,
                                                            cluster_id: str) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    spec = _spec(vm_type="m7g.large", n_workers=2, spot_policy="spot", scheduler_vm_type="c7g.large")
    sandbox.clear_requests()
    launched.append((ec2, launch(spec, ["m7g.large"], cluster_id, CLIENT_CIDRS, ec2)))
    scheduler, workers = _runs(sandbox, "us-east-1")
    assert scheduler["InstanceType"] == "c7g.large" and "InstanceMarketOptions.MarketType" not in scheduler
    assert workers["InstanceType"] == "m7g.large" and workers["InstanceMarketOptions.MarketType"] == "spot"
    with pytest.raises(SdkError, match=r"^scheduler_vm_type: m5.large is x86_64; the nearest ARM family is "):
        resolve_scheduler_types(_spec(vm_type="m7g.large", scheduler_vm_type="m5.large"), ec2, ["m7g.large"])


def test_a_scheduler_type_without_capacity_falls_back_to_the_workers_type(sandbox: SandboxServer, launched: list,
                                                                         cluster_id: str) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    spec = _spec(vm_type="m5.large")
    own = resolve_scheduler_types(spec, ec2, ["m5.large"])[0]
    zones = ec2.describe_instance_type_offerings(LocationType="availability-zone", Filters=[
        {"Name": "instance-type", "Values": [own]}])["InstanceTypeOfferings"]
    proxy = ScriptedCapacity(sandbox.endpoint_url, ["InsufficientInstanceCapacity"] * len(zones)).start()
    try:  # the scheduler's own type is refused in every AZ that offers it
        client = boto3.client("ec2", region_name="us-east-1", endpoint_url=proxy.url,
                              config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
        sandbox.clear_requests()
        cluster = launch(spec, ["m5.large"], cluster_id, CLIENT_CIDRS, client)
        launched.append((ec2, cluster))
    finally:
        proxy.stop()
    assert own != "m5.large" and cluster.scheduler["InstanceType"] == "m5.large"
    assert all(run["InstanceType"] == "m5.large" for run in _runs(sandbox, "us-east-1"))


def test_a_worker_type_the_region_lacks_is_one_line_before_the_scheduler_is_chosen(sandbox: SandboxServer,
                                                                                   cluster_id: str) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    with pytest.raises(SdkError, match=r"^m5\.hugeish is not offered in us-east-1; check vm_type$"):
        launch(_spec(vm_type="m5.large"), ["m5.hugeish"], cluster_id, CLIENT_CIDRS, ec2)


def test_the_console_line_names_the_workers_and_the_schedulers_types(sandbox: SandboxServer,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    cluster = object.__new__(Cluster)  # the launch step alone: pricing, the console line, the call to launch()
    cluster.spec = _spec(vm_type="g5.xlarge", environment=False, allow_ingress_from=CLIENT_CIDRS)
    cluster.console = Console(file=out, width=300)
    cluster.cluster_id = "vmg-console"
    cluster._tls, cluster._keys = ClusterTls.create("vmg-console", timedelta(hours=1)), None
    monkeypatch.setenv("VMGUARD_ENV_S3", create_env_location(sandbox.endpoint_url))
    monkeypatch.setattr(Cluster, "_launch", lambda self, cidrs, environments: "launched")
    assert cluster._launch_somewhere() == "launched"
    line = out.getvalue().strip()
    own = cluster.scheduler_types[0]
    assert line.startswith(f"vmguard: 1 worker(s) of g5.xlarge + 1 scheduler of {own} in us-east-1: about $1.1")
