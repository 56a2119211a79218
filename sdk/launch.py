"""Launch a cluster's VMs with safe defaults in as few EC2 calls as the API allows, and tear them down.

The request is the proof of safety, so every launch call carries it explicitly:

- one security group per cluster in the default VPC (or the VPC of ``subnet_ids``): the scheduler and dashboard
  ports (8786-8787) only from ``client_cidrs``, all traffic only from the group itself; deleted after the
  instances are gone (``security_group_ids`` are added to it on every VM, never changed or deleted);
- IMDSv2 required with hop limit 1 (containers on the VM cannot reach the metadata service);
- an encrypted gp3 root volume of ``disk_size`` GiB and ``DeleteOnTermination`` on every EBS block device of the
  image; ``InstanceInitiatedShutdownBehavior=terminate`` (the VM's own ``shutdown`` ends its bill);
- tags on creation for the instance, its volumes and its network interface (and the security group, and spot
  requests): ``guard:managed``, ``owner``, ``vmguard:cluster``, ``vmguard:role``, ``vmguard:keepalive``,
  ``vmguard:expires``, ``Name``, plus the user's tags;
- the user-data of :mod:`sdk.bootstrap` (the VM's dead-man switch; no secrets); burstable types get standard CPU
  credits (no surprise "unlimited" surcharge);
- a ``ClientToken`` on each RunInstances call, so a retried call never launches twice;
- the image: ``spec.image`` for every VM, else AWS's Deep Learning Base AMI with the NVIDIA driver (Amazon
  Linux 2023, read from its public SSM parameter in the cluster's region) for NVIDIA GPU types, and the newest
  Amazon Linux 2023 for the others. A root volume larger than ``disk_size`` (the DLAMI's is 75 GiB) grows the
  default ``disk_size``; an explicit smaller one is refused.

The scheduler has types of its own (``sdk.types.resolve_scheduler_types``: its type, then the workers' as
fallbacks) and is always on-demand.

Calls: the scheduler with one RunInstances (count 1), then every worker in ONE RunInstances asking for all of them
in the scheduler's subnet — all or nothing, so a cluster that fits stays in one AZ and pays no cross-AZ transfer.
Only when that is refused for capacity does it fall back, each call asking for what is still missing with
``MinCount=1``: the same AZ again, then the other subnets, then the next type of the list, and for
``spot_with_fallback`` the same again on-demand. Each market has its own budget of ``MAX_WORKER_CALLS`` calls, so
spot refused everywhere still ends in on-demand workers. A vCPU quota refusal (``VcpuLimitExceeded``) ends its
market after at most ``QUOTA_RETRIES`` calls asking for exactly as many workers as the quota admits (its value,
read from Service Quotas before launch, less the vCPUs the region's instances use already; halved when unknown or
refused again). Workers that end up outside the scheduler's AZ get a :class:`CrossAzTraffic` warning: traffic
between AZs bills in each direction. RunInstances rather than CreateFleet: CreateFleet needs a launch template
(one more resource to leak), and tags only instances on creation.

A cluster that ends up with fewer workers than asked but at least ``min_workers`` is returned with a
:class:`PartialLaunch` warning saying so; one whose scheduler could not launch, or with fewer workers than
``min_workers`` (by default all of them), is torn down (instances found by the cluster tag too, so a launch whose
reply was lost is not leaked) and an ``SdkError`` says what happened, naming any vCPU quota that refused (its
code, value and the page where an increase is asked for: :mod:`sdk.quotas`). A cleanup cut short by a second
Ctrl-C is done again, bounded, when the interpreter exits.

Before launching, the owner's security groups left by clusters that ended on their own (the VMs' dead-man switch,
with no daemon watching) are deleted: nothing else could.
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from guard.pricing import CROSS_AZ_USD_PER_GB
from guard.wire import OWNER_TAG
from sdk.bootstrap import DASHBOARD_PORT, SCHEDULER_PORT, user_data, vm_config
from sdk.errors import CapacityError, SdkError
from sdk.quotas import Quota, admitted, describe, quota_for, read_quota, vcpus_in_use
from sdk.spec import ClusterSpec
from sdk.types import InstanceType, describe_types, resolve_scheduler_types

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
"""Told ``(done, total, text)`` as VMs launch: done and total count VMs (scheduler included)."""

IMAGE_NAME_PATTERNS = {"x86_64": "al2023-ami-2023.*-x86_64", "arm64": "al2023-ami-2023.*-arm64"}
"""Amazon Linux 2023 (not the minimal image), by architecture; the newest available one is used."""
IMAGE_OWNER = "amazon"
GPU_IMAGE_PARAMETER = "/aws/service/deeplearning/ami/{arch}/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
"""AWS's public SSM parameter naming the newest Deep Learning Base OSS Nvidia Driver GPU AMI (Amazon Linux 2023) of
a region, by architecture (``x86_64``/``arm64``): the bootstrap script needs Amazon Linux 2023's tools."""
METADATA_OPTIONS = {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled",
                    "InstanceMetadataTags": "disabled"}
ROOT_VOLUME_TYPE = "gp3"
MAX_WORKER_CALLS = 16
"""RunInstances calls for the workers in each market before settling for what launched."""
QUOTA_RETRIES = 3
"""RunInstances calls sized to a vCPU quota after it refused, before the market is given up."""
MARKETS = {"on-demand": (False,), "spot": (True,), "spot_with_fallback": (True, False)}
"""Per spot policy, the workers' markets in the order they are tried (True: spot)."""
_QUOTAS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=5, read_timeout=10)
"""Service Quotas is read best effort: a region without its endpoint must not hold the launch up for minutes."""
TERMINATE_BATCH = 1000
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
LAST_RESORT_TIMEOUT = 120.0
"""How long the cleanup of an interrupted launch may hold up the interpreter's exit."""
ORPHAN_MIN_AGE = timedelta(minutes=30)
"""A cluster's security group with no instance left is deleted by the owner's next launch once it is this old
(younger ones may belong to a launch under way elsewhere)."""
FILTER_VALUES = 200
"""Values per Describe filter (EC2 accepts at most 200)."""
CAPACITY_ERRORS = frozenset({
    "InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
    "InsufficientFreeAddressesInSubnet", "Unsupported", "SpotMaxPriceTooLow", "InsufficientCapacityOnHost",
})
"""Refusals that launched nothing and may succeed in another AZ or with another type."""
QUOTA_ERRORS = frozenset({"VcpuLimitExceeded", "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded"})
"""Refusals that launched nothing and will refuse the same market again: stop asking for it."""
_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")


class PartialLaunch(UserWarning):
    """Fewer workers launched than asked: capacity ran out in every AZ and type tried."""


class CrossAzTraffic(UserWarning):
    """Capacity put workers outside the scheduler's AZ: traffic between them bills in each direction."""


@dataclass
class Launched:
    """What a launch made: the instances (as dicts of InstanceId, PublicIpAddress, PrivateIpAddress, InstanceType,
    AvailabilityZone, Lifecycle) and the security group."""

    cluster_id: str
    region: str
    security_group_id: str
    scheduler: dict[str, Any]
    workers: list[dict[str, Any]] = field(default_factory=list)
    requested_workers: int = 0
    problems: list[str] = field(default_factory=list)
    """Why fewer workers launched than asked (empty when all did)."""

    @property
    def instance_ids(self) -> list[str]:
        """The scheduler first, then the workers."""
        return [self.scheduler["InstanceId"], *(worker["InstanceId"] for worker in self.workers)]

    @property
    def instance_types(self) -> list[str]:
        return sorted({instance["InstanceType"] for instance in [self.scheduler, *self.workers]})

    @property
    def spread(self) -> str | None:
        """What it costs that workers run outside the scheduler's AZ (None: all in one AZ)."""
        home = self.scheduler.get("AvailabilityZone")
        zones = {home, *(worker.get("AvailabilityZone") for worker in self.workers)}
        if len(zones) < 2:
            return None
        away = sum(worker.get("AvailabilityZone") != home for worker in self.workers)
        return (f"{self.cluster_id}: workers spread over {len(zones)} AZs ({away} outside the scheduler's {home}): "
                f"cross-AZ traffic bills ${CROSS_AZ_USD_PER_GB:.2f}/GB each way")


@dataclass(frozen=True)
class _Subnet:
    subnet_id: str
    zone: str


@dataclass(frozen=True)
class _Image:
    image_id: str
    root_device: str
    block_devices: tuple[dict[str, Any], ...]
    root_size: int = 0
    """GiB of the image's root snapshot: the root volume is at least this large."""


class _Refused(Exception):
    """A RunInstances call that launched nothing, for a reason another AZ, type or market may not have."""

    def __init__(self, code: str, message: str, quota: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.quota = quota
        """A quota refusal: the same market refuses again anywhere in the region."""


# -- the launch -------------------------------------------------------------------------------------------------


def launch(spec: ClusterSpec, instance_types: Sequence[str], cluster_id: str, client_cidrs: Sequence[str],
           ec2_client: Any, progress: Progress | None = None, *,
           scheduler_types: Sequence[str] | None = None, ssm_client: Any = None,
           environments: dict[str, dict[str, Any]] | None = None, tls: dict[str, str] | None = None,
           quotas_client: Any = None) -> Launched:
    """Launch the scheduler and ``spec.n_workers`` workers of ``cluster_id``; see the module docstring.

    ``instance_types``: the workers', first choice first (later ones are fallbacks). ``scheduler_types``: the
    scheduler's, likewise (default: ``sdk.types.resolve_scheduler_types``). ``client_cidrs``: who may reach the
    scheduler's ports. ``ssm_client``: for the GPU image's parameter (default: one for ``spec.region``, made
    only if a GPU type needs it). ``environments``: per architecture, the replicated Python environment each VM
    installs (``sdk.environment.EnvironmentRef.to_config()``); without one, the VMs run the image's ``python3``.
    ``tls``: where every VM fetches the cluster's TLS material (``sdk.security.KeyDrop.config()``); without, the
    cluster speaks plain TCP. ``quotas_client``: a Service Quotas client for the region (by default one of the
    default session).
    """
    types = list(dict.fromkeys(instance_types))
    if not types:
        raise SdkError("no instance type to launch; pass vm_type or cpu/memory")
    if not client_cidrs:
        raise SdkError("no address may reach the cluster; pass allow_ingress_from=['<your address>/32']")
    if ec2_client.meta.region_name != spec.region:
        raise SdkError(f"the EC2 client is for {ec2_client.meta.region_name} but the cluster is for {spec.region}")
    schedulers = list(dict.fromkeys(scheduler_types or resolve_scheduler_types(spec, ec2_client, types)))
    report = progress or (lambda done, total, text: None)
    total = 1 + spec.n_workers
    swept = sweep_orphaned_groups(ec2_client, spec.owner)
    if swept:
        log.info("deleted %d security group(s) left by clusters that ended on their own: %s", len(swept),
                 ", ".join(swept))
    quotas = quotas_client or boto3.client("service-quotas", region_name=spec.region, config=_QUOTAS_CONFIG)
    run = _Run(spec, cluster_id, ec2_client, types, schedulers, environments or {}, tls, quotas, ssm_client)
    atexit.register(run.last_resort)  # a second Ctrl-C that cuts the cleanup below short still cleans up at exit
    try:
        report(0, total, f"{cluster_id}: preparing the network")
        run.prepare()
        run.create_security_group(client_cidrs)
        report(0, total, f"{cluster_id}: launching the scheduler")
        run.launch_scheduler()
        report(1, total, f"{cluster_id}: launching {spec.n_workers} worker(s)")
        run.launch_workers(lambda: report(1 + len(run.workers), total,
                                          f"{cluster_id}: {len(run.workers)} of {spec.n_workers} worker(s) launched"))
        if len(run.workers) < spec.required_workers:
            raise CapacityError(run.shortfall())
        run.refresh_scheduler()
        launched = Launched(cluster_id=cluster_id, region=spec.region, security_group_id=run.security_group_id or "",
                            scheduler=run.scheduler or {}, workers=run.workers, requested_workers=spec.n_workers,
                            problems=run.problems if len(run.workers) < spec.n_workers else [])
        partial = (f"{cluster_id}: launched {len(launched.workers)} of {spec.n_workers} workers "
                   f"({run.reasons()})") if len(launched.workers) < spec.n_workers else None
        report(1 + len(launched.workers), total,
               partial or f"{cluster_id}: launched 1 scheduler and {len(launched.workers)} worker(s)")
    except BaseException as exc:
        cleanup = run.abort()
        atexit.unregister(run.last_resort)
        if isinstance(exc, SdkError):
            raise type(exc)(f"{exc}; {cleanup}") from None
        if isinstance(exc, (ClientError, BotoCoreError)):
            raise SdkError(f"launching {cluster_id} failed ({_describe_error(exc)}); {cleanup}") from None
        raise
    atexit.unregister(run.last_resort)  # from here on the caller owns the cluster, and its teardown
    if partial:
        log.warning("%s", partial)
        warnings.warn(partial, PartialLaunch, stacklevel=2)
    if launched.spread:
        log.warning("%s", launched.spread)
        warnings.warn(launched.spread, CrossAzTraffic, stacklevel=2)
    return launched


class _Run:
    """The state of one launch, so a failure at any step can undo exactly what was made."""

    def __init__(self, spec: ClusterSpec, cluster_id: str, ec2: Any, types: list[str], scheduler_types: list[str],
                 environments: dict[str, dict[str, Any]], tls: dict[str, str] | None, quotas: Any,
                 ssm: Any = None) -> None:
        self.spec = spec
        self.quotas = quotas
        self.quota_values: dict[str, float | None] = {}
        """Quota code → its value read before launch (None: not readable)."""
        self.quota_notes: dict[str, str] = {}
        """Quota code → the phrase naming it, for each quota that refused a call."""
        self.environments = environments
        self.tls = tls
        self.cluster_id = cluster_id
        self.ec2 = ec2
        self.ssm = ssm
        self.types = types
        self.scheduler_types = scheduler_types
        self.every_type = list(dict.fromkeys([*scheduler_types, *types]))
        self.launched_at = datetime.now(timezone.utc)
        self.infos: dict[str, InstanceType] = {}
        self.images: dict[tuple[str, bool], _Image] = {}
        self.extra_groups: list[str] = []
        self.vpc_id = ""
        self.subnets: list[_Subnet] = []
        self.zones: dict[str, set[str]] = {}
        self.security_group_id: str | None = None
        self.scheduler: dict[str, Any] | None = None
        self.scheduler_subnet: _Subnet | None = None
        self.workers: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.calls = 0

    # -- what to launch into --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """The types' architectures, the images, the subnets and which AZs offer each type."""
        self.infos = describe_types(self.ec2, self.every_type)
        unknown = [name for name in self.every_type if name not in self.infos]
        if unknown:
            raise SdkError(f"{', '.join(unknown)} is not offered in {self.spec.region}; check vm_type")
        for key in sorted({_image_key(self.infos[name]) for name in self.every_type}):
            self.images[key] = self._image(*key)
        if self.spec.subnet_ids:
            self._given_subnets(self.spec.subnet_ids)
        else:
            self._default_subnets()
        self._extra_groups(self.spec.security_group_ids)
        self._offerings()
        self._read_quotas()

    def _image(self, arch: str, gpu: bool) -> _Image:
        """The image of one (architecture, NVIDIA GPU) kind of VM: ``spec.image``, the DLAMI, or Amazon Linux."""
        image_id = self.spec.image or (self._gpu_image_id(arch) if gpu else None)
        if image_id:
            images = self._images_by_id(image_id)
        else:
            pattern = IMAGE_NAME_PATTERNS.get(arch)
            if pattern is None:
                raise SdkError(f"vmguard has no Linux image for {arch}; pick an x86_64 or arm64 vm_type")
            images = self.ec2.describe_images(Owners=[IMAGE_OWNER], Filters=[
                {"Name": "name", "Values": [pattern]}, {"Name": "architecture", "Values": [arch]},
                {"Name": "state", "Values": ["available"]}, {"Name": "root-device-type", "Values": ["ebs"]},
            ]).get("Images", [])
        if not images:
            which = image_id or f"Amazon Linux 2023 ({arch})"
            raise SdkError(f"no image {which} is available in {self.spec.region}; pass image='ami-…' with an image "
                           f"of {self.spec.region}")
        image = max(images, key=lambda item: item.get("CreationDate") or "")
        if image.get("Architecture") and image["Architecture"] != arch:
            what = f"image={image['ImageId']!r}" if self.spec.image else f"image {image['ImageId']}"
            raise SdkError(f"{what} is {image['Architecture']}, but the cluster has {arch} types; pass an {arch} "
                           "image or vm_type/scheduler_vm_type of its architecture")
        root = image.get("RootDeviceName") or "/dev/xvda"
        root_size = next((m.get("Ebs", {}).get("VolumeSize") for m in image.get("BlockDeviceMappings", [])
                          if m.get("DeviceName") == root), None) or 0
        if "disk_size" in self.spec.model_fields_set and self.spec.disk_size < int(root_size):
            raise SdkError(f"disk_size={self.spec.disk_size} GiB is smaller than the {root_size} GiB root volume of "
                           f"{image['ImageId']}; pass disk_size={root_size} or more")
        return _Image(image_id=image["ImageId"], root_device=root,
                      block_devices=tuple(image.get("BlockDeviceMappings", [])), root_size=int(root_size))

    def _images_by_id(self, image_id: str) -> list[dict[str, Any]]:
        """The image of that id (EC2 answers an id it does not know in the region with an error, not nothing)."""
        try:
            return self.ec2.describe_images(ImageIds=[image_id]).get("Images", [])
        except ClientError as exc:
            if not exc.response.get("Error", {}).get("Code", "").startswith("InvalidAMIID"):
                raise
            return []

    def _gpu_image_id(self, arch: str) -> str:
        """The region's newest Deep Learning Base AMI for ``arch``, from AWS's public SSM parameter."""
        name = GPU_IMAGE_PARAMETER.format(arch=arch)
        if self.ssm is None:
            self.ssm = boto3.client("ssm", region_name=self.spec.region)
        try:
            return self.ssm.get_parameter(Name=name)["Parameter"]["Value"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
                raise SdkError(f"{self.spec.region} has no Deep Learning Base AMI for {arch} GPUs ({name} not found); "
                               f"pass image='ami-…' with an NVIDIA-driver image of {self.spec.region}") from None
            raise SdkError(f"cannot read {name} in {self.spec.region} ({_describe_error(exc)}); allow "
                           "ssm:GetParameter, or pass image='ami-…'") from None

    def _default_subnets(self) -> None:
        vpcs = self.ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}]).get("Vpcs", [])
        if not vpcs:
            raise SdkError(f"{self.spec.region} has no default VPC to launch into; pass subnet_ids=['subnet-…'] "
                           f"(subnets of one VPC), or create a default VPC with "
                           f"`aws ec2 create-default-vpc --region {self.spec.region}`")
        self.vpc_id = vpcs[0]["VpcId"]
        subnets = []
        for page in self.ec2.get_paginator("describe_subnets").paginate(Filters=[
                {"Name": "vpc-id", "Values": [self.vpc_id]}, {"Name": "default-for-az", "Values": ["true"]}]):
            subnets += [_Subnet(s["SubnetId"], s["AvailabilityZone"]) for s in page.get("Subnets", [])
                        if s.get("State", "available") == "available"]
        if not subnets:
            raise SdkError(f"the default VPC of {self.spec.region} has no default subnets; create them with "
                           f"`aws ec2 create-default-subnet --availability-zone <zone>`")
        self.subnets = sorted(subnets, key=lambda subnet: subnet.zone)

    def _given_subnets(self, subnet_ids: list[str]) -> None:
        """``subnet_ids`` in the order given (the first AZ is tried first); their one VPC is the cluster's."""
        try:
            found = {s["SubnetId"]: s for s in self.ec2.describe_subnets(SubnetIds=subnet_ids).get("Subnets", [])}
        except ClientError as exc:
            if not exc.response.get("Error", {}).get("Code", "").startswith("InvalidSubnet"):
                raise
            raise SdkError(f"subnet_ids: {_describe_error(exc)}; pass subnets of {self.spec.region}") from None
        missing = [subnet_id for subnet_id in subnet_ids if subnet_id not in found]
        if missing:
            raise SdkError(f"subnet_ids: {', '.join(missing)} not found in {self.spec.region}")
        vpcs = sorted({subnet["VpcId"] for subnet in found.values()})
        if len(vpcs) > 1:
            raise SdkError(f"subnet_ids span {len(vpcs)} VPCs ({', '.join(vpcs)}); pass subnets of one VPC")
        private = [subnet_id for subnet_id in subnet_ids if not found[subnet_id].get("MapPublicIpOnLaunch")]
        if private and not self.spec.use_private_ip:
            raise SdkError(f"{', '.join(private)} assigns no public IPv4 address, so this client could not reach the "
                           "scheduler; pass use_private_ip=True (over a VPN or Direct Connect) or subnets that do")
        self.vpc_id = vpcs[0]
        self.subnets = [_Subnet(subnet_id, found[subnet_id]["AvailabilityZone"]) for subnet_id in subnet_ids]

    def _extra_groups(self, group_ids: list[str]) -> None:
        """``security_group_ids``, which must be groups of the cluster's VPC (AWS refuses others at launch)."""
        if not group_ids:
            return
        try:
            groups = self.ec2.describe_security_groups(GroupIds=group_ids).get("SecurityGroups", [])
        except ClientError as exc:
            if not exc.response.get("Error", {}).get("Code", "").startswith("InvalidGroup"):
                raise
            raise SdkError(f"security_group_ids: {_describe_error(exc)}; pass groups of {self.spec.region}") from None
        elsewhere = sorted(group["GroupId"] for group in groups if group.get("VpcId") != self.vpc_id)
        if elsewhere:
            raise SdkError(f"security_group_ids: {', '.join(elsewhere)} is not in {self.vpc_id}, the cluster's VPC; "
                           "pass groups of that VPC")
        self.extra_groups = list(group_ids)

    def _offerings(self) -> None:
        """The AZs that offer each type (all AZs when the account may not ask)."""
        everywhere = {subnet.zone for subnet in self.subnets}
        try:
            zones: dict[str, set[str]] = {name: set() for name in self.every_type}
            for page in self.ec2.get_paginator("describe_instance_type_offerings").paginate(
                    LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": self.every_type}]):
                for offer in page.get("InstanceTypeOfferings", []):
                    zones.setdefault(offer["InstanceType"], set()).add(offer["Location"])
        except ClientError as exc:
            log.info("cannot list instance type offerings (%s); trying every AZ", _describe_error(exc))
            zones = {name: set(everywhere) for name in self.every_type}
        self.zones = {name: (found & everywhere) for name, found in zones.items()}
        if not any(self.zones.get(name) for name in self.types):
            where = "the subnet_ids" if self.spec.subnet_ids else "the default VPC"
            raise SdkError(f"no AZ of {where} in {self.spec.region} offers {', '.join(self.types)}; "
                           "pass another vm_type")

    def _read_quotas(self) -> None:
        """The values of the vCPU quotas this launch counts against (best effort: None where unreadable)."""
        markets = {False, *MARKETS[self.spec.spot_policy]}
        for quota in filter(None, {quota_for(name, spot) for name in self.types for spot in markets}):
            self.quota_values[quota.code] = read_quota(self.quotas, quota)

    def _note_quota(self, instance_type: str, spot: bool) -> Quota | None:
        """Remember the quota that refused ``instance_type`` in this market, for the messages; the quota."""
        quota = quota_for(instance_type, spot)
        if quota is not None:
            self.quota_notes[quota.code] = describe(quota, self.quota_values.get(quota.code), self.spec.region)
        return quota

    def reasons(self) -> str:
        """Why fewer VMs launched than asked: the last refusals, and every quota that refused."""
        return "; ".join([*self.problems[-2:], *self.quota_notes.values()]) or "no capacity"

    def shortfall(self) -> str:
        """The error of a launch with fewer workers than ``min_workers``."""
        wanted, got, required = self.spec.n_workers, len(self.workers), self.spec.required_workers
        if not got:
            return f"could not launch any of the {wanted} worker(s) of {self.cluster_id}: {self.reasons()}"
        return (f"launched only {got} of the {wanted} worker(s) of {self.cluster_id}, fewer than min_workers="
                f"{required} (pass min_workers={got} to accept that many): {self.reasons()}")

    # -- what is launched -----------------------------------------------------------------------------------

    def tags(self, role: str) -> list[dict[str, str]]:
        """The tags of every resource of this cluster in ``role`` (scheduler, worker, or cluster for the group)."""
        expires = self.launched_at + timedelta(seconds=self.spec.max_lifetime_seconds)
        tags = {"Name": f"vmguard {self.cluster_id} {role}", **self.spec.tags,
                "guard:managed": "true", OWNER_TAG: self.spec.owner, "vmguard:cluster": self.cluster_id,
                "vmguard:role": role, "vmguard:keepalive": str(self.spec.keepalive_seconds),
                "vmguard:launched": self.launched_at.strftime(TIME_FORMAT),
                "vmguard:expires": expires.strftime(TIME_FORMAT)}
        return [{"Key": key, "Value": value} for key, value in tags.items()]

    def create_security_group(self, client_cidrs: Sequence[str]) -> None:
        group = self.ec2.create_security_group(
            GroupName=f"vmguard-{self.cluster_id}", VpcId=self.vpc_id,
            Description=f"vmguard cluster {self.cluster_id}: Dask ports from the client only, all traffic within",
            TagSpecifications=[{"ResourceType": "security-group", "Tags": self.tags("cluster")}])
        self.security_group_id = group["GroupId"]
        v4 = [{"CidrIp": cidr, "Description": "vmguard client"} for cidr in client_cidrs if ":" not in cidr]
        v6 = [{"CidrIpv6": cidr, "Description": "vmguard client"} for cidr in client_cidrs if ":" in cidr]
        client = {"IpProtocol": "tcp", "FromPort": SCHEDULER_PORT, "ToPort": DASHBOARD_PORT}
        if v4:
            client["IpRanges"] = v4
        if v6:
            client["Ipv6Ranges"] = v6
        self.ec2.authorize_security_group_ingress(GroupId=self.security_group_id, IpPermissions=[
            client,
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": self.security_group_id,
                                                        "Description": "within the cluster"}]},
        ])

    def _block_devices(self, image: _Image) -> list[dict[str, Any]]:
        """Every EBS device of the image encrypted and deleted with the instance; the root gp3 of disk_size."""
        devices: list[dict[str, Any]] = []
        for mapping in image.block_devices:
            name = mapping.get("DeviceName")
            if not name or "Ebs" not in mapping or name == image.root_device:
                continue
            ebs = {key: value for key, value in mapping["Ebs"].items()
                   if key in ("SnapshotId", "VolumeSize", "VolumeType", "Iops", "Throughput")}
            devices.append({"DeviceName": name, "Ebs": {**ebs, "Encrypted": True, "DeleteOnTermination": True}})
        root = {"VolumeSize": max(self.spec.disk_size, image.root_size), "VolumeType": ROOT_VOLUME_TYPE,
                "Encrypted": True, "DeleteOnTermination": True}
        return [{"DeviceName": image.root_device, "Ebs": root}, *devices]

    def _request(self, role: str, instance_type: str, subnet: _Subnet, count: tuple[int, int], spot: bool,
                 scheduler_address: str | None) -> dict[str, Any]:
        info = self.infos[instance_type]
        image = self.images[_image_key(info)]
        resource_types = ["instance", "volume", "network-interface"] + (["spot-instances-request"] if spot else [])
        self.calls += 1
        request: dict[str, Any] = {
            "ImageId": image.image_id,
            "InstanceType": instance_type,
            "MinCount": count[0],
            "MaxCount": count[1],
            "SubnetId": subnet.subnet_id,
            "SecurityGroupIds": [self.security_group_id, *self.extra_groups],
            "UserData": user_data(self._config(role, info.arch), scheduler_address),
            "MetadataOptions": dict(METADATA_OPTIONS),
            "BlockDeviceMappings": self._block_devices(image),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [{"ResourceType": kind, "Tags": self.tags(role)} for kind in resource_types],
            "ClientToken": f"{self.cluster_id}-{role[0]}{self.calls}",
        }
        if spot:
            request["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        if info.burstable:
            request["CreditSpecification"] = {"CpuCredits": "standard"}
        if self.spec.instance_profile:
            request["IamInstanceProfile"] = {"Name": self.spec.instance_profile}
        return request

    def _config(self, role: str, arch: str) -> dict[str, Any]:
        config = vm_config(self.spec, role, self.cluster_id)
        if arch in self.environments:
            config["environment"] = self.environments[arch]
        if self.tls:
            config["tls"] = dict(self.tls)
        return config

    def _run_instances(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """One RunInstances call: the instances, or ``_Refused`` when it launched nothing for capacity/quota."""
        try:
            reply = self.ec2.run_instances(**request)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "")
            if code in CAPACITY_ERRORS or code in QUOTA_ERRORS:
                raise _Refused(code, message, quota=code in QUOTA_ERRORS) from None
            raise
        market = "spot" if "InstanceMarketOptions" in request else "on-demand"
        return [_summary(instance, market) for instance in reply.get("Instances", [])]

    def _places(self, instance_type: str, first: _Subnet | None = None) -> list[_Subnet]:
        zones = self.zones.get(instance_type, set())
        places = [subnet for subnet in self.subnets if subnet.zone in zones]
        if first is not None and first in places:
            places.remove(first)
            places.insert(0, first)
        return places

    def launch_scheduler(self) -> None:
        """The scheduler, on-demand (losing it loses the cluster), the first of its types and AZs with capacity."""
        for instance_type in self.scheduler_types:
            for subnet in self._places(instance_type):
                request = self._request("scheduler", instance_type, subnet, (1, 1), False, None)
                try:
                    instances = self._run_instances(request)
                except _Refused as refused:
                    self.problems.append(f"scheduler {instance_type} in {subnet.zone}: {refused.code}")
                    if refused.quota:
                        self._note_quota(instance_type, False)
                        break
                    continue
                if instances:
                    self.scheduler, self.scheduler_subnet = instances[0], subnet
                    return
        raise CapacityError(f"could not launch the scheduler of {self.cluster_id} "
                            f"({self.reasons() if self.problems else 'no AZ offers the type'})")

    def launch_workers(self, launched_some: Callable[[], None]) -> None:
        """Every worker in one call if the scheduler's AZ has room; else what is missing, AZ by AZ, type by type,
        market by market."""
        if not self.spec.n_workers:
            return
        assert self.scheduler is not None
        address = f"{self.scheduler['PrivateIpAddress']}:{SCHEDULER_PORT}"
        for spot in MARKETS[self.spec.spot_policy]:
            if len(self.workers) >= self.spec.n_workers:
                return
            self._launch_market(spot, address, launched_some)

    def _attempts(self) -> list[tuple[str, _Subnet, bool]]:
        """Where to ask, in order, as (type, subnet, all or nothing): everything in the scheduler's AZ, then each
        AZ of each type; at most ``MAX_WORKER_CALLS``."""
        attempts: list[tuple[str, _Subnet, bool]] = []
        for instance_type in self.types:
            places = self._places(instance_type, self.scheduler_subnet)
            if not attempts and places:
                attempts.append((instance_type, places[0], True))
            attempts += [(instance_type, subnet, False) for subnet in places]
        return attempts[:MAX_WORKER_CALLS]

    def _launch_market(self, spot: bool, address: str, launched_some: Callable[[], None]) -> None:
        """The missing workers in one market, within its own call budget; a quota refusal ends the market."""
        market = "spot" if spot else "on-demand"
        for instance_type, subnet, all_or_nothing in self._attempts():
            missing = self.spec.n_workers - len(self.workers)
            if missing <= 0:
                return
            count = (missing, missing) if all_or_nothing else (1, missing)
            try:
                self._add(self._worker_call(instance_type, subnet, count, spot, address), instance_type, subnet,
                          count, launched_some)
            except _Refused as refused:
                self.problems.append(f"{market} {instance_type} in {subnet.zone}: {refused.code}")
                if refused.quota:
                    self._within_quota(instance_type, subnet, spot, address, refused, launched_some)
                    return

    def _within_quota(self, instance_type: str, subnet: _Subnet, spot: bool, address: str, refused: _Refused,
                      launched_some: Callable[[], None]) -> None:
        """After a vCPU quota refused: as many workers as it admits, in the same place (bounded calls)."""
        quota = self._note_quota(instance_type, spot)
        if quota is None or refused.code != "VcpuLimitExceeded":
            return
        missing = self.spec.n_workers - len(self.workers)
        count = missing // 2
        value = self.quota_values.get(quota.code)
        if value is not None:
            in_use = vcpus_in_use(self.ec2, quota, {name: info.vcpus for name, info in self.infos.items()})
            if in_use is not None:
                count = min(missing, admitted(value, in_use, self.infos[instance_type].vcpus))
        for _ in range(QUOTA_RETRIES):
            if count < 1:
                return
            try:
                instances = self._worker_call(instance_type, subnet, (count, count), spot, address)
            except _Refused as again:
                self.problems.append(f"{count} {instance_type} in {subnet.zone}: {again.code}")
                if again.code != "VcpuLimitExceeded":
                    return
                count //= 2
                continue
            self._add(instances, instance_type, subnet, (count, count), launched_some)
            return

    def _worker_call(self, instance_type: str, subnet: _Subnet, count: tuple[int, int], spot: bool,
                     address: str) -> list[dict[str, Any]]:
        return self._run_instances(self._request("worker", instance_type, subnet, count, spot, address))

    def _add(self, instances: list[dict[str, Any]], instance_type: str, subnet: _Subnet, count: tuple[int, int],
             launched_some: Callable[[], None]) -> None:
        self.workers += instances
        if len(instances) < count[1]:
            self.problems.append(f"{instance_type} in {subnet.zone}: {len(instances)} of {count[1]} launched")
        launched_some()

    def refresh_scheduler(self) -> None:
        """The scheduler's public address, which AWS assigns after RunInstances answered."""
        assert self.scheduler is not None
        if self.scheduler.get("PublicIpAddress"):
            return
        try:
            reply = self.ec2.describe_instances(InstanceIds=[self.scheduler["InstanceId"]])
        except (ClientError, BotoCoreError) as exc:  # the cluster is launched; the caller can ask again later
            log.info("cannot read the scheduler's public address yet (%s)", _describe_error(exc))
            return
        for reservation in reply.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                self.scheduler = _summary(instance, self.scheduler.get("Lifecycle", "on-demand"))

    # -- undo -----------------------------------------------------------------------------------------------

    def abort(self) -> str:
        """Terminate whatever this launch made (found by id and by the cluster tag) and delete the group."""
        ids = [instance["InstanceId"] for instance in [self.scheduler, *self.workers] if instance]
        try:
            ids = teardown(self.ec2, instance_ids=ids, security_group_id=self.security_group_id,
                           cluster_id=self.cluster_id, wait=True)
        except Exception as exc:  # say what is left rather than hide the launch's own error
            log.exception("cleaning up %s failed", self.cluster_id)
            return f"cleaning up failed too ({exc}); look for resources tagged vmguard:cluster={self.cluster_id}"
        done = ([f"terminated {len(ids)} instance(s)"] if ids else []) + (
            ["deleted the security group"] if self.security_group_id else [])
        return f"{' and '.join(done)}: nothing is left running" if done else "nothing was launched"

    def last_resort(self) -> None:
        """At interpreter exit, for a launch whose cleanup was itself interrupted: the same cleanup, bounded."""
        print(f"vmguard: cleaning up the interrupted launch of {self.cluster_id}…", file=sys.stderr)
        ids = [instance["InstanceId"] for instance in [self.scheduler, *self.workers] if instance]
        try:
            teardown(self.ec2, instance_ids=ids, security_group_id=self.security_group_id,
                     cluster_id=self.cluster_id, wait=True, timeout=LAST_RESORT_TIMEOUT)
        except Exception as exc:
            print(f"vmguard: cleaning up {self.cluster_id} failed ({exc}); look for resources tagged "
                  f"vmguard:cluster={self.cluster_id}", file=sys.stderr)


def _image_key(info: InstanceType) -> tuple[str, bool]:
    """Which image a type boots: its architecture, and whether it has NVIDIA GPUs (the DLAMI's driver)."""
    return info.arch, (info.gpu_maker or "").upper() == "NVIDIA"


def _summary(instance: dict[str, Any], market: str) -> dict[str, Any]:
    return {
        "InstanceId": instance["InstanceId"],
        "PublicIpAddress": instance.get("PublicIpAddress"),
        "PrivateIpAddress": instance.get("PrivateIpAddress"),
        "InstanceType": instance.get("InstanceType"),
        "AvailabilityZone": instance.get("Placement", {}).get("AvailabilityZone"),
        "Lifecycle": instance.get("InstanceLifecycle") or market,
    }


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


# -- teardown ---------------------------------------------------------------------------------------------------


def teardown(ec2_client: Any, launched: Launched | None = None, *, instance_ids: Iterable[str] = (),
             security_group_id: str | None = None, cluster_id: str | None = None, wait: bool = True,
             timeout: float = 600.0, poll: float = 2.0) -> list[str]:
    """Terminate a cluster's instances and (with ``wait``) delete its security group once they are gone.

    Instances come from ``launched``, ``instance_ids`` and, when ``cluster_id`` is given, every instance tagged
    ``vmguard:cluster=<cluster_id>`` (one paginated DescribeInstances: catches a launch whose reply was lost).
    The group can only be deleted once no network interface uses it, so with ``wait`` its deletion is retried
    until the instances are gone (``timeout``); without, it is tried once and left (tagged) if still in use.
    Returns the ids it terminated. Raises ``SdkError`` naming what is left if the group could not be deleted
    within ``timeout``.
    """
    ids = list(dict.fromkeys([*(launched.instance_ids if launched else []), *instance_ids]))
    group = security_group_id or (launched.security_group_id if launched else None)
    if cluster_id:
        ids = list(dict.fromkeys([*ids, *_tagged_instances(ec2_client, cluster_id)]))
    _terminate(ec2_client, ids)
    if not group:
        if wait and ids:
            _wait_terminated(ec2_client, ids, timeout, poll)
        return ids
    deadline = time.monotonic() + timeout
    while True:
        try:
            ec2_client.delete_security_group(GroupId=group)
            return ids
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("InvalidGroup.NotFound", "InvalidGroupId.NotFound"):
                return ids
            if code != "DependencyViolation":
                raise
        if not wait:
            log.info("security group %s is still in use; it is tagged for the guard to delete later", group)
            return ids
        if time.monotonic() > deadline:
            raise SdkError(f"the instances were terminated but security group {group} was still in use after "
                           f"{timeout:.0f}s; delete it later with `aws ec2 delete-security-group --group-id {group}`")
        time.sleep(poll)


def sweep_orphaned_groups(ec2: Any, owner: str, now: datetime | None = None) -> list[str]:
    """Delete this owner's cluster security groups whose instances are all gone; the deleted group ids.

    A cluster that ended on its own (its VMs' dead-man switch or ``max_lifetime``) while no daemon watched it
    leaves its group behind: nothing else could delete it. Only groups launched ``ORPHAN_MIN_AGE`` ago are
    touched. Best effort: any error is logged and the launch goes on.
    """
    cutoff = (now or datetime.now(timezone.utc)) - ORPHAN_MIN_AGE
    try:
        groups: dict[str, str] = {}
        for page in ec2.get_paginator("describe_security_groups").paginate(Filters=[
                {"Name": "tag:guard:managed", "Values": ["true"]}, {"Name": "tag:owner", "Values": [owner]},
                {"Name": "tag-key", "Values": ["vmguard:cluster", "vmguard:launched"]}]):
            for group in page.get("SecurityGroups", []):
                tags = {tag["Key"]: tag["Value"] for tag in group.get("Tags", [])}
                launched = _parse_time(tags.get("vmguard:launched"))
                if tags.get("vmguard:cluster") and launched is not None and launched < cutoff:
                    groups[tags["vmguard:cluster"]] = group["GroupId"]
        clusters = sorted(groups)
        for start in range(0, len(clusters), FILTER_VALUES):
            for page in ec2.get_paginator("describe_instances").paginate(Filters=[
                    {"Name": "tag:vmguard:cluster", "Values": clusters[start:start + FILTER_VALUES]},
                    {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped",
                                                               "shutting-down"]}]):
                for reservation in page.get("Reservations", []):
                    for instance in reservation.get("Instances", []):
                        tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
                        groups.pop(tags.get("vmguard:cluster", ""), None)
        deleted = []
        for group_id in groups.values():
            try:
                ec2.delete_security_group(GroupId=group_id)
                deleted.append(group_id)
            except ClientError as exc:  # in use after all, or gone already: leave it
                log.info("left security group %s: %s", group_id, _describe_error(exc))
        return deleted
    except (ClientError, BotoCoreError) as exc:
        log.info("could not look for security groups left by ended clusters: %s", _describe_error(exc))
        return []


def _parse_time(text: str | None) -> datetime | None:
    try:
        return datetime.strptime(text or "", TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _tagged_instances(ec2: Any, cluster_id: str) -> list[str]:
    ids = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": "tag:vmguard:cluster", "Values": [cluster_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]):
        for reservation in page.get("Reservations", []):
            ids += [instance["InstanceId"] for instance in reservation.get("Instances", [])]
    return ids


def _terminate(ec2: Any, ids: list[str]) -> None:
    """TerminateInstances in batches; ids AWS no longer knows are dropped and the batch is retried."""
    for start in range(0, len(ids), TERMINATE_BATCH):
        batch = ids[start:start + TERMINATE_BATCH]
        while batch:
            try:
                ec2.terminate_instances(InstanceIds=batch)
                break
            except ClientError as exc:
                error = exc.response.get("Error", {})
                if error.get("Code") != "InvalidInstanceID.NotFound":
                    raise
                gone = set(_INSTANCE_ID.findall(error.get("Message", "")))
                if not gone & set(batch):
                    raise
                batch = [instance_id for instance_id in batch if instance_id not in gone]


def _wait_terminated(ec2: Any, ids: list[str], timeout: float, poll: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending:
        alive = set()
        for start in range(0, len(ids), TERMINATE_BATCH):
            batch = [i for i in ids[start:start + TERMINATE_BATCH] if i in pending]
            if not batch:
                continue
            for page in ec2.get_paginator("describe_instances").paginate(InstanceIds=batch):
                for reservation in page.get("Reservations", []):
                    alive |= {i["InstanceId"] for i in reservation.get("Instances", [])
                              if i.get("State", {}).get("Name") != "terminated"}
        pending = alive
        if not pending:
            return
        if time.monotonic() > deadline:
            raise SdkError(f"{len(pending)} instance(s) were not terminated after {timeout:.0f}s: "
                           f"{', '.join(sorted(pending)[:5])}")
        time.sleep(poll)
