"""The SDK's launch layer against the emulated AWS over HTTP: the safe defaults read back from the API, the number of
launch calls for 1,000 workers, capacity refusals (injected by a proxy) that leak nothing, and every validation
error of the instance types."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from faults import FaultProxy, _Fault

from guard.sandbox import SandboxServer, create_env_location
from guard.sandbox.server import ServedRequest
from sdk.bootstrap import CONFIG_PREFIX, read_config
from sdk.errors import SdkError
from sdk.launch import Launched, PartialLaunch, launch, teardown
from sdk.spec import ClusterSpec
from sdk.types import describe_types, resolve_instance_types

pytestmark = pytest.mark.integration

REGION = "us-east-1"
CLIENT_CIDRS = ["203.0.113.7/32"]
LAUNCH_CALLS = ("RunInstances", "CreateFleet", "RequestSpotInstances", "RequestSpotFleet")
ALIVE = ["pending", "running", "stopping", "stopped"]


@pytest.fixture
def ec2(sandbox: SandboxServer) -> Any:
    return boto3.client("ec2", region_name=REGION)


@pytest.fixture
def cluster_id() -> str:
    return f"vmg-{secrets.token_hex(5)}"


def _spec(**kwargs: Any) -> ClusterSpec:
    return ClusterSpec.from_kwargs(**{"owner": "alice@example.com", "max_hourly_usd": None, **kwargs})


def _alive(ec2: Any, cluster_id: str) -> list[str]:
    """Instances of the cluster that are not terminated (or shutting down)."""
    reply = ec2.describe_instances(Filters=[{"Name": "tag:vmguard:cluster", "Values": [cluster_id]},
                                            {"Name": "instance-state-name", "Values": ALIVE}])
    return [i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"]]


def _groups(ec2: Any, cluster_id: str) -> list[str]:
    reply = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [f"vmguard-{cluster_id}"]}])
    return [group["GroupId"] for group in reply["SecurityGroups"]]


def _tag_specs(request: ServedRequest) -> dict[str, dict[str, str]]:
    """A RunInstances request's TagSpecification.N fields, as {resource type: {key: value}}."""
    specs: dict[str, dict[str, str]] = {}
    for n in range(1, 10):
        kind = request.params.get(f"TagSpecification.{n}.ResourceType")
        if kind is None:
            break
        specs[kind] = {request.params[f"TagSpecification.{n}.Tag.{m}.Key"]:
                       request.params[f"TagSpecification.{n}.Tag.{m}.Value"]
                       for m in range(1, 60) if f"TagSpecification.{n}.Tag.{m}.Key" in request.params}
    return specs


class ScriptedCapacity(FaultProxy):
    """A FaultProxy that answers RunInstances by a script, one step per request: ``"ok"`` forwards it, ``"lost"``
    forwards it and answers InternalError (the instances exist, the reply is lost), any other step answers that
    error code with HTTP 500, as EC2 does for capacity; ``then`` is the step once the script is used up."""

    def __init__(self, target: str, script: list[str], then: str = "ok") -> None:
        super().__init__(target)
        self.script, self.then = list(script), then

    def _take(self, action: str, region: str | None = None) -> _Fault | None:
        if action != "RunInstances":
            return super()._take(action, region)
        with self._lock:
            self._received[action] += 1
            step = self.script.pop(0) if self.script else self.then
            if step != "ok":
                self._faulted[action] += 1
        if step == "ok":
            return None
        if step == "lost":
            return _Fault(status=500, code="InternalError", message="An internal error has occurred", forward=True)
        return _Fault(status=500, code=step, message=f"We currently do not have sufficient capacity ({step})")


@pytest.fixture
def scripted(sandbox: SandboxServer) -> Iterator[Any]:
    """``make(script, then)`` → (proxy, an EC2 client through it that does not retry, so each call is one step)."""
    proxies: list[ScriptedCapacity] = []

    def make(script: list[str], then: str = "ok") -> tuple[ScriptedCapacity, Any]:
        proxy = ScriptedCapacity(sandbox.endpoint_url, script, then).start()
        proxies.append(proxy)
        client = boto3.client("ec2", region_name=REGION, endpoint_url=proxy.url,
                              config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
        return proxy, client

    yield make
    for proxy in proxies:
        proxy.stop()


# -- the request is the proof ------------------------------------------------------------------------------------


def test_launch_request_carries_every_safe_default(sandbox: SandboxServer, ec2: Any, cluster_id: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMGUARD_TOKEN", "env-token-0123456789abcdef")
    spec = _spec(vm_type="m7g.large", n_workers=2, disk_size=60, keepalive="15 minutes", max_lifetime="6h",
                 tags={"project": "churn"}, token="arg-token-0123456789abcdef")
    sandbox.clear_requests()
    seen: list[tuple[int, int, str]] = []

    launched = launch(spec, ["m7g.large"], cluster_id, CLIENT_CIDRS, ec2, progress=lambda *a: seen.append(a))

    assert len(launched.workers) == 2 and seen[-1][:2] == (3, 3)
    ids = launched.instance_ids
    instances = {i["InstanceId"]: i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]
                 for i in r["Instances"]}
    assert set(instances) == set(ids)
    for instance_id, instance in instances.items():
        role = "scheduler" if instance_id == launched.scheduler["InstanceId"] else "worker"
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
        # the scheduler runs on the cheapest 2-vCPU arm64 type the region offers, not on the workers' type
        assert instance["Architecture"] == "arm64"
        assert instance["InstanceType"] == ("m6g.large" if role == "scheduler" else "m7g.large")
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == [launched.security_group_id]
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["guard:managed"] == "true" and tags["owner"] == "alice@example.com"
        assert tags["vmguard:cluster"] == cluster_id and tags["vmguard:role"] == role
        assert tags["vmguard:keepalive"] == "900" and tags["project"] == "churn"
        assert tags["vmguard:expires"].endswith("Z")
        [mapping] = instance["BlockDeviceMappings"]
        assert mapping["Ebs"]["DeleteOnTermination"] is True
        [volume] = ec2.describe_volumes(VolumeIds=[mapping["Ebs"]["VolumeId"]])["Volumes"]
        assert (volume["Encrypted"], volume["VolumeType"], volume["Size"]) == (True, "gp3", 60)
        assert {t["Key"]: t["Value"] for t in volume["Tags"]}["vmguard:cluster"] == cluster_id
        behaviour = ec2.describe_instance_attribute(InstanceId=instance_id,
                                                    Attribute="instanceInitiatedShutdownBehavior")
        assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        script = base64.b64decode(ec2.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]).decode()
        config = read_config(script)
        assert config is not None and config["role"] == role and config["cluster_id"] == cluster_id
        assert config["keepalive_seconds"] == 900 and config["max_lifetime_seconds"] == 6 * 3600
        assert "shutdown -h +360" in script and script.rstrip().endswith("shutdown -h now")
        assert ("--scheduler" in script) == (role == "worker")
        for secret in ("env-token-0123456789abcdef", "arg-token-0123456789abcdef", "vmguard-sandbox-secret"):
            assert secret not in script

    [group] = ec2.describe_security_groups(GroupIds=[launched.security_group_id])["SecurityGroups"]
    assert {t["Key"]: t["Value"] for t in group["Tags"]}["vmguard:cluster"] == cluster_id
    rules = group["IpPermissions"]
    assert len(rules) == 2
    [client] = [r for r in rules if r["IpProtocol"] == "tcp"]
    assert (client["FromPort"], client["ToPort"]) == (8786, 8787)
    assert [r["CidrIp"] for r in client["IpRanges"]] == CLIENT_CIDRS and not client.get("UserIdGroupPairs")
    [internal] = [r for r in rules if r["IpProtocol"] == "-1"]
    assert [p["GroupId"] for p in internal["UserIdGroupPairs"]] == [launched.security_group_id]
    assert not internal["IpRanges"]

    # the emulator drops network-interface tags and ignores nothing else we check: its request log is the proof
    runs = [r for r in sandbox.requests() if r.operation == "RunInstances"]
    assert len(runs) == 2 and len({r.params["ClientToken"] for r in runs}) == 2
    for run in runs:
        specs = _tag_specs(run)
        assert set(specs) == {"instance", "volume", "network-interface"}
        assert specs["network-interface"]["vmguard:cluster"] == cluster_id
        assert specs["network-interface"]["guard:managed"] == "true"
        assert run.params["BlockDeviceMapping.1.Ebs.Encrypted"] == "true"
        assert run.params["BlockDeviceMapping.1.Ebs.DeleteOnTermination"] == "true"
    workers = runs[1]
    assert (workers.params["MinCount"], workers.params["MaxCount"]) == ("2", "2")

    assert teardown(ec2, launched) == ids
    assert _alive(ec2, cluster_id) == [] and _groups(ec2, cluster_id) == []


def test_spot_workers_ask_for_spot_and_the_scheduler_stays_on_demand(sandbox: SandboxServer, ec2: Any,
                                                                    cluster_id: str) -> None:
    spec = _spec(vm_type="m5.large", n_workers=2, spot_policy="spot")
    sandbox.clear_requests()
    launched = launch(spec, ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
    try:
        scheduler, workers = [r for r in sandbox.requests() if r.operation == "RunInstances"]
        assert "InstanceMarketOptions.MarketType" not in scheduler.params
        assert workers.params["InstanceMarketOptions.MarketType"] == "spot"
        assert workers.params["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"] == "terminate"
        assert "spot-instances-request" in _tag_specs(workers)
        assert {w["Lifecycle"] for w in launched.workers} == {"spot"}
    finally:
        teardown(ec2, launched)


# -- capacity: fall back, report, never leak -----------------------------------------------------------------------


def test_refused_capacity_falls_back_to_asking_for_what_is_missing(sandbox: SandboxServer, ec2: Any, scripted,
                                                                   cluster_id: str) -> None:
    proxy, client = scripted(["ok", "InsufficientInstanceCapacity"])
    spec = _spec(vm_type=["m5.large", "m5a.large"], n_workers=3)
    sandbox.clear_requests()

    launched = launch(spec, ["m5.large", "m5a.large"], cluster_id, CLIENT_CIDRS, client)

    assert len(launched.workers) == 3 and launched.problems == []
    scheduler, *workers = [r.params for r in sandbox.requests() if r.operation == "RunInstances"]
    # the refused all-or-nothing call never reached the emulator; the next ones ask MinCount=1 for what is missing
    assert all(w["MinCount"] == "1" for w in workers)
    assert workers[0]["MaxCount"] == "3"
    assert sum(int(w["MaxCount"]) for w in workers) >= 3
    teardown(client, launched)
    assert _alive(ec2, cluster_id) == [] and _groups(ec2, cluster_id) == []


def test_partial_capacity_is_reported_and_everything_launched_is_kept_track_of(sandbox: SandboxServer, ec2: Any,
                                                                               scripted, cluster_id: str) -> None:
    # scheduler ok; the workers' all-or-nothing call refused; one MinCount=1 call served; then no capacity anywhere
    proxy, client = scripted(["ok", "InsufficientInstanceCapacity", "ok"], then="InsufficientInstanceCapacity")
    spec = _spec(vm_type="m5.large", n_workers=5, min_workers=1)
    reports: list[tuple[int, int, str]] = []
    with pytest.warns(PartialLaunch, match=r"launched \d of 5 workers"):
        launched = launch(spec, ["m5.large"], cluster_id, CLIENT_CIDRS, client, progress=lambda *a: reports.append(a))
    assert 1 <= len(launched.workers) < 5
    assert any("InsufficientInstanceCapacity" in problem for problem in launched.problems)
    assert reports[-1][1] == 6 and "of 5 workers" in reports[-1][2]
    assert sorted(_alive(ec2, cluster_id)) == sorted(launched.instance_ids)  # nothing launched that it does not know
    assert proxy.received("RunInstances") <= 1 + 16
    teardown(client, launched)
    assert _alive(ec2, cluster_id) == [] and _groups(ec2, cluster_id) == []


def test_no_worker_capacity_tears_down_the_scheduler_and_group(ec2: Any, scripted, cluster_id: str) -> None:
    proxy, client = scripted(["ok"], then="InsufficientInstanceCapacity")
    with pytest.raises(SdkError, match=r"could not launch any of the 4 worker.*nothing is left running") as error:
        launch(_spec(vm_type="m5.large", n_workers=4), ["m5.large"], cluster_id, CLIENT_CIDRS, client)
    assert "\n" not in str(error.value)
    assert _alive(ec2, cluster_id) == [] and _groups(ec2, cluster_id) == []
    assert proxy.faulted("RunInstances") >= 2


def test_scheduler_without_capacity_deletes_the_group(ec2: Any, scripted, cluster_id: str) -> None:
    proxy, client = scripted([], then="InsufficientInstanceCapacity")
    with pytest.raises(SdkError, match=r"could not launch the scheduler.*deleted the security group"):
        launch(_spec(vm_type=["m5.large", "m5a.large"], n_workers=2), ["m5.large", "m5a.large"], cluster_id,
               CLIENT_CIDRS, client)
    assert _groups(ec2, cluster_id) == [] and _alive(ec2, cluster_id) == []
    offers = ec2.describe_instance_type_offerings(LocationType="availability-zone", Filters=[
        {"Name": "instance-type", "Values": ["m5.large", "m5a.large"]}])["InstanceTypeOfferings"]
    assert proxy.received("RunInstances") == len(offers)  # every type in every AZ that offers it, once


def test_a_lost_launch_reply_is_found_by_tag_and_terminated(ec2: Any, scripted, cluster_id: str) -> None:
    # the emulator launches the workers but the answer never arrives: the instances exist, the SDK has no ids
    proxy, client = scripted(["ok", "lost"])
    with pytest.raises(SdkError, match=r"InternalError.*terminated 4 instance\(s\)"):
        launch(_spec(vm_type="m5.large", n_workers=3), ["m5.large"], cluster_id, CLIENT_CIDRS, client)
    assert _alive(ec2, cluster_id) == [] and _groups(ec2, cluster_id) == []


def test_a_client_for_another_region_is_refused(ec2: Any, cluster_id: str) -> None:
    with pytest.raises(SdkError, match="the EC2 client is for us-east-1 but the cluster is for eu-west-1"):
        launch(_spec(vm_type="m5.large", region="eu-west-1"), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
    assert _groups(ec2, cluster_id) == []


# -- instance types through the real API ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"vm_type": "g5.xlarge", "arm": True},
     "g5.xlarge is x86_64; ARM GPU instances are the g5g family, e.g. g5g.xlarge"),
    ({"vm_type": "m7g.large", "arm": False}, "m7g.large is arm64; the nearest x86 family is m7i, e.g. m7i.large"),
    ({"vm_type": "g5.xlarg"}, "unknown instance type 'g5.xlarg' in us-east-1; did you mean g5.xlarge"),
    ({"vm_type": ["m5.large", "m5.hugeish"]}, "unknown instance type 'm5.hugeish' in us-east-1"),
    ({"vm_type": "mac2.metal"}, "mac2.metal is arm64_mac: it runs only on dedicated Mac hosts"),
    ({"cpu": 3}, "no x86_64 instance type in us-east-1 has 3 vCPUs; closest: "),
    ({"cpu": 4, "memory": "1000GiB", "arm": True}, "no arm64 instance type in us-east-1 has 4 vCPUs and at least "
                                                   "1000 GiB; closest: "),
    ({"gpu": 3}, "no x86_64 instance type in us-east-1 has 3 NVIDIA GPUs; closest: g4dn.12xlarge"),
])
def test_instance_type_errors_are_one_line(ec2: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SdkError) as error:
        resolve_instance_types(_spec(**kwargs), ec2)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_unknown_region_is_one_line_before_any_call(sandbox: SandboxServer) -> None:
    sandbox.clear_requests()
    with pytest.raises(SdkError, match=r"^unknown region 'us-est-1'; did you mean .*us-east-1"):
        ClusterSpec.from_kwargs(region="us-est-1")
    assert not [r for r in sandbox.requests() if r.region == "us-est-1"]


def test_the_cheapest_matching_type_is_chosen_among_what_the_region_offers(ec2: Any) -> None:
    from guard.pricing import default_catalog

    catalog = default_catalog()
    chosen = resolve_instance_types(_spec(cpu=4, memory="16GiB", arm=True), ec2)
    infos = describe_types(ec2, chosen)
    for name in chosen:
        assert (infos[name].arch, infos[name].vcpus, infos[name].gpus) == ("arm64", 4, 0)
        assert infos[name].memory_mib >= 16 * 1024 and not infos[name].burstable
    prices = [catalog.hourly_usd(name, REGION) for name in chosen]
    assert prices == sorted(prices) and prices[-1] <= prices[0] * 1.25
    assert prices[0] <= catalog.hourly_usd("m7g.xlarge", REGION)
    [gpu] = resolve_instance_types(_spec(gpu=1, arm=True), ec2)[:1]
    assert describe_types(ec2, [gpu])[gpu].gpus == 1 and gpu.startswith("g5g.")
    assert resolve_instance_types(_spec(vm_type=["m7g.large", "m6g.large"], arm=True), ec2) == ["m7g.large",
                                                                                                  "m6g.large"]


def test_user_data_config_line_is_what_a_runner_reads(ec2: Any, cluster_id: str) -> None:
    launched = launch(_spec(vm_type="m5.large", n_workers=1), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)
    try:
        script = base64.b64decode(ec2.describe_instance_attribute(
            InstanceId=launched.workers[0]["InstanceId"], Attribute="userData")["UserData"]["Value"]).decode()
        assert sum(line.startswith(CONFIG_PREFIX) for line in script.splitlines()) == 1
        assert read_config(script)["role"] == "worker"
        assert f"--scheduler {launched.scheduler['PrivateIpAddress']}:8786" in script
    finally:
        teardown(ec2, launched)


# -- what a launch leaves behind when it is cut short, or when a cluster ended on its own ---------------------------

INTERRUPTED_TWICE = """
import sys
import boto3
from sdk.launch import launch
from sdk.spec import ClusterSpec

cluster_id, region = sys.argv[1], sys.argv[2]
ec2 = boto3.client("ec2", region_name=region)
interrupts = {"cleanup": 0}

def second_ctrl_c(**_):  # the user presses Ctrl-C again while the cleanup terminates the instances
    if interrupts["cleanup"] == 0:
        interrupts["cleanup"] += 1
        raise KeyboardInterrupt

def first_ctrl_c(done, total, text):
    if text.endswith("2 of 2 worker(s) launched"):
        ec2.meta.events.register("before-call.ec2.TerminateInstances", second_ctrl_c)
        raise KeyboardInterrupt

spec = ClusterSpec.from_kwargs(owner="alice@example.com", vm_type="m5.large", n_workers=2, max_hourly_usd=None)
launch(spec, ["m5.large"], cluster_id, ["203.0.113.7/32"], ec2, progress=first_ctrl_c)
"""


def test_a_second_ctrl_c_during_the_cleanup_still_leaves_nothing_at_exit(sandbox: SandboxServer, ec2: Any,
                                                                         cluster_id: str, tmp_path) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED_TWICE)
    done = subprocess.run([sys.executable, str(script), cluster_id, REGION], capture_output=True, text=True,
                          timeout=120, env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr
    assert f"cleaning up the interrupted launch of {cluster_id}" in done.stderr
    assert _alive(ec2, cluster_id) == [] and _groups(ec2, cluster_id) == []


def _orphan_group(ec2: Any, cluster_id: str, owner: str, launched: str) -> str:
    """A security group as a launch tags it, for a cluster with no instance left."""
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    tags = [{"Key": "guard:managed", "Value": "true"}, {"Key": "owner", "Value": owner},
            {"Key": "vmguard:cluster", "Value": cluster_id}, {"Key": "vmguard:launched", "Value": launched}]
    return ec2.create_security_group(GroupName=f"vmguard-{cluster_id}", Description="vmguard cluster", VpcId=vpc,
                                     TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}])["GroupId"]


def test_the_next_launch_deletes_groups_of_clusters_that_ended_on_their_own(ec2: Any, cluster_id: str) -> None:
    owner = "alice@example.com"
    old, young = "2026-01-01T00:00:00Z", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ended = _orphan_group(ec2, f"{cluster_id}e", owner, old)
    starting = _orphan_group(ec2, f"{cluster_id}s", owner, young)  # maybe a launch under way elsewhere
    someone_elses = _orphan_group(ec2, f"{cluster_id}o", "bob@example.com", old)
    running = launch(_spec(vm_type="m5.large", n_workers=1), ["m5.large"], f"{cluster_id}r", CLIENT_CIDRS, ec2)
    try:  # a running cluster's group, however old, is kept
        ec2.create_tags(Resources=[running.security_group_id], Tags=[{"Key": "vmguard:launched", "Value": old}])

        launched = launch(_spec(vm_type="m5.large", n_workers=1), ["m5.large"], cluster_id, CLIENT_CIDRS, ec2)

        teardown(ec2, launched)
        left = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
        assert ended not in left
        assert {starting, someone_elses, running.security_group_id} <= left
    finally:
        teardown(ec2, running)
        for group in (starting, someone_elses):
            ec2.delete_security_group(GroupId=group)


# -- scale: last, it leaves 1,000 instances behind until the reset ---------------------------------------------------


def test_a_thousand_workers_launch_in_two_calls_and_tear_down(sandbox: SandboxServer, cluster_id: str) -> None:
    # the emulator takes its time over a thousand instances on a busy machine (AWS answers in seconds)
    ec2 = boto3.client("ec2", region_name=REGION,
                       config=Config(read_timeout=900, retries={"mode": "standard", "max_attempts": 1}))
    spec = _spec(vm_type="m5.large", n_workers=1000)
    sandbox.clear_requests()
    reports: list[tuple[int, int, str]] = []
    try:
        launched: Launched = launch(spec, ["m5.large"], cluster_id, CLIENT_CIDRS, ec2,
                                    progress=lambda *a: reports.append(a))
        calls = Counter(r.operation for r in sandbox.requests())
        assert sum(calls[name] for name in LAUNCH_CALLS) == 2, calls
        assert len(launched.workers) == 1000 and launched.problems == []
        assert reports[0][:2] == (0, 1001) and reports[-1][:2] == (1001, 1001)

        sandbox.clear_requests()
        teardown(ec2, launched)
        terminated = [r for r in sandbox.requests() if r.operation == "TerminateInstances"]
        assert sum(sum(1 for key in r.params if key.startswith("InstanceId.")) for r in terminated) == 1001
        assert len(terminated) == 2  # batches of 1,000
        assert _groups(ec2, cluster_id) == []
    finally:
        sandbox.reset()  # 1,000 terminated instances slow every later describe in this emulator


def test_debug_logging_at_scale_warns_with_its_price_before_launch(sandbox: SandboxServer, ec2: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import sdk
    from sdk.cost import VerboseLogging

    monkeypatch.delenv("VMGUARD_DAEMON_URL", raising=False)
    monkeypatch.setenv("VMGUARD_ENV_S3", create_env_location(sandbox.endpoint_url))
    sandbox.clear_requests()
    with pytest.warns(VerboseLogging, match=r"11 VMs log about 0\.9 GB/hour, \$0\.47/hour"), \
            pytest.raises(SdkError, match="did not answer within 10s"):  # no VM runs here: nothing boots
        sdk.Cluster(vm_type="m5.large", region=REGION, n_workers=10, log_level="DEBUG", boot_timeout="10s",
                    environment=False,
                    owner="alice@example.com", max_hourly_usd=None, allow_ingress_from=CLIENT_CIDRS)
    launched = [r for r in sandbox.requests() if r.operation == "RunInstances"]
    assert launched  # the warning came before launching, and the launch went ahead as asked
    cluster_ids = {v for r in launched for k, v in r.params.items() if k.endswith("Value") and v.startswith("vmg-")}
    assert all(_alive(ec2, cluster_id) == [] for cluster_id in cluster_ids)


def test_an_environment_that_cannot_be_shipped_stops_before_any_launch_call(sandbox: SandboxServer,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import sdk

    monkeypatch.delenv("VMGUARD_ENV_S3", raising=False)
    sandbox.clear_requests()
    with pytest.raises(SdkError, match=r"too large for the user-data: set VMGUARD_ENV_S3=s3://"):
        sdk.Cluster(vm_type="m5.large", region=REGION, owner="alice@example.com", max_hourly_usd=None,
                    allow_ingress_from=CLIENT_CIDRS)
    operations = {r.operation for r in sandbox.requests()}
    assert not operations & {*LAUNCH_CALLS, "CreateSecurityGroup"}, operations
