"""The ``idle-nat-gateways`` rule."""

from __future__ import annotations

import math
from datetime import timedelta

from pydantic import Field

from guard.durations import Duration, Period, format_duration
from guard.model import Evaluation, Finding, MetricQuery, NatGateway, Severity, Snapshot
from guard.pricing import (
    GB,
    HOURS_PER_MONTH,
    NAT_GATEWAY_USD_PER_GB,
    NAT_GATEWAY_USD_PER_HOUR,
    PUBLIC_IPV4_USD_PER_HOUR,
)
from guard.rule import Context, Rule, WindowedConfig

NAMESPACE = "AWS/NATGateway"
PROCESSED_METRICS = ("BytesInFromSource", "BytesInFromDestination")
"""Every processed byte enters the gateway once, from the VPC or from the destination; the ``BytesOut*``
metrics are the same bytes leaving the other side, so adding them would count each byte twice."""


class IdleNatGatewaysConfig(WindowedConfig):
    window: Duration = Field(timedelta(hours=24), description="how far back traffic is summed: a full day covers "
                             "nightly jobs and every time zone's working hours")
    period: Period = Field(timedelta(hours=1), description="CloudWatch period of the sums (hourly: 24 points a day)")
    max_gb_per_day: float = Field(1.0, ge=0, description="processed GB/day below which a gateway is idle "
                                  "(1 GB is $0.045 of processing against $1.08 a day of gateway hours)")
    min_age: Duration = Field(timedelta(hours=24), description="gateways younger than this are not judged")
    min_coverage: float = Field(0.8, gt=0, le=1, description="share of the window's datapoints required per series")


class IdleNatGateways(Rule):
    """NAT gateways that process almost no traffic over the window but bill every hour.

    What it detects
        An `available` NAT gateway older than `min_age` whose processed traffic (`BytesInFromSource` +
        `BytesInFromDestination`) stayed below `max_gb_per_day` over the `window`. NAT gateways publish these
        metrics every minute, zeros included, so a gateway without enough datapoints (`min_coverage`) is left
        undetermined rather than taken for idle.
    Why it costs money
        A NAT gateway bills $0.045 an hour as long as it exists, plus $0.045 per GB it processes: one left behind
        by a test VPC is $33 a month for nothing.
    Example
        The NAT gateway of a finished experiment's VPC, 0.05 GB processed in a day: $0.0451/hour.
    Fix
        Delete the NAT gateway (and release its Elastic IP), or route the private subnets through a shared one.
    """

    id = "idle-nat-gateways"
    resource_type = "nat-gateway"
    needs = frozenset({"nat_gateways", "metrics"})
    inputs = "NAT gateways; CloudWatch AWS/NATGateway BytesInFromSource and BytesInFromDestination (Sum)"
    waste_formula = "$0.045/hour + processed GB/hour × $0.045/GB"
    suggested_action = "delete"
    iam_permissions = ("ec2:DescribeNatGateways", "cloudwatch:GetMetricData")
    Config = IdleNatGatewaysConfig
    config: IdleNatGatewaysConfig

    def _queries(self, gateway: NatGateway) -> tuple[MetricQuery, ...]:
        return tuple(
            MetricQuery(
                namespace=NAMESPACE,
                metric=metric,
                dimensions=(("NatGatewayId", gateway.id),),
                stat="Sum",
                period_seconds=int(self.config.period.total_seconds()),
                window_seconds=int(self.config.window.total_seconds()),
            )
            for metric in PROCESSED_METRICS
        )

    def _judged(self, snapshot: Snapshot, context: Context) -> list[NatGateway]:
        """Available, unprotected gateways old enough to be judged."""
        return [gateway for gateway in snapshot.nat_gateways or ()
                if gateway.state == "available" and not context.is_protected(gateway.tags)
                and snapshot.taken_at - gateway.create_time >= self.config.min_age]

    def metric_queries(self, snapshot: Snapshot, context: Context):
        for gateway in self._judged(snapshot, context):
            yield from self._queries(gateway)

    def evaluate(self, snapshot: Snapshot, context: Context) -> Evaluation:
        cfg = self.config
        expected_points = max(1, int(cfg.window.total_seconds() // cfg.period.total_seconds()))
        needed_points = max(1, math.ceil(expected_points * cfg.min_coverage - 1e-9))
        period_hours = cfg.period.total_seconds() / 3600
        findings, undetermined = [], set()
        for gateway in self._judged(snapshot, context):
            series = [snapshot.series(query) for query in self._queries(gateway)]
            if min(len(s) for s in series) < needed_points:
                undetermined.add(gateway.id)
                continue
            # each series is a rate over the periods it covers, so a gap in one does not dilute it
            bytes_per_hour = {metric: sum(s.values) / len(s) / period_hours
                              for metric, s in zip(PROCESSED_METRICS, series, strict=True)}
            if sum(bytes_per_hour.values()) * 24 >= cfg.max_gb_per_day * GB:
                continue
            gb_per_hour = sum(bytes_per_hour.values()) / GB
            datapoints = min(len(s) for s in series)
            findings.append(self._finding(gateway, snapshot, context, bytes_per_hour, gb_per_hour, datapoints))
        return Evaluation(findings=tuple(findings), undetermined=frozenset(undetermined))

    def _finding(self, gateway: NatGateway, snapshot: Snapshot, context: Context, bytes_per_hour: dict[str, float],
                 gb_per_hour: float, datapoints: int) -> Finding:
        processing = gb_per_hour * NAT_GATEWAY_USD_PER_GB
        hourly = NAT_GATEWAY_USD_PER_HOUR + processing
        window = format_duration(self.config.window)
        age = snapshot.taken_at - gateway.create_time
        return Finding(
            rule=self.id,
            resource_id=gateway.id,
            resource_type=self.resource_type,
            region=snapshot.region,
            owner=context.owner_of(gateway.tags),
            severity=Severity.medium,
            waste_hourly_usd=hourly,
            summary=(f"NAT gateway in {gateway.vpc_id or 'unknown VPC'} processed {gb_per_hour * 24:.3f} GB/day "
                     f"over the last {window} — ${hourly:.4f}/hour"),
            suggested_action=self.suggested_action,
            evidence={
                "vpc_id": gateway.vpc_id,
                "subnet_id": gateway.subnet_id,
                "connectivity_type": gateway.connectivity_type,
                "age": format_duration(timedelta(seconds=int(age.total_seconds()))),
                "window": window,
                "datapoints": datapoints,
                "gb_per_day": round(gb_per_hour * 24, 6),
                "bytes_per_hour": {metric: round(value, 3) for metric, value in bytes_per_hour.items()},
                "gateway_usd_per_hour": NAT_GATEWAY_USD_PER_HOUR,
                "processing_usd_per_hour": processing,
                "also": (f"its Elastic IP keeps billing ${PUBLIC_IPV4_USD_PER_HOUR}/hour after the gateway is deleted: "
                         "release it too (unattached-eips reports it then)"),
                "monthly_usd": round(hourly * HOURS_PER_MONTH, 2),
                "price": "known",
            },
        )
