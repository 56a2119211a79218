"""The webhook notifier against a real local HTTP receiver: batching, retries, Retry-After, timeouts, no secrets."""

from __future__ import annotations

import json
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from guard.model import Finding, Severity
from guard.notify import HOURS_PER_MONTH, Delivery, Notifier, mask_url

HOOK_TOKEN = "XyZ9abcDEF0123456789ghij"  # the secret part of a Slack-style webhook path
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SLACK_TOKEN = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
FAST = {"backoff": 0.01, "timeout": 2.0}


@dataclass
class Reply:
    """What the receiver answers to one request."""

    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A real HTTP server on 127.0.0.1 that answers from a script of replies (then 200 "ok") and records requests."""

    def __init__(self) -> None:
        self.replies: queue.SimpleQueue[Reply] = queue.SimpleQueue()
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 — the name http.server dispatches to
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests.append(Received(self.path, dict(self.headers), body, time.monotonic()))
                try:
                    reply = receiver.replies.get_nowait()
                except queue.Empty:
                    reply = Reply()
                time.sleep(reply.delay)
                payload = reply.body.encode()
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout) and closed the connection

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/services/T0000/B0000/{HOOK_TOKEN}"

    def script(self, *replies: Reply) -> None:
        for reply in replies:
            self.replies.put(reply)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def finding(i: int, usd: float | None, **extra: Any) -> dict[str, Any]:
    """A finding as ``FindingRow.as_dict()`` gives it, with secret-looking evidence that must never be sent."""
    return {
        "id": i, "rule": "idle-vms" if i % 2 else "detached-volumes", "resource_id": f"i-{i:017x}",
        "resource_type": "instance", "account_id": "123456789012", "region": "us-east-1", "owner": f"user{i % 7}",
        "severity": "medium", "waste_hourly_usd": usd, "summary": f"idle for 3 days (#{i})",
        "evidence": {"user_data": f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}", "token": SLACK_TOKEN,
                     "access_key_id": AWS_KEY_ID},
        "state": "open", "first_seen": "2024-05-01T00:00:00+00:00", "last_seen": "2024-05-01T00:00:00+00:00",
        "resolved_at": None, "suggested_action": "stop", "billing": "ec2-instance-hours", **extra,
    }


def bullet_lines(payload: dict[str, Any]) -> list[str]:
    return [line for block in payload["blocks"] if block["type"] == "section"
            for line in block["text"]["text"].split("\n") if line.startswith("• ")]


def check_slack_limits(payload: dict[str, Any]) -> None:
    assert set(payload) == {"text", "blocks"}
    assert len(payload["blocks"]) <= 50
    for block in payload["blocks"]:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
    assert len(payload["text"]) <= 3000


def test_a_scan_of_500_findings_is_one_message_with_the_costliest_20_and_the_totals(receiver: Receiver) -> None:
    findings = [finding(i, round(i * 0.01, 2)) for i in range(1, 501)]  # $0.01 … $5.00 per hour

    with Notifier(receiver.url, **FAST) as notifier:
        delivery = notifier.new_findings(findings)

    assert (delivery.delivered, delivery.attempts, delivery.status, delivery.error) == (True, 1, 200, None)
    assert [item["id"] for item in delivery.shown] == list(range(500, 480, -1))  # the 20 costliest, as listed
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request.headers["Content-Type"] == "application/json"
    payload = request.json
    check_slack_limits(payload)
    hourly = sum(i * 0.01 for i in range(1, 501))  # 1,252.50
    assert "500 new findings" in payload["text"]
    assert f"${hourly:,.2f}/hour" in payload["text"] and f"${hourly * HOURS_PER_MONTH:,.2f}/month" in payload["text"]
    assert "$1,252.50/hour" in payload["text"] and "$914,325.00/month" in payload["text"]
    overview = payload["blocks"][1]["text"]["text"]
    assert "idle-vms 250" in overview and "detached-volumes 250" in overview
    lines = bullet_lines(payload)
    assert len(lines) == 20
    shown = [float(re.search(r"\$([\d.,]+)/h\b", line).group(1)) for line in lines]
    assert shown == [round(i * 0.01, 2) for i in range(500, 480, -1)]  # costliest first
    assert lines[0] == ("• detached-volumes · us-east-1 · `i-000000000000001f4` · owner user3 · $5.00/h "
                        "— idle for 3 days (#500)")
    assert payload["blocks"][-1]["elements"][0]["text"] == "… and 480 more"


def test_finding_objects_unpriced_items_and_slack_markup(receiver: Receiver) -> None:
    findings = [
        Finding(rule="unattached-eips", resource_id="eipalloc-1", resource_type="address", region="eu-west-1",
                owner="ann", severity=Severity.low, waste_hourly_usd=0.005, summary="<!channel> unattached & idle",
                suggested_action="release", evidence={"password": "hunter2-is-secret"}),
        Finding(rule="chatty-s3", resource_id="bucket-a", resource_type="bucket", region="eu-west-1", owner="",
                severity=Severity.info, waste_hourly_usd=None, summary="requests unknown", suggested_action="notify"),
    ]
    delivery = Notifier(receiver.url, **FAST).new_findings(findings)

    assert delivery.delivered
    payload = receiver.requests[0].json
    assert "$0.0050/hour" in payload["text"] and "(1 not priced)" in payload["text"]
    lines = bullet_lines(payload)
    assert lines[0].startswith("• unattached-eips · eu-west-1 · `eipalloc-1` · owner ann · $0.0050/h")
    assert "&lt;!channel&gt; unattached &amp; idle" in lines[0]  # no @channel ping, no injected links
    assert lines[1] == "• chatty-s3 · eu-west-1 · `bucket-a` · owner unknown · $?/h — requests unknown"
    assert "hunter2" not in receiver.requests[0].body.decode()
    assert payload["blocks"][-1]["type"] == "section"  # nothing truncated: no "… and N more"


def test_actions_and_failures_are_one_message_each(receiver: Receiver) -> None:
    actions = [{"id": n, "action": "stop", "rule": "idle-vms", "region": "us-east-1", "resource_id": f"i-{n}",
                "owner": "bob", "waste_hourly_usd": 0.5 * n, "summary": "idle", "idempotency_key": "k" * 40}
               for n in range(1, 4)]
    failures = [{"action": "terminate", "rule": "idle-vms", "region": "us-east-1", "resource_id": "i-9",
                 "owner": "bob", "error": f"UnauthorizedOperation with key {AWS_KEY_ID}"},
                {"source": "collector:volumes", "region": "us-west-2", "error": "DescribeVolumes: Throttling"}]

    notifier = Notifier(receiver.url, **FAST)
    assert notifier.planned_actions(actions).delivered
    assert notifier.executed_actions(actions[:1]).delivered
    assert notifier.failures(failures).delivered

    planned, executed, failed = (request.json for request in receiver.requests)
    assert planned["text"] == "vmguard: 3 actions planned · $3.00/hour · $2,190.00/month"
    assert bullet_lines(planned)[0] == "• *#3 stop* · idle-vms · us-east-1 · `i-3` · owner bob · $1.50/h — idle"
    assert executed["text"].startswith("vmguard: 1 action executed")
    assert failed["text"] == "vmguard: 2 failures"
    assert "terminate 1, collector:volumes 1" in failed["blocks"][1]["text"]["text"]
    failure_lines = bullet_lines(failed)
    assert failure_lines[0].endswith("— error: UnauthorizedOperation with key [redacted]")
    assert failure_lines[1] == ("• collector:volumes · us-west-2 · owner unknown · $?/h "
                                "— error: DescribeVolumes: Throttling")
    assert "kkkkkkkk" not in receiver.requests[0].body.decode()  # fields outside the allow-list are not sent


def test_an_empty_batch_sends_nothing(receiver: Receiver) -> None:
    notifier = Notifier(receiver.url, **FAST)
    for send in (notifier.new_findings, notifier.planned_actions, notifier.executed_actions, notifier.failures):
        assert send([]) == Delivery(delivered=True, attempts=0, status=None, error=None)
    assert receiver.requests == []


def test_5xx_is_retried_with_backoff_until_it_succeeds(receiver: Receiver) -> None:
    receiver.script(Reply(500, "oops"), Reply(502, "bad gateway"), Reply(503, "unavailable"))

    delivery = Notifier(receiver.url, retries=3, backoff=0.05, timeout=2.0).new_findings([finding(1, 1.0)])

    assert delivery == Delivery(delivered=True, attempts=4, status=200, error=None)
    assert len(receiver.requests) == 4
    assert len({request.body for request in receiver.requests}) == 1  # the same message each time
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.09 and gaps[2] >= 0.19  # 0.05, 0.1, 0.2: exponential


def test_5xx_forever_gives_up_after_the_retries(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.script(*[Reply(503, "down")] * 3)

    delivery = Notifier(receiver.url, retries=2, **FAST).new_findings([finding(1, 1.0)])

    assert delivery == Delivery(delivered=False, attempts=3, status=503, error="HTTP 503: down")
    assert len(receiver.requests) == 3
    warnings = [r for r in caplog.records if r.name == "guard.notify" and r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one line per failed notification, not one per attempt


def test_429_honours_retry_after(receiver: Receiver) -> None:
    receiver.script(Reply(429, "rate_limited", {"Retry-After": "1"}))

    started = time.monotonic()
    delivery = Notifier(receiver.url, **FAST).new_findings([finding(1, 1.0)])
    elapsed = time.monotonic() - started

    assert delivery == Delivery(delivered=True, attempts=2, status=200, error=None)
    assert receiver.requests[1].at - receiver.requests[0].at >= 0.95  # waited as told, not the 0.01 s backoff
    assert elapsed < 3


def test_retry_after_is_capped(receiver: Receiver) -> None:
    receiver.script(Reply(503, "maintenance", {"Retry-After": "3600"}))

    started = time.monotonic()
    delivery = Notifier(receiver.url, max_delay=0.2, **FAST).new_findings([finding(1, 1.0)])

    assert delivery.delivered and delivery.attempts == 2
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_other_4xx_is_not_retried(receiver: Receiver, status: int, caplog: pytest.LogCaptureFixture) -> None:
    receiver.script(Reply(status, "invalid_payload"))

    delivery = Notifier(receiver.url, retries=3, **FAST).new_findings([finding(1, 1.0)])

    assert delivery == Delivery(delivered=False, attempts=1, status=status, error=f"HTTP {status}: invalid_payload")
    assert len(receiver.requests) == 1
    assert f"not delivered after 1 attempt(s): HTTP {status}: invalid_payload" in caplog.text


def test_a_server_slower_than_the_timeout_is_retried_then_given_up(receiver: Receiver) -> None:
    receiver.script(*[Reply(delay=1.5)] * 3)

    started = time.monotonic()
    delivery = Notifier(receiver.url, timeout=0.25, retries=2, backoff=0.01).new_findings([finding(1, 1.0)])
    elapsed = time.monotonic() - started

    assert delivery.delivered is False and delivery.attempts == 3 and delivery.status is None
    assert delivery.error is not None and delivery.error.startswith("timed out after 0.25s")
    assert len(receiver.requests) == 3
    assert elapsed < 1.5  # 3 × 0.25 s + backoff: the slow server never holds the caller for its full delay


def test_a_timeout_then_success_is_delivered(receiver: Receiver) -> None:
    receiver.script(Reply(delay=1.0))

    delivery = Notifier(receiver.url, timeout=0.25, retries=1, backoff=0.01).new_findings([finding(1, 1.0)])

    assert delivery == Delivery(delivered=True, attempts=2, status=200, error=None)


def test_connection_refused_returns_a_failed_delivery(refusing_socket: socket.socket) -> None:
    port = refusing_socket.getsockname()[1]  # bound, nobody listening, held for the test

    started = time.monotonic()
    delivery = Notifier(f"http://127.0.0.1:{port}/services/T/B/{HOOK_TOKEN}", retries=2, **FAST).failures(
        [{"source": "scan", "error": "boom"}])

    assert delivery.delivered is False and delivery.attempts == 3 and delivery.status is None
    assert delivery.error is not None and delivery.error.startswith("ConnectError")
    assert HOOK_TOKEN not in delivery.error
    assert time.monotonic() - started < 2


def test_no_secret_reaches_the_payload(receiver: Receiver) -> None:
    leaky = finding(1, 1.0, summary=(f"user-data sets AWS_ACCESS_KEY_ID={AWS_KEY_ID} and {AWS_SECRET}; posts to "
                                     f"https://hooks.slack.com/services/T1/B2/{HOOK_TOKEN} with {SLACK_TOKEN}, "
                                     "Authorization: Bearer abcdefghijklmnop1234, password: p4ssw0rd!, "
                                     "db postgresql://app:s3cr3t@db.internal/app, "
                                     "hash 9f86d081884c7d659a2feaa0c55ad015"),
                    owner="ann")

    assert Notifier(receiver.url, **FAST).new_findings([leaky]).delivered

    body = receiver.requests[0].body.decode()
    for secret in (AWS_KEY_ID, AWS_SECRET, "wJalrXUtnFEMI", HOOK_TOKEN, SLACK_TOKEN, "abcdefghijklmnop1234",
                   "p4ssw0rd", "s3cr3t", "9f86d081884c7d659a2feaa0c55ad015"):
        assert secret not in body, secret
    for field_name in ("evidence", "user_data", "account_id", "123456789012", "suggested_action"):
        assert field_name not in body, field_name
    line = bullet_lines(json.loads(body))[0]
    assert line.startswith("• idle-vms · us-east-1 · `i-00000000000000001` · owner ann · $1.00/h — user-data sets")
    assert "[redacted]" in line and "db.internal" in line  # the message stays readable around what was removed


def test_the_webhook_url_is_never_logged_in_full(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # includes httpx's own "HTTP Request: POST <url>" line
    receiver.script(Reply(500, "oops"), Reply(500, "oops"))
    notifier = Notifier(receiver.url, retries=1, **FAST)
    masked = f"http://127.0.0.1:{receiver.server.server_address[1]}/…"

    assert notifier.new_findings([finding(1, 1.0)]).delivered is False
    assert notifier.new_findings([finding(2, 1.0)]).delivered is True

    assert mask_url(receiver.url) == masked == notifier.target
    assert HOOK_TOKEN not in caplog.text
    assert f"webhook {masked}: new findings (1) not delivered after 2 attempt(s): HTTP 500: oops" in caplog.text
    assert f"HTTP Request: POST {masked}" in caplog.text  # httpx's log line is there, masked
    assert HOOK_TOKEN not in repr(notifier)


def test_a_bad_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError) as excinfo:
        Notifier(f"ftp://hooks.example.com/services/{HOOK_TOKEN}")
    assert HOOK_TOKEN not in str(excinfo.value)


def test_large_batches_with_long_text_stay_within_slack_limits(receiver: Receiver) -> None:
    findings = [finding(i, 1.0 + i, summary="x " * 2_000, resource_id="/aws/lambda/" + "y" * 500)
                for i in range(300)]

    assert Notifier(receiver.url, max_items=300, **FAST).new_findings(findings).delivered

    payload = receiver.requests[0].json
    check_slack_limits(payload)
    assert len(receiver.requests[0].body) < 20_000
    shown = len(bullet_lines(payload))
    assert 5 <= shown < 300
    assert payload["blocks"][-1]["elements"][0]["text"] == f"… and {300 - shown} more"
