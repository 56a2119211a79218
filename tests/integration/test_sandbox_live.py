"""A long-running sandbox keeps every seeded series and log stream going, so later scans still find the truth."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from guard.sandbox import LiveMetrics, SandboxServer, seed_team_account
from guard.sandbox.truth import Key

REGIONS = ("us-east-1", "us-west-2")
SERIES_RULES = frozenset({"idle-vms", "idle-gpu", "chatty-s3", "idle-nat-gateways", "debug-logging"})
"""The rules that judge series and recent events; the others judge ages, which a day moves past thresholds."""


def test_live_metrics_keep_the_window_filled(sandbox: SandboxServer, make_scanner) -> None:
    sandbox.reset()
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1, minutes=5)
    truth = seed_team_account(sandbox.endpoint_url, now=an_hour_ago)
    scanner = make_scanner(regions=["us-east-1"])

    stale = scanner.scan("us-east-1")
    assert stale.evaluations["idle-vms"].findings == ()
    idle = {key[2] for key in truth.expected("idle-vms") if key[1] == "us-east-1"}
    assert idle <= stale.evaluations["idle-vms"].undetermined

    live = LiveMetrics(sandbox.endpoint_url, truth)
    assert live.feed() > 0
    assert live.feed() == 0  # nothing new until the next datapoint is due
    fresh = scanner.scan("us-east-1")
    found = {f.resource_id for f in fresh.evaluations["idle-vms"].findings}
    young = {vm.instance_id for vm in truth.instances if vm.region == "us-east-1" and vm.profile == "young"}
    assert found == idle | young  # an hour later the young idle instance has a full window too


@pytest.mark.parametrize(("ago", "rules", "come_of_age"), [
    pytest.param(timedelta(hours=2), None, {("idle-vms", "young")}, id="2h-every-rule"),
    pytest.param(timedelta(hours=26), SERIES_RULES, {("idle-vms", "young"), ("idle-nat-gateways", "too-young")},
                 id="26h-series-rules"),
])
def test_a_later_scan_finds_the_ground_truth(sandbox: SandboxServer, make_scanner, ago: timedelta,
                                             rules: frozenset[str] | None, come_of_age: set[tuple[str, str]]) -> None:
    """Seeded ``ago`` and fed once: the same findings and dollars, and the same undetermined resources, except
    the near misses only too young to judge (``come_of_age``: rule, reason), which have become findings."""
    sandbox.reset()
    truth = seed_team_account(sandbox.endpoint_url, now=datetime.now(timezone.utc) - ago)
    LiveMetrics(sandbox.endpoint_url, truth).feed()
    scanner = make_scanner()
    found: dict[Key, float | None] = {}
    undetermined: set[Key] = set()
    for region in REGIONS:
        report = scanner.scan(region)
        assert report.status == "ok", report.errors
        for rule, evaluation in report.evaluations.items():
            if rules is None or rule in rules:
                found |= {f.key: f.waste_hourly_usd for f in evaluation.findings}
                undetermined |= {(rule, region, resource_id) for resource_id in evaluation.undetermined}

    def judged(key: Key) -> bool:
        return rules is None or key[0] in rules

    grown_up = {miss.key for miss in truth.near_misses if (miss.rule, miss.reason) in come_of_age}
    expected = {key: finding.waste_hourly_usd for key, finding in truth.expected().items() if judged(key)}
    assert grown_up
    assert found.keys() == expected.keys() | grown_up
    for key, usd in expected.items():
        # what a retention policy would free moves with the log group's age (the time since seeding): not exact
        tolerance = {"rel": 1e-3} if key[0] == "log-retention" else {"abs": 1e-9}
        assert found[key] == (None if usd is None else pytest.approx(usd, **tolerance)), key
    assert undetermined == {key for key in truth.undetermined() if judged(key)} - grown_up
