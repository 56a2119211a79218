"""EC2 basic-monitoring series for the sandbox: what CloudWatch would hold for an instance, fed by PutMetricData.

Nothing in the emulator generates metrics, so the sandbox writes ``AWS/EC2`` ``CPUUtilization`` (percent),
``NetworkIn`` and ``NetworkOut`` (bytes per 5-minute period) itself, one datapoint per metric and period.
Every datapoint is drawn inside its load's ranges, so the mean over any window is inside them too.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from guard.sandbox.server import seeding_client

PERIOD = timedelta(minutes=5)
SPAN = timedelta(hours=3)
"""How far back a seeded series reaches: the longest window a rule is expected to look at."""
NAMESPACE = "AWS/EC2"
MAX_DATUMS_PER_CALL = 1000
_MB = 1_000_000
_PERIODS_PER_HOUR = timedelta(hours=1) / PERIOD


@dataclass(frozen=True)
class Load:
    """Ranges each datapoint of an instance is drawn from: CPU percent and network MB/hour (in + out)."""

    cpu_percent: tuple[float, float]
    network_mb_per_hour: tuple[float, float]


BUSY = Load(cpu_percent=(30.0, 90.0), network_mb_per_hour=(200.0, 5000.0))
IDLE = Load(cpu_percent=(0.5, 3.0), network_mb_per_hour=(0.1, 2.0))
CPU_NEAR_MISS = Load(cpu_percent=(5.5, 8.0), network_mb_per_hour=(0.1, 2.0))
NETWORK_NEAR_MISS = Load(cpu_percent=(0.5, 3.0), network_mb_per_hour=(8.0, 30.0))
SATURATED = Load(cpu_percent=(90.0, 90.0), network_mb_per_hour=(2000.0, 2000.0))


def timestamps(now: datetime, span: timedelta = SPAN) -> list[datetime]:
    """Period starts on the 5-minute grid, oldest first, the newest being the period ``now`` falls in."""
    newest = now.replace(minute=now.minute - now.minute % 5, second=0, microsecond=0)
    return [newest - k * PERIOD for k in reversed(range(int(span / PERIOD)))]


def datums(instance_id: str, load: Load, stamps: Iterable[datetime], rng: random.Random) -> Iterator[dict]:
    """The MetricData entries of one instance: CPU, NetworkIn and NetworkOut at each timestamp."""
    dimensions = [{"Name": "InstanceId", "Value": instance_id}]
    for stamp in stamps:
        cpu = round(rng.uniform(*load.cpu_percent), 3)
        network_bytes = rng.uniform(*load.network_mb_per_hour) * _MB / _PERIODS_PER_HOUR
        inbound = round(network_bytes * rng.uniform(0.3, 0.7))
        for name, value, unit in (("CPUUtilization", cpu, "Percent"),
                                  ("NetworkIn", inbound, "Bytes"),
                                  ("NetworkOut", round(network_bytes) - inbound, "Bytes")):
            yield {"MetricName": name, "Dimensions": dimensions, "Timestamp": stamp, "Value": value, "Unit": unit}


def put(endpoint_url: str, region: str, data: Iterable[dict], namespace: str = NAMESPACE) -> None:
    """PutMetricData in batches of up to 1,000 datums."""
    cloudwatch = seeding_client(endpoint_url, "cloudwatch", region)
    batch: list[dict] = []
    for datum in data:
        batch.append(datum)
        if len(batch) == MAX_DATUMS_PER_CALL:
            cloudwatch.put_metric_data(Namespace=namespace, MetricData=batch)
            batch = []
    if batch:
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=batch)
