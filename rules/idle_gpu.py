"""The ``idle-gpu`` rule."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import timedelta

from pydantic import Field

from guard.durations import Duration, Period, format_duration
from guard.model import GPU_METRIC, DimensionSet, Evaluation, Finding, Instance, MetricQuery, Severity, Snapshot
from guard.pricing import HOURS_PER_MONTH
from guard.rule import Context, Rule, WindowedConfig

__all__ = ["GPU_METRIC", "IdleGPU", "IdleGPUConfig"]


class IdleGPUConfig(WindowedConfig):
    window: Duration = Field(timedelta(hours=1), description="how far back utilisation is averaged")
    period: Period = Field(timedelta(minutes=5), description="CloudWatch period (5 min = basic monitoring)")
    gpu_percent_max: float = Field(10.0, ge=0, le=100,
                                   description="idle when every GPU's average utilisation is below this")
    cpu_percent_max: float = Field(5.0, ge=0, le=100,
                                   description="without GPU metrics: idle when average CPU is below this")
    min_coverage: float = Field(0.8, gt=0, le=1, description="share of the window's datapoints required per series")


class IdleGPU(Rule):
    """Running GPU instances whose GPUs (or, without GPU metrics, CPUs) sit idle over the window.

    What it detects
        A running GPU instance (a type with GPUs in the price catalog, or any instance the CloudWatch agent
        publishes GPU series for) whose busiest GPU averaged below
        `gpu_percent_max` over the `window`, from the CloudWatch agent's `CWAgent` `nvidia_smi_utilization_gpu`
        series (one per GPU); an instance without them is judged on `AWS/EC2` `CPUUtilization` below
        `cpu_percent_max`. Every GPU must be idle: a box busy on one GPU of eight is under-used, not idle, and
        stopping it would kill the job. At least `min_coverage` of each series' datapoints must be present.
        Always high severity. An instance with GPU series is judged here only: `idle-vms` leaves it alone, since
        a box whose GPUs are busy is not idle however quiet its CPU and network (data on local NVMe). A GPU type
        without them may also be reported by `idle-vms` on CPU and network; totals are de-duplicated per resource.
    Why it costs money
        GPU instances are the most expensive hours in a data-science account: a g5.12xlarge is $5.67 an hour,
        $4,140 a month, and a training job stuck on CPU-bound data loading keeps it busy while its GPUs wait.
    Example
        A g5.2xlarge whose CPU is busy augmenting images while its A10G averages 1.5%: $1.212/hour.
    Fix
        Stop the instance; if the GPU waits on input, move preprocessing off the GPU box or fix the data loader;
        install the CloudWatch agent's nvidia_gpu plugin so GPU use, not CPU, is judged.
    """

    id = "idle-gpu"
    resource_type = "instance"
    billing = "ec2-instance-hours"
    needs = frozenset({"instances", "metric_listings", "metrics"})
    listings = (GPU_METRIC,)
    inputs = ("EC2 instances with GPUs (price catalog) or with GPU series; CloudWatch CWAgent "
              "nvidia_smi_utilization_gpu (Average) per GPU where the agent publishes it, else AWS/EC2 "
              "CPUUtilization (Average)")
    waste_formula = "the instance type's on-demand $/hour in its region"
    suggested_action = "stop"
    actions = ("stop", "terminate")
    iam_permissions = ("ec2:DescribeInstances", "cloudwatch:ListMetrics", "cloudwatch:GetMetricData")
    Config = IdleGPUConfig
    config: IdleGPUConfig

    def _query(self, namespace: str, metric: str, dimensions: DimensionSet) -> MetricQuery:
        return MetricQuery(namespace=namespace, metric=metric, dimensions=dimensions, stat="Average",
                           period_seconds=int(self.config.period.total_seconds()),
                           window_seconds=int(self.config.window.total_seconds()))

    def _cpu_query(self, instance: Instance) -> MetricQuery:
        # the same query as idle-vms', so the two rules share one GetMetricData series
        return self._query("AWS/EC2", "CPUUtilization", (("InstanceId", instance.id),))

    @staticmethod
    def _gpu_series(snapshot: Snapshot) -> Mapping[str, tuple[DimensionSet, ...]]:
        """Instance id → the dimension sets of its listed GPU series."""
        return snapshot.gpu_series() or {}

    def _eligible(self, snapshot: Snapshot, context: Context) -> Iterable[Instance]:
        """Running, unprotected instances of a GPU type — or of any type, when they publish GPU series (a type
        the catalog does not know, or one it does not call a GPU type)."""
        gpu_series = self._gpu_series(snapshot)
        for instance in snapshot.instances or ():
            if (instance.state == "running" and not context.is_protected(instance.tags)
                    and (context.prices.is_gpu(instance.instance_type) or instance.id in gpu_series)):
                yield instance

    def metric_queries(self, snapshot: Snapshot, context: Context) -> Iterable[MetricQuery]:
        gpu_series = self._gpu_series(snapshot)
        for instance in self._eligible(snapshot, context):
            if instance.id in gpu_series:
                for dimension_set in gpu_series[instance.id]:
                    yield self._query(*GPU_METRIC, dimension_set)
            else:
                yield self._cpu_query(instance)

    def evaluate(self, snapshot: Snapshot, context: Context) -> Evaluation:
        cfg = self.config
        expected_points = max(1, int(cfg.window.total_seconds() // cfg.period.total_seconds()))
        needed_points = max(1, math.ceil(expected_points * cfg.min_coverage - 1e-9))
        gpu_series = self._gpu_series(snapshot)
        findings, undetermined = [], set()
        for instance in self._eligible(snapshot, context):
            if instance.id in gpu_series:
                per_gpu = self._per_gpu_values(snapshot, gpu_series[instance.id])
                if min(len(values) for values in per_gpu.values()) < needed_points:
                    undetermined.add(instance.id)
                    continue
                means = {gpu: sum(values) / len(values) for gpu, values in per_gpu.items()}
                if max(means.values()) >= cfg.gpu_percent_max:
                    continue
                evidence = {
                    "signal": "gpu",
                    "metric": "CWAgent nvidia_smi_utilization_gpu (Average)",
                    "gpus_reporting": len(means),
                    "busiest_gpu_percent": round(max(means.values()), 3),
                    "gpu_avg_percent_by_index": {gpu: round(mean, 3) for gpu, mean in
                                                 sorted(means.items(), key=lambda item: (len(item[0]), item[0]))},
                    "threshold_percent": cfg.gpu_percent_max,
                    "datapoints": min(len(values) for values in per_gpu.values()),
                }
                reading = f"busiest GPU {max(means.values()):.1f}% of {len(means)}"
            else:
                cpu = snapshot.series(self._cpu_query(instance))
                if len(cpu) < needed_points:
                    undetermined.add(instance.id)
                    continue
                cpu_avg = sum(cpu.values) / len(cpu)
                if cpu_avg >= cfg.cpu_percent_max:
                    continue
                evidence = {
                    "signal": "cpu",
                    "metric": "AWS/EC2 CPUUtilization (Average)",
                    "why_cpu": "no CWAgent nvidia_smi_utilization_gpu series for this instance",
                    "cpu_avg_percent": round(cpu_avg, 3),
                    "threshold_percent": cfg.cpu_percent_max,
                    "datapoints": len(cpu),
                }
                reading = f"CPU {cpu_avg:.1f}%, no GPU metrics"
            findings.append(self._finding(instance, snapshot.region, context, reading, evidence))
        return Evaluation(findings=tuple(findings), undetermined=frozenset(undetermined))

    def _per_gpu_values(self, snapshot: Snapshot, dimension_sets: Iterable[DimensionSet]) -> dict[str, list[float]]:
        """GPU index → its datapoints; sets naming the same GPU (agent reconfigured) are pooled."""
        values: dict[str, list[float]] = {}
        for dimension_set in dimension_sets:
            gpu = dict(dimension_set).get("index", "?")
            values.setdefault(gpu, []).extend(snapshot.series(self._query(*GPU_METRIC, dimension_set)).values)
        return values

    def _finding(self, instance: Instance, region: str, context: Context, reading: str,
                 evidence: Mapping[str, object]) -> Finding:
        hourly = context.prices.hourly_usd(instance.instance_type, region)
        info = context.prices.info(instance.instance_type, region) or context.prices.info(instance.instance_type)
        gpus = f"{info.gpu_count}× {info.gpu_name}" if info and info.gpu_name else "GPU"
        window = format_duration(self.config.window)
        price_text = f"${hourly:.3f}/hour" if hourly is not None else "price unknown"
        return Finding(
            rule=self.id,
            resource_id=instance.id,
            resource_type=self.resource_type,
            region=region,
            owner=context.owner_of(instance.tags),
            severity=Severity.high,
            waste_hourly_usd=hourly,
            summary=f"{instance.instance_type} ({gpus}) idle for {window}: {reading} — {price_text}",
            suggested_action=self.suggested_action,
            evidence={
                "instance_type": instance.instance_type,
                "gpu_count": info.gpu_count if info else None,
                "gpu_name": info.gpu_name if info else None,
                **evidence,
                "window": window,
                "on_demand_usd_per_hour": hourly,
                "monthly_usd": round(hourly * HOURS_PER_MONTH, 2) if hourly is not None else None,
                "price": "known" if hourly is not None else "unknown",
            },
        )
