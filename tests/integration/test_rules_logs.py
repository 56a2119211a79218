"""The debug-logging and log-retention rules against the emulated team account: exactly its ground truth."""

from __future__ import annotations

import pytest

from guard.engine import Scanner, ScanReport
from guard.sandbox import GroundTruth
from rules.debug_logging import DebugLogging

pytestmark = pytest.mark.integration

REGIONS = ("us-east-1", "us-west-2")
RULES = ("debug-logging", "log-retention")


def only_log_rules(registry) -> dict[str, dict[str, bool]]:
    return {rule_id: {"enabled": False} for rule_id in registry.rules if rule_id not in RULES}


def scan(scanner: Scanner) -> dict[str, ScanReport]:
    reports = {region: scanner.scan(region) for region in REGIONS}
    for report in reports.values():
        assert not set(RULES) & set(report.skipped), report.errors
        assert not [e for e in report.errors if e["source"] in (
            "collector:log_groups", "collector:metrics", "collector:log_samples", *(f"rule:{r}" for r in RULES))]
    return reports


def test_findings_equal_the_ground_truth(team_account: GroundTruth, make_scanner) -> None:
    scanner = make_scanner()
    scan(scanner)
    for rule in RULES:
        rows = {(r.rule, r.region, r.resource_id): r for r in scanner.store.findings(state="open", rule=rule)}
        expected = team_account.expected(rule)
        assert expected and set(rows) == set(expected), rule
        for key, truth in expected.items():
            # log-retention prices a group by its age at the scan, the truth at seeding: a scan that starts a
            # minute later on a busy machine moves a 90-day-old group's figure by about 4e-6
            assert rows[key].waste_hourly_usd == pytest.approx(truth.waste_hourly_usd, rel=1e-4), key
            assert rows[key].owner == truth.owner
        near_misses = {miss.key for miss in team_account.near_misses if miss.rule == rule}
        assert near_misses and not near_misses & set(rows), rule


def test_debug_logging_samples_only_expensive_groups_and_reads_as_intended(team_account: GroundTruth, make_scanner,
                                                                           registry) -> None:
    reports = scan(make_scanner(rules=only_log_rules(registry)))
    findings = {f.resource_id: f for report in reports.values()
                for f in report.evaluations["debug-logging"].findings}
    cluster = findings["/dask/forecast-prod/workers"]
    assert cluster.severity.value == "high"
    assert cluster.evidence["active_streams"] == 100  # the stream that stopped before the window does not count
    assert cluster.evidence["sampled_events"] == 300 and cluster.evidence["ingestion_usd_per_hour"] == 31.0
    assert cluster.summary.startswith("84% DEBUG across 100 streams, $25.95/hour")
    assert findings["/dask/vision-train/workers"].severity.value == "medium"
    assert findings["/aws/lambda/thumbnailer"].severity.value == "low"
    # expensive, but its events in the window carry old timestamps: nothing to judge it by
    no_sample = {miss.resource_id for miss in team_account.near_misses
                 if miss.rule == "debug-logging" and miss.reason == "no-sample"}
    assert no_sample and reports["us-west-2"].evaluations["debug-logging"].undetermined == no_sample
    assert reports["us-east-1"].evaluations["debug-logging"].undetermined == frozenset()
    for region, report in reports.items():
        sampled = report.snapshot.log_samples
        assert sampled is not None
        ingesting_cheaply = {miss.resource_id for miss in team_account.near_misses
                             if miss.region == region and miss.reason in ("cheap", "not-ingesting")}
        assert sampled and not ingesting_cheaply & set(sampled)
        # one page of groups, of tags and of 500 metric queries; then a bounded read per sampled group
        calls = report.api_calls
        assert calls["cloudwatch-logs:DescribeLogGroups"] == 1
        assert calls["resource-groups-tagging-api:GetResources"] == 1
        assert calls["cloudwatch:GetMetricData"] == 1
        assert calls["cloudwatch-logs:FilterLogEvents"] == len(sampled)
        max_pages = DebugLogging.Config().max_stream_pages
        assert len(sampled) <= calls["cloudwatch-logs:DescribeLogStreams"] <= max_pages * len(sampled)


def test_log_retention_evidence_is_what_the_account_stores(team_account: GroundTruth, make_scanner,
                                                           registry) -> None:
    reports = scan(make_scanner(rules=only_log_rules(registry)))
    findings = {f.resource_id: f for report in reports.values() for f in report.evaluations["log-retention"].findings}
    legacy = findings["/ecs/legacy-batch"]
    assert legacy.evidence["stored_bytes"] == 1250 * 10**9
    # a 30-day policy frees 1250 × (1 − 30/600) = 1187.5 GB: $35.63 a month
    assert legacy.evidence["reclaimable_gb"] == pytest.approx(1187.5, rel=1e-6)
    assert legacy.severity.value == "high" and legacy.evidence["monthly_usd"] == 35.63
    assert legacy.evidence["age"].startswith("600d")  # and the seconds since seeding
    assert legacy.evidence["growth_gb_per_month"] == pytest.approx(1250 / 600 / 24 * 730, rel=1e-4)
