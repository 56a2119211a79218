"""The ``stopped-instance-volumes`` rule."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from pydantic import Field

from guard.durations import Duration, format_duration
from guard.model import Evaluation, Finding, Instance, Snapshot, Volume
from guard.pricing import EBS_PRICE_BASIS, HOURS_PER_MONTH
from guard.rule import Context, MonthlySeverityConfig, Rule, severity_by_monthly


class StoppedInstanceVolumesConfig(MonthlySeverityConfig):
    min_stopped: Duration = Field(timedelta(days=7), description="instances stopped for less than this are left "
                                  "alone: a week spans long weekends and holidays")


class StoppedInstanceVolumes(Rule):
    """Instances stopped for longer than `min_stopped` whose EBS volumes keep billing.

    What it detects
        A stopped instance whose stop time (from its state transition reason) is older than `min_stopped` and that
        has EBS volumes attached; one finding per instance, priced with all its volumes. An instance whose stop time
        is unknown is left undetermined; one that is protected, or has a protected volume, is skipped.
    Why it costs money
        Stopping an instance ends its compute bill, not its storage bill: every attached volume bills its
        GB-months while the instance sits stopped, often for months after its project ended.
    Example
        A g4dn.xlarge stopped three weeks ago with its 8 GiB gp2 root and a 500 GiB gp3 data volume: $0.0559/hour.
    Fix
        Snapshot the volumes (or create an AMI), then terminate the instance and delete volumes it leaves behind.
    """

    id = "stopped-instance-volumes"
    resource_type = "instance"
    needs = frozenset({"instances", "volumes"})
    inputs = "EC2 instances (state, stop time, block devices); EBS volumes (type, size, attachments)"
    waste_formula = "Σ over the instance's volumes of size GiB × the volume type's $/GB-month ÷ 730"
    suggested_action = "snapshot-then-terminate"
    iam_permissions = ("ec2:DescribeInstances", "ec2:DescribeVolumes")
    Config = StoppedInstanceVolumesConfig
    config: StoppedInstanceVolumesConfig

    def evaluate(self, snapshot: Snapshot, context: Context) -> Evaluation:
        volumes = {volume.id: volume for volume in snapshot.volumes or ()}
        attached: dict[str, list[str]] = defaultdict(list)
        for volume in volumes.values():
            for instance_id in volume.attached_to:
                attached[instance_id].append(volume.id)
        findings, undetermined = [], set()
        for instance in snapshot.instances or ():
            if instance.state != "stopped" or context.is_protected(instance.tags):
                continue
            volume_ids = tuple(dict.fromkeys((*instance.volume_ids, *attached[instance.id])))
            if not volume_ids or any(context.is_protected(volumes[v].tags) for v in volume_ids if v in volumes):
                continue
            if instance.stopped_since is None:
                undetermined.add(instance.id)
                continue
            stopped_for = snapshot.taken_at - instance.stopped_since
            if stopped_for < self.config.min_stopped:
                continue
            findings.append(self._finding(instance, [(v, volumes.get(v)) for v in volume_ids], snapshot.region,
                                          context, stopped_for))
        return Evaluation(findings=tuple(findings), undetermined=frozenset(undetermined))

    def _finding(self, instance: Instance, parts: list[tuple[str, Volume | None]], region: str, context: Context,
                 stopped_for: timedelta) -> Finding:
        priced = []
        for volume_id, volume in parts:
            hourly = (context.prices.volume_hourly_usd(volume.volume_type, volume.size_gib, region)
                      if volume is not None else None)
            priced.append({
                "volume_id": volume_id,
                "volume_type": volume.volume_type if volume else None,
                "size_gib": volume.size_gib if volume else None,
                "usd_per_hour": hourly,
            })
        known = [part["usd_per_hour"] for part in priced if part["usd_per_hour"] is not None]
        # a partial sum would silently under-report: any unpriced volume makes the whole finding's price unknown
        hourly = sum(known) if len(known) == len(priced) else None
        monthly = hourly * HOURS_PER_MONTH if hourly is not None else None
        severity = severity_by_monthly(monthly, self.config.high_monthly_usd, self.config.medium_monthly_usd)
        total_gib = sum(part["size_gib"] or 0 for part in priced)
        price_text = (f"${hourly:.4f}/hour" if hourly is not None
                      else f"price unknown for {len(priced) - len(known)} of {len(priced)} volumes")
        days = stopped_for.total_seconds() / 86400
        return Finding(
            rule=self.id,
            resource_id=instance.id,
            resource_type=self.resource_type,
            region=region,
            owner=context.owner_of(instance.tags),
            severity=severity,
            waste_hourly_usd=hourly,
            summary=(f"{instance.instance_type} stopped {days:.1f} days ago, {len(priced)} volume(s) "
                     f"({total_gib} GiB) still billing — {price_text}"),
            suggested_action=self.suggested_action,
            evidence={
                "instance_type": instance.instance_type,
                "stopped_since": instance.stopped_since.isoformat() if instance.stopped_since else None,
                "stopped_for": format_duration(timedelta(seconds=int(stopped_for.total_seconds()))),
                "volumes": priced,
                "total_size_gib": total_gib,
                "priced_usd_per_hour": sum(known),
                "price_basis": EBS_PRICE_BASIS,
                "monthly_usd": round(monthly, 2) if monthly is not None else None,
                "price": "known" if hourly is not None else "unknown",
            },
        )
