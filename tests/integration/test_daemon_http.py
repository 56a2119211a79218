"""`guard run` as a real process: the HTTP API, /metrics parsed, and a real Prometheus scraping it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from listening import prometheus_url
from polling import wait_for
from prometheus_client.parser import text_string_to_metric_families

from guard.rule import discover_rules
from guard.sandbox import GroundTruth

TOKEN = "test-token-0123456789"
REQUIRED_METRICS = {
    "guard_findings", "guard_waste_hourly_usd", "guard_running_hourly_usd", "guard_scan_duration_seconds",
    "guard_last_scan_success_timestamp_seconds", "guard_scan_errors", "guard_aws_api_calls",
    "guard_findings_price_unknown", "guard_scan_collector_success", "guard_scan_rule_success",
    "guard_waste_unique_hourly_usd", "guard_running_instances", "guard_scans",
}


@pytest.fixture
def daemon(team_account: GroundTruth, guard_run) -> str:
    return guard_run(GUARD_REGIONS="us-east-1,us-west-2", GUARD_API_TOKEN=TOKEN, GUARD_SCAN_INTERVAL="5s")


def test_api_serves_findings_scans_and_readiness(daemon: str, team_account: GroundTruth) -> None:
    wait_for(lambda: httpx.get(f"{daemon}/readyz").status_code == 200, 60, "/readyz")
    assert httpx.get(f"{daemon}/v1/findings").status_code == 401
    assert httpx.get(f"{daemon}/v1/findings", headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    findings = httpx.get(f"{daemon}/v1/findings", headers=auth).json()
    assert {(f["rule"], f["region"], f["resource_id"]) for f in findings} == set(team_account.expected())
    for finding in findings:
        assert {"rule", "resource_id", "region", "owner", "severity", "waste_hourly_usd", "evidence", "state",
                "first_seen", "suggested_action"} <= finding.keys()
        assert finding["state"] == "open" and isinstance(finding["evidence"], dict)
    scans = httpx.get(f"{daemon}/v1/scans", headers=auth).json()
    assert {s["region"] for s in scans if s["status"] == "ok"} == {"us-east-1", "us-west-2"}
    assert httpx.get(f"{daemon}/v1/findings?state=bogus", headers=auth).status_code == 422
    assert "/v1/findings" in httpx.get(f"{daemon}/openapi.json").json()["paths"]


def test_metrics_exposition(daemon: str, team_account: GroundTruth) -> None:
    wait_for(lambda: httpx.get(f"{daemon}/readyz").status_code == 200, 60, "/readyz")
    text = httpx.get(f"{daemon}/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families.keys() >= REQUIRED_METRICS
    waste = sum(s.value for s in families["guard_waste_hourly_usd"].samples)
    expected = sum(e.waste_hourly_usd or 0 for e in team_account.expected().values())
    assert waste == pytest.approx(expected, rel=1e-9)
    unique = sum(s.value for s in families["guard_waste_unique_hourly_usd"].samples)
    rules = discover_rules().rules
    largest: dict[tuple[str, str, str], float] = {}
    for (rule, region, resource_id), e in team_account.expected().items():
        bill = (region, resource_id, rules[rule].billing or rule)  # idle-vms and idle-gpu price the same hours
        largest[bill] = max(largest.get(bill, 0.0), e.waste_hourly_usd or 0.0)
    assert unique == pytest.approx(sum(largest.values()), rel=1e-9)
    findings = sum(s.value for s in families["guard_findings"].samples)
    assert findings == len(team_account.expected())
    infos = {key for key, e in team_account.expected().items() if e.waste_hourly_usd is None
             and any(s.labels["rule"] == key[0] and s.labels["severity"] == "info"
                     for s in families["guard_findings"].samples)}
    assert sum(s.value for s in families["guard_findings_price_unknown"].samples) == sum(
        1 for key, e in team_account.expected().items() if e.waste_hourly_usd is None and key not in infos)
    running = families["guard_running_hourly_usd"].samples
    assert running and all(s.value >= 0 for s in running)
    assert {s.labels["region"] for s in families["guard_last_scan_success_timestamp_seconds"].samples} == {
        "us-east-1", "us-west-2"}
    calls = {(s.labels["service"], s.labels["operation"]) for s in families["guard_aws_api_calls"].samples}
    assert ("cloudwatch", "GetMetricData") in calls and ("ec2", "DescribeInstances") in calls
    for family in families.values():
        for sample in family.samples:
            assert not any(v.startswith(("i-", "vol-")) for v in sample.labels.values()), sample


def test_real_prometheus_scrapes_the_daemon(daemon: str, team_account: GroundTruth, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus server is not installed: `make test` installs Debian's prometheus package")
    wait_for(lambda: httpx.get(f"{daemon}/readyz").status_code == 200, 60, "/readyz")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: vmguard\n"
        f"    static_configs:\n      - targets: ['{daemon.removeprefix('http://')}']\n"
    )
    with (tmp_path / "prometheus.log").open("w") as log:
        prom = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             "--web.listen-address=127.0.0.1:0"],  # the port it reports in its log, read below
            stdout=log, stderr=log)
    try:
        api = f"{prometheus_url(tmp_path / 'prometheus.log', prom)}/api/v1/query"

        def query(expr: str) -> list:
            reply = httpx.get(api, params={"query": expr}).json()
            assert reply["status"] == "success", reply
            return reply["data"]["result"]

        wait_for(lambda: query('up{job="vmguard"} == 1'), 60, "Prometheus to scrape the daemon")
        total = wait_for(lambda: query("sum(guard_waste_hourly_usd)"), 30, "guard_waste_hourly_usd in Prometheus")
        expected = sum(e.waste_hourly_usd or 0 for e in team_account.expected().values())
        assert float(total[0]["value"][1]) == pytest.approx(expected, rel=1e-6)
        by_rule = {r["metric"]["rule"]: float(r["value"][1]) for r in query("sum by (rule) (guard_findings)")}
        rules = {rule for rule, _, _ in team_account.expected()}
        assert by_rule == {rule: float(len(team_account.expected(rule))) for rule in rules}
    finally:
        prom.terminate()
        prom.wait(timeout=30)
