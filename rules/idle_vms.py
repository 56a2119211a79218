"""The ``idle-vms`` rule."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timedelta

from pydantic import Field

from guard.durations import Duration, Period, format_duration
from guard.model import GPU_METRIC, Evaluation, Finding, Instance, MetricQuery, Severity, Snapshot
from guard.pricing import HOURS_PER_MONTH
from guard.rule import Context, Rule, WindowedConfig

_MB = 1_000_000


class IdleVMsConfig(WindowedConfig):
    window: Duration = Field(timedelta(hours=1), description="how far back utilisation is averaged")
    period: Period = Field(timedelta(minutes=5), description="CloudWatch period (5 min = basic monitoring)")
    cpu_percent_max: float = Field(5.0, ge=0, le=100, description="average CPU below this is idle")
    network_mb_per_hour_max: float = Field(5.0, ge=0, description="NetworkIn+NetworkOut below this is idle")
    min_coverage: float = Field(0.8, gt=0, le=1, description="share of the window's datapoints required")


class IdleVMs(Rule):
    """Running instances that do nothing: low CPU and almost no network traffic over the window.

    What it detects
        A running instance whose average `CPUUtilization` stayed below `cpu_percent_max` and whose
        `NetworkIn + NetworkOut` stayed below `network_mb_per_hour_max` for the whole `window`
        (at least `min_coverage` of the window's datapoints present). GPU instances are high severity. An
        instance the CloudWatch agent publishes GPU series for (`CWAgent` `nvidia_smi_utilization_gpu`) is left
        to `idle-gpu`: a box whose GPUs are busy is not idle however quiet its CPU and network. When the metric
        listing cannot be read, a GPU type is left undetermined rather than called idle.
    Why it costs money
        An instance bills its full on-demand rate while it waits: a forgotten g5.12xlarge is $5.67 an hour,
        $4,100 a month, whether or not anything runs on it.
    Example
        A notebook's m5.2xlarge left running over the weekend at 0.8% CPU and 0.2 MB/h of traffic: $0.384/hour.
    Fix
        Stop the instance (its disk survives), or launch work through the SDK with a `keepalive` so it stops itself.
    """

    id = "idle-vms"
    resource_type = "instance"
    billing = "ec2-instance-hours"
    needs = frozenset({"instances", "metrics"})
    uses = frozenset({"metric_listings"})
    listings = (GPU_METRIC,)
    inputs = ("EC2 instances; CloudWatch AWS/EC2 CPUUtilization (Average), NetworkIn and NetworkOut (Sum); which "
              "instances publish CWAgent nvidia_smi_utilization_gpu (ListMetrics)")
    waste_formula = "the instance type's on-demand $/hour in its region"
    suggested_action = "stop"
    actions = ("stop", "terminate")
    iam_permissions = ("ec2:DescribeInstances", "cloudwatch:ListMetrics", "cloudwatch:GetMetricData")
    Config = IdleVMsConfig
    config: IdleVMsConfig

    def _queries(self, instance: Instance) -> tuple[MetricQuery, MetricQuery, MetricQuery]:
        def query(metric: str, stat: str) -> MetricQuery:
            return MetricQuery(
                namespace="AWS/EC2",
                metric=metric,
                dimensions=(("InstanceId", instance.id),),
                stat=stat,
                period_seconds=int(self.config.period.total_seconds()),
                window_seconds=int(self.config.window.total_seconds()),
            )

        return query("CPUUtilization", "Average"), query("NetworkIn", "Sum"), query("NetworkOut", "Sum")

    @staticmethod
    def _judged_here(instance: Instance, gpu_series: Mapping[str, object] | None, context: Context) -> bool | None:
        """Whether this rule judges the instance: not when it publishes GPU series (``idle-gpu`` judges it on its
        GPUs); None (cannot tell) for a GPU type while the metric listing is unknown (``gpu_series`` None)."""
        if gpu_series is None:
            return None if context.prices.is_gpu(instance.instance_type) else True
        return instance.id not in gpu_series

    def metric_queries(self, snapshot: Snapshot, context: Context):
        gpu_series = snapshot.gpu_series()
        for instance in snapshot.instances or ():
            if (instance.state == "running" and not context.is_protected(instance.tags)
                    and self._judged_here(instance, gpu_series, context)):
                yield from self._queries(instance)

    def evaluate(self, snapshot: Snapshot, context: Context) -> Evaluation:
        cfg = self.config
        expected_points = max(1, int(cfg.window.total_seconds() // cfg.period.total_seconds()))
        needed_points = max(1, math.ceil(expected_points * cfg.min_coverage - 1e-9))
        findings, undetermined = [], set()
        gpu_series = snapshot.gpu_series()
        for instance in snapshot.instances or ():
            if instance.state != "running" or context.is_protected(instance.tags):
                continue
            judged = self._judged_here(instance, gpu_series, context)
            if judged is None:
                undetermined.add(instance.id)
                continue
            if not judged:
                continue
            cpu_q, net_in_q, net_out_q = self._queries(instance)
            cpu, net_in, net_out = (snapshot.series(q) for q in (cpu_q, net_in_q, net_out_q))
            if min(len(cpu), len(net_in), len(net_out)) < needed_points:
                undetermined.add(instance.id)
                continue
            cpu_avg = sum(cpu.values) / len(cpu)
            observed_hours = len(net_in) * cfg.period.total_seconds() / 3600
            network_mb_per_hour = (sum(net_in.values) + sum(net_out.values)) / _MB / observed_hours
            if cpu_avg >= cfg.cpu_percent_max or network_mb_per_hour >= cfg.network_mb_per_hour_max:
                continue
            findings.append(self._finding(instance, snapshot.region, context, cpu_avg, network_mb_per_hour, len(cpu)))
        return Evaluation(findings=tuple(findings), undetermined=frozenset(undetermined))

    def _finding(self, instance: Instance, region: str, context: Context, cpu_avg: float,
                 network_mb_per_hour: float, datapoints: int) -> Finding:
        hourly = context.prices.hourly_usd(instance.instance_type, region)
        gpu = context.prices.is_gpu(instance.instance_type)
        severity = Severity.high if gpu or (hourly is not None and hourly >= 1.0) else Severity.medium
        window = format_duration(self.config.window)
        price_text = f"${hourly:.3f}/hour" if hourly is not None else "price unknown"
        return Finding(
            rule=self.id,
            resource_id=instance.id,
            resource_type=self.resource_type,
            region=region,
            owner=context.owner_of(instance.tags),
            severity=severity,
            waste_hourly_usd=hourly,
            summary=(f"{instance.instance_type}{' (GPU)' if gpu else ''} idle for {window}: "
                     f"CPU {cpu_avg:.1f}%, network {network_mb_per_hour:.2f} MB/h — {price_text}"),
            suggested_action=self.suggested_action,
            evidence={
                "instance_type": instance.instance_type,
                "gpu": gpu,
                "cpu_avg_percent": round(cpu_avg, 3),
                "network_mb_per_hour": round(network_mb_per_hour, 4),
                "datapoints": datapoints,
                "window": window,
                "on_demand_usd_per_hour": hourly,
                "monthly_usd": round(hourly * HOURS_PER_MONTH, 2) if hourly is not None else None,
                "price": "known" if hourly is not None else "unknown",
            },
        )
