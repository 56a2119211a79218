"""A small account for the crash test: a few resources per action that needs no CloudWatch data, plus near misses.

Every target is tagged ``guard:managed=true`` and old enough for its rule's default ``min_age``: detached volumes
and orphaned snapshots are backdated, log groups get a creation time and stored bytes in the past (on the
in-process emulator, as the sandbox's own seeders do). The near misses carry ``guard:protect=true`` or already
have what the action would give them: nothing may ever be called on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from guard.pricing import GB
from guard.sandbox import sandbox_client
from guard.sandbox.backdate import backdate

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
RETENTION_DAYS = 30
"""log-retention's default ``retention_days``: what set-retention puts on each group."""

MANAGED = {"Key": "guard:managed", "Value": "true"}
PROTECTED = {"Key": "guard:protect", "Value": "true"}


@dataclass
class CrashAccount:
    """Resource ids of the seeded account: the targets of each action, and what must be left alone."""

    volumes: list[str] = field(default_factory=list)
    """Detached: snapshot-then-delete."""
    addresses: list[str] = field(default_factory=list)
    """Unattached Elastic IPs (allocation ids): release."""
    snapshots: list[str] = field(default_factory=list)
    """Orphaned snapshots: delete."""
    log_groups: list[str] = field(default_factory=list)
    """Without retention and holding old data: set-retention."""
    untouchable: list[str] = field(default_factory=list)
    """A protected detached volume, a protected address, a protected orphaned snapshot, a group that has retention."""

    def targets(self) -> dict[tuple[str, str], str]:
        """(action, resource id) → rule, for every action the daemon must carry out exactly once."""
        return ({("snapshot-then-delete", v): "detached-volumes" for v in self.volumes}
                | {("release", a): "unattached-eips" for a in self.addresses}
                | {("delete", s): "orphaned-snapshots" for s in self.snapshots}
                | {("set-retention", g): "log-retention" for g in self.log_groups})


def seed_crash_account(endpoint_url: str, per_kind: int = 3, now: datetime | None = None,
                       prefix: str = "") -> CrashAccount:
    """Seed ``per_kind`` targets of each action in us-east-1, plus one near miss of each; the emulator is not reset
    (log group names carry ``prefix``, so an account can be seeded again)."""
    now = now or datetime.now(timezone.utc)
    ec2 = sandbox_client(endpoint_url, "ec2", REGION)
    logs = sandbox_client(endpoint_url, "logs", REGION)
    account = CrashAccount()

    def tags(resource_type: str, name: str, protect: bool = False) -> list[dict]:
        tag_list = [MANAGED, {"Key": "owner", "Value": "crash.test"}, {"Key": "Name", "Value": name}]
        return [{"ResourceType": resource_type, "Tags": [*tag_list, *([PROTECTED] if protect else [])]}]

    volume_ages, snapshot_ages = {}, {}
    for n in range(per_kind + 1):
        protect = n == per_kind
        volume_id = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=10 + n, VolumeType="gp3",
                                      TagSpecifications=tags("volume", f"scratch-{n}", protect))["VolumeId"]
        volume_ages[volume_id] = now - timedelta(days=10)
        (account.untouchable if protect else account.volumes).append(volume_id)

        allocation_id = ec2.allocate_address(Domain="vpc", TagSpecifications=tags("elastic-ip", f"ip-{n}", protect))[
            "AllocationId"]
        (account.untouchable if protect else account.addresses).append(allocation_id)

        source = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=20 + n)["VolumeId"]
        snapshot_id = ec2.create_snapshot(VolumeId=source, Description=f"before resize {n}",
                                          TagSpecifications=tags("snapshot", f"backup-{n}", protect))["SnapshotId"]
        ec2.delete_volume(VolumeId=source)
        snapshot_ages[snapshot_id] = now - timedelta(days=30)
        (account.untouchable if protect else account.snapshots).append(snapshot_id)

        group = f"/crash/{prefix}service-{n}"
        logs.create_log_group(logGroupName=group, tags={"guard:managed": "true", "owner": "crash.test"})
        logs.create_log_stream(logGroupName=group, logStreamName="main")
        if protect:  # already has the retention the action would set: nothing to do
            logs.put_retention_policy(logGroupName=group, retentionInDays=RETENTION_DAYS)
        (account.untouchable if protect else account.log_groups).append(group)

    backdate(endpoint_url, REGION, volumes=volume_ages, snapshots=snapshot_ages)
    _give_log_history(account.log_groups + account.untouchable[-1:], now - timedelta(days=120), 5 * GB)
    return account


def _give_log_history(groups: list[str], created: datetime, stored_bytes: int) -> None:
    """Creation time and stored bytes months of logging would have left (not writable through the API)."""
    from moto.logs.models import logs_backends

    backend = logs_backends[ACCOUNT_ID][REGION]
    for name in groups:
        group = backend.groups[name]
        group.creation_time = created.astimezone(timezone.utc).replace(tzinfo=None)
        next(iter(group.streams.values())).stored_bytes = stored_bytes
