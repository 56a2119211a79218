"""Registered clusters on a real SQLite file: deadlines, heartbeats, conditional state changes, the metrics' queries;
and the owner tokens (``api_tokens``) and keepalive settings."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from guard.clusters import CLOSED, EXPIRED, RUNNING, STATES, TERMINATED, ClusterRegistry
from guard.rule import Registry, discover_rules
from guard.settings import ConfigError, load_settings
from guard.store import Store
from guard.wire import ClusterRegistration, Heartbeat

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
TOKEN = "alice-token-0123456789"


def seconds(n: float) -> datetime:
    return T0 + timedelta(seconds=n)


def registration(cluster_id: str, owner: str = "alice", **changes) -> ClusterRegistration:
    values = {"cluster_id": cluster_id, "owner": owner, "region": "us-west-2",
              "instance_ids": ["i-0123456789abcdef0"], "instance_types": ["g5.xlarge"], "keepalive_seconds": 600,
              "hourly_usd": 1.006} | changes
    return ClusterRegistration(**values)


@pytest.fixture
def clusters(tmp_path: Path) -> ClusterRegistry:
    return ClusterRegistry(Store(f"sqlite:///{tmp_path / 'guard.db'}"))


class TestDeadlines:
    def test_the_keepalive_counts_from_the_last_heartbeat(self, clusters: ClusterRegistry) -> None:
        row = clusters.register(registration("vmg-dead0001"), "alice", T0)
        assert row.deadline() == (seconds(600), "keepalive")
        assert row.expiry_reason(seconds(599)) is None
        assert row.expiry_reason(seconds(600)) == "no heartbeat for 10m (keepalive 10m)"
        clusters.heartbeat("vmg-dead0001", Heartbeat(), seconds(300))
        row = clusters.get("vmg-dead0001")
        assert row.deadline() == (seconds(900), "keepalive") and row.expiry_reason(seconds(899)) is None
        assert row.as_dict()["expires_at"] == seconds(900).isoformat()

    def test_the_earliest_limit_wins(self, clusters: ClusterRegistry) -> None:
        row = clusters.register(registration("vmg-dead0002", idle_timeout_seconds=300, max_lifetime_seconds=3600),
                                "alice", T0)
        assert row.deadline() == (seconds(300), "idle")
        for second in range(60, 3600, 60):  # busy, and heartbeating every minute
            clusters.heartbeat("vmg-dead0002", Heartbeat(tasks_processing=1), seconds(second))
        row = clusters.get("vmg-dead0002")
        assert row.deadline() == (seconds(3600), "lifetime")
        assert row.expiry_reason(seconds(3600)) == "running for 1h (max lifetime 1h)"
        clusters.heartbeat("vmg-dead0002", Heartbeat(tasks_processing=0), seconds(3590))
        assert clusters.get("vmg-dead0002").expiry_reason(seconds(3600)).startswith("running for 1h")

    def test_idle_reason(self, clusters: ClusterRegistry) -> None:
        clusters.register(registration("vmg-dead0003", idle_timeout_seconds=120), "alice", T0)
        clusters.heartbeat("vmg-dead0003", Heartbeat(tasks_processing=2), seconds(30))
        clusters.heartbeat("vmg-dead0003", Heartbeat(tasks_processing=0), seconds(140))
        row = clusters.get("vmg-dead0003")
        assert row.last_activity == seconds(30) and row.last_heartbeat == seconds(140)
        assert row.expiry_reason(seconds(150)) == "no task ran for 2m (idle timeout 2m)"


class TestRegistry:
    def test_register_once(self, clusters: ClusterRegistry) -> None:
        first = clusters.register(registration("vmg-once0001", tags={"project": "x"}), "*", T0)
        assert first is not None and first.registered_by == "*"
        assert clusters.register(registration("vmg-once0001", owner="bob"), "bob", seconds(1)) is None
        row = clusters.get("vmg-once0001")
        assert (row.owner, row.state, row.tags, row.heartbeats) == ("alice", RUNNING, {"project": "x"}, 0)
        out = row.as_dict()
        assert out["state"] == "running" and out["registered_at"] == out["last_heartbeat"] == T0.isoformat()

    def test_heartbeats_keep_the_latest_reserved_values(self, clusters: ClusterRegistry) -> None:
        clusters.register(registration("vmg-beat0001"), "alice", T0)
        clusters.heartbeat("vmg-beat0001", Heartbeat(tasks_processing=4, workers=3, s3_requests={"a": {"GET": 1}},
                                                     log_bytes_by_level={"DEBUG": 9}), seconds(10))
        row, recorded = clusters.heartbeat("vmg-beat0001", Heartbeat(workers=3, s3_requests={"b": {"LIST": 2}}),
                                           seconds(20))
        assert recorded and (row.heartbeats, row.tasks_processing, row.workers) == (2, 0, 3)
        assert row.usage == {"s3_requests": {"at": seconds(20).isoformat(), "value": {"b": {"LIST": 2}}},
                             "log_bytes_by_level": {"at": seconds(10).isoformat(), "value": {"DEBUG": 9}}}
        assert row.last_activity == seconds(10) and row.last_heartbeat == seconds(20)
        assert clusters.heartbeat("vmg-nosuch01", Heartbeat(), seconds(30)) == (None, False)
        (usage,) = clusters.usage(seconds(30))
        assert [(r.at, r.s3_requests, r.log_bytes_by_level) for r in usage.reports] == [
            (seconds(10), {"a": {"GET": 1}}, {"DEBUG": 9}), (seconds(20), {"b": {"LIST": 2}}, {})]

    def test_tasks_completed_between_beats_count_as_activity(self, clusters: ClusterRegistry) -> None:
        clusters.register(registration("vmg-short001"), "alice", T0)
        row, _ = clusters.heartbeat("vmg-short001", Heartbeat(tasks_processing=0, tasks_completed=0), seconds(10))
        assert row.last_activity == T0
        row, _ = clusters.heartbeat("vmg-short001", Heartbeat(tasks_processing=0, tasks_completed=3), seconds(20))
        assert row.last_activity == seconds(20)

    def test_only_a_running_cluster_heartbeats_or_closes(self, clusters: ClusterRegistry) -> None:
        clusters.register(registration("vmg-state001"), "alice", T0)
        assert clusters.move("vmg-state001", (RUNNING,), CLOSED, seconds(5), reason="closed by the SDK")
        row, recorded = clusters.heartbeat("vmg-state001", Heartbeat(), seconds(6))
        assert not recorded and row.state == CLOSED and row.heartbeats == 0
        assert not clusters.move("vmg-state001", (RUNNING,), CLOSED, seconds(7))
        assert clusters.get("vmg-state001").state_changed_at == seconds(5)

    def test_a_heartbeat_read_after_the_check_wins_over_expiry(self, clusters: ClusterRegistry) -> None:
        clusters.register(registration("vmg-race0001"), "alice", T0)
        seen = clusters.get("vmg-race0001")  # the keepalive check read it ...
        clusters.heartbeat("vmg-race0001", Heartbeat(), seconds(700))  # ... a heartbeat came ...
        assert not clusters.expire(seen, "no heartbeat", seconds(701))  # ... so it is not expired
        assert clusters.get("vmg-race0001").state == RUNNING
        assert clusters.expire(clusters.get("vmg-race0001"), "no heartbeat", seconds(1400))
        row = clusters.get("vmg-race0001")
        assert (row.state, row.reason, row.state_changed_at) == (EXPIRED, "no heartbeat", seconds(1400))

    def test_queries_for_the_metrics(self, clusters: ClusterRegistry) -> None:
        clusters.register(registration("vmg-metr0001"), "alice", T0)
        clusters.register(registration("vmg-metr0002", owner="bob", hourly_usd=None), "bob", seconds(1))
        clusters.register(registration("vmg-metr0003", owner="bob", hourly_usd=3.0), "bob", seconds(2))
        clusters.move("vmg-metr0003", (RUNNING,), TERMINATED, seconds(3))
        for _ in range(3):
            clusters.heartbeat("vmg-metr0002", Heartbeat(), seconds(4))
        clusters.heartbeat("vmg-metr0001", Heartbeat(), seconds(4))
        assert clusters.count_by_state() == dict.fromkeys(STATES, 0) | {"running": 2, "terminated": 1}
        assert clusters.running_costs() == [("alice", "vmg-metr0001", 1.006)]
        assert clusters.heartbeats_by_owner() == {"alice": 1, "bob": 3}
        assert [row.cluster_id for row in clusters.clusters(owner="bob")] == ["vmg-metr0003", "vmg-metr0002"]
        assert [row.cluster_id for row in clusters.clusters(states=(TERMINATED,))] == ["vmg-metr0003"]
        assert len(clusters.clusters(limit=1)) == 1

    def test_the_table_is_made_on_an_existing_database(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'old.db'}"
        Store(url).close()
        ClusterRegistry(Store(url)).register(registration("vmg-table001"), "alice", T0)
        assert ClusterRegistry(Store(url)).get("vmg-table001").owner == "alice"


# -- settings ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Registry:
    for name in list(os.environ):
        if name.upper().startswith("GUARD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return discover_rules()


def test_owner_tokens_from_the_environment_are_masked(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_API_TOKENS", f" alice={TOKEN} , bob=bob-token-0123456789abc,")
    settings = load_settings(registry)
    assert {owner: token.get_secret_value() for owner, token in settings.api_tokens.items()} == {
        "alice": TOKEN, "bob": "bob-token-0123456789abc"}
    masked = settings.masked()
    assert masked["api_tokens"] == {"alice": "********", "bob": "********"}
    assert TOKEN not in repr(masked) and TOKEN not in repr(settings)
    assert settings.enforce_keepalive is True and settings.keepalive_check_interval == timedelta(seconds=5)
    assert load_settings(registry, api_tokens="").api_tokens == {}


def test_owner_tokens_from_toml(monkeypatch: pytest.MonkeyPatch, registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text(f'enforce_keepalive = false\nkeepalive_check_interval = "2s"\n[api_tokens]\nalice = "{TOKEN}"\n')
    monkeypatch.setenv("GUARD_CONFIG", str(path))
    settings = load_settings(registry)
    assert settings.api_tokens["alice"].get_secret_value() == TOKEN
    assert settings.enforce_keepalive is False and settings.keepalive_check_interval == timedelta(seconds=2)


@pytest.mark.parametrize(("value", "message"), [
    ("alice", "entry 1 is not owner=token"),
    (f"alice={TOKEN},bob", "entry 2 is not owner=token"),
    (f"={TOKEN}", "entry 1 is not owner=token"),
    ("alice=short-secret", "the token of owner 'alice' is too short: use at least 16 characters"),
    (f"alice={TOKEN},alice=other-token-0123456789", "owner 'alice' is listed twice"),
    (f"alice={TOKEN},bob={TOKEN}", "two owners share a token"),
    (f"*={TOKEN}", "owner '*' is not a usable owner name"),
    (f"al ice={TOKEN}", "owner 'al ice' is not a usable owner name"),
])
def test_a_malformed_owner_token_is_one_line_without_the_secret(monkeypatch: pytest.MonkeyPatch,
                                                                 registry: Registry, value: str, message: str) -> None:
    monkeypatch.setenv("GUARD_API_TOKENS", value)
    with pytest.raises(ConfigError) as info:
        load_settings(registry)
    text = str(info.value)
    assert "\n" not in text and text.startswith("api_tokens = '********': ") and message in text
    assert "GUARD_API_TOKENS" in text
    assert TOKEN not in text and "short-secret" not in text and "other-token" not in text


def test_an_owner_token_cannot_be_the_admin_token(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_API_TOKEN", TOKEN)
    monkeypatch.setenv("GUARD_API_TOKENS", f"alice={TOKEN}")
    with pytest.raises(ConfigError) as info:
        load_settings(registry)
    assert "equals api_token" in str(info.value) and TOKEN not in str(info.value)


@pytest.mark.parametrize("value", ["0s", "31s", "soon"])
def test_the_keepalive_check_interval_is_bounded(monkeypatch: pytest.MonkeyPatch, registry: Registry,
                                                 value: str) -> None:
    monkeypatch.setenv("GUARD_KEEPALIVE_CHECK_INTERVAL", value)
    with pytest.raises(ConfigError, match="keepalive_check_interval = "):
        load_settings(registry)


def test_enforce_keepalive_from_the_environment(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_ENFORCE_KEEPALIVE", "false")
    assert load_settings(registry).enforce_keepalive is False
