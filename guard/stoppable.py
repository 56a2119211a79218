"""Whether a rule's stop or terminate may touch an instance: the instances for which stopping is not harmless.

- A **spot** instance cannot be stopped at all when it is one-time, and a persistent request replaces it.
- A member of an **Auto Scaling group** is replaced by the group (which then bills the replacement too).
- A node of a **managed service** (EKS, ECS, EMR, SageMaker, Batch, an EC2 or spot fleet) is the service's to
  manage: the service replaces it or fails the job on it.
- An instance whose type has **instance-store** volumes (m5d, g4dn, g5, p4d, i3…) loses their data on a stop: it is
  stopped only where the rule opts in (``act_on_instance_store = true``). Whether a type has instance store is a
  property of the type (DescribeInstanceTypes ``InstanceStorageSupported``), not of the instance's block-device
  mappings, which list EBS volumes only; when it could not be read the instance is treated as having it.

The first three are never stopped or terminated by a rule's action. Pure: the same decision is made when a finding
is made (from the scan) and right before the mutating call (from a fresh read of the instance).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from guard.model import Instance, Tags, freeze_tags

SKIPPED_SPOT = "skipped-spot"
SKIPPED_AUTOSCALING = "skipped-autoscaling"
SKIPPED_MANAGED_SERVICE = "skipped-managed-service"
SKIPPED_INSTANCE_STORE = "skipped-instance-store"
HAZARD_RESULTS = (SKIPPED_SPOT, SKIPPED_AUTOSCALING, SKIPPED_MANAGED_SERVICE, SKIPPED_INSTANCE_STORE)

INSTANCE_ACTIONS = frozenset({"stop", "terminate"})
"""The rule actions this decision applies to (keepalive termination of an SDK cluster is not a rule's action)."""

AUTOSCALING_TAG = "aws:autoscaling:groupName"

MANAGED_SERVICE_TAGS: tuple[tuple[str, str], ...] = (
    ("eks:cluster-name", "EKS"),
    ("eks:nodegroup-name", "EKS"),
    ("aws:eks:cluster-name", "EKS"),
    ("karpenter.sh/nodepool", "EKS (Karpenter)"),
    ("AmazonECSManaged", "ECS"),
    ("aws:elasticmapreduce:job-flow-id", "EMR"),
    ("aws:batch:compute-environment", "Batch"),
    ("aws:ec2:fleet-id", "an EC2 fleet"),
    ("aws:ec2spot:fleet-request-id", "a spot fleet"),
)
"""Exact tag keys that mark an instance a managed service launched (the IAM enforce policy denies on these)."""

MANAGED_SERVICE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("kubernetes.io/cluster/", "EKS"),
    ("aws:ecs:", "ECS"),
    ("aws:sagemaker:", "SageMaker"),
    ("sagemaker:", "SageMaker"),
)
"""Tag key prefixes of the same (IAM cannot condition on a key prefix: the daemon's own check covers them)."""


@dataclass(frozen=True)
class InstanceFacts:
    """What the decision reads about an instance: from the scan, or from a fresh DescribeInstances."""

    instance_type: str
    tags: Tags
    lifecycle: str | None = None
    """DescribeInstances ``InstanceLifecycle``: ``spot``, ``scheduled``, ``capacity-block``, absent for on-demand."""
    spot_request_id: str | None = None
    instance_store: bool | None = False
    """The type has instance-store volumes (True), has none (False), or it could not be read (None)."""

    @classmethod
    def from_describe(cls, raw: dict, instance_store: bool | None) -> InstanceFacts:
        return cls(instance_type=raw.get("InstanceType", ""), tags=freeze_tags(raw.get("Tags")),
                   lifecycle=raw.get("InstanceLifecycle"), spot_request_id=raw.get("SpotInstanceRequestId"),
                   instance_store=instance_store)


@dataclass(frozen=True)
class Hazard:
    result: str
    """One of HAZARD_RESULTS: the ``skipped-…`` result the action gets."""
    reason: str


def managed_by(tags: Tags) -> tuple[str, str] | None:
    """(service, tag key) of the managed service whose node this is, if its tags say so."""
    for key, service in MANAGED_SERVICE_TAGS:
        if key in tags:
            return service, key
    for prefix, service in MANAGED_SERVICE_PREFIXES:
        for key in tags:
            if key.startswith(prefix):
                return service, key
    return None


def stop_hazard(facts: InstanceFacts, act_on_instance_store: bool = False) -> Hazard | None:
    """Why a rule's stop or terminate must leave this instance alone; None when it may go ahead."""
    if facts.lifecycle == "spot" or facts.spot_request_id:
        request = f" (request {facts.spot_request_id})" if facts.spot_request_id else ""
        return Hazard(SKIPPED_SPOT, f"a spot instance{request}: a one-time spot instance cannot be stopped and a "
                                    "persistent request replaces it; never stopped or terminated by a rule")
    managed = managed_by(facts.tags)
    if managed is not None:
        service, key = managed
        return Hazard(SKIPPED_MANAGED_SERVICE, f"a node of {service} (tag {key}={facts.tags[key]}): the service "
                                               "replaces it; never stopped or terminated by a rule — scale it "
                                               "down in the service")
    if AUTOSCALING_TAG in facts.tags:
        return Hazard(SKIPPED_AUTOSCALING, f"a member of Auto Scaling group {facts.tags[AUTOSCALING_TAG]}: the group "
                                           "replaces it; never stopped or terminated by a rule — lower the group's "
                                           "desired capacity instead")
    if not act_on_instance_store and facts.instance_store is not False:
        if facts.instance_store is None:
            return Hazard(SKIPPED_INSTANCE_STORE, f"whether {facts.instance_type or 'its type'} has instance-store "
                                                  "volumes could not be read (DescribeInstanceTypes); not stopped "
                                                  "unless the rule sets act_on_instance_store = true")
        return Hazard(SKIPPED_INSTANCE_STORE, f"{facts.instance_type} has instance-store volumes, erased by a stop; "
                                              "not stopped unless the rule sets act_on_instance_store = true")
    return None


def facts_of(instance: Instance, instance_storage: Mapping[str, bool] | None) -> InstanceFacts:
    """The facts of an instance as a scan saw it; its type's instance store is unknown when the scan did not read it."""
    return InstanceFacts(instance_type=instance.instance_type, tags=instance.tags, lifecycle=instance.lifecycle,
                         spot_request_id=instance.spot_request_id,
                         instance_store=(instance_storage or {}).get(instance.instance_type))


def acts_on_instances(rule) -> bool:
    """The rule's configured action is a stop or terminate of instances (so the decision above applies)."""
    return rule.resource_type == "instance" and rule.config.enabled and rule.config.action in INSTANCE_ACTIONS

INSTANCE_STORE_TYPE_PATTERNS: tuple[str, ...] = (
    "*d.*", "*dn.*", "*de.*",  # the "d" suffix: m5d, c6gd, r6id, z1d, g4ad, p4d, g4dn, m5dn, x2iedn, p4de…
    "c1.*", "c3.*", "cc2.*", "cr1.*", "d2.*", "d3.*", "d3en.*", "dl1.*", "f1.*", "f2.*", "g2.*", "g5.*", "g6.*",
    "g6e.*", "gr6.*", "h1.*", "hi1.*", "hs1.*", "i2.*", "i3.*", "i3en.*", "i4g.*", "i4i.*", "i7i.*", "i7ie.*",
    "i8g.*", "i8ge.*", "im4gn.*", "is4gen.*", "m1.*", "m2.*", "m3.*", "p5.*", "p5e.*", "p5en.*", "p6-b200.*",
    "r3.*", "trn1.*", "trn1n.*", "trn2.*", "x1.*", "x1e.*",
)
"""``ec2:InstanceType`` patterns of the types with instance-store volumes, for the IAM enforce policy's Deny — a
backstop only: the daemon itself asks DescribeInstanceTypes, which also knows types newer than this list."""
