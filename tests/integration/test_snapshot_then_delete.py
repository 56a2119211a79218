"""snapshot-then-delete never deletes a volume whose snapshot did not complete.

The daemon's EC2 traffic goes through a fault-injecting proxy (tests/integration/faults.py) in front of the
emulated AWS: CreateSnapshot fails (retried, or not retryable, or carried out with its reply lost), or the
snapshot's state comes back ``error`` or ``pending`` — and the volume must stay, with the audit row saying why.
Only when the snapshot completes is the volume deleted, exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import pytest
from faults import FaultProxy

from guard.actions.executors import KEY_TAG
from guard.audit import DONE, FAILED, IN_PROGRESS, ActionRow, AuditLog
from guard.aws import RETRY_CONFIG, Aws
from guard.engine import Scanner
from guard.rule import Registry
from guard.sandbox import SandboxServer, sandbox_client
from guard.sandbox.backdate import backdate
from guard.store import Store

pytestmark = pytest.mark.integration

REGION = "us-east-1"
ACCOUNT = "123456789012"
COMPLETED = "<status>completed</status>"
ATTEMPTS = RETRY_CONFIG.retries["max_attempts"] + 1
"""botocore's ``max_attempts`` counts the retries: the first try and that many more."""


@pytest.fixture
def proxy(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The daemon's EC2 endpoint, in front of the sandbox (other services go to the sandbox directly)."""
    with FaultProxy(sandbox.endpoint_url) as running:
        monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", running.url)
        yield running


@pytest.fixture
def volume_id(sandbox: SandboxServer) -> str:
    """One managed volume attached to nothing for 40 days: a detached-volumes finding."""
    sandbox.reset()
    ec2 = sandbox_client(sandbox.endpoint_url, "ec2", REGION)
    created = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=100, VolumeType="gp3", TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": "owner", "Value": "ana"},
                                            {"Key": "guard:managed", "Value": "true"}]}])["VolumeId"]
    backdate(sandbox.endpoint_url, REGION, volumes={created: datetime.now(timezone.utc) - timedelta(days=40)})
    return created


@pytest.fixture
def make_enforcer(registry: Registry, make_settings, proxy: FaultProxy) -> Callable[..., Scanner]:
    """A scanner in enforce mode with only detached-volumes on (snapshot-then-delete, no grace), made after the
    EC2 endpoint points at the proxy."""

    def make(**overrides) -> Scanner:
        rules = {rule: {"enabled": False} for rule in registry.rules}
        rules["detached-volumes"] = {"action": "snapshot-then-delete", "grace": "0s"}
        settings = make_settings(**({"regions": [REGION], "mode": "enforce", "allowed_accounts": ACCOUNT,
                                     "min_resource_age": "0s", "rules": rules} | overrides))
        return Scanner(settings, registry, Aws(), Store(settings.database_url))

    return make


def scan(scanner: Scanner) -> ActionRow:
    """One scan; the volume's action row after it."""
    report = scanner.scan(REGION)
    assert report.status == "ok", report.errors
    [row] = AuditLog(scanner.store).actions()
    return row


def volume_exists(sandbox: SandboxServer, volume_id: str) -> bool:
    ec2 = sandbox_client(sandbox.endpoint_url, "ec2", REGION)
    found = ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume_id]}])["Volumes"]
    return bool(found) and found[0]["State"] == "available"


def snapshots_of(sandbox: SandboxServer, volume_id: str) -> list[dict]:
    ec2 = sandbox_client(sandbox.endpoint_url, "ec2", REGION)
    return ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": [volume_id]}])[
        "Snapshots"]


def served(sandbox: SandboxServer, operation: str) -> list:
    return [r for r in sandbox.requests() if r.service == "ec2" and r.operation == operation]


def test_a_create_snapshot_failing_on_every_retry_fails_the_action_and_keeps_the_volume(
        sandbox: SandboxServer, proxy: FaultProxy, volume_id: str, make_enforcer) -> None:
    proxy.fail("CreateSnapshot", 500, "InternalError", "An internal error has occurred")
    scanner = make_enforcer()
    sandbox.clear_requests()
    row = scan(scanner)
    assert row.status == FAILED and row.action == "snapshot-then-delete" and row.resource_id == volume_id
    assert row.error == "CreateSnapshot: InternalError: An internal error has occurred"
    assert row.detail["called"] is True and row.finished_at is not None
    calls = scanner.aws.counter.by_operation()
    assert proxy.received("CreateSnapshot") == calls["ec2:CreateSnapshot"] == ATTEMPTS
    assert proxy.received("DeleteVolume") == 0 and "ec2:DeleteVolume" not in calls
    assert served(sandbox, "CreateSnapshot") == [] and served(sandbox, "DeleteVolume") == []
    assert volume_exists(sandbox, volume_id) and snapshots_of(sandbox, volume_id) == []
    # a failed action stays failed: the next scan neither retries it nor deletes the volume
    proxy.clear()
    assert scan(scanner).status == FAILED
    assert proxy.received("CreateSnapshot") == ATTEMPTS and proxy.received("DeleteVolume") == 0
    assert volume_exists(sandbox, volume_id)


def test_a_create_snapshot_refused_is_not_retried_and_keeps_the_volume(
        sandbox: SandboxServer, proxy: FaultProxy, volume_id: str, make_enforcer) -> None:
    proxy.fail("CreateSnapshot", 400, "SnapshotLimitExceeded", "You have exceeded the maximum number of snapshots")
    scanner = make_enforcer()
    row = scan(scanner)
    assert row.status == FAILED
    assert row.error == "CreateSnapshot: SnapshotLimitExceeded: You have exceeded the maximum number of snapshots"
    assert proxy.received("CreateSnapshot") == 1 and proxy.received("DeleteVolume") == 0
    assert volume_exists(sandbox, volume_id)


def test_a_snapshot_made_but_its_reply_lost_keeps_the_volume(
        sandbox: SandboxServer, proxy: FaultProxy, volume_id: str, make_enforcer) -> None:
    """The emulator makes the snapshot, but every reply is lost: the daemon cannot know it, so it keeps the volume."""
    proxy.fail("CreateSnapshot", 503, "Unavailable", "Service Unavailable", forward=True)
    scanner = make_enforcer()
    sandbox.clear_requests()
    row = scan(scanner)
    assert row.status == FAILED and row.error.startswith("CreateSnapshot: Unavailable")
    assert proxy.received("DeleteVolume") == 0 and served(sandbox, "DeleteVolume") == []
    assert volume_exists(sandbox, volume_id)
    made = snapshots_of(sandbox, volume_id)
    assert 1 <= len(made) <= proxy.received("CreateSnapshot") == ATTEMPTS
    assert all({"Key": KEY_TAG, "Value": row.key} in s["Tags"] for s in made)  # findable by the action's key


@pytest.mark.parametrize("when", ["created", "while-pending"])
def test_a_snapshot_in_error_fails_the_action_and_keeps_the_volume(
        sandbox: SandboxServer, proxy: FaultProxy, volume_id: str, make_enforcer, when: str) -> None:
    scanner = make_enforcer()
    if when == "created":  # CreateSnapshot itself answers state "error"
        proxy.rewrite("CreateSnapshot", COMPLETED, "<status>error</status>")
    else:  # pending first; the next look finds it failed
        proxy.rewrite("CreateSnapshot", COMPLETED, "<status>pending</status>")
        proxy.rewrite("DescribeSnapshots", COMPLETED, "<status>pending</status>")
        assert scan(scanner).status == IN_PROGRESS
        proxy.clear()
        proxy.rewrite("DescribeSnapshots", COMPLETED, "<status>error</status>")
    row = scan(scanner)
    [snapshot] = snapshots_of(sandbox, volume_id)
    assert row.status == FAILED
    assert row.error == f"snapshot {snapshot['SnapshotId']} failed: error; the volume is kept"
    assert row.detail["snapshot_id"] == snapshot["SnapshotId"] and row.detail["snapshot_state"] == "error"
    assert proxy.received("CreateSnapshot") == 1 and proxy.received("DeleteVolume") == 0
    assert volume_exists(sandbox, volume_id)
    proxy.clear()  # the failure is final: the volume stays even once the snapshot reads completed
    assert scan(scanner).status == FAILED
    assert proxy.received("DeleteVolume") == 0 and volume_exists(sandbox, volume_id)


def test_a_pending_snapshot_is_waited_for_and_the_volume_deleted_once_it_completes(
        sandbox: SandboxServer, proxy: FaultProxy, volume_id: str, make_enforcer) -> None:
    proxy.rewrite("CreateSnapshot", COMPLETED, "<status>pending</status>")
    proxy.rewrite("DescribeSnapshots", COMPLETED, "<status>pending</status>")
    scanner = make_enforcer()
    sandbox.clear_requests()
    for _ in range(3):
        row = scan(scanner)
        assert row.status == IN_PROGRESS and row.finished_at is None and row.error is None
        assert row.detail["snapshot_state"] == "pending" and row.detail["called"] is True
        assert volume_exists(sandbox, volume_id)
    assert row.detail["resumed"] is True
    [snapshot] = snapshots_of(sandbox, volume_id)
    assert row.detail["snapshot_id"] == snapshot["SnapshotId"]
    tags = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
    assert tags[KEY_TAG] == row.key and tags["guard:volume-id"] == volume_id and tags["owner"] == "ana"
    assert proxy.received("CreateSnapshot") == 1  # found again by its key tag, never made twice
    assert proxy.received("DeleteVolume") == 0 and served(sandbox, "DeleteVolume") == []

    proxy.clear()  # the snapshot completes
    row = scan(scanner)
    assert row.status == "done" == DONE and row.error is None and row.detail["snapshot_state"] == "completed"
    assert not volume_exists(sandbox, volume_id)
    assert scan(scanner).status == DONE  # and nothing more happens
    assert proxy.received("DeleteVolume") == 1 and scanner.aws.counter.by_operation()["ec2:DeleteVolume"] == 1
    assert [r.params["VolumeId"] for r in served(sandbox, "DeleteVolume")] == [volume_id]
    assert len(served(sandbox, "CreateSnapshot")) == 1
    assert snapshots_of(sandbox, volume_id)[0]["SnapshotId"] == snapshot["SnapshotId"]  # the copy stays


def test_a_snapshot_pending_past_the_timeout_fails_the_action_and_keeps_the_volume(
        sandbox: SandboxServer, proxy: FaultProxy, volume_id: str, make_enforcer) -> None:
    proxy.rewrite("CreateSnapshot", COMPLETED, "<status>pending</status>")
    proxy.rewrite("DescribeSnapshots", COMPLETED, "<status>pending</status>")
    scanner = make_enforcer(snapshot_timeout="1s")
    assert scan(scanner).status == IN_PROGRESS
    time.sleep(1.1)
    row = scan(scanner)
    [snapshot] = snapshots_of(sandbox, volume_id)
    assert row.status == FAILED
    assert row.error == f"snapshot {snapshot['SnapshotId']} still pending after 1s; the volume is kept"
    assert row.detail["snapshot_state"] == "pending"
    assert proxy.received("DeleteVolume") == 0 and volume_exists(sandbox, volume_id)
    proxy.clear()  # completing later changes nothing: the action gave up
    assert scan(scanner).status == FAILED
    assert proxy.received("DeleteVolume") == 0 and volume_exists(sandbox, volume_id)

