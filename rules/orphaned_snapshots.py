"""The ``orphaned-snapshots`` rule."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from guard.durations import Duration, format_duration
from guard.model import EbsSnapshot, Evaluation, Finding, Snapshot
from guard.pricing import (
    COPIED_SNAPSHOT_VOLUME_ID,
    HOURS_PER_MONTH,
    SNAPSHOT_ARCHIVE_USD_PER_GB_MONTH,
    SNAPSHOT_USD_PER_GB_MONTH,
)
from guard.rule import Context, MonthlySeverityConfig, Rule, severity_by_monthly

BACKUP_TAGS = ("aws:backup:source-resource", "aws:dlm:lifecycle-policy-id")
"""Tags AWS Backup and Data Lifecycle Manager put on the snapshots they manage (and expire themselves)."""
BACKUP_DESCRIPTION = "This snapshot is created by the AWS Backup service"


class OrphanedSnapshotsConfig(MonthlySeverityConfig):
    min_age: Duration = Field(timedelta(days=7), description="snapshots younger than this are left alone: a week "
                              "lets a snapshot-before-delete be restored or reviewed first")


class OrphanedSnapshots(Rule):
    """EBS snapshots whose volume is gone and that no AMI, launch template or launch configuration uses.

    What it detects
        A completed snapshot owned by the account, older than `min_age`, whose source volume no longer exists,
        that is not behind any AMI the account owns, and that no block-device mapping of any launch template
        version (not only `$Default` and `$Latest`: a group or fleet may pin an older one) or launch configuration
        names — an Auto Scaling group launching from it would fail without it. Snapshots managed by AWS Backup or
        Data Lifecycle Manager are left to their retention policy.
    Why it costs money
        Snapshots bill $0.05 per GB-month for as long as they are kept; the ones of deleted volumes and of
        deregistered AMIs pile up unseen. The price shown is an upper bound: snapshots are incremental and bill
        only the blocks no other snapshot of the volume holds.
    Example
        A 500 GiB snapshot taken before a training volume was deleted three months ago: at most $0.0342/hour.
    Fix
        Delete the snapshot once nobody needs it, or move it to the archive tier ($0.0125/GB-month) if it must stay.
    """

    id = "orphaned-snapshots"
    resource_type = "snapshot"
    needs = frozenset({"snapshots", "volumes", "images", "launch_sources"})
    inputs = ("EBS snapshots owned by the account; EBS volumes; AMIs owned by the account (their snapshots); every "
              "launch template version and launch configuration (the snapshots their block devices name)")
    waste_formula = "size GiB × $0.05/GB-month ÷ 730 (upper bound: snapshots are incremental)"
    suggested_action = "delete"
    actions = ("delete",)
    iam_permissions = ("ec2:DescribeSnapshots", "ec2:DescribeVolumes", "ec2:DescribeImages",
                       "ec2:DescribeLaunchTemplateVersions", "autoscaling:DescribeLaunchConfigurations")
    Config = OrphanedSnapshotsConfig
    config: OrphanedSnapshotsConfig

    def evaluate(self, snapshot: Snapshot, context: Context) -> Evaluation:
        volumes = {volume.id for volume in snapshot.volumes or ()}
        used_by_images = {snapshot_id for image in snapshot.images or () for snapshot_id in image.snapshot_ids}
        # Every version counts, not only what groups pin today: a fleet request or a script may name any of them.
        used_to_launch = {snapshot_id for source in snapshot.launch_sources or ()
                          for snapshot_id in source.snapshot_ids}
        findings = []
        for ebs in snapshot.snapshots or ():
            if (ebs.state != "completed" or context.is_protected(ebs.tags) or _managed_backup(ebs)
                    or ebs.volume_id in volumes or ebs.id in used_by_images or ebs.id in used_to_launch):
                continue
            age = snapshot.taken_at - ebs.start_time
            if age < self.config.min_age:
                continue
            findings.append(self._finding(ebs, snapshot.region, context, age))
        return Evaluation(findings=tuple(findings))

    def _finding(self, ebs: EbsSnapshot, region: str, context: Context, age: timedelta) -> Finding:
        per_gb_month = SNAPSHOT_ARCHIVE_USD_PER_GB_MONTH if ebs.storage_tier == "archive" else SNAPSHOT_USD_PER_GB_MONTH
        monthly = ebs.size_gib * per_gb_month
        hourly = monthly / HOURS_PER_MONTH
        severity = severity_by_monthly(monthly, self.config.high_monthly_usd, self.config.medium_monthly_usd)
        if ebs.volume_id == COPIED_SNAPSHOT_VOLUME_ID:
            source = "a volume of another region or account (a copy)"
        elif ebs.volume_id:
            source = f"deleted volume {ebs.volume_id}"
        else:
            source = "an unknown volume"
        return Finding(
            rule=self.id,
            resource_id=ebs.id,
            resource_type=self.resource_type,
            region=region,
            owner=context.owner_of(ebs.tags),
            severity=severity,
            waste_hourly_usd=hourly,
            summary=(f"{ebs.size_gib} GiB snapshot of {source}, used by no AMI or launch template, "
                     f"{age.total_seconds() / 86400:.1f} days old — at most ${hourly:.4f}/hour"),
            suggested_action=self.suggested_action,
            evidence={
                "size_gib": ebs.size_gib,
                "volume_id": ebs.volume_id,
                "description": ebs.description,
                "age": format_duration(timedelta(seconds=int(age.total_seconds()))),
                "usd_per_gb_month": per_gb_month,
                "storage_tier": ebs.storage_tier,
                "monthly_usd": round(monthly, 2),
                "price": "upper-bound",
                "price_basis": "full size at the standard tier; snapshots are incremental and bill only the blocks "
                               "no other snapshot of the volume holds",
            },
        )


def _managed_backup(ebs: EbsSnapshot) -> bool:
    return any(tag in ebs.tags for tag in BACKUP_TAGS) or ebs.description.startswith(BACKUP_DESCRIPTION)
