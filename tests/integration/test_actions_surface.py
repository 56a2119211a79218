"""What a person sees of the actions: `guard actions …`, /v1/actions, guard_actions_total, the webhook messages
and `guard check-config` — against the seeded team account in the emulator, a real SQLite file, the daemon's real
HTTP app served by uvicorn and a real local webhook receiver."""

from __future__ import annotations

import http.server
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from guard.audit import DONE, PLANNED
from guard.aws import Aws, is_read_only
from guard.cli import app
from guard.daemon import Daemon
from guard.engine import Scanner
from guard.rule import Registry
from guard.sandbox import GroundTruth, SandboxServer, sandbox_client, seed_team_account
from guard.settings import Settings, load_settings
from guard.store import Store

ACCOUNT = "123456789012"
REGION = "us-east-1"
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOOK_SECRET = "T000-B000-secret-token-part"
ACTIONS = {
    "unattached-eips": {"action": "release", "grace": "0s", "act_on_unmanaged": True},
    "log-retention": {"action": "set-retention", "grace": "0s", "act_on_unmanaged": True},
    # the seeded volumes carry no guard:managed tag and the rule does not opt in: held back (skipped-unmanaged)
    "detached-volumes": {"action": "snapshot-then-delete", "grace": "0s"},
}
GATES = {"allowed_accounts": ACCOUNT, "min_resource_age": "0s", "max_actions_per_cycle": 100,
         "max_actions_per_hour": 1000}
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("no_guard_environment")  # the settings are the tests' alone


# --- helpers ---------------------------------------------------------------------------------------------------------

def _settings(registry: Registry, database_url: str, **overrides: Any) -> Settings:
    values = {"regions": [REGION], "database_url": database_url, "metrics_refresh": "0s", "api_token": TOKEN,
              "rules": ACTIONS} | overrides
    return load_settings(registry, **values)


def settle(timeout: float = 30) -> None:
    """Wait for the webhook messages the last scan sent off its thread."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name == "notify":
            thread.join(max(deadline - time.monotonic(), 0))
            assert not thread.is_alive(), "a webhook message is still being delivered"


def mutations(aws: Aws) -> Counter:
    """The mutating AWS calls sent so far, by ``service:Operation``."""
    return Counter({op: n for op, n in aws.counter.by_operation().items()
                    if not is_read_only(op.partition(":")[2])})


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def guard_process(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    return subprocess.Popen([sys.executable, "-m", "guard", *args], env=base | env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# --- the command line ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def account(sandbox: SandboxServer) -> GroundTruth:
    """The seeded team account the CLI, API and metrics tests share (seeding takes seconds): the CLI's scan only
    reads, the API's test releases one address in us-east-1, the metrics test acts in us-west-2 only."""
    sandbox.reset()
    return seed_team_account(sandbox.endpoint_url)


@pytest.fixture(scope="class")
def planned(account: GroundTruth, registry: Registry,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], list[dict]]:
    """A database filled by one dry-run scan of the seeded account: (the CLI's environment, the planned rows)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'guard.db'}"
    store = Store(url)
    report = Scanner(_settings(registry, url, mode="dry-run", **GATES), registry, Aws(), store).scan(REGION)
    store.close()
    assert report.status == "ok", report.errors
    assert {(row["rule"], row["action"]) for row in report.actions.planned} == {
        ("unattached-eips", "release"), ("log-retention", "set-retention")}
    return {"GUARD_DATABASE_URL": url, "GUARD_REGIONS": REGION}, report.actions.planned


class TestCli:
    def test_list_as_json_with_filters(self, planned) -> None:
        env, rows = planned
        result = runner.invoke(app, ["actions", "list", "--format", "json"], env=env)
        assert result.exit_code == 0, result.output
        listed = json.loads(result.stdout)
        assert [row["id"] for row in listed] == sorted((row["id"] for row in rows), reverse=True)  # newest first
        assert listed == sorted(rows, key=lambda row: -row["id"])  # the audit rows, as recorded
        assert {row["status"] for row in listed} == {PLANNED}

        only = runner.invoke(app, ["actions", "list", "--format", "json", "--status", "would-do",
                                   "--rule", "unattached-eips"], env=env)
        assert {row["id"] for row in json.loads(only.stdout)} == {
            row["id"] for row in rows if row["rule"] == "unattached-eips"}
        none = runner.invoke(app, ["actions", "list", "--format", "json", "--status", "done"], env=env)
        assert none.exit_code == 0 and json.loads(none.stdout) == []
        assert "no actions with status done" in runner.invoke(app, ["actions", "list", "--status", "done"],
                                                              env=env).stdout
        limited = runner.invoke(app, ["actions", "list", "--format", "json", "--limit", "2"], env=env)
        assert len(json.loads(limited.stdout)) == 2

    def test_the_table_and_a_bad_status_in_a_real_process(self, planned, tmp_path: Path) -> None:
        env, rows = planned
        table = guard_process("actions", "list", env=env | {"COLUMNS": "220"}, cwd=tmp_path)
        bad = guard_process("actions", "list", "--status", "finished", env=env, cwd=tmp_path)
        out, err = table.communicate(timeout=60)
        assert table.returncode == 0, err
        lines = out.splitlines()
        assert lines[0].strip() == "actions"
        for row in rows:
            (line,) = [line for line in lines if re.match(rf"\W*{row['id']}\b", line)]
            cells = [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]
            assert cells[:7] == [str(row["id"]), PLANNED, row["action"], row["rule"], row["region"],
                                 row["resource_id"], row["owner"]], line

        out, err = bad.communicate(timeout=60)
        assert bad.returncode == 2, err
        line = one_line(err)
        assert "--status 'finished'" in line and "would-do" in line and "done" in line
        assert out == ""

    def test_show_one_action_or_say_there_is_none(self, planned) -> None:
        env, rows = planned
        shown = runner.invoke(app, ["actions", "show", str(rows[0]["id"])], env=env)
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout) == rows[0]
        unknown = runner.invoke(app, ["actions", "show", "99999"], env=env)
        assert unknown.exit_code == 1
        assert "action 99999: no such action" in one_line(unknown.stderr)
        assert unknown.stdout == ""

    def test_approve_records_who_and_refuses_a_second_time(self, planned) -> None:
        env, rows = planned
        target = rows[-1]["id"]
        approved = runner.invoke(app, ["actions", "approve", str(target), "--by", "alice"], env=env)
        assert approved.exit_code == 0, approved.output
        assert f"approved action {target}" in one_line(approved.stderr)
        row = json.loads(runner.invoke(app, ["actions", "show", str(target)], env=env).stdout)
        assert (row["status"], row["approved_by"]) == ("approved", "cli:alice") and row["approved_at"]
        listed = runner.invoke(app, ["actions", "list", "--format", "json", "--status", "approved"], env=env)
        assert [r["id"] for r in json.loads(listed.stdout)] == [target]

        again = runner.invoke(app, ["actions", "approve", str(target), "--by", "eve"], env=env)
        assert again.exit_code == 1
        assert f"action {target} is approved, not would-do" in one_line(again.stderr)
        missing = runner.invoke(app, ["actions", "approve", "99999", "--by", "eve"], env=env)
        assert missing.exit_code == 1 and "no such action" in one_line(missing.stderr)
        row = json.loads(runner.invoke(app, ["actions", "show", str(target)], env=env).stdout)
        assert row["approved_by"] == "cli:alice"  # the refused approvals changed nothing


# --- the HTTP API ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="class")
def api(account: GroundTruth, registry: Registry, tmp_path_factory: pytest.TempPathFactory,
        serve) -> Iterator[tuple[str, Daemon]]:
    """A dry-run daemon that scanned both regions once, serving its API."""
    url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'guard.db'}"
    daemon = Daemon(_settings(registry, url, mode="dry-run", regions=[REGION, "us-west-2"], **GATES), registry)
    try:
        for region in daemon.settings.regions:
            assert daemon.scanner.scan(region).status == "ok"
        with serve(daemon.app) as base:
            yield base, daemon
    finally:
        daemon.shutdown()


class TestApi:
    def test_list_needs_the_token_and_filters(self, api) -> None:
        base, daemon = api
        assert httpx.get(f"{base}/v1/actions").status_code == 401
        assert httpx.get(f"{base}/v1/actions", headers={"Authorization": "Bearer wrong-token-0000"}).status_code == 401
        listed = httpx.get(f"{base}/v1/actions", headers=AUTH).json()
        audit = daemon.scanner.actuator.audit
        assert listed == [row.as_dict() for row in audit.actions()]
        assert [row["id"] for row in listed] == sorted((row["id"] for row in listed), reverse=True)
        assert {row["region"] for row in listed} == {REGION, "us-west-2"}
        assert {row["status"] for row in listed} == {PLANNED}

        def ids(**params: Any) -> list[int]:
            response = httpx.get(f"{base}/v1/actions", headers=AUTH, params=params)
            assert response.status_code == 200, response.text
            return [row["id"] for row in response.json()]

        assert ids(status="would-do") == [row["id"] for row in listed]
        assert ids(status="done") == []
        assert ids(rule="log-retention") == [row["id"] for row in listed if row["rule"] == "log-retention"]
        assert ids(region="us-west-2") == [row["id"] for row in listed if row["region"] == "us-west-2"]
        assert ids(rule="unattached-eips", region=REGION) == [
            row["id"] for row in listed if row["rule"] == "unattached-eips" and row["region"] == REGION]
        assert ids(limit=1) == [listed[0]["id"]]
        bad = httpx.get(f"{base}/v1/actions", headers=AUTH, params={"status": "finished"})
        assert bad.status_code == 422 and "Traceback" not in bad.text

    def test_one_action_or_404(self, api) -> None:
        base, _ = api
        first = httpx.get(f"{base}/v1/actions", headers=AUTH).json()[-1]
        assert httpx.get(f"{base}/v1/actions/{first['id']}", headers=AUTH).json() == first
        assert httpx.get(f"{base}/v1/actions/{first['id']}").status_code == 401
        missing = httpx.get(f"{base}/v1/actions/99999", headers=AUTH)
        assert missing.status_code == 404 and missing.json() == {"detail": "action 99999: no such action"}
        assert httpx.get(f"{base}/v1/actions/first", headers=AUTH).status_code == 422

    def test_the_openapi_schema_documents_the_action_endpoints(self, api) -> None:
        base, _ = api
        schema = httpx.get(f"{base}/openapi.json").json()
        paths = schema["paths"]
        assert "get" in paths["/v1/actions"] and "get" in paths["/v1/actions/{action_id}"]
        approve = paths["/v1/actions/{action_id}/approve"]["post"]
        assert {"200", "404", "409", "422"} <= approve["responses"].keys()
        assert "would-do" in approve["summary"]
        body = approve["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert schema["components"]["schemas"][body]["required"] == ["by"]
        listed = paths["/v1/actions"]["get"]
        assert {p["name"] for p in listed["parameters"]} >= {"status", "rule", "region", "limit"}
        out = schema["components"]["schemas"]["ActionOut"]["properties"]
        assert {"key", "status", "approved_by", "planned_at", "finished_at", "error"} <= out.keys()

    def test_approval_payloads_are_checked(self, api) -> None:
        base, _ = api
        target = httpx.get(f"{base}/v1/actions", headers=AUTH).json()[0]["id"]
        endpoint = f"{base}/v1/actions/{target}/approve"
        assert httpx.post(endpoint, json={"by": "bob"}).status_code == 401
        for payload in ({}, {"by": ""}, {"who": "bob"}, {"by": "x" * 201}):
            response = httpx.post(endpoint, json=payload, headers=AUTH)
            assert response.status_code == 422, (payload, response.text)
            assert "Traceback" not in response.text and response.json()["detail"]
        garbled = httpx.post(endpoint, content=b"by=bob", headers=AUTH | {"Content-Type": "application/json"})
        assert garbled.status_code == 422 and "Traceback" not in garbled.text
        assert httpx.post(f"{base}/v1/actions/99999/approve", json={"by": "bob"}, headers=AUTH).status_code == 404
        assert httpx.get(f"{base}/v1/actions/{target}", headers=AUTH).json()["status"] == PLANNED

    def test_approve_once_then_409_and_the_next_scan_runs_only_that_action(self, api,
                                                                          sandbox: SandboxServer) -> None:
        base, daemon = api
        listed = httpx.get(f"{base}/v1/actions", headers=AUTH).json()
        target = next(row for row in listed if row["rule"] == "unattached-eips" and row["region"] == REGION)
        endpoint = f"{base}/v1/actions/{target['id']}/approve"

        approved = httpx.post(endpoint, json={"by": "bob"}, headers=AUTH)
        assert approved.status_code == 200, approved.text
        assert (approved.json()["status"], approved.json()["approved_by"]) == ("approved", "api:bob")
        again = httpx.post(endpoint, json={"by": "carol"}, headers=AUTH)
        assert again.status_code == 409
        assert again.json()["detail"] == (f"action {target['id']} is approved, not would-do: only planned actions "
                                          "can be approved")

        before = mutations(daemon.aws)
        report = daemon.scanner.scan(REGION)
        assert report.status == "ok", report.errors
        assert mutations(daemon.aws) - before == Counter({"ec2:ReleaseAddress": 1})
        assert [row["id"] for row in report.actions.executed] == [target["id"]]
        done = httpx.get(f"{base}/v1/actions/{target['id']}", headers=AUTH).json()
        assert (done["status"], done["approved_by"]) == (DONE, "api:bob")
        assert done["started_at"] and done["finished_at"] and done["error"] is None
        after = {row["id"]: row["status"] for row in httpx.get(f"{base}/v1/actions", headers=AUTH).json()}
        assert after == {row["id"]: DONE if row["id"] == target["id"] else PLANNED for row in listed}
        addresses = sandbox_client(sandbox.endpoint_url, "ec2", REGION).describe_addresses()["Addresses"]
        assert target["resource_id"] not in {address["AllocationId"] for address in addresses}


# --- metrics ---------------------------------------------------------------------------------------------------------

def action_counts(base: str) -> Counter:
    """guard_actions_total from /metrics, by (rule, action, result); no resource id in any label."""
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{base}/metrics").text)}
    family = families["guard_actions"]
    assert family.type == "counter"
    counts: Counter = Counter()
    for sample in family.samples:
        if sample.name == "guard_actions_total":
            assert set(sample.labels) == {"rule", "action", "result"}
            counts[(sample.labels["rule"], sample.labels["action"], sample.labels["result"])] += int(sample.value)
    return counts


def test_metrics_count_each_decision_once_and_match_the_audit_trail(account: GroundTruth, make_settings,
                                                                    registry: Registry, serve) -> None:
    region = "us-west-2"  # the shared account's other region: the API test acted in us-east-1
    volumes = sum(1 for key in account.expected("detached-volumes") if key[1] == region)
    held_back = Counter({("detached-volumes", "snapshot-then-delete", "skipped-unmanaged"): volumes})
    assert volumes > 1

    dry = Daemon(make_settings(mode="dry-run", regions=[region], api_token=TOKEN, rules=ACTIONS, **GATES), registry)
    audit = dry.scanner.actuator.audit
    try:
        with serve(dry.app) as base:
            dry.scanner.scan(region)
            planned = Counter((row.rule, row.action, PLANNED) for row in audit.actions())
            assert sum(planned.values()) > 1
            assert action_counts(base) == planned + held_back
            approved = audit.actions(rule="unattached-eips")[0]
            assert httpx.post(f"{base}/v1/actions/{approved.id}/approve", json={"by": "bob"},
                              headers=AUTH).status_code == 200
            dry.scanner.scan(region)  # runs the approved one; the held-back volumes are not counted again
            assert action_counts(base) == planned + held_back + Counter({("unattached-eips", "release", DONE): 1})
    finally:
        dry.shutdown()

    enforce = Daemon(make_settings(mode="enforce", regions=[region], api_token=TOKEN, rules=ACTIONS, **GATES),
                     registry)
    try:
        with serve(enforce.app) as base:
            enforce.scanner.scan(region)
            enforce.scanner.scan(region)
            counts = action_counts(base)
    finally:
        enforce.shutdown()
    rows = audit.actions()
    assert {row.status for row in rows} == {DONE}  # every planned action ran: one by approval, the rest enforced
    assert Counter((row.rule, row.action, DONE) for row in rows if row.approved_by == "mode:enforce") + held_back \
        == counts
    assert sum(planned.values()) == len(rows)


# --- webhook ---------------------------------------------------------------------------------------------------------

class Receiver:
    """A real webhook endpoint on loopback: answers the statuses queued with ``fail_next`` (then 200), keeps what
    it was sent. On a port the system picks, or on ``sock`` (bound, not yet listening) when given."""

    def __init__(self, sock: socket.socket | None = None):
        self.attempts: list[tuple[int, dict]] = []
        self._replies: queue.SimpleQueue[int] = queue.SimpleQueue()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 — the name http.server dispatches to
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    status = receiver._replies.get_nowait()
                except queue.Empty:
                    status = 200
                receiver.attempts.append((status, body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        if sock is None:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        else:  # the socket is taken over (and closed with the server): listening on it brings the address up
            self.server = http.server.ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
            self.server.socket.close()
            self.server.socket = sock
            self.server.server_address = sock.getsockname()
            self.server.server_activate()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = webhook_url(self.server.server_address[1])

    def fail_next(self, *statuses: int) -> None:
        for status in statuses:
            self._replies.put(status)

    def delivered(self) -> list[dict]:
        return [body for status, body in self.attempts if status == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def webhook_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/services/{HOOK_SECRET}"


_TITLE = re.compile(r"^vmguard: ([\d,]+) (new findings?|actions? planned|actions? executed|failures?)\b")
_KINDS = {"new finding": "new", "new findings": "new", "action planned": "planned", "actions planned": "planned",
          "action executed": "executed", "actions executed": "executed", "failure": "failures", "failures": "failures"}


def kinds(messages: list[dict]) -> list[tuple[str, int]]:
    """(kind, item count) of each message, from its title."""
    found = []
    for message in messages:
        match = _TITLE.match(message["text"])
        assert match, message["text"]
        found.append((_KINDS[match.group(2)], int(match.group(1).replace(",", ""))))
    return sorted(found)


def test_one_message_per_kind_per_scan_retried_and_without_evidence(
        team_account: GroundTruth, make_settings, registry: Registry, sandbox: SandboxServer) -> None:
    rules = ACTIONS | {"idle-vms": {"action": "stop", "grace": "0s"}}
    receiver = Receiver()
    try:
        dry = Daemon(make_settings(mode="dry-run", regions=[REGION], webhook_url=receiver.url, rules=rules, **GATES),
                     registry)
        audit = dry.scanner.actuator.audit
        try:
            first = dry.scanner.scan(REGION)
            settle()
            # nothing is planned before the findings were announced
            assert first.actions.planned == [] and audit.actions() == []
            assert kinds(receiver.delivered()) == [("new", len(first.opened))]
            assert len(first.opened) > 20  # more than a message lists: the costliest 20 were announced, not the rest
            assert len([f for f in dry.store.findings() if f.notified_at is not None]) == 20

            unannounced = [f for f in dry.store.findings() if f.rule in rules and f.notified_at is None]
            receiver.fail_next(500, 500)
            second = dry.scanner.scan(REGION)
            settle()
            planned = audit.actions(status=PLANNED)
            assert len(second.actions.planned) == len(planned) > 1
            # retried until it arrived; the findings the first message did not list are announced now
            assert sorted(status for status, _ in receiver.attempts[1:]) == [200, 200, 500, 500]
            assert kinds(receiver.delivered()[1:]) == sorted([("new", len(unannounced)),
                                                              ("planned", len(planned))])
        finally:
            dry.shutdown()

        # two idle instances refuse to stop: two failed actions, reported in one message (two the daemon stops at
        # all: an instance-store type, or one whose storage AWS cannot describe, is held back before any call)
        ec2 = sandbox_client(sandbox.endpoint_url, "ec2", REGION)
        types = {vm.instance_id: vm.instance_type for vm in team_account.instances}
        ebs_only = {t["InstanceType"] for t in ec2.describe_instance_types(
            Filters=[{"Name": "instance-type", "Values": sorted(set(types.values()))}])["InstanceTypes"]
            if not t["InstanceStorageSupported"]}
        refusing = sorted(key[2] for key in team_account.expected("idle-vms")
                          if key[1] == REGION and types[key[2]] in ebs_only)[:2]
        for instance_id in refusing:
            ec2.modify_instance_attribute(InstanceId=instance_id, DisableApiStop={"Value": True})
        enforce = Daemon(make_settings(mode="enforce", regions=[REGION], webhook_url=receiver.url, rules=rules,
                                       **GATES), registry)
        try:
            sent = len(receiver.delivered())
            third = enforce.scanner.scan(REGION)
            settle()
        finally:
            enforce.shutdown()
        done, failed = audit.actions(status=DONE), audit.actions(status="failed")
        assert len(third.actions.executed) == len(done) > 1
        assert sorted(row.resource_id for row in failed) == refusing
        messages = receiver.delivered()[sent:]
        assert kinds(messages) == [("executed", len(done)), ("failures", 2)]
        failure = next(m for m in messages if m["text"].startswith("vmguard: 2 failures"))
        assert all(instance_id in json.dumps(failure) for instance_id in refusing)
        assert "OperationNotPermitted" in json.dumps(failure)

        everything = json.dumps([body for _, body in receiver.attempts])
        assert HOOK_SECRET not in everything and "evidence" not in everything and "params" not in everything
        assert not any(row.key in everything for row in audit.actions())
    finally:
        receiver.close()


def test_only_the_findings_a_message_lists_count_as_announced(
        team_account: GroundTruth, make_settings, registry: Registry) -> None:
    rules = {rule_id: {"enabled": False} for rule_id in registry.rules} | {
        "unattached-eips": ACTIONS["unattached-eips"], "log-retention": ACTIONS["log-retention"]}
    receiver = Receiver()
    daemon = Daemon(make_settings(mode="dry-run", regions=[REGION], webhook_url=receiver.url, rules=rules, **GATES),
                    registry)
    daemon.notifier.max_items = 2  # a message lists the two costliest; the rest are "… and N more"
    audit = daemon.scanner.actuator.audit

    def announced() -> set[int]:
        return {f.id for f in daemon.store.findings() if f.notified_at is not None}

    try:
        first = daemon.scanner.scan(REGION)
        settle()
        total = len(first.opened)
        assert total > 4
        assert receiver.delivered()[0]["blocks"][-1]["elements"][0]["text"] == f"… and {total - 2:,} more"
        assert len(announced()) == 2
        for scan in range(2, total):  # two more announced per scan; only announced findings are ever planned
            before = announced()
            daemon.scanner.scan(REGION)
            settle()
            assert {row.finding_id for row in audit.actions()} <= before
            assert len(announced()) == min(2 * scan, total)
            if len(before) == total:
                break
        assert {row.finding_id for row in audit.actions()} == announced() == {f.id for f in daemon.store.findings()}
    finally:
        daemon.shutdown()
        receiver.close()


def test_an_action_waits_until_its_finding_was_announced(sandbox: SandboxServer, make_settings, registry: Registry,
                                                         refusing_socket: socket.socket) -> None:
    sandbox.reset()  # an account holding only two unattached addresses
    ec2 = sandbox_client(sandbox.endpoint_url, "ec2", REGION)
    eips = sorted(ec2.allocate_address(Domain="vpc", TagSpecifications=[{
        "ResourceType": "elastic-ip", "Tags": [{"Key": "owner", "Value": owner}]}])["AllocationId"]
        for owner in ("ana", "ben"))
    down = webhook_url(refusing_socket.getsockname()[1])
    daemon = Daemon(make_settings(mode="enforce", regions=[REGION], webhook_url=down,
                                  rules={"unattached-eips": ACTIONS["unattached-eips"]}, **GATES), registry)
    daemon.notifier.backoff = 0.01  # nothing listens on the webhook's port yet: give up on each message quickly
    audit = daemon.scanner.actuator.audit
    receiver = None

    def eip_findings() -> list:
        return daemon.store.findings(rule="unattached-eips")

    try:
        for _ in range(2):  # the webhook is down: the findings stay unannounced, and nothing is done
            report = daemon.scanner.scan(REGION)
            settle()
            assert report.status == "ok" and report.actions.executed == []
            assert all(f.notified_at is None for f in eip_findings())
            assert audit.actions() == [] and mutations(daemon.aws) == Counter()

        receiver = Receiver(refusing_socket)  # the webhook comes up on the same address
        report = daemon.scanner.scan(REGION)  # decided before this scan's announcement is delivered: still waits
        settle()
        assert report.actions.executed == [] and audit.actions() == []
        assert kinds(receiver.delivered()) == [("new", len(eips))]  # announced again, those with an action
        assert sorted(str(f.resource_id) for f in eip_findings()) == eips
        announced = {f.id: f.notified_at for f in eip_findings()}
        assert all(announced.values())

        report = daemon.scanner.scan(REGION)
        settle()
        rows = audit.actions()
        assert sorted(row.resource_id for row in rows) == eips and {row.status for row in rows} == {DONE}
        assert all(row.started_at >= announced[row.finding_id] for row in rows)
        assert mutations(daemon.aws) == Counter({"ec2:ReleaseAddress": len(eips)})
        assert kinds(receiver.delivered()[1:]) == [("executed", len(eips))]
    finally:
        daemon.shutdown()
        if receiver:
            receiver.close()


# --- configuration ---------------------------------------------------------------------------------------------------

def test_check_config_shows_the_action_settings_and_refuses_unsafe_ones(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no guard.toml
    result = runner.invoke(app, ["check-config"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert {key: config[key] for key in (
        "mode", "allowed_accounts", "allowed_regions", "managed_tag", "protect_tag", "max_actions_per_cycle",
        "max_actions_per_hour", "breaker_failures", "breaker_cooldown", "min_resource_age", "snapshot_timeout")} == {
        "mode": "observe", "allowed_accounts": [], "allowed_regions": None, "managed_tag": "guard:managed=true",
        "protect_tag": "guard:protect=true", "max_actions_per_cycle": 5, "max_actions_per_hour": 20,
        "breaker_failures": 3, "breaker_cooldown": "1h", "min_resource_age": "6h", "snapshot_timeout": "6h"}
    for rule_id, rule in config["rules"].items():
        assert (rule["action"], rule["grace"], rule["act_on_unmanaged"]) == ("notify", "1d", False), rule_id
    assert config["rules"]["log-retention"]["retention_days"] == 30

    enforce = runner.invoke(app, ["check-config"], env={"GUARD_MODE": "enforce"})
    assert enforce.exit_code == 2 and enforce.stdout == ""
    assert "allowed_accounts" in one_line(enforce.stderr) and "enforce" in one_line(enforce.stderr)
    allowed = runner.invoke(app, ["check-config"], env={"GUARD_MODE": "enforce", "GUARD_ALLOWED_ACCOUNTS": ACCOUNT})
    assert allowed.exit_code == 0 and json.loads(allowed.stdout)["allowed_accounts"] == [ACCOUNT]

    action = runner.invoke(app, ["check-config"], env={"GUARD_RULES__IDLE_VMS__ACTION": "release"})
    assert action.exit_code == 2 and action.stdout == ""
    line = one_line(action.stderr)
    assert "rules.idle-vms.action = 'release'" in line and "notify, stop, terminate" in line
