"""The sandbox account, checked through plain boto3 over HTTP: it holds what its GroundTruth says."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import boto3
import pytest

from guard.pricing import default_catalog
from guard.rule import discover_rules
from guard.sandbox import (
    GroundTruth,
    InstanceSpec,
    SandboxError,
    SandboxServer,
    make_busy,
    seed_fleet,
    seed_team_account,
)
from guard.sandbox.metrics import SPAN

pytestmark = pytest.mark.integration

REGIONS = ("us-east-1", "us-west-2")


@pytest.fixture(scope="module")
def seeded() -> Iterator[tuple[SandboxServer, GroundTruth]]:
    with SandboxServer() as server:
        yield server, seed_team_account(server.endpoint_url)


@pytest.fixture(scope="module")
def server(seeded: tuple[SandboxServer, GroundTruth]) -> SandboxServer:
    return seeded[0]


@pytest.fixture(scope="module")
def truth(seeded: tuple[SandboxServer, GroundTruth]) -> GroundTruth:
    return seeded[1]


def ec2(server: SandboxServer, region: str):
    return boto3.client("ec2", region_name=region, endpoint_url=server.endpoint_url,
                        aws_access_key_id="x", aws_secret_access_key="x")


def series(server: SandboxServer, region: str, instance_ids: list[str], truth: GroundTruth,
           metric: str, stat: str) -> dict[str, list[float]]:
    """One metric's 5-minute values over the last 3 hours for each instance, oldest first."""
    cloudwatch = boto3.client("cloudwatch", region_name=region, endpoint_url=server.endpoint_url,
                              aws_access_key_id="x", aws_secret_access_key="x")
    queries = [{"Id": f"q{n}", "ReturnData": True, "MetricStat": {
        "Metric": {"Namespace": "AWS/EC2", "MetricName": metric,
                   "Dimensions": [{"Name": "InstanceId", "Value": instance_id}]},
        "Period": 300, "Stat": stat}} for n, instance_id in enumerate(instance_ids)]
    reply = cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=truth.now - SPAN,
                                       EndTime=truth.now + timedelta(minutes=5), ScanBy="TimestampAscending")
    return {instance_ids[int(r["Id"][1:])]: r["Values"] for r in reply["MetricDataResults"]}


def test_env_points_at_the_sandbox_and_nothing_else(server: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = dict(os.environ)
    monkeypatch.setenv("AWS_PROFILE", "production")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "real-token")
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", "https://ec2.us-east-1.amazonaws.com")
    try:
        server.apply_env()
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_EC2"):
            assert name not in os.environ
        assert server.endpoint_url.startswith("http://127.0.0.1:")
        assert os.environ["AWS_ENDPOINT_URL"] == server.endpoint_url
        assert os.environ["AWS_CONFIG_FILE"] == os.environ["AWS_SHARED_CREDENTIALS_FILE"] == os.devnull
        assert "127.0.0.1" in os.environ["NO_PROXY"].split(",")
        assert boto3.client("sts").get_caller_identity()["Account"] == "123456789012"
        assert boto3.client("ec2").describe_instances()["Reservations"]
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_instances_per_region_match_the_specs(server: SandboxServer, truth: GroundTruth) -> None:
    for region in REGIONS:
        specs = {vm.instance_id: vm for vm in truth.instances if vm.region == region}
        reservations = ec2(server, region).describe_instances()["Reservations"]
        seen = {i["InstanceId"]: i for r in reservations for i in r["Instances"]}
        assert seen.keys() == specs.keys()
        assert len(reservations) < len(seen)
        for instance_id, raw in seen.items():
            spec = specs[instance_id]
            tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
            assert raw["InstanceType"] == spec.instance_type
            assert raw["State"]["Name"] == ("stopped" if spec.profile == "stopped" else "running")
            assert raw["Architecture"] == spec.arch
            assert raw["LaunchTime"] == spec.launched_at
            assert tags.get("owner", "unknown") == spec.owner
            assert (tags.get("guard:protect") == "true") == spec.protected == (spec.profile == "protected")


def test_volumes_are_backdated_tagged_and_attached_as_specified(server: SandboxServer, truth: GroundTruth) -> None:
    for region in REGIONS:
        specs = {v.volume_id: v for v in truth.volumes if v.region == region}
        volumes = {v["VolumeId"]: v for v in ec2(server, region).describe_volumes()["Volumes"]}
        roots = volumes.keys() - specs.keys()
        assert len(roots) == sum(1 for vm in truth.instances if vm.region == region)
        for volume_id, spec in specs.items():
            raw = volumes[volume_id]
            assert (raw["VolumeType"], raw["Size"]) == (spec.volume_type, spec.size_gib)
            assert raw["CreateTime"] == spec.created_at
            assert raw["State"] == ("in-use" if spec.kind == "attached" else "available")
            assert [a["InstanceId"] for a in raw.get("Attachments", [])] == ([spec.attached_to] if spec.attached_to
                                                                             else [])
        assert all(volumes[v]["State"] == "in-use" for v in roots)
    ages = [truth.now - v.created_at for v in truth.volumes if v.kind == "detached"]
    assert min(ages) >= timedelta(days=2) and max(ages) <= timedelta(days=90)
    assert all(truth.now - v.created_at == timedelta(hours=3) for v in truth.volumes if v.kind == "young")


def _first_of_each_profile(truth: GroundTruth, region: str) -> dict[str, InstanceSpec]:
    first: dict[str, InstanceSpec] = {}
    for vm in truth.instances:
        if vm.region == region:
            first.setdefault(vm.profile, vm)
    return first


def test_series_sit_on_the_intended_side_of_every_threshold(server: SandboxServer, truth: GroundTruth) -> None:
    region = "us-east-1"
    sample = _first_of_each_profile(truth, region)
    ids = [vm.instance_id for vm in sample.values()]
    cpu = series(server, region, ids, truth, "CPUUtilization", "Average")
    network = [series(server, region, ids, truth, name, "Sum") for name in ("NetworkIn", "NetworkOut")]
    full = int(SPAN / timedelta(minutes=5))
    for profile, vm in sample.items():
        points = cpu[vm.instance_id]
        mb_per_hour = [(a + b) * 12 / 1e6 for a, b in zip(network[0][vm.instance_id], network[1][vm.instance_id],
                                                           strict=True)]
        expected_points = {"stopped": 0, "no-data": 0, "young": 3}.get(profile, full)
        assert len(points) == len(mb_per_hour) == expected_points, profile
        if profile == "busy":
            assert min(points) >= 30
        elif profile == "near-miss-cpu":
            assert min(points) > 5 and max(mb_per_hour) < 5
        elif profile == "near-miss-network":
            assert max(points) < 5 and min(mb_per_hour) > 5
        elif points:
            assert max(points) < 5 and max(mb_per_hour) < 5, profile


def test_ground_truth_lists_the_waste_and_why_the_rest_is_not(truth: GroundTruth) -> None:
    profiles = Counter(truth.profiles.values())
    assert sum(profiles.values()) >= 45 and profiles["idle"] >= 12
    assert min(profiles[p] for p in ("near-miss-cpu", "near-miss-network", "protected", "stopped", "young",
                                     "no-data")) >= 2
    idle = truth.expected("idle-vms")
    detached = truth.expected("detached-volumes")
    assert len(idle) == profiles["idle"] and len(detached) >= 12
    assert truth.expected().items() >= (idle | detached).items()
    every_rule = {rule for rule, _, _ in truth.expected()}
    assert every_rule == set(discover_rules().rules)  # every rule has seeded true positives
    assert every_rule == {miss.rule for miss in truth.near_misses}  # … and near misses
    catalog = default_catalog()
    types = {vm.instance_id: vm.instance_type for vm in truth.instances}
    unpriced = [key for key, f in idle.items() if f.waste_hourly_usd is None]
    assert len(unpriced) == 1 and catalog.info(types[unpriced[0][2]]) is None
    assert sum(1 for key in idle if catalog.is_gpu(types[key[2]])) >= 2
    assert {vm.arch for vm in truth.instances} == {"x86_64", "arm64"}
    assert {v.volume_type for v in truth.volumes} >= {"gp2", "gp3", "io1", "st1", "sc1", "standard"}
    assert {f.owner for f in truth.findings} >= {"unknown", *{vm.owner for vm in truth.instances}}
    assert truth.total_hourly_usd() == pytest.approx(sum(f.waste_hourly_usd or 0 for f in truth.findings))
    reasons = Counter(miss.reason for miss in truth.near_misses if miss.rule in ("idle-vms", "detached-volumes"))
    assert reasons["young"] == profiles["young"] + sum(1 for v in truth.volumes if v.kind == "young")
    assert {key[2] for key in truth.undetermined() if key[0] == "idle-vms"} == {
        vm.instance_id for vm in truth.instances if vm.profile in ("young", "no-data")}
    assert not truth.expected().keys() & {miss.key for miss in truth.near_misses}


def test_make_busy_turns_an_idle_instance_busy(server: SandboxServer, truth: GroundTruth) -> None:
    region = "us-west-2"
    vm = [vm for vm in truth.instances if vm.region == region and vm.profile == "idle"][-1]
    make_busy(server.endpoint_url, region, vm.instance_id, truth.now)
    cpu = series(server, region, [vm.instance_id], truth, "CPUUtilization", "Average")[vm.instance_id]
    assert len(cpu) == int(SPAN / timedelta(minutes=5)) and min(cpu) > 45


def test_seeding_is_deterministic_on_a_fresh_server(truth: GroundTruth) -> None:
    with SandboxServer() as fresh:
        assert seed_team_account(fresh.endpoint_url, truth.now) == truth


def test_seeding_needs_a_server_of_this_process() -> None:
    with pytest.raises(SandboxError):
        seed_team_account("http://127.0.0.1:9")


def test_fleet_is_launched_in_reservations(server: SandboxServer) -> None:
    region = "eu-west-1"
    fleet = seed_fleet(server.endpoint_url, region, instances=25, volumes=5, per_reservation=10, with_metrics=True)
    assert len(fleet.instance_ids) == 25 and len(set(fleet.instance_ids)) == 25
    assert len(fleet.idle_ids) == 13 and set(fleet.idle_ids) < set(fleet.instance_ids)
    reservations = ec2(server, region).describe_instances()["Reservations"]
    assert sorted(len(r["Instances"]) for r in reservations) == [5, 10, 10]
    volumes = ec2(server, region).describe_volumes(VolumeIds=list(fleet.volume_ids))["Volumes"]
    assert {v["State"] for v in volumes} == {"available"} and len(volumes) == 5
