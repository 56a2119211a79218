"""The daemon's retention job: the lease holder prunes at start and then hourly; a standby on the same database
leaves the shared history alone."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from guard.aws import Aws
from guard.daemon import Daemon
from guard.rule import Registry
from guard.store import Pruned, Store


def add_scan(store: Store, finished: datetime) -> int:
    return store.add_scan(account_id="123456789012", region="us-east-1", started_at=finished - timedelta(seconds=2),
                          finished_at=finished, status="ok", api_calls=3, api_calls_by_operation={}, errors=[],
                          rules_evaluated=[], rules_skipped=[], findings_open=0, running_hourly_usd=[],
                          collectors={}).id


def test_only_the_actor_prunes_and_its_job_runs_at_start_then_hourly(make_settings, registry: Registry) -> None:
    actor = Daemon(make_settings(regions=["us-east-1"]), registry, Aws())
    standby = Daemon(make_settings(regions=["us-east-1"]), registry, Aws())
    try:
        assert actor.lease.held() and not standby.lease.held()
        now = datetime.now(timezone.utc)
        old = add_scan(actor.store, now - timedelta(days=30))
        newest = add_scan(actor.store, now)
        assert standby.prune() is None
        assert {scan.id for scan in actor.store.scans()} == {old, newest}
        assert actor.prune() == Pruned(scans=1)
        assert {scan.id for scan in actor.store.scans()} == {newest}

        add_scan(actor.store, now - timedelta(days=20))
        newer = add_scan(actor.store, now)
        actor.start_scheduler(first_scan_now=False)
        deadline = time.monotonic() + 30
        while len(actor.store.scans()) > 2 and time.monotonic() < deadline:  # the job's first run is at start
            time.sleep(0.05)
        assert {scan.id for scan in actor.store.scans()} == {newest, newer}
        assert actor.scheduler.get_job("prune").trigger.interval == timedelta(hours=1)
    finally:
        standby.shutdown()
        actor.shutdown()
