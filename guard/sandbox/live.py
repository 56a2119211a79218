"""Keeps a seeded sandbox alive: every seeded series and log stream goes on as the clock moves on.

Nothing in the emulator generates metrics or logs, so without this a long ``guard demo`` would see every series
end at seed time: idle instances would turn *undetermined* once the window no longer held enough datapoints,
bucket requests, NAT traffic and log ingestion would fall to nothing, and DEBUG log groups would lose their
sample. Each seeder says how its data goes on (``LiveSeries``, ``LiveLogStream`` in the ground truth); this
writes what came due since the last feed, over HTTP as the seeders did.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

from guard.sandbox import metrics
from guard.sandbox.server import seeding_client
from guard.sandbox.truth import GroundTruth

CHECK_EVERY_SECONDS = 30


def _replays(stamp: datetime, cycle: timedelta, after: datetime, until: datetime) -> Iterator[datetime]:
    """``stamp + k × cycle`` for every k ≥ 1 that falls in (``after``, ``until``], oldest first."""
    k = max(1, (after - stamp) // cycle + 1)
    while (when := stamp + k * cycle) <= until:
        yield when
        k += 1


class LiveMetrics:
    """A background thread that writes each seeded series' and log stream's next datapoints and events."""

    def __init__(self, endpoint_url: str, truth: GroundTruth):
        self.endpoint_url = endpoint_url
        self.truth = truth
        self._fed_until = truth.now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-live-metrics", daemon=True)

    def start(self) -> LiveMetrics:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def feed(self, now: datetime | None = None) -> int:
        """Write the datapoints and log events due since the last feed, up to ``now``; returns how many."""
        now = now or datetime.now(timezone.utc)
        if now <= self._fed_until:
            return 0
        written = self._feed_series(self._fed_until, now) + self._feed_logs(self._fed_until, now)
        self._fed_until = now
        return written

    def _feed_series(self, after: datetime, until: datetime) -> int:
        """PutMetricData of every series' replays in (after, until], per region and namespace."""
        data: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for series in self.truth.live_series:
            dimensions = [{"Name": name, "Value": value} for name, value in series.dimensions]
            data[(series.region, series.namespace)].extend(
                {"MetricName": series.metric, "Dimensions": dimensions, "Timestamp": when, "Value": value,
                 "Unit": series.unit}
                for stamp, value in series.points for when in _replays(stamp, series.cycle, after, until))
        for (region, namespace), datums in data.items():
            metrics.put(self.endpoint_url, region, datums, namespace=namespace)
        return sum(len(datums) for datums in data.values())

    def _feed_logs(self, after: datetime, until: datetime) -> int:
        """PutLogEvents of every stream's copies due in (after, until], one call per stream."""
        written = 0
        for stream in self.truth.live_logs:
            events = [{"timestamp": int(when.timestamp() * 1000), "message": message}
                      for when in _replays(stream.since, stream.cycle, after, until) for message in stream.messages]
            if events:
                seeding_client(self.endpoint_url, "logs", stream.region).put_log_events(
                    logGroupName=stream.group, logStreamName=stream.stream, logEvents=events)
                written += len(events)
        return written

    def _run(self) -> None:
        while not self._stop.wait(CHECK_EVERY_SECONDS):
            self.feed()
