"""Actions against the emulated account, through the scanner: what each action leaves in AWS and in the audit trail,
what dry-run and observe mode do, each safety gate, and how intents left by a crash are finished."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from guard.audit import DONE, PENDING, ActionRow, AuditLog, Intent, idempotency_key
from guard.aws import Aws, is_read_only
from guard.daemon import Daemon
from guard.engine import Scanner
from guard.sandbox import SandboxServer, make_busy, sandbox_client
from guard.sandbox import metrics as sandbox_metrics
from guard.sandbox.backdate import backdate
from guard.sandbox.images import image_for
from guard.store import FindingRow, Store

REGION = "us-east-1"
ACCOUNT = "123456789012"
PROTECT = {"Key": "guard:protect", "Value": "true"}
MANAGED = {"Key": "guard:managed", "Value": "true"}
HOUR = timedelta(hours=1)

# -- the account ------------------------------------------------------------------------------------------------------


@pytest.fixture
def account(sandbox: SandboxServer) -> str:
    """An empty emulated account; tests seed what they need into it."""
    sandbox.reset()
    return sandbox.endpoint_url


def now() -> datetime:
    return datetime.now(timezone.utc)


def ec2(endpoint: str):
    return sandbox_client(endpoint, "ec2", REGION)


def _tags(resource_type: str, tags: list[dict] | None) -> dict:
    return {"TagSpecifications": [{"ResourceType": resource_type, "Tags": tags}]} if tags else {}


def idle_instance(endpoint: str, instance_type: str = "m5.large", tags: list[dict] | None = None,
                  **launch) -> str:
    """A running instance, launched two days ago, whose CloudWatch series says it does nothing."""
    owner = [{"Key": "owner", "Value": "maria.garcia"}]
    [instance] = ec2(endpoint).run_instances(ImageId=image_for(instance_type), InstanceType=instance_type,
                                             MinCount=1, MaxCount=1, **_tags("instance", owner + (tags or [])),
                                             **launch)["Instances"]
    instance_id = instance["InstanceId"]
    sandbox_metrics.put(endpoint, REGION, sandbox_metrics.datums(
        instance_id, sandbox_metrics.IDLE, sandbox_metrics.timestamps(now()), random.Random(instance_id)))
    backdate(endpoint, REGION, instances={instance_id: now() - timedelta(days=2)})
    return instance_id


def detached_volume(endpoint: str, tags: list[dict] | None = None, age: timedelta = timedelta(days=3)) -> str:
    owner = [{"Key": "owner", "Value": "wei.chen"}]
    volume_id = ec2(endpoint).create_volume(AvailabilityZone=f"{REGION}a", Size=20, VolumeType="gp3",
                                            **_tags("volume", owner + (tags or [])))["VolumeId"]
    backdate(endpoint, REGION, volumes={volume_id: now() - age})
    return volume_id


def elastic_ip(endpoint: str) -> str:
    return ec2(endpoint).allocate_address(Domain="vpc")["AllocationId"]


def orphaned_snapshot(endpoint: str) -> str:
    """A month-old snapshot whose volume was deleted since."""
    volume_id = ec2(endpoint).create_volume(AvailabilityZone=f"{REGION}a", Size=8, VolumeType="gp2")["VolumeId"]
    snapshot_id = ec2(endpoint).create_snapshot(VolumeId=volume_id, Description="before cleanup")["SnapshotId"]
    ec2(endpoint).delete_volume(VolumeId=volume_id)
    backdate(endpoint, REGION, snapshots={snapshot_id: now() - timedelta(days=30)})
    return snapshot_id


def log_group_kept_forever(endpoint: str, name: str = "/ecs/legacy-batch") -> str:
    """A 100-day-old log group without retention holding 50 GB (history the API cannot write in seconds)."""
    from moto.logs.models import logs_backends

    logs = sandbox_client(endpoint, "logs", REGION)
    logs.create_log_group(logGroupName=name, tags={"owner": "tom.becker"})
    logs.create_log_stream(logGroupName=name, logStreamName="task-1")
    group = logs_backends[ACCOUNT][REGION].groups[name]
    group.creation_time = (now() - timedelta(days=100)).replace(tzinfo=None)
    group.streams["task-1"].stored_bytes = 50 * 10**9
    return name


def instance_state(endpoint: str, instance_id: str) -> str:
    [reservation] = ec2(endpoint).describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservation["Instances"][0]["State"]["Name"]


def volume_exists(endpoint: str, volume_id: str) -> bool:
    return volume_id in {v["VolumeId"] for v in ec2(endpoint).describe_volumes()["Volumes"]}


def address_exists(endpoint: str, allocation_id: str) -> bool:
    return allocation_id in {a["AllocationId"] for a in ec2(endpoint).describe_addresses()["Addresses"]}


def snapshots(endpoint: str) -> dict[str, dict]:
    """The account's own snapshots (not those behind the emulator's public images)."""
    return {s["SnapshotId"]: s for s in ec2(endpoint).describe_snapshots(OwnerIds=["self"])["Snapshots"]
            if s["OwnerId"] == ACCOUNT}


def set_snapshot_state(snapshot_id: str, state: str) -> None:
    """What AWS does on its own while a snapshot is copied: the emulator completes snapshots at once."""
    from moto.ec2.models import ec2_backends

    ec2_backends[ACCOUNT][REGION].snapshots[snapshot_id].status = state


# -- the daemon's side ------------------------------------------------------------------------------------------------

Make = Callable[..., Scanner]


@pytest.fixture
def make(registry, make_settings) -> Make:
    """A scanner of REGION with only the given rules enabled, each with its action settings; enforce mode, gates
    opened wide except where a test narrows them."""

    def build(actions: dict[str, dict], **overrides) -> Scanner:
        rules = {rule_id: {"enabled": False} for rule_id in registry.rules}
        for rule_id, section in actions.items():
            rules[rule_id] = {"grace": "0s", "act_on_unmanaged": True} | section
        values = {"regions": [REGION], "mode": "enforce", "allowed_accounts": ACCOUNT, "min_resource_age": "0s",
                  "max_actions_per_cycle": 100, "max_actions_per_hour": 1000, "rules": rules} | overrides
        settings = make_settings(**values)
        return Scanner(settings, registry, Aws(), Store(settings.database_url))

    return build


STOP = {"idle-vms": {"action": "stop"}}
TERMINATE = {"idle-vms": {"action": "terminate", "grace": "1h"}}
SNAPSHOT_THEN_DELETE = {"detached-volumes": {"action": "snapshot-then-delete", "min_age": "0s"}}
RELEASE = {"unattached-eips": {"action": "release"}}
DELETE = {"orphaned-snapshots": {"action": "delete", "min_age": "0s"}}


def scan(scanner: Scanner, progress=None):
    report = scanner.scan(REGION, progress)
    assert report.status == "ok", report.errors
    return report


def mutations(scanner: Scanner) -> dict[str, int]:
    """Mutating calls the scanner's AWS session sent (sent, not merely attempted: a refused call is never sent)."""
    return {op: n for op, n in scanner.aws.counter.by_operation().items() if not is_read_only(op.split(":", 1)[1])}


def audit(scanner: Scanner) -> AuditLog:
    return scanner.actuator.audit


def rows(scanner: Scanner, **filters) -> list[ActionRow]:
    return sorted(audit(scanner).actions(**filters), key=lambda row: row.id)


def finding(scanner: Scanner, rule: str, resource_id: str) -> FindingRow:
    [row] = [f for f in scanner.store.findings(state="all", rule=rule) if f.resource_id == resource_id]
    return row


def age_finding(scanner: Scanner, finding_id: int, by: timedelta) -> None:
    """Move a finding's first sighting into the past (instead of waiting out a grace period)."""
    with scanner.store.session() as session, session.begin():
        row = session.get(FindingRow, finding_id)
        session.execute(update(FindingRow).where(FindingRow.id == finding_id)
                        .values(first_seen=row.first_seen - by))


def age_action(scanner: Scanner, row_id: int, by: timedelta) -> None:
    row = audit(scanner).get(row_id)
    audit(scanner).set_fields(row_id, started_at=row.started_at - by, finished_at=row.finished_at - by)


def assert_done(row: ActionRow, rule: str, action: str, resource_id: str, finding_id: int) -> None:
    """A row that records who decided what, on which resource, for which finding, and when it ran."""
    assert (row.status, row.rule, row.action, row.resource_id, row.finding_id) == (
        DONE, rule, action, resource_id, finding_id), row.as_dict()
    assert row.account_id == ACCOUNT and row.region == REGION and row.mode == "enforce"
    assert row.approved_by == "mode:enforce" and row.error is None
    assert len(row.key) == 40 and row.params["key"] == row.key
    assert row.started_at is not None and row.finished_at is not None and row.started_at <= row.finished_at
    assert row.planned_at <= row.started_at


def results(report) -> list[tuple[str, str, str]]:
    return sorted(report.actions.results)


# -- enforce: each action, end to end --------------------------------------------------------------------------------


def test_stop(account: str, make: Make) -> None:
    instance_id = idle_instance(account)
    scanner = make(STOP)
    report = scan(scanner)
    assert results(report) == [("idle-vms", "stop", "done")]
    assert instance_state(account, instance_id) == "stopped"
    [row] = rows(scanner)
    assert_done(row, "idle-vms", "stop", instance_id, finding(scanner, "idle-vms", instance_id).id)
    assert row.follow_up is None and report.actions.executed == [row.as_dict()]
    assert mutations(scanner) == {"ec2:StopInstances": 1}
    scan(scanner)  # stopped: the finding resolves and nothing more is done
    assert mutations(scanner) == {"ec2:StopInstances": 1}
    assert finding(scanner, "idle-vms", instance_id).state == "resolved"


def test_terminate_follows_a_stop_that_held_for_the_grace(account: str, make: Make) -> None:
    instance_id = idle_instance(account)
    scanner = make(TERMINATE)
    assert results(scan(scanner)) == []  # the finding is new: its grace has not passed
    found = finding(scanner, "idle-vms", instance_id)
    age_finding(scanner, found.id, 2 * HOUR)
    assert results(scan(scanner)) == [("idle-vms", "stop", "done")]  # reversible first
    assert instance_state(account, instance_id) == "stopped"
    [stop] = rows(scanner)
    assert_done(stop, "idle-vms", "stop", instance_id, found.id)
    assert stop.follow_up == "terminate"

    assert results(scan(scanner)) == []  # stopped just now: the stop has not held for the grace yet
    assert instance_state(account, instance_id) == "stopped"
    assert mutations(scanner) == {"ec2:StopInstances": 1}

    age_action(scanner, stop.id, 2 * HOUR)  # the stop was two hours ago, and the instance stayed stopped since
    backdate(account, REGION, stopped={instance_id: audit(scanner).get(stop.id).finished_at})
    assert results(scan(scanner)) == [("idle-vms", "terminate", "done")]
    assert instance_state(account, instance_id) == "terminated"
    stop, terminate = rows(scanner)
    assert_done(terminate, "idle-vms", "terminate", instance_id, found.id)
    assert terminate.parent_id == stop.id and stop.follow_up is None
    assert mutations(scanner) == {"ec2:StopInstances": 1, "ec2:TerminateInstances": 1}

    scan(scanner)
    assert mutations(scanner) == {"ec2:StopInstances": 1, "ec2:TerminateInstances": 1}


def _stopped_by_guard(account: str, make: Make) -> tuple[Scanner, str, ActionRow]:
    instance_id = idle_instance(account)
    scanner = make(TERMINATE)
    scan(scanner)
    age_finding(scanner, finding(scanner, "idle-vms", instance_id).id, 2 * HOUR)
    scan(scanner)
    [stop] = rows(scanner)
    assert stop.status == DONE and stop.follow_up == "terminate"
    return scanner, instance_id, stop


def test_a_stop_undone_before_the_grace_ends_the_chain(account: str, make: Make) -> None:
    scanner, instance_id, stop = _stopped_by_guard(account, make)
    ec2(account).start_instances(InstanceIds=[instance_id])  # its owner needs it after all
    scan(scanner)
    stop = audit(scanner).get(stop.id)
    assert stop.follow_up is None and stop.detail["follow_up"] == "not terminated: instance running"

    ec2(account).stop_instances(InstanceIds=[instance_id])  # stopped again later, and left so for long
    age_action(scanner, stop.id, 3 * HOUR)
    backdate(account, REGION, stopped={instance_id: now() - 2 * HOUR})
    for _ in range(2):
        scan(scanner)
    assert instance_state(account, instance_id) == "stopped"
    assert "ec2:TerminateInstances" not in mutations(scanner)
    assert [row.action for row in rows(scanner)] == ["stop"]


def test_a_stop_undone_and_redone_between_two_scans_ends_the_chain(account: str, make: Make) -> None:
    scanner, instance_id, stop = _stopped_by_guard(account, make)
    age_action(scanner, stop.id, 2 * HOUR)  # guard stopped it two hours ago …
    ec2(account).start_instances(InstanceIds=[instance_id])  # … its owner used it since, and stopped it just now
    ec2(account).stop_instances(InstanceIds=[instance_id])
    scan(scanner)
    assert audit(scanner).get(stop.id).follow_up is None
    assert "ec2:TerminateInstances" not in mutations(scanner)
    assert instance_state(account, instance_id) == "stopped"


def test_snapshot_then_delete(account: str, make: Make) -> None:
    volume_id = detached_volume(account)
    scanner = make(SNAPSHOT_THEN_DELETE)
    assert results(scan(scanner)) == [("detached-volumes", "snapshot-then-delete", "done")]
    assert not volume_exists(account, volume_id)
    found = finding(scanner, "detached-volumes", volume_id)
    [row] = rows(scanner)
    assert_done(row, "detached-volumes", "snapshot-then-delete", volume_id, found.id)
    [(snapshot_id, snapshot)] = snapshots(account).items()
    assert snapshot["VolumeId"] == volume_id and snapshot["State"] == "completed"
    assert {t["Key"]: t["Value"] for t in snapshot["Tags"]} == {
        "guard:action-key": row.key, "guard:volume-id": volume_id, "owner": "wei.chen",
        "guard:finding": str(found.id)}
    assert row.detail["snapshot_id"] == snapshot_id and row.detail["snapshot_state"] == "completed"
    assert mutations(scanner) == {"ec2:CreateSnapshot": 1, "ec2:DeleteVolume": 1}


def test_a_volume_is_deleted_only_once_its_snapshot_completed(account: str, make: Make) -> None:
    volume_id = detached_volume(account)
    scanner = make({"detached-volumes": SNAPSHOT_THEN_DELETE["detached-volumes"] | {"grace": "1h"}})
    scan(scanner)
    found = finding(scanner, "detached-volumes", volume_id)
    # the snapshot a first attempt started (found again by its key tag), still being copied
    key = idempotency_key(ACCOUNT, REGION, "snapshot-then-delete", volume_id, f"finding:{found.id}")
    snapshot_id = ec2(account).create_snapshot(VolumeId=volume_id, TagSpecifications=[{
        "ResourceType": "snapshot", "Tags": [{"Key": "guard:action-key", "Value": key}]}])["SnapshotId"]
    set_snapshot_state(snapshot_id, "pending")
    age_finding(scanner, found.id, 2 * HOUR)

    for _ in range(2):
        assert results(scan(scanner)) == []
        [row] = rows(scanner)
        assert row.status == "in-progress" and row.detail["snapshot_id"] == snapshot_id
        assert volume_exists(account, volume_id) and mutations(scanner) == {}

    set_snapshot_state(snapshot_id, "completed")
    assert results(scan(scanner)) == [("detached-volumes", "snapshot-then-delete", "done")]
    assert not volume_exists(account, volume_id) and list(snapshots(account)) == [snapshot_id]
    assert_done(audit(scanner).get(row.id), "detached-volumes", "snapshot-then-delete", volume_id, found.id)
    assert mutations(scanner) == {"ec2:DeleteVolume": 1}


def test_a_failed_snapshot_keeps_the_volume(account: str, make: Make) -> None:
    volume_id = detached_volume(account)
    scanner = make({"detached-volumes": SNAPSHOT_THEN_DELETE["detached-volumes"] | {"grace": "1h"}})
    scan(scanner)
    found = finding(scanner, "detached-volumes", volume_id)
    key = idempotency_key(ACCOUNT, REGION, "snapshot-then-delete", volume_id, f"finding:{found.id}")
    snapshot_id = ec2(account).create_snapshot(VolumeId=volume_id, TagSpecifications=[{
        "ResourceType": "snapshot", "Tags": [{"Key": "guard:action-key", "Value": key}]}])["SnapshotId"]
    set_snapshot_state(snapshot_id, "error")
    age_finding(scanner, found.id, 2 * HOUR)
    report = scan(scanner)
    assert results(report) == [("detached-volumes", "snapshot-then-delete", "failed")]
    [row] = rows(scanner)
    assert row.status == "failed" and snapshot_id in row.error and "the volume is kept" in row.error
    assert report.actions.failed[0]["id"] == row.id
    assert volume_exists(account, volume_id) and mutations(scanner) == {}


def test_release(account: str, make: Make) -> None:
    allocation_id = elastic_ip(account)
    scanner = make(RELEASE)
    assert results(scan(scanner)) == [("unattached-eips", "release", "done")]
    assert not address_exists(account, allocation_id)
    [row] = rows(scanner)
    assert_done(row, "unattached-eips", "release", allocation_id, finding(scanner, "unattached-eips", allocation_id).id)
    assert mutations(scanner) == {"ec2:ReleaseAddress": 1}


def test_set_retention(account: str, make: Make) -> None:
    name = log_group_kept_forever(account)
    scanner = make({"log-retention": {"action": "set-retention", "retention_days": 14}})
    assert results(scan(scanner)) == [("log-retention", "set-retention", "done")]
    [group] = sandbox_client(account, "logs", REGION).describe_log_groups(logGroupNamePrefix=name)["logGroups"]
    assert group["retentionInDays"] == 14
    [row] = rows(scanner)
    assert_done(row, "log-retention", "set-retention", name, finding(scanner, "log-retention", name).id)
    assert row.params["retention_days"] == 14
    assert mutations(scanner) == {"cloudwatch-logs:PutRetentionPolicy": 1}
    scan(scanner)  # the retention holds: the finding resolves, nothing is set twice
    assert finding(scanner, "log-retention", name).state == "resolved"
    assert mutations(scanner) == {"cloudwatch-logs:PutRetentionPolicy": 1}


def test_delete_orphaned_snapshot(account: str, make: Make) -> None:
    snapshot_id = orphaned_snapshot(account)
    scanner = make(DELETE)
    assert results(scan(scanner)) == [("orphaned-snapshots", "delete", "done")]
    assert snapshot_id not in snapshots(account)
    [row] = rows(scanner)
    assert_done(row, "orphaned-snapshots", "delete", snapshot_id,
                finding(scanner, "orphaned-snapshots", snapshot_id).id)
    assert mutations(scanner) == {"ec2:DeleteSnapshot": 1}


def test_the_snapshot_kept_of_a_deleted_volume_is_never_deleted(account: str, make: Make) -> None:
    volume_id = detached_volume(account)
    scanner = make(SNAPSHOT_THEN_DELETE | DELETE)
    scan(scanner)
    [kept] = snapshots(account)
    report = scan(scanner)  # its volume is gone now: orphaned-snapshots reports it, and its action stops at the look
    assert finding(scanner, "orphaned-snapshots", kept).state == "open"
    assert results(report) == [("orphaned-snapshots", "delete", "skipped-changed")]
    _, delete = rows(scanner)
    assert (delete.action, delete.resource_id, delete.status) == ("delete", kept, "skipped")
    assert "snapshot-then-delete kept" in delete.error and volume_id in delete.error
    assert delete.detail["called"] is False
    scan(scanner)
    assert kept in snapshots(account)
    assert mutations(scanner) == {"ec2:CreateSnapshot": 1, "ec2:DeleteVolume": 1}


# -- dry-run ----------------------------------------------------------------------------------------------------------

EVERY_ACTION = {
    "idle-vms": {"action": "terminate"},
    "idle-gpu": {"action": "stop"},
    "detached-volumes": {"action": "snapshot-then-delete"},
    "unattached-eips": {"action": "release"},
    "log-retention": {"action": "set-retention"},
    "orphaned-snapshots": {"action": "delete"},
}


def test_dry_run_plans_and_runs_only_what_is_approved(account: str, make: Make) -> None:
    due = {idle_instance(account), detached_volume(account), elastic_ip(account), orphaned_snapshot(account),
           log_group_kept_forever(account)}
    scanner = make(EVERY_ACTION, mode="dry-run")
    first = scan(scanner)
    planned = rows(scanner)
    assert {row.resource_id for row in planned} == due and len(planned) == len(due)
    assert {row.action for row in planned} == {"stop", "snapshot-then-delete", "release", "delete", "set-retention"}
    assert all(row.status == "would-do" and row.mode == "dry-run" and row.approved_by is None for row in planned)
    assert sorted(row["id"] for row in first.actions.planned) == [row.id for row in planned]
    assert {result for _, _, result in first.actions.results} == {"would-do"}
    assert mutations(scanner) == {}
    scan(scanner)  # planned once: no second row, still no call
    assert [row.id for row in rows(scanner)] == [row.id for row in planned] and mutations(scanner) == {}

    [chosen] = [row for row in planned if row.action == "release"]
    approved = audit(scanner).approve(chosen.id, by="cli:alice", now=now())
    assert approved.status == "approved" and approved.approved_by == "cli:alice"
    report = scan(scanner)
    assert results(report) == [("unattached-eips", "release", "done")]
    assert mutations(scanner) == {"ec2:ReleaseAddress": 1}
    assert not address_exists(account, chosen.resource_id)
    done = audit(scanner).get(chosen.id)
    assert done.status == DONE and done.approved_by == "cli:alice" and done.started_at <= done.finished_at
    assert {row.id for row in rows(scanner, status="would-do")} == {row.id for row in planned} - {chosen.id}


def test_dry_run_cancels_plans_whose_finding_resolved(account: str, make: Make) -> None:
    allocation_id, instance_id = elastic_ip(account), idle_instance(account)
    scanner = make(RELEASE | STOP, mode="dry-run")
    scan(scanner)
    address, instance = sorted(rows(scanner), key=lambda row: row.rule != "unattached-eips")
    audit(scanner).approve(instance.id, by="api:bob", now=now())
    ec2(account).release_address(AllocationId=allocation_id)  # someone cleaned up by hand
    make_busy(account, REGION, instance_id)  # and the instance got work before the approved stop ran
    report = scan(scanner)
    assert report.actions.executed == [] and mutations(scanner) == {}
    for row in (address, instance):
        row = audit(scanner).get(row.id)
        assert row.status == "cancelled" and row.error == "the finding resolved"
    assert instance_state(account, instance_id) == "running"


# -- gates ------------------------------------------------------------------------------------------------------------


def test_a_protected_instance_is_not_terminated_after_its_stop(account: str, make: Make) -> None:
    scanner, instance_id, stop = _stopped_by_guard(account, make)
    ec2(account).create_tags(Resources=[instance_id], Tags=[PROTECT])
    age_action(scanner, stop.id, 2 * HOUR)
    backdate(account, REGION, stopped={instance_id: audit(scanner).get(stop.id).finished_at})
    report = scan(scanner)
    assert results(report) == [("idle-vms", "terminate", "skipped-protected")]
    assert [row.action for row in rows(scanner)] == ["stop"]  # nothing recorded: it never got past the gates
    scan(scanner)
    assert instance_state(account, instance_id) == "stopped"
    assert "ec2:TerminateInstances" not in mutations(scanner)


def test_a_protection_tag_added_after_the_inventory_stops_the_action(account: str, make: Make) -> None:
    instance_id = idle_instance(account)
    scanner = make(STOP)

    def protect_when_acting(_region: str, text: str) -> None:
        if text == "acting":  # the inventory is taken and the findings reconciled: the action is about to run
            ec2(account).create_tags(Resources=[instance_id], Tags=[PROTECT])

    report = scan(scanner, protect_when_acting)
    assert results(report) == [("idle-vms", "stop", "skipped-protected")]
    [row] = rows(scanner)
    assert row.status == "skipped" and row.error == "protected by its tag" and row.detail["called"] is False
    assert instance_state(account, instance_id) == "running"
    assert mutations(scanner) == {}


def test_allow_list(account: str, make: Make) -> None:
    allocation_id = elastic_ip(account)
    for narrowed in ({"allowed_accounts": "111111111111"}, {"allowed_regions": "us-west-2"}):
        scanner = make(RELEASE, **narrowed)
        report = scan(scanner)
        assert results(report) == [("unattached-eips", "release", "skipped-not-allowed")], narrowed
        assert report.actions.executed == [] and rows(scanner) == [] and mutations(scanner) == {}
    assert address_exists(account, allocation_id)


def test_approval_does_not_pass_the_allow_list(account: str, make: Make) -> None:
    allocation_id = elastic_ip(account)
    scanner = make(RELEASE, mode="dry-run", allowed_accounts="")
    scan(scanner)
    [row] = rows(scanner)
    audit(scanner).approve(row.id, by="cli:alice", now=now())
    assert results(scan(scanner)) == [("unattached-eips", "release", "skipped-not-allowed")]
    assert audit(scanner).get(row.id).status == "approved" and mutations(scanner) == {}
    assert address_exists(account, allocation_id)


def test_destructive_actions_need_the_managed_tag_or_the_rules_opt_in(account: str, make: Make) -> None:
    unmanaged, managed = detached_volume(account), detached_volume(account, tags=[MANAGED])
    instance_id = idle_instance(account)
    scanner = make({"detached-volumes": SNAPSHOT_THEN_DELETE["detached-volumes"] | {"act_on_unmanaged": False},
                    "idle-vms": {"action": "stop", "act_on_unmanaged": False}})
    report = scan(scanner)
    assert results(report) == [("detached-volumes", "snapshot-then-delete", "done"),
                               ("detached-volumes", "snapshot-then-delete", "skipped-unmanaged"),
                               ("idle-vms", "stop", "done")]  # a stop loses nothing: no tag needed
    assert volume_exists(account, unmanaged) and not volume_exists(account, managed)
    assert instance_state(account, instance_id) == "stopped"
    assert {row.resource_id for row in rows(scanner)} == {managed, instance_id}


def test_grace(account: str, make: Make) -> None:
    allocation_id = elastic_ip(account)
    scanner = make({"unattached-eips": {"action": "release", "grace": "1h"}})
    for _ in range(2):
        assert results(scan(scanner)) == [] and rows(scanner) == []
    found = finding(scanner, "unattached-eips", allocation_id)
    age_finding(scanner, found.id, 50 * timedelta(minutes=1))
    assert results(scan(scanner)) == [] and address_exists(account, allocation_id)
    age_finding(scanner, found.id, 11 * timedelta(minutes=1))
    assert results(scan(scanner)) == [("unattached-eips", "release", "done")]
    assert not address_exists(account, allocation_id)


def test_min_resource_age(account: str, make: Make) -> None:
    volume_id = detached_volume(account, age=timedelta(hours=1))
    scanner = make(SNAPSHOT_THEN_DELETE, min_resource_age="6h")
    assert results(scan(scanner)) == [("detached-volumes", "snapshot-then-delete", "skipped-young")]
    assert results(scan(scanner)) == []  # held back: counted once, not every scan
    assert volume_exists(account, volume_id) and mutations(scanner) == {}
    backdate(account, REGION, volumes={volume_id: now() - 7 * HOUR})
    assert results(scan(scanner)) == [("detached-volumes", "snapshot-then-delete", "done")]
    assert not volume_exists(account, volume_id)


def test_per_cycle_cap(account: str, make: Make) -> None:
    addresses = [elastic_ip(account) for _ in range(3)]
    scanner = make(RELEASE, max_actions_per_cycle=2)
    assert results(scan(scanner)) == [("unattached-eips", "release", "done")] * 2 + [
        ("unattached-eips", "release", "skipped-cap")]
    assert sum(address_exists(account, a) for a in addresses) == 1
    assert results(scan(scanner)) == [("unattached-eips", "release", "done")]
    assert not any(address_exists(account, a) for a in addresses)
    assert mutations(scanner) == {"ec2:ReleaseAddress": 3}


def test_per_hour_cap(account: str, make: Make) -> None:
    addresses = [elastic_ip(account) for _ in range(3)]
    scanner = make(RELEASE, max_actions_per_hour=2)
    assert results(scan(scanner)) == [("unattached-eips", "release", "done")] * 2 + [
        ("unattached-eips", "release", "skipped-cap")]
    scan(scanner)
    assert mutations(scanner) == {"ec2:ReleaseAddress": 2}
    for row in rows(scanner):
        age_action(scanner, row.id, HOUR + timedelta(minutes=1))
    assert results(scan(scanner)) == [("unattached-eips", "release", "done")]
    assert not any(address_exists(account, a) for a in addresses)
    assert mutations(scanner) == {"ec2:ReleaseAddress": 3}


def test_circuit_breaker(account: str, make: Make) -> None:
    # three costly instances AWS refuses to stop (stop protection on), two cheap ones it would stop
    refusing = [idle_instance(account, "m5.2xlarge", DisableApiStop=True) for _ in range(3)]
    stoppable = [idle_instance(account, "t3.small") for _ in range(2)]
    scanner = make(STOP, breaker_failures=3, breaker_cooldown="1h")
    report = scan(scanner)
    assert results(report) == [("idle-vms", "stop", "failed")] * 3 + [("idle-vms", "stop", "skipped-breaker")] * 2
    assert mutations(scanner) == {"ec2:StopInstances": 3}  # nothing attempted after the third failure in a row
    failed = rows(scanner, status="failed")
    assert {row.resource_id for row in failed} == set(refusing)
    assert all("OperationNotPermitted" in row.error for row in failed)
    assert len(report.actions.failed) == 3
    scan(scanner)  # still cooling down
    assert mutations(scanner) == {"ec2:StopInstances": 3}
    for row in failed:
        age_action(scanner, row.id, HOUR)
    assert results(scan(scanner)) == [("idle-vms", "stop", "done")] * 2
    assert {instance_state(account, i) for i in stoppable} == {"stopped"}
    assert {instance_state(account, i) for i in refusing} == {"running"}
    assert mutations(scanner) == {"ec2:StopInstances": 5}


def test_an_action_waits_for_its_finding_to_be_announced(account: str, make: Make, registry,
                                                         webhook: tuple[str, list[dict]]) -> None:
    url, bodies = webhook
    instance_id = idle_instance(account)
    daemon = Daemon(make(STOP, webhook_url=url).settings, registry)
    try:
        first = daemon.scanner.scan(REGION)
        assert first.status == "ok" and first.actions.results == []  # found just now: not announced yet
        assert instance_state(account, instance_id) == "running"
        deadline = time.monotonic() + 15
        while finding(daemon.scanner, "idle-vms", instance_id).notified_at is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert finding(daemon.scanner, "idle-vms", instance_id).notified_at is not None
        assert any(instance_id in json.dumps(body) for body in bodies)
        second = daemon.scanner.scan(REGION)
        assert second.actions.results == [("idle-vms", "stop", "done")]
        assert instance_state(account, instance_id) == "stopped"
    finally:
        daemon.shutdown()


# -- observe mode -----------------------------------------------------------------------------------------------------


def test_observe_mode_makes_no_mutating_call(account: str, make: Make) -> None:
    idle_instance(account)
    detached_volume(account)
    elastic_ip(account)
    orphaned_snapshot(account)
    scanner = make(STOP | SNAPSHOT_THEN_DELETE | RELEASE | DELETE, mode="observe")
    for _ in range(2):
        report = scan(scanner)
        assert report.actions.results == []
    assert len(scanner.store.findings()) == 4
    assert rows(scanner) == [] and mutations(scanner) == {}


def _intent(scanner: Scanner, rule: str, action: str, resource_id: str) -> Intent:
    """The intent the runner records for a finding's action (same idempotency key), as a crashed daemon left it."""
    found = finding(scanner, rule, resource_id)
    key = idempotency_key(ACCOUNT, REGION, action, resource_id, f"finding:{found.id}")
    return Intent(key=key, rule=rule, action=action, account_id=ACCOUNT, region=REGION, resource_id=resource_id,
                  resource_type=found.resource_type, owner=found.owner, finding_id=found.id, summary=found.summary,
                  waste_hourly_usd=found.waste_hourly_usd,
                  params={"key": key, "finding_id": found.id, "owner": found.owner})


def test_observe_mode_settles_unfinished_intents_by_looking_only(account: str, make: Make) -> None:
    already, never = idle_instance(account), idle_instance(account)
    scanner = make(STOP, mode="observe")
    scan(scanner)
    pending = {instance_id: audit(scanner).record(_intent(scanner, "idle-vms", "stop", instance_id), PENDING,
                                                   "enforce", now(), approved_by="mode:enforce")
               for instance_id in (already, never)}
    ec2(account).stop_instances(InstanceIds=[already])  # the call went out before the crash
    report = scan(scanner)
    assert results(report) == [("idle-vms", "stop", "cancelled"), ("idle-vms", "stop", "done")]
    done, cancelled = (audit(scanner).get(pending[i].id) for i in (already, never))
    assert done.status == DONE and done.detail["called"] is False and done.detail["resumed"] is True
    assert cancelled.status == "cancelled" and "observe mode" in cancelled.error
    assert instance_state(account, never) == "running"
    assert mutations(scanner) == {}


# -- restart ----------------------------------------------------------------------------------------------------------


def test_a_pending_intent_whose_goal_holds_is_done_without_calling_again(account: str, make: Make) -> None:
    instance_id = idle_instance(account)
    before = make({"idle-vms": {"action": "stop", "grace": "1h"}})
    scan(before)
    row = audit(before).record(_intent(before, "idle-vms", "stop", instance_id), PENDING, "enforce", now(),
                               approved_by="mode:enforce")
    ec2(account).stop_instances(InstanceIds=[instance_id])  # the call went out, then the daemon died
    before.store.close()

    after = make({"idle-vms": {"action": "stop", "grace": "1h"}})
    assert results(scan(after)) == [("idle-vms", "stop", "done")]
    resumed = audit(after).get(row.id)
    assert resumed.status == DONE and resumed.detail == {"state": "stopped", "called": False, "resumed": True}
    scan(after)
    assert mutations(after) == {} and len(rows(after)) == 1


RESTARTS_THAT_FORBID = {
    "dry-run": ({"mode": "dry-run"}, "dry-run mode and no one approved"),
    "dry-run, allowed_accounts emptied": ({"mode": "dry-run", "allowed_accounts": ""}, "dry-run mode"),
    "another account allowed": ({"allowed_accounts": "210987654321"}, "not in allowed_accounts"),
    "another region allowed": ({"allowed_regions": "us-west-2"}, "not in allowed_regions"),
    "rule disabled": ({"rules": {"idle-vms": {"enabled": False}}}, "rule idle-vms is disabled"),
    "rule only notifies": ({"rules": {"idle-vms": {"action": "notify"}}}, "no longer has the action stop"),
}


@pytest.mark.parametrize("change", list(RESTARTS_THAT_FORBID))
def test_a_pending_intent_passes_todays_gates_or_is_cancelled(account: str, make: Make, change: str) -> None:
    instance_id = idle_instance(account)
    before = make({"idle-vms": {"action": "stop", "grace": "1h"}})
    scan(before)
    row = audit(before).record(_intent(before, "idle-vms", "stop", instance_id), PENDING, "enforce", now(),
                               approved_by="mode:enforce")
    before.store.close()  # an enforce run died between committing the intent and calling AWS

    overrides, reason = RESTARTS_THAT_FORBID[change]
    rules = {"idle-vms": {"action": "stop", "grace": "1h"} | overrides.get("rules", {}).get("idle-vms", {})}
    after = make(rules, **{key: value for key, value in overrides.items() if key != "rules"})
    report = scan(after)
    assert ("idle-vms", "stop", "cancelled") in results(report)
    cancelled = audit(after).get(row.id)
    assert cancelled.status == "cancelled" and reason in cancelled.error
    assert cancelled.detail["called"] is False
    assert instance_state(account, instance_id) == "running" and mutations(after) == {}
    scan(after)
    assert mutations(after) == {}


def test_a_pending_intent_a_person_approved_is_finished_in_dry_run(account: str, make: Make) -> None:
    instance_id = idle_instance(account)
    before = make({"idle-vms": {"action": "stop", "grace": "1h"}}, mode="dry-run")
    scan(before)
    row = audit(before).record(_intent(before, "idle-vms", "stop", instance_id), PENDING, "dry-run", now(),
                               approved_by="alice")
    audit(before).set_fields(row.id, approved_at=now())  # approved, started, then the daemon died
    before.store.close()

    after = make({"idle-vms": {"action": "stop", "grace": "1h"}}, mode="dry-run")
    assert ("idle-vms", "stop", "done") in results(scan(after))
    assert instance_state(account, instance_id) == "stopped"
    assert mutations(after) == {"ec2:StopInstances": 1}


def test_a_pending_intent_waits_while_the_breaker_is_open(account: str, make: Make) -> None:
    instance_id = idle_instance(account)
    before = make({"idle-vms": {"action": "stop", "grace": "1h"}})
    scan(before)
    row = audit(before).record(_intent(before, "idle-vms", "stop", instance_id), PENDING, "enforce", now(),
                               approved_by="mode:enforce")
    for number in range(3):  # three failures in a row, just now: the breaker is open
        earlier = dataclasses.replace(_intent(before, "idle-vms", "stop", instance_id), key=f"earlier-{number}")
        failed = audit(before).record(earlier, PENDING, "enforce", now(), approved_by="mode:enforce")
        audit(before).move(failed.id, (PENDING,), "failed", finished_at=now(), error="UnauthorizedOperation")
    before.store.close()

    after = make({"idle-vms": {"action": "stop", "grace": "1h"}}, breaker_failures=3, breaker_cooldown="1h")
    assert results(scan(after)) == [("idle-vms", "stop", "skipped-breaker")]
    assert audit(after).get(row.id).status == PENDING
    assert instance_state(account, instance_id) == "running" and mutations(after) == {}


def test_a_pending_intent_whose_call_never_happened_is_carried_out_once(account: str, make: Make) -> None:
    instance_id = idle_instance(account)
    before = make({"idle-vms": {"action": "stop", "grace": "1h"}})
    scan(before)
    row = audit(before).record(_intent(before, "idle-vms", "stop", instance_id), PENDING, "enforce", now(),
                               approved_by="mode:enforce")
    before.store.close()  # the daemon died between committing the intent and calling AWS

    after = make({"idle-vms": {"action": "stop", "grace": "1h"}})
    age_finding(after, row.finding_id, 2 * HOUR)  # the action is due now too: still only one call
    assert results(scan(after)) == [("idle-vms", "stop", "done")]
    assert instance_state(account, instance_id) == "stopped"
    resumed = audit(after).get(row.id)
    assert resumed.status == DONE and resumed.detail["called"] is True and resumed.detail["resumed"] is True
    scan(after)
    assert mutations(after) == {"ec2:StopInstances": 1} and len(rows(after)) == 1

