"""The daemon's scheduler: one job per region (and the keepalive check and the store's pruning), first scan at
once, never overlapping itself."""

from __future__ import annotations

import time

from guard.daemon import Daemon
from guard.sandbox import GroundTruth


def test_scans_repeat_per_region_without_overlapping(team_account: GroundTruth, make_settings, registry) -> None:
    daemon = Daemon(make_settings(scan_interval="1s"), registry)
    jobs = {job.id: job for job in daemon.scheduler.get_jobs()}
    assert jobs == {}
    daemon.start_scheduler()
    try:
        jobs = {job.id: job for job in daemon.scheduler.get_jobs()}
        assert set(jobs) == {"scan:us-east-1", "scan:us-west-2", "keepalive", "prune"}  # (keepalive: test_keepalive.py,
        # prune: test_retention_daemon.py)
        assert all(job.max_instances == 1 and job.coalesce for job in jobs.values())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and min(
                len(daemon.store.scans(region=r)) for r in ("us-east-1", "us-west-2")) < 3:
            time.sleep(0.2)
    finally:
        daemon.shutdown()
    assert daemon.ready_regions() == {"us-east-1", "us-west-2"}
    for region in ("us-east-1", "us-west-2"):
        scans = sorted(daemon.store.scans(region=region), key=lambda s: s.started_at)
        assert len(scans) >= 3
        assert all(s.status == "ok" for s in scans)
        for earlier, later in zip(scans, scans[1:], strict=False):
            assert later.started_at >= earlier.finished_at, "a region's scans overlapped"
