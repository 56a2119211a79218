"""Usage the SDK's clusters report in heartbeats reaches the chatty-s3 and debug-logging rules through a real scan."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from guard.clusters import CLOSED, RUNNING, USAGE_RETENTION, ClusterRegistry, UsageRow
from guard.pricing import GB, LOGS_INGEST_USD_PER_GB, S3_TIER1_USD_PER_1000
from guard.sandbox import sandbox_client
from guard.store import Store
from guard.wire import ClusterRegistration, Heartbeat

REGION = "us-east-1"
BUCKET = "feature-store"


def _register(clusters: ClusterRegistry, cluster_id: str, at: datetime) -> None:
    registration = ClusterRegistration(
        cluster_id=cluster_id, owner="ana", region=REGION, instance_ids=["i-0123456789abcdef0"],
        instance_types=["m7g.large"], keepalive_seconds=3600)
    assert clusters.register(registration, registered_by="ana", now=at) is not None


def test_heartbeat_usage_is_priced_by_a_scan_and_resolved_when_the_cluster_closes(sandbox, registry, make_scanner):
    sandbox.reset()
    sandbox_client(sandbox.endpoint_url, "s3", REGION).create_bucket(Bucket=BUCKET)
    only = {"chatty-s3", "debug-logging"}
    scanner = make_scanner(regions=[REGION], rules={rule: {"enabled": rule in only} for rule in registry.rules})
    clusters = ClusterRegistry(scanner.store)
    now = datetime.now(timezone.utc)
    _register(clusters, "vmg-usage01", now - timedelta(minutes=40))
    for minute in reversed(range(30)):  # a beat a minute for the last half hour: 50 LIST/s, 2 GB/hour mostly DEBUG
        beat = Heartbeat(tasks_processing=1, workers=1, s3_requests={BUCKET: {"LIST": 3000}},
                         log_bytes_by_level={"debug": int(1.5 * GB / 60), "info": int(0.5 * GB / 60)})
        row, accepted = clusters.heartbeat("vmg-usage01", beat, now - timedelta(minutes=minute))
        assert accepted and row.usage["s3_requests"]["value"] == {BUCKET: {"LIST": 3000}}

    report = scanner.scan(REGION)

    assert report.snapshot.clusters is not None and report.errors == []
    by_rule = {finding.rule: finding for finding in report.findings}
    assert len(report.findings) == 2
    chatty = by_rule["chatty-s3"]
    assert chatty.resource_id == BUCKET and chatty.owner == "ana"
    assert chatty.evidence["source"] == "cluster-heartbeats"
    # 30 reports of 3,000 LISTs over the 40 minutes since registration, as a rate over the 1-hour window
    assert chatty.waste_hourly_usd == pytest.approx(30 * 3000 * 60 / 40 * S3_TIER1_USD_PER_1000 / 1000)
    assert chatty.evidence["clusters"][0]["cluster"] == "vmg-usage01"
    debug = by_rule["debug-logging"]
    assert debug.resource_id == "vmg-usage01" and debug.resource_type == "cluster"
    logged = 30 * (int(1.5 * GB / 60) + int(0.5 * GB / 60))
    assert debug.waste_hourly_usd == pytest.approx(logged * 60 / 40 / GB * LOGS_INGEST_USD_PER_GB * 0.75, rel=1e-3)
    assert {row.resource_id for row in scanner.store.findings(rule="debug-logging")} == {"vmg-usage01"}

    assert clusters.move("vmg-usage01", (RUNNING,), CLOSED, datetime.now(timezone.utc))
    scanner.scan(REGION)
    assert scanner.store.findings(rule="debug-logging") == []
    assert [row.severity for row in scanner.store.findings(rule="chatty-s3")] == ["info"]  # not measurable again


def test_usage_reports_older_than_the_retention_are_pruned(database_url):
    clusters = ClusterRegistry(Store(database_url))
    now = datetime.now(timezone.utc)
    _register(clusters, "vmg-prune01", now - USAGE_RETENTION - timedelta(hours=2))
    beat = Heartbeat(s3_requests={BUCKET: {"GET": 1}})
    clusters.heartbeat("vmg-prune01", beat, now - USAGE_RETENTION - timedelta(hours=1))
    clusters.heartbeat("vmg-prune01", Heartbeat(), now - timedelta(minutes=2))  # no usage: no report
    clusters.heartbeat("vmg-prune01", beat, now)
    with clusters.store.session() as session:
        assert [row.at for row in session.query(UsageRow).all()] == [now]
    (usage,) = clusters.usage(now)
    assert [report.at for report in usage.reports] == [now]
