"""Keeps a seeded sandbox alive: each new 5-minute period, every running instance gets its next datapoints.

Nothing in the emulator generates metrics, so without this a long ``guard demo`` would see every series end
at seed time, and idle instances would turn *undetermined* once the window no longer holds enough datapoints.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from datetime import datetime, timezone

from guard.sandbox import metrics
from guard.sandbox.account import LOADS
from guard.sandbox.truth import GroundTruth

CHECK_EVERY_SECONDS = 30


class LiveMetrics:
    """A background thread that feeds each instance's profile into CloudWatch as the clock moves on."""

    def __init__(self, endpoint_url: str, truth: GroundTruth):
        self.endpoint_url = endpoint_url
        self.truth = truth
        self._fed_until = metrics.timestamps(truth.now, metrics.PERIOD)[-1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-live-metrics", daemon=True)
        self._rng = random.Random(truth.now.timestamp())

    def start(self) -> LiveMetrics:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def feed(self, now: datetime | None = None) -> int:
        """Write the periods that started since the last feed; returns how many periods were written."""
        now = now or datetime.now(timezone.utc)
        stamps = [s for s in metrics.timestamps(now) if s > self._fed_until]
        if not stamps:
            return 0
        by_region: dict[str, list[dict]] = defaultdict(list)
        for instance in self.truth.instances:
            load = LOADS.get(instance.profile)
            if load is not None:
                by_region[instance.region].extend(metrics.datums(instance.instance_id, load, stamps, self._rng))
        for region, data in by_region.items():
            metrics.put(self.endpoint_url, region, data)
        self._fed_until = stamps[-1]
        return len(stamps)

    def _run(self) -> None:
        while not self._stop.wait(CHECK_EVERY_SECONDS):
            self.feed()
