"""What each action does to AWS, and how to tell from the resource itself whether it is done.

An executor ``observe``s one resource (a read: does it exist, its tags, its state, whether the action's goal
already holds) and ``execute``s the action's mutating calls inside ``Aws.mutating`` naming exactly those calls.
Observing first is what makes an action safe to resume after a crash: a goal that already holds is recorded
as done, never repeated. None of these EC2/Logs operations takes a client token, so idempotency comes from
state checks, and for snapshot-then-delete from the idempotency key tagged on the snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from botocore.exceptions import ClientError

from guard.aws import Aws
from guard.collectors.launch_sources import collect_launch_sources
from guard.model import CLUSTER_TAG, Tags, freeze_tags
from guard.stoppable import InstanceFacts
from guard.wire import OWNER_TAG

KEY_TAG = "guard:action-key"
"""Tag on a snapshot made by snapshot-then-delete: the action's idempotency key (found again after a crash)."""


@dataclass(frozen=True)
class Observed:
    """A resource as AWS shows it right now."""

    exists: bool
    tags: Tags = field(default_factory=lambda: freeze_tags(None))
    state: str = ""
    goal_reached: bool = False
    """The action's effect already holds (stopped, released, retention set…): nothing to call."""
    blocker: str | None = None
    """Why the action must not go ahead although the resource exists (e.g. the volume was attached again)."""
    instance: InstanceFacts | None = None
    """For a stop or terminate: what decides whether stopping the instance is harmless (``guard.stoppable``)."""


@dataclass(frozen=True)
class Outcome:
    status: str
    """done, in-progress (call again later with the detail) or failed."""
    detail: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


def _not_found(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    return code.endswith(".NotFound") or code.endswith("NotFoundException") or code == "ResourceNotFoundException"


class Executor:
    """One action kind; subclasses set the class attributes and implement observe/execute."""

    name: ClassVar[str]
    resource_type: ClassVar[str]
    destructive: ClassVar[bool] = True
    """Loses data or an address for good: needs the guard:managed tag or the rule's act_on_unmanaged."""
    operations: ClassVar[tuple[str, ...]]
    """The mutating ``service:Operation`` calls it makes (and the IAM actions they need)."""
    reads: ClassVar[tuple[str, ...]]
    """The reads ``observe`` makes."""
    iam_resource: ClassVar[str]
    """The IAM resource ARN pattern the operations act on (``{region}``/``{account}`` filled in)."""
    tag_conditions: ClassVar[bool] = True
    """Whether IAM can condition these operations on the resource's tags (aws:ResourceTag)."""

    def observe(self, aws: Aws, region: str, resource_id: str, params: Mapping[str, Any]) -> Observed:
        raise NotImplementedError

    def execute(self, aws: Aws, region: str, resource_id: str, params: Mapping[str, Any],
                detail: Mapping[str, Any], started_at: datetime, now: datetime) -> Outcome:
        raise NotImplementedError


def _one(describe: Callable[[], list[dict]]) -> dict | None:
    """The one resource a Describe call by id returns; None when AWS says it does not exist."""
    try:
        found = describe()
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise
    return found[0] if found else None


def _instance(aws: Aws, region: str, instance_id: str) -> dict | None:
    ec2 = aws.client("ec2", region)
    return _one(lambda: [i for r in ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
                         for i in r["Instances"]])


def _instance_facts(aws: Aws, region: str, raw: dict) -> InstanceFacts:
    """The instance's facts as AWS shows them now, its type's instance store included (None if it cannot be read)."""
    instance_type = raw.get("InstanceType", "")
    try:
        found = aws.client("ec2", region).describe_instance_types(
            Filters=[{"Name": "instance-type", "Values": [instance_type]}])["InstanceTypes"]
        store = bool(found[0].get("InstanceStorageSupported")) if found else None
    except ClientError:
        store = None
    return InstanceFacts.from_describe(raw, instance_store=store)


class Stop(Executor):
    name = "stop"
    resource_type = "instance"
    destructive = False
    operations = ("ec2:StopInstances",)
    reads = ("ec2:DescribeInstances", "ec2:DescribeInstanceTypes")
    iam_resource = "arn:aws:ec2:{region}:{account}:instance/*"

    def observe(self, aws, region, resource_id, params) -> Observed:
        raw = _instance(aws, region, resource_id)
        if raw is None:
            return Observed(exists=False)
        state = raw["State"]["Name"]
        if state in ("shutting-down", "terminated"):
            return Observed(exists=False, state=state)
        goal = state in ("stopping", "stopped")
        return Observed(exists=True, tags=freeze_tags(raw.get("Tags")), state=state, goal_reached=goal,
                        instance=None if goal else _instance_facts(aws, region, raw))

    def execute(self, aws, region, resource_id, params, detail, started_at, now) -> Outcome:
        with aws.mutating(*self.operations):
            aws.client("ec2", region).stop_instances(InstanceIds=[resource_id])
        return Outcome("done")


class Terminate(Executor):
    name = "terminate"
    resource_type = "instance"
    operations = ("ec2:TerminateInstances",)
    reads = ("ec2:DescribeInstances", "ec2:DescribeInstanceTypes")
    iam_resource = "arn:aws:ec2:{region}:{account}:instance/*"

    def observe(self, aws, region, resource_id, params) -> Observed:
        raw = _instance(aws, region, resource_id)
        if raw is None:
            return Observed(exists=False, goal_reached=True)
        state = raw["State"]["Name"]
        tags = freeze_tags(raw.get("Tags"))
        if state in ("shutting-down", "terminated"):
            return Observed(exists=True, tags=tags, state=state, goal_reached=True)
        blocker = None
        if params.get("after_stop") and state != "stopped":
            blocker = f"the stop was undone (the instance is {state})"
        return Observed(exists=True, tags=tags, state=state, blocker=blocker,
                        instance=None if blocker else _instance_facts(aws, region, raw))

    def execute(self, aws, region, resource_id, params, detail, started_at, now) -> Outcome:
        with aws.mutating(*self.operations):
            aws.client("ec2", region).terminate_instances(InstanceIds=[resource_id])
        return Outcome("done")


class SnapshotThenDelete(Executor):
    """Snapshot the volume (tagged with its id, owner, finding and this action's key), and delete the volume only
    once that snapshot has completed; a snapshot that fails or does not complete in time leaves the volume alone."""

    name = "snapshot-then-delete"
    resource_type = "volume"
    operations = ("ec2:CreateSnapshot", "ec2:CreateTags", "ec2:DeleteVolume")
    reads = ("ec2:DescribeVolumes", "ec2:DescribeSnapshots")
    iam_resource = "arn:aws:ec2:{region}:{account}:volume/*"

    def observe(self, aws, region, resource_id, params) -> Observed:
        ec2 = aws.client("ec2", region)
        volume = _one(lambda: ec2.describe_volumes(VolumeIds=[resource_id])["Volumes"])
        if volume is None:
            return Observed(exists=False, goal_reached=True)
        blocker = None if volume["State"] == "available" else f"the volume is {volume['State']} (attached again?)"
        return Observed(exists=True, tags=freeze_tags(volume.get("Tags")), state=volume["State"], blocker=blocker)

    def execute(self, aws, region, resource_id, params, detail, started_at, now) -> Outcome:
        ec2 = aws.client("ec2", region)
        key = params["key"]
        found = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": f"tag:{KEY_TAG}", "Values": [key]}])
        snapshots = sorted(found["Snapshots"], key=lambda s: s["StartTime"])
        if not snapshots:
            tags = [{"Key": KEY_TAG, "Value": key}, {"Key": "guard:volume-id", "Value": resource_id},
                    {"Key": "guard:finding", "Value": str(params.get("finding_id", ""))},
                    {"Key": "owner", "Value": str(params.get("owner", "unknown"))}]
            with aws.mutating("ec2:CreateSnapshot", "ec2:CreateTags"):
                created = ec2.create_snapshot(
                    VolumeId=resource_id, Description=f"vmguard: {resource_id} before deletion (action {key})",
                    TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags}])
            snapshot = created
        else:
            snapshot = snapshots[0]
        progress = {"snapshot_id": snapshot["SnapshotId"], "snapshot_state": snapshot["State"]}
        if snapshot["State"] == "error":
            return Outcome("failed", progress, f"snapshot {snapshot['SnapshotId']} failed: "
                                               f"{snapshot.get('StateMessage') or 'error'}; the volume is kept")
        if snapshot["State"] != "completed":
            timeout = params.get("snapshot_timeout_seconds")
            if timeout is not None and (now - started_at).total_seconds() >= timeout:
                return Outcome("failed", progress, f"snapshot {snapshot['SnapshotId']} still "
                                                   f"{snapshot['State']} after {int(timeout)}s; the volume is kept")
            return Outcome("in-progress", progress)
        with aws.mutating("ec2:DeleteVolume"):
            ec2.delete_volume(VolumeId=resource_id)
        return Outcome("done", progress)


class Release(Executor):
    name = "release"
    resource_type = "elastic-ip"
    operations = ("ec2:ReleaseAddress",)
    reads = ("ec2:DescribeAddresses",)
    iam_resource = "arn:aws:ec2:{region}:{account}:elastic-ip/*"

    def observe(self, aws, region, resource_id, params) -> Observed:
        ec2 = aws.client("ec2", region)
        address = _one(lambda: ec2.describe_addresses(AllocationIds=[resource_id])["Addresses"])
        if address is None:
            return Observed(exists=False, goal_reached=True)
        blocker = f"the address is associated again ({address['AssociationId']})" if address.get(
            "AssociationId") else None
        return Observed(exists=True, tags=freeze_tags(address.get("Tags")),
                        state="associated" if blocker else "unassociated", blocker=blocker)

    def execute(self, aws, region, resource_id, params, detail, started_at, now) -> Outcome:
        with aws.mutating(*self.operations):
            aws.client("ec2", region).release_address(AllocationId=resource_id)
        return Outcome("done")


class SetRetention(Executor):
    name = "set-retention"
    resource_type = "log-group"
    operations = ("logs:PutRetentionPolicy",)
    reads = ("logs:DescribeLogGroups", "logs:ListTagsForResource")
    iam_resource = "arn:aws:logs:{region}:{account}:log-group:*"

    def observe(self, aws, region, resource_id, params) -> Observed:
        logs = aws.client("logs", region)
        groups = logs.describe_log_groups(logGroupNamePrefix=resource_id)["logGroups"]
        group = next((g for g in groups if g["logGroupName"] == resource_id), None)
        if group is None:
            return Observed(exists=False)
        arn = group["arn"].removesuffix(":*")
        tags = logs.list_tags_for_resource(resourceArn=arn).get("tags", {})
        retention = group.get("retentionInDays")
        return Observed(exists=True, tags=freeze_tags(tags), state=f"retention {retention or 'never expire'}",
                        goal_reached=retention is not None and retention <= params["retention_days"])

    def execute(self, aws, region, resource_id, params, detail, started_at, now) -> Outcome:
        with aws.mutating(*self.operations):
            aws.client("logs", region).put_retention_policy(logGroupName=resource_id,
                                                            retentionInDays=params["retention_days"])
        return Outcome("done")


class DeleteSnapshot(Executor):
    name = "delete"
    resource_type = "snapshot"
    operations = ("ec2:DeleteSnapshot",)
    reads = ("ec2:DescribeSnapshots", "ec2:DescribeLaunchTemplateVersions", "autoscaling:DescribeLaunchConfigurations")
    iam_resource = "arn:aws:ec2:{region}::snapshot/*"

    def observe(self, aws, region, resource_id, params) -> Observed:
        ec2 = aws.client("ec2", region)
        snapshot = _one(lambda: ec2.describe_snapshots(SnapshotIds=[resource_id])["Snapshots"])
        if snapshot is None:
            return Observed(exists=False, goal_reached=True)
        tags = freeze_tags(snapshot.get("Tags"))
        blocker = (f"it is the copy snapshot-then-delete kept of {tags.get('guard:volume-id', 'a volume')}: "
                   "delete it by hand once it is not needed" if KEY_TAG in tags else None)
        if blocker is None:
            # AWS refuses to delete an AMI's snapshot, not one a launch template names: the group's next launch
            # would fail. Read again now: a template made since the scan counts.
            users = [source.describe() for source in collect_launch_sources(aws, region)
                     if resource_id in source.snapshot_ids]
            if users:
                blocker = f"{users[0]} launches from it" + (f" (and {len(users) - 1} more)" if len(users) > 1 else "")
        return Observed(exists=True, tags=tags, state=snapshot["State"], blocker=blocker)

    def execute(self, aws, region, resource_id, params, detail, started_at, now) -> Outcome:
        with aws.mutating(*self.operations):
            aws.client("ec2", region).delete_snapshot(SnapshotId=resource_id)
        return Outcome("done")


_LIVE = ("pending", "running", "stopping", "stopped")
_CHUNK = 200
"""Values per Describe filter (EC2 accepts at most 200)."""


def _pair(tag: str) -> tuple[str, str]:
    key, _, value = tag.partition("=")
    return key, value


def _has(tags: Tags, pair: tuple[str, str]) -> bool:
    return tags.get(pair[0], "").lower() == pair[1].lower()


@dataclass(frozen=True)
class _ClusterView:
    """A registered cluster's instances and security group as EC2 shows them now."""

    ours: dict[str, str]
    """Instances tagged as this cluster's (managed tag and cluster id) → state."""
    foreign: dict[str, str]
    """Registered instances that are not tagged as this cluster's → state: never touched."""
    protected: list[str]
    group: dict | None
    group_ours: bool

    def ids(self, states: tuple[str, ...], which: str = "ours") -> list[str]:
        return sorted(i for i, state in getattr(self, which).items() if state in states)


class TerminateCluster(Executor):
    """Terminate an expired cluster the SDK registered: its instances, then its security group.

    Only instances tagged with the managed tag AND ``vmguard:cluster=<id>`` AND ``owner=<the registered owner>``
    are terminated (any other is left alone and named in the outcome: a registration cannot end another owner's
    VMs); the security group is deleted once every one of them is terminated, and only if it carries the same three
    tags. Any live instance or the group carrying the protection tag stops the whole action. Params: instance_ids,
    region, security_group_id, managed_tag, protect_tag, owner (an intent without one owns nothing).
    """

    name = "terminate-cluster"
    resource_type = "cluster"
    operations = ("ec2:TerminateInstances", "ec2:DeleteSecurityGroup")
    reads = ("ec2:DescribeInstances", "ec2:DescribeSecurityGroups")
    iam_resource = "arn:aws:ec2:{region}:{account}:instance/*"
    iam_resources = {"ec2:TerminateInstances": "arn:aws:ec2:{region}:{account}:instance/*",
                     "ec2:DeleteSecurityGroup": "arn:aws:ec2:{region}:{account}:security-group/*"}
    group_wait_seconds = 600
    """How long the group may stay in use (network interfaces of terminated instances linger) before giving up."""

    def _look(self, aws: Aws, region: str, cluster_id: str, params: Mapping[str, Any]) -> _ClusterView:
        ec2 = aws.client("ec2", region)
        managed, protect = _pair(params["managed_tag"]), _pair(params["protect_tag"])
        owner = params.get("owner")

        def launched_for_it(tags: Tags) -> bool:
            return (owner is not None and _has(tags, managed) and tags.get(CLUSTER_TAG) == cluster_id
                    and tags.get(OWNER_TAG) == owner)

        registered = list(dict.fromkeys(params.get("instance_ids") or ()))
        filters = [[{"Name": "instance-id", "Values": registered[i:i + _CHUNK]}]
                   for i in range(0, len(registered), _CHUNK)]
        filters.append([{"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster_id]}])  # launched for it, not registered
        instances: dict[str, dict] = {}
        for chunk in filters:
            for page in ec2.get_paginator("describe_instances").paginate(Filters=chunk):
                for reservation in page["Reservations"]:
                    for instance in reservation["Instances"]:
                        instances[instance["InstanceId"]] = instance
        ours: dict[str, str] = {}
        foreign: dict[str, str] = {}
        protected = []
        for instance_id, instance in instances.items():
            tags, state = freeze_tags(instance.get("Tags")), instance["State"]["Name"]
            if launched_for_it(tags):
                ours[instance_id] = state
            else:
                foreign[instance_id] = state
            if state != "terminated" and _has(tags, protect):
                protected.append(instance_id)
        group, group_ours = None, False
        if params.get("security_group_id"):
            found = ec2.describe_security_groups(
                Filters=[{"Name": "group-id", "Values": [params["security_group_id"]]}])["SecurityGroups"]
            group = found[0] if found else None
        if group is not None:
            tags = freeze_tags(group.get("Tags"))
            group_ours = launched_for_it(tags)
            if _has(tags, protect):
                protected.append(group["GroupId"])
        return _ClusterView(ours=ours, foreign=foreign, protected=sorted(protected), group=group,
                            group_ours=group_ours)

    def observe(self, aws, region, resource_id, params) -> Observed:
        view = self._look(aws, region, resource_id, params)
        managed, protect = _pair(params["managed_tag"]), _pair(params["protect_tag"])
        live, going = view.ids(_LIVE), view.ids(("shutting-down",))
        state = (f"{len(live)} live, {len(going)} shutting down, {len(view.ids(('terminated',)))} terminated"
                 + (f"; security group {view.group['GroupId']}" if view.group is not None else ""))
        tags: dict[str, str] = {}
        if view.ours or view.group_ours:
            tags.update({managed[0]: managed[1], CLUSTER_TAG: resource_id})
        if view.protected:
            tags[protect[0]] = protect[1]
        if not view.ours and not view.group_ours and view.ids(_LIVE, "foreign"):
            # nothing here was launched for this cluster: the scope gate holds it back (no managed tag)
            return Observed(exists=True, tags=freeze_tags(tags), state=state)
        goal = not live and not going and not (view.group is not None and view.group_ours)
        return Observed(exists=bool(view.ours or view.foreign or view.group), tags=freeze_tags(tags), state=state,
                        goal_reached=goal)

    def execute(self, aws, region, resource_id, params, detail, started_at, now) -> Outcome:
        ec2 = aws.client("ec2", region)
        view = self._look(aws, region, resource_id, params)
        progress: dict[str, Any] = {}
        live = view.ids(_LIVE)
        if live:
            with aws.mutating("ec2:TerminateInstances"):
                for i in range(0, len(live), 1000):
                    ec2.terminate_instances(InstanceIds=live[i:i + 1000])
            progress["terminated"] = sorted(set(detail.get("terminated", [])) | set(live))
            view = self._look(aws, region, resource_id, params)
        left_alone = view.ids(_LIVE + ("shutting-down",), "foreign")
        if left_alone:
            progress["left_alone"] = left_alone
        waiting = view.ids(_LIVE + ("shutting-down",))
        if waiting:
            return Outcome("in-progress", progress | {"waiting_for": waiting})
        if view.group is not None and not view.group_ours:
            progress["security_group_kept"] = (f"{view.group['GroupId']}: not tagged {params['managed_tag']}, "
                                               f"{CLUSTER_TAG}={resource_id} and "
                                               f"{OWNER_TAG}={params.get('owner')}")
        elif view.group is not None:
            group_id = view.group["GroupId"]
            try:
                with aws.mutating("ec2:DeleteSecurityGroup"):
                    ec2.delete_security_group(GroupId=group_id)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "DependencyViolation":
                    if (now - started_at).total_seconds() < self.group_wait_seconds:
                        return Outcome("in-progress", progress | {"security_group_in_use": group_id})
                    return Outcome("failed", progress, f"security group {group_id} still in use "
                                                       f"{self.group_wait_seconds}s after its instances were "
                                                       "terminated; the instances are gone, delete the group by hand")
                if not _not_found(exc):
                    raise
            progress["security_group_deleted"] = group_id
        return Outcome("done", progress)


EXECUTORS: dict[str, Executor] = {executor.name: executor for executor in (
    Stop(), Terminate(), SnapshotThenDelete(), Release(), SetRetention(), DeleteSnapshot())}
"""The actions a rule can be configured to take (every one but ``notify``), by name."""
TERMINATE_CLUSTER = TerminateCluster()
UP_FRONT: dict[str, Executor] = {TERMINATE_CLUSTER.name: TERMINATE_CLUSTER}
"""Actions the user asked for at launch (keepalive expiry of a registered cluster): not a rule's choice, and due
in every mode unless ``enforce_keepalive`` is off."""
ALL_EXECUTORS: dict[str, Executor] = EXECUTORS | UP_FRONT
