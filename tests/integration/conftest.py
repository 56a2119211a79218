"""Fixtures for tests that run the daemon's code against the emulated AWS over HTTP."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from listening import daemon_url
from polling import wait_for

from guard.aws import Aws
from guard.engine import Scanner
from guard.rule import Registry, discover_rules
from guard.sandbox import GroundTruth, SandboxServer, VmRunner, create_env_location, seed_team_account
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
def refusing_socket() -> Iterator[socket.socket]:
    """A loopback TCP socket bound to a port the system picked but not listening, held for the test: a connection to
    its address is refused, and no other process can start listening there meanwhile (a test may later listen on
    it itself, to bring a "down" endpoint up on the same address)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


# -- the daemon ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def no_guard_environment() -> Iterator[None]:
    """For a whole module: no GUARD_* variable of the environment reaches the settings its tests load."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("GUARD_")]:
            patch.delenv(name)
        yield


@contextmanager
def _served(app: Any) -> Iterator[str]:
    sock = socket.create_server(("127.0.0.1", 0))  # bound here and handed to uvicorn: the port stays ours
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the HTTP server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="session")
def serve() -> Callable[[Any], AbstractContextManager[str]]:
    """``with serve(daemon.app) as base_url:`` the daemon's HTTP app on a free loopback port, served by uvicorn as
    `guard run` serves it (scans are driven by the test)."""
    return _served


@pytest.fixture
def guard_run(sandbox: SandboxServer, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``guard_run(GUARD_API_TOKEN=…, …)``: `guard run` as a real process against the sandbox, with a SQLite file in
    the test's directory, listening on a port the system picks (``GUARD_LISTEN=127.0.0.1:0``); the base URL it
    reports once /healthz answers. Stopped with SIGTERM after the test, it must exit 0 without a traceback in its
    log (``guard.log`` in the test's directory)."""
    log = tmp_path / "guard.log"
    started: list[subprocess.Popen] = []

    def start(**environment: str) -> str:
        assert not started, "one daemon per test"
        env = os.environ | sandbox.env | {"GUARD_DATABASE_URL": f"sqlite:///{tmp_path / 'guard.db'}",
                                          "GUARD_LISTEN": "127.0.0.1:0"} | environment
        env.pop("GUARD_CONFIG", None)
        with log.open("w") as out:
            process = subprocess.Popen([sys.executable, "-m", "guard", "run"], env=env, stdout=out, stderr=out,
                                       cwd=tmp_path)
        started.append(process)
        url = daemon_url(log, process, timeout=30)
        wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, 30, "the daemon's /healthz")
        return url

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        output = log.read_text()
        assert code == 0 and "Traceback" not in output, output


# -- webhooks --------------------------------------------------------------------------------------------------------

class _WebhookReceiver(http.server.BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 — the name http.server dispatches to
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A real webhook endpoint on loopback that answers 200: (its URL, which carries a secret in its path like a
    Slack webhook's, and the JSON bodies it received)."""
    bodies: list[dict] = []
    handler = type("Receiver", (_WebhookReceiver,), {"bodies": bodies})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/secret-token-part", bodies
    server.shutdown()
    server.server_close()


@pytest.fixture
def runner(sandbox: SandboxServer, tmp_path: Path) -> Iterator[VmRunner]:
    """A reset sandbox whose cluster VMs run as local processes (their output under the test's tmp_path)."""
    sandbox.reset()
    with VmRunner(sandbox.endpoint_url, log_dir=tmp_path / "vms") as vms:
        yield vms


@pytest.fixture
def sdk_env(sandbox: SandboxServer, runner: VmRunner, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What `guard demo` writes for the SDK: the sandbox's credentials, and where replicated environments go."""
    values = sandbox.env | {"VMGUARD_OWNER": "tester", "VMGUARD_MAX_HOURLY_USD": "50",
                            "VMGUARD_ENV_S3": create_env_location(sandbox.endpoint_url)}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values
