"""The benchmark's instruments against the emulated AWS, on tiny accounts (the benchmarks themselves are not run
here): the seeding is deterministic, the indexed emulator answers as stock moto does, and every call counter counts
what the emulator's own log saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest

from guard.sandbox import SandboxServer
from guard.sandbox.__main__ import handle

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import moto_index  # noqa: E402
from bench.emulator import Emulator, Served  # noqa: E402
from bench.scan import run_vmguard  # noqa: E402
from bench.seeding import FleetPlan, Truth  # noqa: E402

pytestmark = pytest.mark.integration

REGION = "us-east-1"
TINY = FleetPlan(12, per_reservation=5)


def _seed(sandbox: SandboxServer, plan: FleetPlan) -> dict[str, Any]:
    handle(sandbox, {"op": "reset"})
    return handle(sandbox, {"op": "seed_fleet", **plan.seed_fleet_args()})


def _series(instance_id: str) -> list[tuple[str, float]]:
    now = datetime.now(timezone.utc)
    points = boto3.client("cloudwatch", region_name=REGION).get_metric_statistics(
        Namespace="AWS/EC2", MetricName="CPUUtilization", Dimensions=[{"Name": "InstanceId", "Value": instance_id}],
        StartTime=now - timedelta(hours=4), EndTime=now + timedelta(minutes=5), Period=300, Statistics=["Average"])
    return sorted((p["Timestamp"].isoformat(), p["Average"]) for p in points["Datapoints"])


def test_the_same_plan_seeds_the_same_account(sandbox: SandboxServer) -> None:
    first = _seed(sandbox, TINY)
    first_series = {i: _series(i) for i in first["instance_ids"][:3]}
    second = _seed(sandbox, TINY)

    assert second == first
    assert len(first["instance_ids"]) == 12 and len(first["volume_ids"]) == 1
    assert first["idle_ids"] == first["instance_ids"][0::2]  # half idle, half busy
    # the same values; their timestamps end at the last 5-minute mark before each seeding, which may differ
    values = {i: [value for _, value in points] for i, points in first_series.items()}
    assert {i: [value for _, value in _series(i)] for i in second["instance_ids"][:3]} == values
    assert all(len(points) == 36 for points in first_series.values())  # every 5 minutes for 3 hours
    ec2 = boto3.client("ec2", region_name=REGION)
    reservations = ec2.describe_instances()["Reservations"]
    assert sorted(len(r["Instances"]) for r in reservations) == [2, 5, 5]


def _answers(queries: list[dict[str, Any]], instance_id: str) -> tuple[list, list]:
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    end = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    start = end - timedelta(hours=1)
    data = cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=start, EndTime=end,
                                      ScanBy="TimestampAscending")["MetricDataResults"]
    statistics = [
        cloudwatch.get_metric_statistics(Namespace=namespace, MetricName=name, Dimensions=dimensions,
                                         StartTime=start, EndTime=end, Period=period, Statistics=["Average", "Sum"])
        ["Datapoints"]
        for namespace, name, dimensions, period in (
            ("AWS/EC2", "CPUUtilization", [{"Name": "InstanceId", "Value": instance_id}], 300),
            ("AWS/EC2", "NetworkOut", [{"Name": "InstanceId", "Value": instance_id}], 600),
            ("AWS/EC2", "NetworkIn", [], 3600),
            ("AWS/EBS", "CPUUtilization", [], 300),
        )]
    return data, [sorted(points, key=lambda p: p["Timestamp"]) for points in statistics]


def test_the_indexed_emulator_answers_as_stock_moto(sandbox: SandboxServer) -> None:
    seeded = _seed(sandbox, TINY)
    ids = seeded["instance_ids"]

    def stat(query_id: str, instance_id: str | None, metric: str, stat: str, namespace: str = "AWS/EC2") -> dict:
        dimensions = [{"Name": "InstanceId", "Value": instance_id}] if instance_id else []
        return {"Id": query_id, "MetricStat": {"Metric": {"Namespace": namespace, "MetricName": metric,
                                                          "Dimensions": dimensions},
                                               "Period": 300, "Stat": stat}}

    queries = [stat(f"q{n}", instance_id, metric, statistic)
               for n, (instance_id, metric, statistic) in enumerate(
                   [(ids[0], "CPUUtilization", "Average"), (ids[1], "NetworkIn", "Sum"),
                    (ids[2], "NetworkOut", "Maximum"), ("i-00000000000000000", "CPUUtilization", "Average"),
                    (None, "CPUUtilization", "Average")])]
    queries.append(stat("q9", ids[3], "CPUUtilization", "Average", namespace="AWS/Other"))
    stock = _answers(queries, ids[0])
    moto_index.install()
    try:
        indexed = _answers(queries, ids[0])
        with_expression = boto3.client("cloudwatch", region_name=REGION).get_metric_data(
            MetricDataQueries=[queries[1], {"Id": "e1", "Expression": "q1 * 2"}],
            StartTime=datetime.now(timezone.utc) - timedelta(hours=1), EndTime=datetime.now(timezone.utc))
    finally:
        moto_index.uninstall()

    assert indexed == stock
    assert any(result["Values"] for result in stock[0]) and any(stock[1])
    assert [r["Id"] for r in with_expression["MetricDataResults"]] == ["q1", "e1"]


def _ec2_views() -> list[Any]:
    ec2 = boto3.client("ec2", region_name=REGION)
    return [ec2.describe_instances()["Reservations"], ec2.describe_volumes()["Volumes"],
            ec2.describe_tags()["Tags"], ec2.describe_tags(Filters=[{"Name": "key", "Values": ["owner"]}])["Tags"],
            ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["fleet-0001"]}])["Reservations"]]


def test_the_indexed_emulator_describes_ec2_as_stock_moto(sandbox: SandboxServer) -> None:
    _seed(sandbox, TINY)
    stock = _ec2_views()
    moto_index.install()
    try:
        indexed = _ec2_views()
    finally:
        moto_index.uninstall()

    assert indexed == stock
    assert all(stock) and {t["Key"] for r in stock[0] for i in r["Instances"] for t in i["Tags"]} >= {"owner", "Name"}


def test_the_scan_counts_its_calls_as_the_emulator_logs_them(tmp_path: Path) -> None:
    """The whole measuring path: the emulator in its own process, a vmguard scan in another, both counters."""
    with Emulator(log_path=tmp_path / "emulator.log") as emulator:
        seeded = emulator.seed(TINY)
        run = run_vmguard(emulator, TINY, tmp_path / "vmguard")

    # idle-vms lists the instances that publish GPU series (left to idle-gpu): one ListMetrics page
    expected = {"sts:GetCallerIdentity": 1, "ec2:DescribeInstances": 1, "ec2:DescribeVolumes": 1,
                "cloudwatch:ListMetrics": 1, "cloudwatch:GetMetricData": 1}
    assert run.client_calls == expected
    assert run.served_calls == expected and run.served.failed == {}
    truth = Truth.of(seeded)
    assert run.found == {"idle-vms": truth.idle_instances, "detached-volumes": truth.detached_volumes}
    assert run.measured.cpu_seconds > 0 and run.measured.peak_rss_bytes > 10 * 2**20
    assert run.extra["scan_cpu_seconds"] < run.measured.cpu_seconds


def test_the_peer_s_counting_hook_counts_every_request_it_sends(sandbox: SandboxServer, tmp_path: Path) -> None:
    """``bench/c7n_run.py``'s botocore hook (here around plain boto3 calls instead of Custodian's)."""
    calls = tmp_path / "calls.json"
    code = ("import sys; sys.path.insert(0, 'bench'); import c7n_run; c7n_run._install(); import boto3;"
            "boto3.client('sts').get_caller_identity(); ec2 = boto3.client('ec2');"
            "ec2.describe_volumes(); ec2.describe_volumes(); c7n_run._write(sys.argv[1])")
    sandbox.clear_requests()
    subprocess.run([sys.executable, "-c", code, str(calls)], cwd=ROOT, check=True,
                   env={**os.environ, **sandbox.env})

    counted = json.loads(calls.read_text())
    assert counted == {"ec2:DescribeVolumes": 2, "sts:GetCallerIdentity": 1}
    served = Served.of([[name, status, n] for (name, status), n in
                        Counter((r.name, r.status) for r in sandbox.requests()).items()])
    assert served.calls == counted
