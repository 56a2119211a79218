"""chatty-s3 and idle-gpu against the emulated team account: exactly the seeded findings, none of the near misses."""

from __future__ import annotations

import pytest
from faults import FaultProxy

from guard.engine import Scanner
from guard.pricing import default_catalog
from guard.sandbox import GroundTruth, SandboxServer
from guard.store import Store

pytestmark = pytest.mark.integration

REGIONS = ["us-east-1", "us-west-2"]
RULES = ("chatty-s3", "idle-gpu", "idle-vms")
"""The two rules under test, and idle-vms: it shares their CPU series and must not see the new GPU boxes as idle."""


@pytest.fixture
def scanned(team_account: GroundTruth, make_scanner, registry) -> Store:
    others = {rule_id: {"enabled": False} for rule_id in registry.rules if rule_id not in RULES}
    scanner: Scanner = make_scanner(rules=others)
    for region in REGIONS:
        report = scanner.scan(region)
        assert report.status == "ok", report.errors
        assert sorted(report.evaluations) == sorted(RULES)
        # every running GPU box has a full window of the signal it is judged on, GPU or CPU
        assert report.evaluations["idle-gpu"].undetermined == frozenset()
    return scanner.store


def open_findings(store: Store, rule: str) -> dict:
    return {(r.rule, r.region, r.resource_id): r for r in store.findings(state="open") if r.rule == rule}


def assert_ground_truth(store: Store, team_account: GroundTruth, rule: str) -> None:
    """The rule's open findings are the expected ones (owner and $ to 1e-9), and none of its near misses."""
    found = open_findings(store, rule)
    expected = team_account.expected(rule)
    assert set(found) == set(expected)
    for key, truth in expected.items():
        assert found[key].owner == truth.owner, key
        if truth.waste_hourly_usd is None:
            assert found[key].waste_hourly_usd is None, key
        else:
            assert found[key].waste_hourly_usd == pytest.approx(truth.waste_hourly_usd, abs=1e-9), key
    near_misses = {miss.key for miss in team_account.near_misses if miss.rule == rule}
    assert near_misses and not near_misses & set(found)


def test_chatty_s3_finds_the_ground_truth(team_account: GroundTruth, scanned: Store) -> None:
    assert_ground_truth(scanned, team_account, "chatty-s3")
    rows = {key[2]: row for key, row in open_findings(scanned, "chatty-s3").items()}
    assert rows["forecasting-features-raw"].evidence["dominant_operation"] == "LIST"
    assert rows["nlp-tokenized-shards"].evidence["dominant_operation"] == "GET"
    assert rows["nlp-tokenized-shards"].severity == "high"
    assert rows["checkpoint-uploads-usw2"].evidence["dominant_operation"] == "PUT"
    assert rows["priya-model-artifacts"].evidence["filter_id"] == "checkpoints"
    assert rows["priya-model-artifacts"].evidence["whole_bucket"] is False
    assert rows["embeddings-serving-usw2"].evidence["filter_id"] == "EntireBucket"
    assert rows["embeddings-serving-usw2"].evidence["filters_available"] == ["EntireBucket", "hot-prefix"]
    measured = [row for row in rows.values() if row.waste_hourly_usd is not None]
    assert all(row.suggested_action == "reduce-requests" and row.evidence["requests_per_second"] > 0
               for row in measured)
    not_measurable = [row for row in rows.values() if row.waste_hourly_usd is None]
    assert {row.resource_id for row in not_measurable} == {
        "maria-notebooks-backup", "tmp-export-2024-03", "sara-scratch-usw2"}
    for row in not_measurable:
        assert row.severity == "info"
        assert row.summary == "not measurable: request metrics are off"
        assert row.evidence["fix"] == (f"aws s3api put-bucket-metrics-configuration --bucket {row.resource_id} "
                                       "--id EntireBucket --metrics-configuration Id=EntireBucket")


def test_idle_gpu_finds_the_ground_truth_and_says_which_signal_judged(team_account: GroundTruth,
                                                                      scanned: Store) -> None:
    assert_ground_truth(scanned, team_account, "idle-gpu")
    assert_ground_truth(scanned, team_account, "idle-vms")  # the new GPU boxes are busy on CPU and network
    rows = {key[2]: row for key, row in open_findings(scanned, "idle-gpu").items()}
    idle_vms = {key[2] for key in open_findings(scanned, "idle-vms")}
    by_signal = {signal: {instance_id for instance_id, row in rows.items() if row.evidence["signal"] == signal}
                 for signal in ("gpu", "cpu")}
    assert by_signal["gpu"] and by_signal["cpu"] and by_signal["gpu"] | by_signal["cpu"] == set(rows)
    # judged on its GPUs: its CPU is busy, so idle-vms cannot see it; judged on CPU: idle-vms reports it too
    assert not by_signal["gpu"] & idle_vms
    assert by_signal["cpu"] <= idle_vms
    assert all(rows[instance_id].evidence["busiest_gpu_percent"] < 10 for instance_id in by_signal["gpu"])
    assert all(row.severity == "high" and row.suggested_action == "stop" for row in rows.values())


def test_a_busy_gpu_box_quiet_on_cpu_and_network_is_idle_to_neither_rule(team_account: GroundTruth,
                                                                          scanned: Store) -> None:
    # a g5.12xlarge fine-tuning from local NVMe: four GPUs busy (CWAgent), 2% CPU, almost no network
    [box] = [vm for vm in team_account.instances if vm.profile == "gpu-busy"]
    assert box.instance_type == "g5.12xlarge"
    keys = {(rule, box.region, box.instance_id) for rule in ("idle-vms", "idle-gpu")}
    assert keys <= {miss.key for miss in team_account.near_misses}
    assert not keys & (open_findings(scanned, "idle-vms").keys() | open_findings(scanned, "idle-gpu").keys())


def test_without_the_metric_listing_idle_vms_calls_no_gpu_type_idle(team_account: GroundTruth, sandbox: SandboxServer,
                                                                     make_scanner, registry,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = default_catalog()
    with FaultProxy(sandbox.endpoint_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", proxy.url)
        proxy.fail("ListMetrics", 400, "AccessDenied")
        scanner: Scanner = make_scanner(rules={rule_id: {"enabled": rule_id == "idle-vms"}
                                               for rule_id in registry.rules})
        report = scanner.scan("us-east-1")
    assert report.snapshot.metric_listings is None and "idle-vms" not in report.skipped
    evaluation = report.evaluations["idle-vms"]
    gpu_boxes = {vm.instance_id for vm in team_account.instances if vm.region == "us-east-1"
                 and catalog.is_gpu(vm.instance_type) and vm.profile not in ("stopped", "protected")}
    assert gpu_boxes and gpu_boxes <= evaluation.undetermined
    # every other instance is judged as before
    expected = {key[2] for key in team_account.expected("idle-vms") if key[1] == "us-east-1"}
    assert {finding.resource_id for finding in evaluation.findings} == expected - gpu_boxes
