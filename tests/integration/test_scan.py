"""The daemon's scan against the emulated team account: exact findings, lifecycle, failures, restarts."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from guard.aws import Aws
from guard.engine import Scanner
from guard.sandbox import GroundTruth, SandboxServer, make_busy

REGIONS = ["us-east-1", "us-west-2"]


def scan_all(scanner: Scanner) -> dict[tuple[str, str, str], float | None]:
    for region in REGIONS:
        report = scanner.scan(region)
        assert report.status == "ok", report.errors
    return {(r.rule, r.region, r.resource_id): r.waste_hourly_usd for r in scanner.store.findings(state="open")}


def test_findings_equal_the_ground_truth(team_account: GroundTruth, make_scanner) -> None:
    found = scan_all(make_scanner())
    expected = team_account.expected()
    assert set(found) == set(expected)
    for key, truth in expected.items():
        if truth.waste_hourly_usd is None:
            assert found[key] is None, key
        else:
            assert found[key] == pytest.approx(truth.waste_hourly_usd, rel=1e-6), key
    assert {rule for rule, _, _ in found} == {rule for rule, _, _ in expected}


def test_findings_carry_owner_evidence_and_action(team_account: GroundTruth, make_scanner) -> None:
    scanner = make_scanner()
    scan_all(scanner)
    rows = {(r.rule, r.region, r.resource_id): r for r in scanner.store.findings(state="open")}
    for key, truth in team_account.expected().items():
        row = rows[key]
        assert row.owner == truth.owner
        assert row.state == "open" and row.first_seen == row.last_seen
        assert row.evidence and row.summary and row.suggested_action
        if row.rule == "idle-vms":
            assert row.suggested_action == "stop"
            assert row.evidence["cpu_avg_percent"] < 5
            assert row.evidence["network_mb_per_hour"] < 5
        elif row.rule == "detached-volumes":
            assert row.suggested_action == "snapshot-then-delete"
            assert row.evidence["size_gib"] > 0


def test_an_idle_instance_that_becomes_busy_resolves(team_account: GroundTruth, sandbox: SandboxServer,
                                                       make_scanner) -> None:
    scanner = make_scanner()
    scan_all(scanner)
    rule, region, instance_id = next(key for key in team_account.expected("idle-vms"))
    make_busy(sandbox.endpoint_url, region, instance_id)
    found = scan_all(scanner)
    assert (rule, region, instance_id) not in found
    [resolved] = scanner.store.findings(state="resolved")
    assert resolved.resource_id == instance_id and resolved.resolved_at is not None
    assert len(found) == len(team_account.expected()) - 1


class _Forbidden(http.server.BaseHTTPRequestHandler):
    """Answers every request as AWS does when a permission is missing."""

    def do_POST(self) -> None:  # noqa: N802 — the name http.server dispatches to
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"__type":"AccessDeniedException","message":"not authorized to perform: cloudwatch:GetMetricData"}'
        self.send_response(403)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def forbidden_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def forbidden_cloudwatch(forbidden_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", forbidden_endpoint)
    return forbidden_endpoint


def test_a_failed_metrics_fetch_resolves_nothing(team_account: GroundTruth, make_scanner, registry,
                                                 make_settings, request: pytest.FixtureRequest) -> None:
    scanner = make_scanner()
    before = scan_all(scanner)
    request.getfixturevalue("forbidden_cloudwatch")
    broken = Scanner(make_settings(), registry, Aws(), scanner.store)
    report = broken.scan("us-east-1")
    assert report.status == "partial"
    needs_cloudwatch = sorted(rule.id for rule in broken.rules if rule.needs & {"metrics", "metric_listings"})
    assert "idle-vms" in needs_cloudwatch and report.skipped == needs_cloudwatch
    assert any(e["source"] == "collector:metrics" and "AccessDenied" in e["error"] for e in report.errors)
    assert report.snapshot is not None and report.snapshot.metrics is None
    assert report.snapshot.instances is not None
    open_now = {(r.rule, r.region, r.resource_id) for r in scanner.store.findings(state="open")}
    assert open_now == set(before)
    assert scanner.store.findings(state="resolved") == []
    [latest] = scanner.store.scans(region="us-east-1", limit=1)
    assert latest.status == "partial" and latest.rules_skipped == needs_cloudwatch


def test_state_survives_a_restart(team_account: GroundTruth, make_scanner) -> None:
    first = make_scanner()
    scan_all(first)
    first_seen = {(r.rule, r.region, r.resource_id): r.first_seen for r in first.store.findings()}
    first.store.close()
    second = make_scanner()
    assert {(r.rule, r.region, r.resource_id) for r in second.store.findings()} == set(first_seen)
    scan_all(second)
    rows = second.store.findings()
    assert {(r.rule, r.region, r.resource_id): r.first_seen for r in rows} == first_seen
    assert all(r.last_seen > r.first_seen for r in rows)
    assert len(second.store.scans()) == 2 * len(REGIONS)


def test_a_failed_ec2_inventory_resolves_nothing_and_keeps_the_running_cost(
        team_account: GroundTruth, make_scanner, registry, make_settings, forbidden_endpoint: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    scanner = make_scanner()
    before = scan_all(scanner)
    known = scanner.store.latest_scans().inventory["us-east-1"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", forbidden_endpoint)
    report = Scanner(make_settings(), registry, Aws(), scanner.store).scan("us-east-1")
    assert report.status in ("partial", "failed")
    assert report.snapshot.instances is None and report.snapshot.volumes is None
    assert {"idle-vms", "detached-volumes"} <= set(report.skipped)
    assert {(r.rule, r.region, r.resource_id) for r in scanner.store.findings()} >= set(before)
    assert scanner.store.findings(state="resolved") == []
    latest = scanner.store.latest_scans().inventory["us-east-1"]
    assert latest.id == known.id  # the running cost still comes from the last scan that saw the instances
    [failed] = scanner.store.scans(region="us-east-1", limit=1)
    assert failed.collectors["instances"] is False and failed.collectors["volumes"] is False
