"""Fixtures for tests that run the daemon's code against the emulated AWS over HTTP."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from guard.aws import Aws
from guard.engine import Scanner
from guard.rule import Registry, discover_rules
from guard.sandbox import GroundTruth, SandboxServer, seed_team_account
from guard.settings import Settings, load_settings
from guard.store import Store


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxServer]:
    server = SandboxServer()
    server.start()
    server.apply_env()
    yield server
    server.stop()


@pytest.fixture
def team_account(sandbox: SandboxServer) -> GroundTruth:
    """A freshly seeded team account (the emulator is reset first)."""
    sandbox.reset()
    return seed_team_account(sandbox.endpoint_url)


@pytest.fixture(scope="session")
def registry() -> Registry:
    return discover_rules()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'guard.db'}"


@pytest.fixture
def make_settings(registry: Registry, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    for name in ("GUARD_CONFIG", "GUARD_REGIONS", "GUARD_MODE", "GUARD_DATABASE_URL", "GUARD_LISTEN"):
        monkeypatch.delenv(name, raising=False)

    def make(**overrides) -> Settings:
        # Series are fetched on every scan here, so a test sees what it just changed (default: every 5 minutes).
        values = {"regions": ["us-east-1", "us-west-2"], "database_url": database_url,
                  "metrics_refresh": "0s"} | overrides
        return load_settings(registry, **values)

    return make


@pytest.fixture
def make_scanner(registry: Registry, make_settings) -> Callable[..., Scanner]:
    """A scanner with its own AWS session and call counter, on the test's database."""

    def make(**overrides) -> Scanner:
        settings = make_settings(**overrides)
        return Scanner(settings, registry, Aws(), Store(settings.database_url))

    return make


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
