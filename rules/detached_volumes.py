"""The ``detached-volumes`` rule."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from guard.durations import Duration, format_duration
from guard.model import Evaluation, Finding, Snapshot, Volume
from guard.pricing import EBS_PRICE_BASIS, EBS_USD_PER_GB_MONTH, HOURS_PER_MONTH
from guard.rule import Context, MonthlySeverityConfig, Rule, severity_by_monthly


class DetachedVolumesConfig(MonthlySeverityConfig):
    min_age: Duration = Field(timedelta(hours=24), description="volumes younger than this are left alone")


class DetachedVolumes(Rule):
    """EBS volumes attached to nothing: state `available` for longer than `min_age`.

    What it detects
        A volume in state `available` (attached to no instance) whose creation is older than `min_age`.
    Why it costs money
        EBS bills every provisioned GB-month whether or not anything reads it: a forgotten 2 TB gp3 scratch volume
        is $164 a month; io1/io2 volumes also bill provisioned IOPS.
    Example
        A 500 GiB gp2 volume left behind when its instance was terminated without DeleteOnTermination: $0.068/hour.
    Fix
        Snapshot it (snapshots are $0.05/GB-month and only store used blocks), then delete the volume; or re-attach it.
    """

    id = "detached-volumes"
    resource_type = "volume"
    needs = frozenset({"volumes"})
    inputs = "EBS volumes (state, type, size, create time)"
    waste_formula = "size GiB × the volume type's $/GB-month ÷ 730"
    suggested_action = "snapshot-then-delete"
    actions = ("snapshot-then-delete",)
    iam_permissions = ("ec2:DescribeVolumes",)
    Config = DetachedVolumesConfig
    config: DetachedVolumesConfig

    def evaluate(self, snapshot: Snapshot, context: Context) -> Evaluation:
        findings = []
        for volume in snapshot.volumes or ():
            if volume.state != "available" or context.is_protected(volume.tags):
                continue
            age = snapshot.taken_at - volume.create_time
            if age < self.config.min_age:
                continue
            findings.append(self._finding(volume, snapshot.region, context, age))
        return Evaluation(findings=tuple(findings))

    def _finding(self, volume: Volume, region: str, context: Context, age: timedelta) -> Finding:
        hourly = context.prices.volume_hourly_usd(volume.volume_type, volume.size_gib, region)
        monthly = hourly * HOURS_PER_MONTH if hourly is not None else None
        severity = severity_by_monthly(monthly, self.config.high_monthly_usd, self.config.medium_monthly_usd)
        price_text = f"${hourly:.4f}/hour" if hourly is not None else "price unknown"
        age_days = age.total_seconds() / 86400
        return Finding(
            rule=self.id,
            resource_id=volume.id,
            resource_type=self.resource_type,
            region=region,
            owner=context.owner_of(volume.tags),
            severity=severity,
            waste_hourly_usd=hourly,
            summary=(f"{volume.size_gib} GiB {volume.volume_type} attached to nothing, "
                     f"{age_days:.1f} days old — {price_text}"),
            suggested_action=self.suggested_action,
            evidence={
                "volume_type": volume.volume_type,
                "size_gib": volume.size_gib,
                "age": format_duration(timedelta(seconds=int(age.total_seconds()))),
                "usd_per_gb_month": EBS_USD_PER_GB_MONTH.get(volume.volume_type),
                "price_basis": EBS_PRICE_BASIS,
                "monthly_usd": round(monthly, 2) if monthly is not None else None,
                "price": "known" if hourly is not None else "unknown",
            },
        )
