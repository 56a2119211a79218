"""The ``log-retention`` rule."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator, model_validator

from guard.durations import format_duration
from guard.model import Evaluation, Finding, LogGroup, Severity, Snapshot
from guard.pricing import GB, HOURS_PER_MONTH, LOGS_STORAGE_USD_PER_GB_MONTH
from guard.rule import Context, Rule, RuleConfig

RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
                  3288, 3653)
"""The values PutRetentionPolicy accepts."""
MIN_AGE_FOR_GROWTH = timedelta(days=1)
"""A younger log group's average growth says little about its next month."""


class LogRetentionConfig(RuleConfig):
    min_stored_gb: float = Field(1.0, ge=0, description="log groups storing more than this (GB = 10^9 bytes) "
                                 "without a retention policy are findings")
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

    @model_validator(mode="after")
    def _ordered(self) -> LogRetentionConfig:
        if self.medium_monthly_usd > self.high_monthly_usd:
            raise ValueError("medium_monthly_usd must not exceed high_monthly_usd")
        return self


class LogRetention(Rule):
    """Log groups that keep everything forever: no retention policy and more than `min_stored_gb` stored.

    What it detects
        A CloudWatch Logs group without a retention policy ("Never expire", the default) whose `storedBytes`
        exceed `min_stored_gb`.
    Why it costs money
        Stored log data bills $0.03 per GB-month, and without a retention policy nothing ever expires: the bill
        grows by everything the group ingests, month after month, for logs nobody reads after a few weeks.
    Example
        `/aws/lambda/etl-nightly`, never expiring, holds 340 GB after a year: $10.20 a month ($0.0140/hour) and
        growing by its whole ingestion every month.
    Fix
        Set a retention policy (`aws logs put-retention-policy --retention-in-days 30`); export what must be kept
        to S3 (Glacier classes cost a fraction) first.
    """

    id = "log-retention"
    resource_type = "log-group"
    needs = frozenset({"log_groups"})
    inputs = "CloudWatch Logs groups (retention policy, stored bytes, creation time)"
    waste_formula = "stored GB × $0.03/GB-month ÷ 730, and growing"
    suggested_action = "set-retention"
    iam_permissions = ("logs:DescribeLogGroups", "tag:GetResources")
    Config = LogRetentionConfig
    config: LogRetentionConfig

    def evaluate(self, snapshot: Snapshot, context: Context) -> Evaluation:
        findings = []
        for group in snapshot.log_groups or ():
            if group.retention_days is not None or context.is_protected(group.tags):
                continue
            if group.stored_bytes / GB <= self.config.min_stored_gb:
                continue
            findings.append(self._finding(group, snapshot, context))
        return Evaluation(findings=tuple(findings))

    def _severity(self, monthly: float | None) -> Severity:
        if monthly is None:
            return Severity.medium
        if monthly >= self.config.high_monthly_usd:
            return Severity.high
        if monthly >= self.config.medium_monthly_usd:
            return Severity.medium
        return Severity.low

    def _finding(self, group: LogGroup, snapshot: Snapshot, context: Context) -> Finding:
        stored_gb = group.stored_bytes / GB
        usd_per_gb_month = LOGS_STORAGE_USD_PER_GB_MONTH if snapshot.region in context.prices.regions else None
        monthly = stored_gb * usd_per_gb_month if usd_per_gb_month is not None else None
        hourly = monthly / HOURS_PER_MONTH if monthly is not None else None
        age = snapshot.taken_at - group.creation_time
        # with nothing expiring, everything stored arrived since creation: its average is the growth rate
        growth = stored_gb / (age.total_seconds() / 3600) * HOURS_PER_MONTH if age >= MIN_AGE_FOR_GROWTH else None
        price_text = f"${hourly:.4f}/hour (${monthly:.2f}/month)" if hourly is not None else "price unknown"
        growth_text = f"+{growth:,.1f} GB/month" if growth is not None else "growing"
        return Finding(
            rule=self.id,
            resource_id=group.name,
            resource_type=self.resource_type,
            region=snapshot.region,
            owner=context.owner_of(group.tags),
            severity=self._severity(monthly),
            waste_hourly_usd=hourly,
            summary=f"{stored_gb:,.1f} GB kept forever (no retention policy), {growth_text} — {price_text}",
            suggested_action=self.suggested_action,
            evidence={
                "stored_bytes": group.stored_bytes,
                "stored_gb": round(stored_gb, 3),
                "retention_days": None,
                "suggested_retention_days": self.config.retention_days,
                "age": format_duration(timedelta(seconds=max(0, int(age.total_seconds())))),
                "growth_gb_per_month": round(growth, 3) if growth is not None else None,
                "growth_basis": ("average since creation (nothing expires without a retention policy)"
                                 if growth is not None else
                                 f"not measured: the log group is younger than {format_duration(MIN_AGE_FOR_GROWTH)}"),
                "usd_per_gb_month": usd_per_gb_month,
                "monthly_usd": round(monthly, 2) if monthly is not None else None,
                "price": "known" if hourly is not None else "unknown",
            },
        )
