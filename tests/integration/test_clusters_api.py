"""The cluster API over real HTTP (the daemon's app served by uvicorn, a real SQLite file): bearer tokens naming
owners, every /v1 endpoint's 401, owner isolation, payload validation (422 naming the fields, never 500),
register → heartbeat → close, and the cluster metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from guard import wire
from guard.daemon import Daemon
from guard.rule import Registry
from guard.sandbox import SandboxServer, sandbox_client
from guard.sandbox.images import image_for
from guard.settings import load_settings
from guard.wire import Heartbeat
from sdk.daemon_client import DaemonClient, DaemonUnavailable

ADMIN = "admin-token-0123456789"
ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789abc"
AS = {who: {"Authorization": f"Bearer {token}"} for who, token in (("admin", ADMIN), ("alice", ALICE), ("bob", BOB))}
REGION = "us-east-1"
SCHEDULER, WORKER = "i-0123456789abcdef0", "i-0fedcba9876543210"
GROUP = "sg-0123456789abcdef0"


def registration(cluster_id: str, owner: str = "alice", **changes: Any) -> dict[str, Any]:
    return {"cluster_id": cluster_id, "owner": owner, "region": REGION, "instance_ids": [SCHEDULER, WORKER],
            "instance_types": ["m7g.large", "m7g.large"], "security_group_id": GROUP, "keepalive_seconds": 600,
            "idle_timeout_seconds": 1800, "max_lifetime_seconds": 86400, "hourly_usd": 0.1632,
            "tags": {"project": "churn"}} | changes


def launched(sandbox: SandboxServer, owner: str, cluster_id: str | None = None) -> list[str]:
    """Two instances tagged as the SDK tags them for ``owner`` (the daemon checks a registration against them)."""
    tags = {"owner": owner, "guard:managed": "true"} | ({"vmguard:cluster": cluster_id} if cluster_id else {})
    reply = sandbox_client(sandbox.endpoint_url, "ec2", REGION).run_instances(
        ImageId=image_for("m7g.large"), InstanceType="m7g.large", MinCount=2, MaxCount=2,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])
    return [instance["InstanceId"] for instance in reply["Instances"]]


def owned(sandbox: SandboxServer, cluster_id: str, owner: str = "alice", **changes: Any) -> dict[str, Any]:
    """A registration naming instances ``owner`` launched for the cluster."""
    return registration(cluster_id, owner, instance_ids=launched(sandbox, owner, cluster_id), **changes)


@pytest.fixture(scope="module")
def api(sandbox: SandboxServer, registry: Registry, tmp_path_factory: pytest.TempPathFactory, no_guard_environment,
        serve) -> Iterator[tuple]:
    url = f"sqlite:///{tmp_path_factory.mktemp('clusters') / 'guard.db'}"
    settings = load_settings(registry, regions=[REGION], database_url=url, api_token=ADMIN,
                             api_tokens=f"alice={ALICE}, bob={BOB}")
    daemon = Daemon(settings, registry)
    try:
        with serve(daemon.app) as base:
            yield base, daemon
    finally:
        daemon.shutdown()


def post(base: str, path: str, who: str | None, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{base}{path}", headers=AS.get(who or "", {}) | kwargs.pop("headers", {}), **kwargs)


def get(base: str, path: str, who: str | None, **kwargs: Any) -> httpx.Response:
    return httpx.get(f"{base}{path}", headers=AS.get(who or "", {}), **kwargs)


def fields(response: httpx.Response) -> set[str]:
    """The fields a 422 names (the last part of each error's location)."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert "Traceback" not in response.text and body["message"]
    return {error["loc"][-1] for error in body["detail"]}


def test_every_v1_endpoint_needs_a_known_token(api, sandbox: SandboxServer) -> None:
    base, _ = api
    assert post(base, "/v1/clusters", "alice", json=owned(sandbox, "vmg-auth0001")).status_code == 201
    endpoints = [("GET", "/v1/findings", None), ("GET", "/v1/scans", None), ("GET", "/v1/actions", None),
                 ("GET", "/v1/actions/1", None), ("POST", "/v1/actions/1/approve", {"by": "eve"}),
                 ("GET", "/v1/clusters", None), ("GET", "/v1/clusters/vmg-auth0001", None),
                 ("POST", "/v1/clusters", registration("vmg-auth0002")),
                 ("POST", "/v1/clusters/vmg-auth0001/heartbeat", {"tasks_processing": 1}),
                 ("DELETE", "/v1/clusters/vmg-auth0001", None)]
    schema = httpx.get(f"{base}/openapi.json").json()["paths"]
    documented = {(method.upper(), path) for path, item in schema.items() if path.startswith("/v1/")
                  for method in item}
    assert documented == {(method, path.replace("/1", "/{action_id}").replace("vmg-auth0001", "{cluster_id}"))
                          for method, path, _ in endpoints}  # every /v1 endpoint is in the matrix
    wrong = [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {ALICE}"},
             {"Authorization": ALICE}, {"Authorization": f"Bearer {ALICE}x"}, {"Authorization": "Bearer"}]
    with httpx.Client(base_url=base) as client:
        for method, path, body in endpoints:
            for headers in wrong:
                response = client.request(method, path, headers=headers, json=body)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
            # a payload that is not even JSON, without a token, is 401 too: nothing is told before the token
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
                broken = client.request(method, path, content=b"{not json",
                                        headers=headers | {"Content-Type": "application/json"})
                assert broken.status_code == 401, (method, path, broken.text)
    assert get(base, "/v1/clusters/vmg-auth0001", "alice").json()["state"] == "running"  # nothing changed


def test_owner_tokens_read_v1_but_approve_nothing(api) -> None:
    base, _ = api
    for who in ("admin", "alice", "bob"):
        for path in ("/v1/findings", "/v1/scans", "/v1/actions"):
            assert get(base, path, who).status_code == 200, (who, path)
    refused = post(base, "/v1/actions/1/approve", "alice", json={"by": "alice"})
    assert refused.status_code == 403 and "admin token" in refused.json()["detail"]
    assert post(base, "/v1/actions/99999/approve", "admin", json={"by": "carol"}).status_code == 404


def test_register_heartbeat_close(api, sandbox: SandboxServer) -> None:
    base, daemon = api
    before = datetime.now(timezone.utc)
    payload = owned(sandbox, "vmg-life0001")
    created = post(base, "/v1/clusters", "alice", json=payload)
    assert created.status_code == 201, created.text
    out = created.json()
    assert out | {"registered_at": None, "last_heartbeat": None, "last_activity": None, "expires_at": None} == \
        payload | {"account_id": None, "state": "running", "reason": None, "usage": {},
                                        "registered_at": None, "last_heartbeat": None, "last_activity": None,
                                        "expires_at": None}
    registered = datetime.fromisoformat(out["registered_at"])
    assert before <= registered <= datetime.now(timezone.utc)
    assert out["last_heartbeat"] == out["last_activity"] == out["registered_at"]
    assert datetime.fromisoformat(out["expires_at"]) == registered + timedelta(seconds=600)

    again = post(base, "/v1/clusters", "alice", json=payload)
    assert again.status_code == 409 and "registered already" in again.json()["detail"]

    idle = post(base, "/v1/clusters/vmg-life0001/heartbeat", "alice", json={"workers": 1})
    assert idle.status_code == 200, idle.text
    assert idle.json()["last_heartbeat"] > out["last_heartbeat"]
    assert idle.json()["last_activity"] == out["last_activity"]  # nothing was running: not activity
    busy = post(base, "/v1/clusters/vmg-life0001/heartbeat", "alice",
                json={"tasks_processing": 12, "workers": 1, "s3_requests": {"team-data": {"LIST": 1200}},
                      "log_bytes_by_level": {"DEBUG": 10_000_000, "INFO": 2_000}})
    assert busy.status_code == 200
    assert busy.json()["last_activity"] == busy.json()["last_heartbeat"] > idle.json()["last_heartbeat"]
    row = daemon.clusters.get("vmg-life0001")
    assert (row.heartbeats, row.tasks_processing, row.workers) == (2, 12, 1)
    assert row.usage["s3_requests"]["value"] == {"team-data": {"LIST": 1200}}
    assert row.usage["log_bytes_by_level"]["value"] == {"DEBUG": 10_000_000, "INFO": 2_000}
    later = post(base, "/v1/clusters/vmg-life0001/heartbeat", "alice", json={})
    assert later.status_code == 200  # every field has a default; the reserved ones keep their latest values
    assert daemon.clusters.get("vmg-life0001").usage["s3_requests"]["value"] == {"team-data": {"LIST": 1200}}
    shown = get(base, "/v1/clusters/vmg-life0001", "alice").json()["usage"]
    assert shown["log_bytes_by_level"]["value"] == {"DEBUG": 10_000_000, "INFO": 2_000}

    closed = httpx.delete(f"{base}/v1/clusters/vmg-life0001", headers=AS["alice"])
    assert closed.status_code == 204 and closed.content == b""
    assert get(base, "/v1/clusters/vmg-life0001", "alice").json()["state"] == "closed"
    assert httpx.delete(f"{base}/v1/clusters/vmg-life0001", headers=AS["alice"]).status_code == 204  # idempotent
    late = post(base, "/v1/clusters/vmg-life0001/heartbeat", "alice", json={"tasks_processing": 1})
    assert late.status_code == 409 and "vmg-life0001 is closed" in late.json()["detail"]
    for missing in (post(base, "/v1/clusters/vmg-nosuch01/heartbeat", "alice", json={}),
                    httpx.delete(f"{base}/v1/clusters/vmg-nosuch01", headers=AS["alice"]),
                    get(base, "/v1/clusters/vmg-nosuch01", "alice")):
        assert missing.status_code == 404 and "no such cluster" in missing.json()["detail"]


def test_owners_see_and_touch_only_their_clusters(api, sandbox: SandboxServer) -> None:
    base, _ = api
    assert post(base, "/v1/clusters", "alice", json=owned(sandbox, "vmg-alice001")).status_code == 201
    assert post(base, "/v1/clusters", "bob", json=owned(sandbox, "vmg-bob00001", owner="bob")).status_code == 201
    assert post(base, "/v1/clusters", "admin", json=owned(sandbox, "vmg-carol001", owner="carol")).status_code == 201
    forged = post(base, "/v1/clusters", "alice", json=registration("vmg-forged01", owner="bob"))
    assert forged.status_code == 403 and "alice" in forged.json()["detail"]
    assert get(base, "/v1/clusters/vmg-forged01", "admin").status_code == 404  # nothing was registered

    def listed(who: str, **params: str) -> set[str]:
        response = get(base, "/v1/clusters", who, params=params)
        assert response.status_code == 200, response.text
        return {cluster["cluster_id"] for cluster in response.json()}

    mine, bobs, everyone = listed("alice"), listed("bob"), listed("admin")
    assert "vmg-alice001" in mine and not mine & {"vmg-bob00001", "vmg-carol001"}
    assert bobs == {"vmg-bob00001"}
    assert {"vmg-alice001", "vmg-bob00001", "vmg-carol001"} <= everyone
    assert all(c["owner"] == "alice" for c in get(base, "/v1/clusters", "alice").json())
    assert listed("admin", owner="carol") == {"vmg-carol001"} and listed("bob", owner="bob") == bobs
    assert get(base, "/v1/clusters", "bob", params={"owner": "alice"}).status_code == 403
    assert listed("alice", state="terminated") == set()
    assert "vmg-alice001" in listed("alice", state="running")
    assert get(base, "/v1/clusters", "alice", params={"state": "dead"}).status_code == 422
    for response in (post(base, "/v1/clusters/vmg-alice001/heartbeat", "bob", json={}),
                     httpx.delete(f"{base}/v1/clusters/vmg-alice001", headers=AS["bob"]),
                     get(base, "/v1/clusters/vmg-alice001", "bob")):
        assert response.status_code == 403 and "not bob's" in response.json()["detail"]
    assert get(base, "/v1/clusters/vmg-alice001", "alice").json()["state"] == "running"
    assert post(base, "/v1/clusters/vmg-alice001/heartbeat", "admin", json={}).status_code == 200


BAD_REGISTRATIONS = [
    ({k: v for k, v in registration("vmg-bad00001").items() if k != "owner"}, {"owner"}),
    (registration("vmg-bad00002", keepalive_seconds="soon"), {"keepalive_seconds"}),
    (registration("vmg-bad00003", keepalive_seconds=5), {"keepalive_seconds"}),
    (registration("vmg-bad00004", keepalive_seconds=10**30), {"keepalive_seconds"}),
    (registration("vmg-bad00005", instance_ids=[]), {"instance_ids"}),
    (registration("vmg-bad00006", instance_ids="i-0123456789abcdef0"), {"instance_ids"}),
    (registration("vmg-bad00007", instance_ids=["not-an-instance"]), {"instance_ids"}),
    (registration("NOT-A-CLUSTER"), {"cluster_id"}),
    (registration("vmg-bad00008", region="mars-1"), {"region"}),
    (registration("vmg-bad00009", hourly_usd=-1), {"hourly_usd"}),
    (registration("vmg-bad00010", tags={"team": 5}), {"team"}),
    (registration("vmg-bad00011", security_group_id="default"), {"security_group_id"}),
    (registration("vmg-bad00012", surprise=True), {"surprise"}),
    (registration("vmg-bad00013", idle_timeout_seconds=1.5, owner=""), {"idle_timeout_seconds", "owner"}),
]


@pytest.mark.parametrize(("payload", "named"), BAD_REGISTRATIONS)
def test_malformed_registrations_are_422_naming_the_fields(api, payload: dict, named: set[str]) -> None:
    base, daemon = api
    response = post(base, "/v1/clusters", "alice", json=payload)
    assert fields(response) == named
    assert daemon.clusters.get(str(payload.get("cluster_id"))) is None


@pytest.mark.parametrize("body", [b"{not json", b"", b"[]", b"null", b'"vmg"', b"\xff\xfe",
                                  b'{"cluster_id": "vmg-nan00001", "hourly_usd": NaN}',
                                  b'{"keepalive_seconds": Infinity}'])
def test_broken_json_is_422_never_500(api, body: bytes) -> None:
    base, _ = api
    for path in ("/v1/clusters", "/v1/clusters/vmg-alice001/heartbeat"):
        response = post(base, path, "alice", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, (path, body, response.text)
        assert "Traceback" not in response.text and response.json()["detail"]


def test_non_finite_prices_are_refused(api) -> None:
    base, _ = api
    for literal in (b"NaN", b"Infinity"):
        payload = registration("vmg-finite01")
        body = httpx.Request("POST", "/", json=payload).content.replace(b'"hourly_usd":0.1632', b'"hourly_usd":' +
                                                                       literal)
        assert literal in body
        response = post(base, "/v1/clusters", "alice", content=body, headers={"Content-Type": "application/json"})
        assert fields(response) == {"hourly_usd"}


BAD_HEARTBEATS = [
    ({"tasks_processing": -1}, {"tasks_processing"}),
    ({"tasks_processing": "many"}, {"tasks_processing"}),
    ({"workers": 10**30}, {"workers"}),
    ({"s3_requests": {"bucket": "lots"}}, {"bucket"}),
    ({"s3_requests": {"bucket": {"GET": -1}}}, {"GET"}),
    ({"tasks_completed": -1}, {"tasks_completed"}),
    ({"s3_requests": ["bucket"]}, {"s3_requests"}),
    ({"log_bytes_by_level": {"DEBUG": -5}}, {"DEBUG"}),
    ({"log_bytes_by_level": {"DEBUG": 10**40}}, {"log_bytes_by_level"}),
    ({"alive": True}, {"alive"}),
]


@pytest.mark.parametrize(("payload", "named"), BAD_HEARTBEATS)
def test_malformed_heartbeats_are_422_naming_the_fields(api, sandbox: SandboxServer, payload: dict,
                                                        named: set[str]) -> None:
    base, daemon = api
    if daemon.clusters.get("vmg-beat0001") is None:
        assert post(base, "/v1/clusters", "alice", json=owned(sandbox, "vmg-beat0001")).status_code == 201
    before = daemon.clusters.get("vmg-beat0001").heartbeats
    assert fields(post(base, "/v1/clusters/vmg-beat0001/heartbeat", "alice", json=payload)) == named
    assert daemon.clusters.get("vmg-beat0001").heartbeats == before


def test_an_expired_cluster_refuses_heartbeats_and_close(api, sandbox: SandboxServer) -> None:
    base, daemon = api
    daemon.keepalive.check()  # the daemon was watching before the cluster registered
    assert post(base, "/v1/clusters", "bob", json=owned(sandbox, "vmg-gone0001", owner="bob")).status_code == 201
    report = daemon.keepalive.check(now=datetime.now(timezone.utc) + timedelta(minutes=11))
    assert "vmg-gone0001" in report.expired
    for _ in range(5):  # the instances take a check or two to be terminated
        if daemon.clusters.get("vmg-gone0001").state == "terminated":
            break
        daemon.keepalive.check(now=datetime.now(timezone.utc) + timedelta(minutes=11))
    out = get(base, "/v1/clusters/vmg-gone0001", "bob").json()
    assert out["state"] == "terminated" and out["account_id"] == "123456789012"
    assert out["reason"].startswith("no heartbeat for 11m") and "(keepalive 10m)" in out["reason"]
    beat = post(base, "/v1/clusters/vmg-gone0001/heartbeat", "bob", json={})
    assert beat.status_code == 409 and "is terminated (no heartbeat for 11m" in beat.json()["detail"]
    close = httpx.delete(f"{base}/v1/clusters/vmg-gone0001", headers=AS["bob"])
    assert close.status_code == 409 and "no longer running" in close.json()["detail"]
    action = get(base, "/v1/actions", "bob", params={"rule": "keepalive"}).json()
    assert [(a["action"], a["resource_id"], a["status"]) for a in action if a["resource_id"] == "vmg-gone0001"] == [
        ("terminate-cluster", "vmg-gone0001", "done")]


def test_cluster_metrics(api, sandbox: SandboxServer) -> None:
    base, _ = api
    assert post(base, "/v1/clusters", "bob", json=owned(sandbox, "vmg-metric01", owner="bob",
                                                       hourly_usd=2.5)).status_code == 201
    for _ in range(3):
        assert post(base, "/v1/clusters/vmg-metric01/heartbeat", "bob", json={"tasks_processing": 1}).status_code == 200
    clusters = get(base, "/v1/clusters", "admin").json()
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{base}/metrics").text)}

    states = {s.labels["state"]: s.value for s in families["guard_clusters"].samples}
    assert states.keys() == {"running", "closed", "expired", "terminating", "terminated"}
    assert states == {state: sum(1 for c in clusters if c["state"] == state) for state in states}

    cost = {(s.labels["owner"], s.labels["cluster"]): s.value for s in families["guard_cluster_hourly_usd"].samples}
    assert cost == {(c["owner"], c["cluster_id"]): c["hourly_usd"] for c in clusters if c["state"] == "running"}
    assert cost[("bob", "vmg-metric01")] == 2.5

    beats = families["guard_cluster_heartbeats"]
    assert beats.type == "counter"
    totals = {s.labels["owner"]: s.value for s in beats.samples if s.name == "guard_cluster_heartbeats_total"}
    assert totals["bob"] >= 3 and set(totals) <= {"alice", "bob", "carol"}


def test_a_cluster_is_registered_only_by_the_owner_of_its_instances(api, sandbox: SandboxServer) -> None:
    base, daemon = api
    bobs = launched(sandbox, "bob", cluster_id="vmg-bobs0002")
    for payload in (registration("vmg-steal001", instance_ids=bobs),  # bob's instances under alice's name
                    registration("vmg-bobs0002", instance_ids=launched(sandbox, "alice")),  # under bob's cluster id
                    registration("vmg-steal002", instance_ids=launched(sandbox, "alice") + bobs[:1])):
        for who in ("alice", "admin"):  # the admin token cannot vouch for an owner either
            refused = post(base, "/v1/clusters", who, json=payload)
            assert refused.status_code == 403, refused.text
            assert "tagged owner=bob, not owner=alice" in refused.json()["detail"]
            assert daemon.clusters.get(payload["cluster_id"]) is None
    unknown = post(base, "/v1/clusters", "alice", json=registration("vmg-unseen01", instance_ids=[SCHEDULER]))
    assert unknown.status_code == 503 and unknown.headers["Retry-After"]
    assert f"does not show instance {SCHEDULER}" in unknown.json()["detail"]
    assert post(base, "/v1/clusters", "bob", json=registration("vmg-bobs0002", "bob",
                                                                instance_ids=bobs)).status_code == 201


def test_the_sdk_warns_with_the_reason_when_a_heartbeat_or_registration_fails(
        api, caplog: pytest.LogCaptureFixture) -> None:
    base, _ = api
    with caplog.at_level(logging.WARNING, logger="sdk.daemon_client"):
        assert DaemonClient(base, "wrong-token-0123456789").heartbeat("vmg-life0001", Heartbeat()) is False
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "HTTP 401" in record.getMessage()
    assert "missing or wrong bearer token" in record.getMessage()

    unseen = wire.ClusterRegistration(**registration("vmg-unseen02", instance_ids=[SCHEDULER]))
    started = time.monotonic()
    with pytest.warns(DaemonUnavailable, match=f"HTTP 503 .*does not show instance {SCHEDULER}"):
        assert DaemonClient(base, ALICE, register_attempts=2).register(unseen) is False
    assert time.monotonic() - started >= 2  # asked again after the Retry-After the daemon gave
