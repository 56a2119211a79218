"""The daemon tells a webhook about new findings: one message per scan that opens any, none when nothing is new."""

from __future__ import annotations

import json
import time

import pytest

from guard.daemon import Daemon
from guard.sandbox import GroundTruth


def wait_for(bodies: list[dict], count: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while len(bodies) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_new_findings_are_announced_once_per_scan(team_account: GroundTruth, make_settings, registry,
                                                  webhook: tuple[str, list[dict]]) -> None:
    url, bodies = webhook
    daemon = Daemon(make_settings(webhook_url=url), registry)
    try:
        for region in ("us-east-1", "us-west-2"):
            daemon.scanner.scan(region)
        wait_for(bodies, 2)
        assert len(bodies) == 2  # one message per scan, however many findings it opened
        texts = sorted(body["text"] for body in bodies)
        expected = sorted(f"{sum(1 for key in team_account.expected() if key[1] == region)} new findings"
                          for region in ("us-east-1", "us-west-2"))
        assert [any(count in text for count in expected) for text in texts] == [True, True]
        daemon.scanner.scan("us-east-1")  # nothing new: no message
        time.sleep(0.5)
        assert len(bodies) == 2
        assert "secret-token-part" not in json.dumps(bodies)
    finally:
        daemon.shutdown()


def test_a_failure_is_announced_when_it_starts_not_on_every_scan(
        team_account: GroundTruth, make_settings, registry, webhook: tuple[str, list[dict]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, bodies = webhook
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", "http://127.0.0.1:9")  # nothing listens there
    daemon = Daemon(make_settings(webhook_url=url, regions=["us-east-1"]), registry)
    try:
        daemon.scanner.scan("us-east-1")
        wait_for(bodies, 2)
        failures = [body for body in bodies if "fail" in body["text"].lower()]
        assert len(failures) == 1 and "collector:metrics" in json.dumps(failures[0])
        daemon.scanner.scan("us-east-1")  # still failing the same way: no second message
        time.sleep(0.5)
        assert len([body for body in bodies if "fail" in body["text"].lower()]) == 1
    finally:
        daemon.shutdown()
