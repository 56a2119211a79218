"""The SDK's pure parts: the spec's defaults and one-line errors, the user-data (no secrets), the cost estimate and
cap, and reading an instance type from the API's shape."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import timedelta
from typing import Any

import pytest

from guard.pricing import PUBLIC_IPV4_USD_PER_HOUR, default_catalog
from sdk.bootstrap import CONFIG_PREFIX, read_config, user_data, vm_config
from sdk.cost import check_cap, estimate_cost
from sdk.errors import SdkError
from sdk.spec import ClusterSpec
from sdk.types import InstanceType

ENV = ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "VMGUARD_MAX_HOURLY_USD", "VMGUARD_OWNER",
       "VMGUARD_DAEMON_URL", "VMGUARD_TOKEN")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("VMGUARD_OWNER", "alice@example.com")


def spec(**kwargs: Any) -> ClusterSpec:
    return ClusterSpec.from_kwargs(**kwargs)


# -- defaults ------------------------------------------------------------------------------------------------------


def test_defaults_are_safe_and_cheap() -> None:
    s = spec()
    assert (s.vm_type, s.cpu, s.memory, s.gpu, s.arm) == (None, None, None, None, None)
    assert s.region == "us-east-1" and s.n_workers == 1
    assert s.keepalive == timedelta(minutes=20) and s.idle_timeout == timedelta(hours=1)
    assert s.max_lifetime == timedelta(hours=24) and s.spot_policy == "on-demand" and s.disk_size == 50
    assert s.max_hourly_usd == 10.0 and s.owner == "alice@example.com" and s.allow_ingress_from is None
    assert s.daemon_url is None and s.token is None and s.log_level == "INFO" and s.tags == {}
    with pytest.raises(ValueError):
        s.n_workers = 5  # frozen


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("VMGUARD_MAX_HOURLY_USD", "25")
    monkeypatch.setenv("VMGUARD_OWNER", "bob")
    monkeypatch.setenv("VMGUARD_DAEMON_URL", "http://127.0.0.1:9464/")
    monkeypatch.setenv("VMGUARD_TOKEN", "bob-token-0123456789")
    s = spec()
    assert (s.region, s.max_hourly_usd, s.owner, s.daemon_url) == ("eu-west-1", 25.0, "bob", "http://127.0.0.1:9464")
    assert s.token == "bob-token-0123456789"
    assert "bob-token" not in repr(s) and "bob-token" not in s.model_dump_json()
    assert spec(max_hourly_usd=None).max_hourly_usd is None  # explicit None: no cap, whatever the environment says


@pytest.mark.parametrize(("name", "value", "message"), [
    ("VMGUARD_MAX_HOURLY_USD", "lots", "VMGUARD_MAX_HOURLY_USD='lots' is not a number; set it to dollars per hour"),
    ("VMGUARD_MAX_HOURLY_USD", "-3", "VMGUARD_MAX_HOURLY_USD='-3' must be a positive number"),
    ("AWS_DEFAULT_REGION", "us-est-1", "unknown region 'us-est-1'; did you mean"),
])
def test_a_bad_environment_is_one_line(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SdkError) as error:
        spec()
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_sizes_cpu_ranges_and_cidrs_are_normalised() -> None:
    assert spec(memory="16GiB").memory_mib == 16384
    assert spec(memory="16 GB").memory_mib == 15259  # decimal GB, as written
    assert spec(memory=16).memory_mib == 16384 and spec(memory="512MiB").memory_mib == 512
    assert spec(cpu=[4, 8]).cpu_range == (4, 8) and spec(cpu=4).cpu_range == (4, 4)
    assert spec(vm_type="G5.XLarge").vm_type == ["g5.xlarge"]
    assert spec(vm_type=["m7g.large", "m6g.large", "m7g.large"]).vm_type == ["m7g.large", "m6g.large"]
    assert spec(allow_ingress_from="198.51.100.4").allow_ingress_from == ["198.51.100.4/32"]
    assert spec(allow_ingress_from=["10.1.2.3/16", "2001:db8::1"]).allow_ingress_from == ["10.1.0.0/16",
                                                                                         "2001:db8::1/128"]
    assert spec(spot_policy="spot-with-fallback").spot_policy == "spot_with_fallback"
    assert spec(disk_size="100GiB").disk_size == 100 and spec(log_level="debug").log_level == "DEBUG"
    assert spec(gpu=0).gpu is False and spec(gpu=2).gpu == 2
    s = spec(keepalive="90s", idle_timeout=None, max_lifetime="2h")
    assert (s.keepalive_seconds, s.idle_timeout_seconds, s.max_lifetime_seconds) == (90, None, 7200)


# -- one-line errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"vm_typ": "m5.large"}, "unknown argument 'vm_typ'; did you mean vm_type?"),
    ({"instance_type": "m5.large"}, "unknown argument 'instance_type'; did you mean vm_type?"),
    ({"worker_count": 3}, "unknown argument 'worker_count'; the arguments are "),
    ({"vm_type": "g5.xlarge", "cpu": 4}, "pass either vm_type or cpu, not both"),
    ({"vm_type": "g5.xlarge", "memory": "16GiB", "gpu": 1}, "pass either vm_type or memory/gpu, not both"),
    ({"vm_type": []}, "vm_type=[] names no instance type"),
    ({"vm_type": "g5 xlarge"}, "vm_type='g5 xlarge' is not an instance type name"),
    ({"vm_type": 5}, "vm_type must be an instance type like 'm7g.large'"),
    ({"cpu": 0}, "cpu=0 must be a number of vCPUs"),
    ({"cpu": True}, "cpu=True must be a number of vCPUs"),
    ({"cpu": [8, 4]}, "cpu=[8, 4] must be a range [min, max]"),
    ({"memory": "lots"}, "memory='lots' is not a size; write it like '16GiB'"),
    ({"memory": -1}, "memory=-1 must be a positive size"),
    ({"gpu": -1}, "gpu=-1 must be a number of GPUs"),
    ({"region": "us-est-1"}, "unknown region 'us-est-1'; did you mean"),
    ({"region": "mars-1"}, "unknown region 'mars-1'; pass one like 'us-east-1'"),
    ({"n_workers": -1}, "n_workers=-1 must be a whole number from 0 to 10,000"),
    ({"n_workers": 10_001}, "n_workers=10001 must be a whole number from 0 to 10,000"),
    ({"n_workers": "four"}, "n_workers='four' must be a whole number"),
    ({"keepalive": "5s"}, "keepalive='5s' is shorter than 10s"),
    ({"keepalive": "soon"}, "keepalive='soon': expected a duration like"),
    ({"keepalive": None}, "keepalive must be a duration like '20 minutes', not None"),
    ({"idle_timeout": "10s"}, "idle_timeout='10s' is shorter than 1m"),
    ({"max_lifetime": None}, "max_lifetime=None would let the cluster run forever"),
    ({"boot_timeout": "1s"}, "boot_timeout='1s' is shorter than 10s"),
    ({"spot_policy": "spto"}, "spot_policy='spto' is not a policy; did you mean 'spot'?"),
    ({"disk_size": 4}, "disk_size=4 must be 8 to 16,384 GiB"),
    ({"tags": {"owner": "eve"}}, "tag key 'owner' is set by vmguard itself"),
    ({"tags": {"vmguard:cluster": "x"}}, "tag key 'vmguard:cluster' is set by vmguard itself"),
    ({"tags": {"aws:createdBy": "x"}}, "tag key 'aws:createdBy': the aws: prefix is reserved"),
    ({"tags": {"team": "a\nb"}}, "tag 'team'="),
    ({"tags": {f"k{n}": "v" for n in range(41)}}, "tags has 41 entries"),
    ({"tags": ["team"]}, "tags must be a dict"),
    ({"max_hourly_usd": 0}, "max_hourly_usd=0 must be a positive number of dollars per hour"),
    ({"max_hourly_usd": "ten"}, "max_hourly_usd='ten' must be a positive number"),
    ({"owner": ""}, "owner='' must be a name or e-mail address"),
    ({"allow_ingress_from": ["0.0.0.0/0"]}, "allow_ingress_from: '0.0.0.0/0' would let much of the internet run code"),
    ({"allow_ingress_from": ["::/0"]}, "allow_ingress_from: '::/0' would let much of the internet"),
    ({"allow_ingress_from": []}, "allow_ingress_from must be a list of CIDRs"),
    ({"allow_ingress_from": ["my laptop"]}, "allow_ingress_from: 'my laptop' is not a CIDR"),
    ({"daemon_url": "ftp://x"}, "daemon_url='ftp://x' must be an http(s) URL"),
    ({"log_level": "chatty"}, "log_level='chatty' must be one of DEBUG"),
    ({"arm": "maybe"}, "arm='maybe': "),
    ({"image": "ubuntu-22.04"}, "image: 'ubuntu-22.04' is not an id like 'ami-0123456789abcdef0'"),
    ({"image": "ami-123"}, "image: 'ami-123' is not an id like 'ami-"),
    ({"subnet_ids": []}, "subnet_ids=[] names no subnet; pass subnets like ['subnet-"),
    ({"subnet_ids": ["subnet-0123456789abcdef0", "vpc-0123456789abcdef0"]},
     "subnet_ids: 'vpc-0123456789abcdef0' is not an id like 'subnet-0123456789abcdef0'"),
    ({"subnet_ids": {"subnet-0123456789abcdef0"}}, "subnet_ids must be a list of ids like ['subnet-"),
    ({"security_group_ids": ["default"]}, "security_group_ids: 'default' is not an id like 'sg-0123456789abcdef0'"),
    ({"security_group_ids": [f"sg-{n:08x}" for n in range(5)]}, "security_group_ids has 5 groups; AWS allows 5 per "
                                                                 "VM and the cluster needs one of its own"),
    ({"use_private_ip": True}, "use_private_ip=True: pass allow_ingress_from=['10.0.0.0/8'] with the networks"),
    ({"scheduler_vm_type": "small"}, "scheduler_vm_type='small' is not an instance type name"),
    ({"subnet": ["subnet-0123456789abcdef0"]}, "unknown argument 'subnet'; did you mean subnet_ids?"),
    ({"ami": "ami-0123456789abcdef0"}, "unknown argument 'ami'; did you mean image?"),
])
def test_every_bad_argument_is_one_line(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SdkError) as error:
        spec(**kwargs)
    text = str(error.value)
    assert text.startswith(message), text
    assert "\n" not in text and "Value error" not in text and "pydantic" not in text


def test_network_and_image_arguments_are_normalised() -> None:
    s = spec(subnet_ids="subnet-0123456789abcdef0", security_group_ids=["sg-12345678", "sg-12345678"],
             image=" ami-0123456789abcdef0 ", scheduler_vm_type=" M7G.Large", use_private_ip=True,
             allow_ingress_from=["10.0.0.0/8"])
    assert s.subnet_ids == ["subnet-0123456789abcdef0"] and s.security_group_ids == ["sg-12345678"]
    assert s.image == "ami-0123456789abcdef0" and s.scheduler_vm_type == "m7g.large" and s.use_private_ip
    defaults = spec()
    assert (defaults.subnet_ids, defaults.security_group_ids, defaults.use_private_ip) == (None, [], False)
    assert (defaults.image, defaults.scheduler_vm_type) == (None, None)


def test_sdk_error_is_a_value_error_on_one_line() -> None:
    error = SdkError("two\nlines   here")
    assert isinstance(error, ValueError) and str(error) == "two lines here"


# -- user-data -----------------------------------------------------------------------------------------------------


def test_user_data_arms_the_dead_man_switch_and_carries_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    s = spec(keepalive="15 minutes", idle_timeout="2h", max_lifetime="90m", log_level="warning")
    scheduler = user_data(vm_config(s, "scheduler", "vmg-abc123"), None)
    worker = user_data(vm_config(s, "worker", "vmg-abc123"), "172.31.0.4:8786")
    config = read_config(worker)
    assert config == {"role": "worker", "cluster_id": "vmg-abc123", "scheduler_port": 8786, "dashboard_port": 8787,
                      "keepalive_seconds": 900, "idle_timeout_seconds": 7200, "max_lifetime_seconds": 5400,
                      "log_level": "WARNING", "nthreads": None, "memory_limit": "auto"}
    lines = worker.splitlines()
    assert lines[0] == "#!/bin/bash"
    [config_line] = [line for line in lines if line.startswith(CONFIG_PREFIX)]
    assert json.loads(config_line[len(CONFIG_PREFIX):]) == config
    shutdown_at = next(i for i, line in enumerate(lines) if line.startswith("shutdown -h +90 "))
    agent = next(i for i, line in enumerate(lines) if line.startswith("python3 -m sdk.vm --config "))
    assert shutdown_at < agent and lines[-1] == "shutdown -h now"  # armed before the agent, powered off after it
    assert "X-aws-ec2-metadata-token-ttl-seconds" in worker and "-X PUT" in worker  # IMDSv2: token first
    assert "--scheduler 172.31.0.4:8786" in lines[agent] and "--host" in lines[agent]
    assert "--scheduler" not in scheduler and read_config(scheduler)["role"] == "scheduler"
    if shutil.which("bash"):
        subprocess.run(["bash", "-n"], input=worker, text=True, check=True)


def test_user_data_never_carries_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"VMGUARD_TOKEN": "env-token-0123456789", "AWS_SECRET_ACCESS_KEY": "aws-secret-0123456789",
               "AWS_SESSION_TOKEN": "aws-session-0123456789", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE0123"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    s = spec(token="arg-token-0123456789", daemon_url="http://10.0.0.5:9464")
    script = user_data(vm_config(s, "worker", "vmg-abc123"), "172.31.0.4:8786")
    for value in [*secrets.values(), "arg-token-0123456789"]:
        assert value not in script
    assert "token" not in json.dumps(read_config(script)).lower()
    with pytest.raises(ValueError, match="must not carry secrets.*api_token"):
        user_data({**vm_config(s, "worker", "vmg-abc123"), "api_token": "x"}, "172.31.0.4:8786")
    with pytest.raises(ValueError, match="needs the scheduler's address"):
        user_data(vm_config(s, "worker", "vmg-abc123"), None)
    with pytest.raises(ValueError, match="must be host:port"):
        user_data(vm_config(s, "worker", "vmg-abc123"), "172.31.0.4; rm -rf /")


# -- cost ----------------------------------------------------------------------------------------------------------


def test_estimate_adds_scheduler_workers_disks_and_addresses() -> None:
    catalog = default_catalog()
    s = spec(vm_type="m7g.large", n_workers=4, disk_size=100)
    estimate = estimate_cost(s, ["m7g.large"])
    per_vm = (catalog.hourly_usd("m7g.large", "us-east-1") + catalog.volume_hourly_usd("gp3", 100, "us-east-1")
              + PUBLIC_IPV4_USD_PER_HOUR)
    assert estimate.hourly_usd == pytest.approx(5 * per_vm)
    assert estimate.daily_usd == pytest.approx(24 * 5 * per_vm)
    assert estimate.worst_hourly_usd == pytest.approx(estimate.hourly_usd)
    assert str(estimate) == f"${5 * per_vm:,.2f}/hour (${24 * 5 * per_vm:,.2f}/day)"
    check_cap(estimate, 10.0)


def test_estimate_caps_on_the_priciest_fallback_and_hints_at_spot() -> None:
    s = spec(vm_type=["m7g.large", "m7g.xlarge"], n_workers=10, spot_policy="spot")
    estimate = estimate_cost(s, s.vm_type)
    assert estimate.worst_hourly_usd > estimate.hourly_usd
    assert estimate.spot_hourly_usd is not None and estimate.spot_hourly_usd <= estimate.hourly_usd
    assert "up to $" in str(estimate) and "spot workers usually cost less" in str(estimate)
    with pytest.raises(SdkError, match=r"^this cluster could cost up to \$"):
        check_cap(estimate, estimate.hourly_usd + 0.01)


def test_estimate_prices_the_scheduler_at_its_own_types() -> None:
    catalog = default_catalog()
    s = spec(vm_type="g5.xlarge", n_workers=3)
    price = {name: catalog.hourly_usd(name, "us-east-1") for name in ("m5a.large", "g5.xlarge")}
    estimate = estimate_cost(s, ["g5.xlarge"], scheduler_types=["m5a.large", "g5.xlarge"])
    extra = estimate.per_vm_extra_usd
    assert estimate.hourly_usd == pytest.approx(price["m5a.large"] + 3 * price["g5.xlarge"] + 4 * extra)
    # the scheduler may fall back to the workers' type: the cap holds for that too
    assert estimate.worst_hourly_usd == pytest.approx(4 * (price["g5.xlarge"] + extra))
    assert estimate_cost(s, ["g5.xlarge"]).hourly_usd == pytest.approx(estimate.worst_hourly_usd)


def test_cap_refuses_with_the_figure_and_how_to_raise_it() -> None:
    s = spec(vm_type="p4d.24xlarge", n_workers=1000)  # a typo for 10
    estimate = estimate_cost(s, ["p4d.24xlarge"])
    hourly = estimate.hourly_usd
    with pytest.raises(SdkError) as error:
        check_cap(estimate, 10.0)
    text = str(error.value)
    assert text.startswith(f"this cluster would cost ${hourly:,.2f}/hour (${hourly * 24:,.2f}/day), above "
                           "max_hourly_usd=10; pass max_hourly_usd=")
    allow = float(text.split("pass max_hourly_usd=")[1].split(" ")[0])
    assert allow >= hourly and f"or set VMGUARD_MAX_HOURLY_USD={allow:g} to allow it" in text
    check_cap(estimate, allow)
    check_cap(estimate, None)


def test_an_unknown_price_is_refused_unless_the_cap_is_off() -> None:
    estimate = estimate_cost(spec(vm_type="zz9.huge", n_workers=2), ["zz9.huge"])
    assert estimate.hourly_usd is None and estimate.unpriced == ("zz9.huge",)
    assert str(estimate).startswith("an unknown amount (no list price for zz9.huge in us-east-1)")
    with pytest.raises(SdkError, match=r"no list price is known for zz9.huge in us-east-1.*max_hourly_usd=None"):
        check_cap(estimate, 10.0)
    check_cap(estimate, None)


# -- instance types from the API's shape ---------------------------------------------------------------------------


def test_instance_type_reads_the_describe_instance_types_shape() -> None:
    item = {"InstanceType": "g5g.xlarge", "BareMetal": False, "BurstablePerformanceSupported": False,
            "SupportedUsageClasses": ["on-demand", "spot"], "SupportedRootDeviceTypes": ["ebs"],
            "ProcessorInfo": {"SupportedArchitectures": ["arm64"]}, "VCpuInfo": {"DefaultVCpus": 4},
            "MemoryInfo": {"SizeInMiB": 8192},
            "GpuInfo": {"Gpus": [{"Name": "T4g", "Manufacturer": "NVIDIA", "Count": 1}]}}
    info = InstanceType.from_api(item)
    assert (info.arch, info.vcpus, info.memory_mib, info.gpus, info.gpu_maker) == ("arm64", 4, 8192, 1, "NVIDIA")
    assert (info.family, info.size, info.linux) == ("g5g", "xlarge", True)
    assert info.describe(0.42) == "g5g.xlarge (4 vCPU, 8 GiB, 1 GPU, $0.420/h)"
    both = InstanceType.from_api({"InstanceType": "t2.micro", "ProcessorInfo": {"SupportedArchitectures":
                                                                                ["i386", "x86_64"]}})
    assert both.arch == "x86_64" and both.gpus == 0


# -- log level: the client's by default, and what DEBUG at scale would cost ---------------------------------------


def test_the_vms_log_at_the_clients_dask_level_by_default() -> None:
    import logging

    logger = logging.getLogger("distributed")
    before = logger.level
    try:
        assert spec().log_level == "INFO"  # Dask's own default for distributed
        logger.setLevel(logging.DEBUG)
        assert spec().log_level == "DEBUG" and spec(log_level="INFO").log_level == "INFO"
    finally:
        logger.setLevel(before)


def test_debug_logging_at_scale_is_priced_before_launch() -> None:
    from sdk.cost import DEBUG_BYTES_PER_VM_HOUR, DEBUG_WARN_VMS, debug_logging_warning

    assert debug_logging_warning(spec(n_workers=500, log_level="INFO"), "DEBUG") is None
    assert debug_logging_warning(spec(n_workers=DEBUG_WARN_VMS - 1, log_level="DEBUG"), "DEBUG") is None
    warning = debug_logging_warning(spec(n_workers=999, log_level="DEBUG"), "DEBUG")
    gb = 1000 * DEBUG_BYTES_PER_VM_HOUR / 1e9
    assert warning.startswith("your Dask logger is at DEBUG, so the cluster logs at DEBUG too: 1000 VMs")
    assert f"{gb:,.1f} GB/hour, ${gb * 0.5:,.2f}/hour" in warning and "log_level='INFO'" in warning
    assert debug_logging_warning(spec(n_workers=999, log_level="DEBUG"), "INFO").startswith("log_level='DEBUG': ")


def test_a_region_list_is_the_region_then_its_fallbacks_in_order() -> None:
    s = spec(region=["eu-west-1", "us-east-2", "eu-west-1"])
    assert s.region == "eu-west-1" and s.fallback_regions == ["us-east-2", "eu-west-1"]
    assert s.regions == ["eu-west-1", "us-east-2"]
    assert spec(region="us-west-2").regions == ["us-west-2"]


@pytest.mark.parametrize(("region", "message"), [
    ([], "region=[] names no region"),
    (["us-east-1", "us-esat-2"], "unknown region 'us-esat-2'; did you mean "),
])
def test_bad_region_lists_are_one_line(region: list[str], message: str) -> None:
    with pytest.raises(SdkError) as raised:
        spec(region=region)
    assert message in str(raised.value)
