"""The daemon's listen address: bound once at start and kept, so port 0 gets a free port from the system and the
address it reports is the one it serves on; a busy address fails with one line."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import httpx
import pytest

from guard.daemon import Daemon
from guard.rule import discover_rules
from guard.settings import ConfigError, load_settings


def _daemon(tmp_path: Path, listen: str, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    for name in ("GUARD_CONFIG", "GUARD_LISTEN", "GUARD_DATABASE_URL", "GUARD_REGIONS"):
        monkeypatch.delenv(name, raising=False)
    tmp_path.mkdir(exist_ok=True)
    registry = discover_rules()
    settings = load_settings(registry, regions=["us-east-1"], listen=listen,
                             database_url=f"sqlite:///{tmp_path / 'guard.db'}")
    return Daemon(settings, registry)


def test_port_zero_gets_a_free_port_that_the_daemon_reports_and_serves_on(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = _daemon(tmp_path, "127.0.0.1:0", monkeypatch)
    daemon.check_listen()
    host, port = daemon.listen_address
    assert host == "127.0.0.1" and port != 0
    assert daemon.url == f"http://127.0.0.1:{port}"
    thread = threading.Thread(target=daemon.serve, name="serve", daemon=True)
    thread.start()
    try:
        # the socket listens from check_listen on: a request waits in its backlog until uvicorn accepts it
        assert httpx.get(f"{daemon.url}/healthz", timeout=15).status_code == 200
        assert daemon.listen_address == (host, port)
    finally:
        daemon.stop_serving()
        thread.join(timeout=15)
    assert not thread.is_alive()


def test_two_daemons_on_port_zero_get_different_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = (_daemon(tmp_path / name, "127.0.0.1:0", monkeypatch) for name in ("a", "b"))
    try:
        assert first.listen_address[1] != second.listen_address[1]
    finally:
        first.shutdown()
        second.shutdown()


def test_a_busy_address_fails_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        daemon = _daemon(tmp_path, f"127.0.0.1:{busy.getsockname()[1]}", monkeypatch)
        try:
            with pytest.raises(ConfigError, match="Address already in use.*; pick a free host:port"):
                daemon.check_listen()
        finally:
            daemon.shutdown()
