"""The ``log-retention`` rule."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator

from guard.durations import format_duration
from guard.model import Evaluation, Finding, LogGroup, Severity, Snapshot
from guard.pricing import GB, HOURS_PER_MONTH, LOGS_STORAGE_USD_PER_GB_MONTH
from guard.rule import Context, MonthlySeverityConfig, Rule, severity_by_monthly

RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
                  3288, 3653)
"""The values PutRetentionPolicy accepts."""


class LogRetentionConfig(MonthlySeverityConfig):
    min_reclaimable_gb: float = Field(1.0, ge=0, description="log groups without a retention policy where the "
                                      "policy would free more than this (GB = 10^9 bytes) are findings")
    retention_days: int = Field(30, description="the retention the fix sets (a value PutRetentionPolicy accepts)")
    high_monthly_usd: float = Field(30.0, ge=0, description="monthly storage cost from which a finding is high "
                                    "severity (1 TB)")
    medium_monthly_usd: float = Field(3.0, ge=0, description="monthly storage cost from which a finding is medium "
                                      "severity (100 GB)")

    @field_validator("retention_days")
    @classmethod
    def _accepted_by_aws(cls, value: int) -> int:
        if value not in RETENTION_DAYS:
            raise ValueError(f"CloudWatch Logs accepts only {', '.join(map(str, RETENTION_DAYS))} days")
        return value


class LogRetention(Rule):
    """Log groups that keep everything forever: no retention policy, and old data a policy would free.

    What it detects
        A CloudWatch Logs group without a retention policy ("Never expire", the default) where a
        `retention_days` policy would free more than `min_reclaimable_gb`: with its data spread evenly since
        creation (nothing expires), that is stored × (1 − retention_days ÷ age).
    Why it costs money
        Stored log data bills $0.03 per GB-month, and without a retention policy nothing ever expires: the bill
        grows by everything the group ingests, month after month, for logs nobody reads after a few weeks.
    Example
        `/aws/lambda/etl-nightly`, never expiring, holds 340 GB after a year; a 30-day policy frees 312 GB:
        $9.36 a month ($0.0128/hour), and the bill grows by its whole ingestion every month until then.
    Fix
        Set a retention policy (`aws logs put-retention-policy --retention-in-days 30`); export what must be kept
        to S3 (Glacier classes cost a fraction) first.
    """

    id = "log-retention"
    resource_type = "log-group"
    needs = frozenset({"log_groups"})
    inputs = "CloudWatch Logs groups (retention policy, stored bytes, creation time)"
    waste_formula = "stored GB × (1 − retention_days ÷ age in days) × $0.03/GB-month ÷ 730"
    suggested_action = "set-retention"
    actions = ("set-retention",)
    iam_permissions = ("logs:DescribeLogGroups", "tag:GetResources")
    Config = LogRetentionConfig
    config: LogRetentionConfig

    def evaluate(self, snapshot: Snapshot, context: Context) -> Evaluation:
        findings = []
        for group in snapshot.log_groups or ():
            if group.retention_days is not None or context.is_protected(group.tags):
                continue
            if self._reclaimable_gb(group, snapshot.taken_at - group.creation_time) <= self.config.min_reclaimable_gb:
                continue
            findings.append(self._finding(group, snapshot, context))
        return Evaluation(findings=tuple(findings))

    def action_params(self) -> dict[str, int | str]:
        return {"retention_days": self.config.retention_days}

    def _severity(self, monthly: float | None) -> Severity:
        return severity_by_monthly(monthly, self.config.high_monthly_usd, self.config.medium_monthly_usd)

    def _reclaimable_gb(self, group: LogGroup, age: timedelta) -> float:
        """What the policy would delete now, if the group's data arrived evenly since its creation."""
        age_days = age.total_seconds() / 86400
        if age_days <= self.config.retention_days:
            return 0.0
        return group.stored_bytes / GB * (1 - self.config.retention_days / age_days)

    def _finding(self, group: LogGroup, snapshot: Snapshot, context: Context) -> Finding:
        stored_gb = group.stored_bytes / GB
        age = snapshot.taken_at - group.creation_time
        reclaimable_gb = self._reclaimable_gb(group, age)
        usd_per_gb_month = LOGS_STORAGE_USD_PER_GB_MONTH if snapshot.region in context.prices.regions else None
        monthly = reclaimable_gb * usd_per_gb_month if usd_per_gb_month is not None else None
        hourly = monthly / HOURS_PER_MONTH if monthly is not None else None
        # with nothing expiring, everything stored arrived since creation: its average is the growth rate (a finding
        # is older than its retention, so at least a day old)
        growth = stored_gb / (age.total_seconds() / 3600) * HOURS_PER_MONTH
        price_text = f"${hourly:.4f}/hour (${monthly:.2f}/month)" if hourly is not None else "price unknown"
        growth_text = f"+{growth:,.1f} GB/month"
        return Finding(
            rule=self.id,
            resource_id=group.name,
            resource_type=self.resource_type,
            region=snapshot.region,
            owner=context.owner_of(group.tags),
            severity=self._severity(monthly),
            waste_hourly_usd=hourly,
            summary=(f"{stored_gb:,.1f} GB kept forever (no retention policy), {growth_text}; "
                     f"{self.config.retention_days} days' retention frees {reclaimable_gb:,.1f} GB — {price_text}"),
            suggested_action=self.suggested_action,
            evidence={
                "stored_bytes": group.stored_bytes,
                "stored_gb": round(stored_gb, 3),
                "reclaimable_gb": round(reclaimable_gb, 3),
                "retention_days": None,
                "suggested_retention_days": self.config.retention_days,
                "age": format_duration(timedelta(seconds=max(0, int(age.total_seconds())))),
                "growth_gb_per_month": round(growth, 3),
                "growth_basis": "average since creation (nothing expires without a retention policy)",
                "usd_per_gb_month": usd_per_gb_month,
                "monthly_usd": round(monthly, 2) if monthly is not None else None,
                "price": "known" if hourly is not None else "unknown",
            },
        )
