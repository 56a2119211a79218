"""The on-VM agent (``python -m sdk.vm``) as real processes on loopback, with real Dask clients."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from distributed import Client

from sdk.vm import EXIT_NOT_STARTED, EXIT_OK, EXIT_USAGE, ConfigError, VmConfig, keepalive_plugin

HOST = "127.0.0.1"


SERVING = re.compile(r"scheduler of cluster \S+ serving at tcp://(\S+)")
"""The line the scheduler agent logs once it listens: on port 0 the system picks its port, read from here."""


def _config(role: str = "scheduler", **overrides) -> dict:
    return {"role": role, "cluster_id": "vmg-unit01", "scheduler_port": 0, "dashboard_port": None,
            "keepalive_seconds": 60, "idle_timeout_seconds": None, "max_lifetime_seconds": None,
            "log_level": "INFO", "nthreads": 2, "memory_limit": "auto"} | overrides


@pytest.fixture
def refusing_address() -> Iterator[str]:
    """host:port of a socket bound but not listening, held for the test: no scheduler is (or can start) there."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield f"{HOST}:{sock.getsockname()[1]}"


class Agent:
    def __init__(self, process: subprocess.Popen, log: Path) -> None:
        self.process, self.log = process, log
        self._address: str | None = None

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the agent did not exit within {timeout}s; its log:\n{self.log.read_text()}")

    @property
    def address(self) -> str:
        """host:port the scheduler listens on (after :meth:`wait_listening`)."""
        assert self._address is not None, "wait_listening() first"
        return self._address

    def wait_listening(self, timeout: float = 20) -> None:
        """Until the scheduler logs the address it serves at (it listens from then on)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := SERVING.search(self.log.read_text()):
                self._address = match.group(1)
                return
            if self.process.poll() is not None:
                pytest.fail(f"the agent exited with {self.process.returncode}:\n{self.log.read_text()}")
            time.sleep(0.05)
        pytest.fail(f"the agent did not report listening within {timeout}s:\n{self.log.read_text()}")


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(config: dict, scheduler: str | None = None) -> Agent:
        log = tmp_path / f"agent-{len(agents)}.log"
        command = [sys.executable, "-m", "sdk.vm", "--config", json.dumps(config), "--host", HOST]
        if scheduler:
            command += ["--scheduler", scheduler]
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        agent = Agent(process, log)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        if agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait(5)


def test_a_scheduler_no_client_ever_reached_closes_itself_after_keepalive(start_agent) -> None:
    agent = start_agent(_config(keepalive_seconds=2))
    agent.wait_listening()
    listening = time.monotonic()
    assert agent.wait(timeout=15) == EXIT_OK
    assert time.monotonic() - listening >= 1.5
    assert "vmguard-keepalive-expired" in agent.log.read_text()


def test_a_connected_client_keeps_the_scheduler_and_its_leaving_starts_the_keepalive(start_agent) -> None:
    agent = start_agent(_config(keepalive_seconds=2))
    agent.wait_listening()
    with Client(f"tcp://{agent.address}", timeout=10):
        time.sleep(4)  # twice the keepalive
        assert agent.process.poll() is None
    left = time.monotonic()
    assert agent.wait(timeout=15) == EXIT_OK
    assert time.monotonic() - left >= 1.5


def test_max_lifetime_ends_a_scheduler_whatever_its_clients(start_agent) -> None:
    agent = start_agent(_config(keepalive_seconds=600, max_lifetime_seconds=3))
    agent.wait_listening()
    with Client(f"tcp://{agent.address}", timeout=10):
        assert agent.wait(timeout=15) == EXIT_OK
    assert "max lifetime" in agent.log.read_text()


def test_dask_idle_timeout_closes_a_scheduler_that_runs_nothing(start_agent) -> None:
    agent = start_agent(_config(keepalive_seconds=600, idle_timeout_seconds=2))
    agent.wait_listening()
    with Client(f"tcp://{agent.address}", timeout=10):
        assert agent.wait(timeout=15) == EXIT_OK
    assert "idle-timeout-exceeded" in agent.log.read_text()


def test_a_worker_runs_tasks_then_exits_when_its_scheduler_closes(start_agent) -> None:
    scheduler = start_agent(_config(keepalive_seconds=600))
    scheduler.wait_listening()
    worker = start_agent(_config("worker"), scheduler=scheduler.address)
    with Client(f"tcp://{scheduler.address}", timeout=10) as client:
        client.wait_for_workers(1, timeout=20)
        assert client.gather(client.map(lambda x: x * x, range(10))) == [x * x for x in range(10)]
        (info,) = client.scheduler_info()["workers"].values()
        assert info["host"] == HOST and info["nthreads"] == 2
    scheduler.process.send_signal(signal.SIGTERM)
    assert scheduler.wait(timeout=15) == EXIT_OK
    assert worker.wait(timeout=15) == EXIT_OK


def test_a_worker_exits_when_its_scheduler_dies(start_agent) -> None:
    scheduler = start_agent(_config(keepalive_seconds=600))
    scheduler.wait_listening()
    worker = start_agent(_config("worker"), scheduler=f"tcp://{scheduler.address}")
    with Client(f"tcp://{scheduler.address}", timeout=10) as client:
        client.wait_for_workers(1, timeout=20)
    scheduler.process.kill()
    assert worker.wait(timeout=15) == EXIT_OK


def test_a_worker_that_finds_no_scheduler_gives_up(start_agent, refusing_address: str) -> None:
    worker = start_agent(_config("worker", scheduler_wait_seconds=2), scheduler=refusing_address)
    assert worker.wait(timeout=20) == EXIT_NOT_STARTED


def test_sigterm_is_a_clean_exit_for_a_worker(start_agent) -> None:
    scheduler = start_agent(_config(keepalive_seconds=600))
    scheduler.wait_listening()
    worker = start_agent(_config("worker"), scheduler=scheduler.address)
    with Client(f"tcp://{scheduler.address}", timeout=10) as client:
        client.wait_for_workers(1, timeout=20)
        worker.process.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == EXIT_OK
    assert scheduler.process.poll() is None


@pytest.mark.parametrize("config, message", [
    ("not json", "not JSON"),
    ("[]", "JSON object"),
    (json.dumps({"role": "scheduler", "cluster_id": "vmg-x1"}), "keepalive_seconds"),
    (json.dumps(_config(role="driver")), "role"),
    (json.dumps(_config(keepalive_seconds=0)), "keepalive_seconds"),
    (json.dumps(_config(scheduler_port=70000)), "scheduler_port"),
    (json.dumps(_config(nthreads=0)), "nthreads"),
    (json.dumps(_config(log_level="LOUD")), "log_level"),
])
def test_a_bad_config_is_refused_with_its_reason(config: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VmConfig.from_json(config)


def test_unknown_config_keys_are_ignored_and_defaults_apply() -> None:
    config = VmConfig.from_json(json.dumps({"role": "worker", "cluster_id": "vmg-x1", "keepalive_seconds": 60,
                                            "a_later_field": True}))
    assert (config.scheduler_port, config.dashboard_port, config.memory_limit) == (8786, 8787, "auto")


def test_the_command_line_refuses_a_worker_without_scheduler() -> None:
    done = subprocess.run([sys.executable, "-m", "sdk.vm", "--config", json.dumps(_config("worker")),
                           "--host", HOST], capture_output=True, text=True, timeout=30)
    assert done.returncode == EXIT_USAGE
    assert "--scheduler" in done.stderr


def test_a_client_gone_silent_stops_counting_as_connected() -> None:
    """A laptop that vanished without closing its connection: its client stops heartbeating, and the keepalive
    runs out although the connection is still open."""
    import dask
    from distributed import Scheduler

    async def scenario() -> tuple[float, bool]:
        from distributed.core import Status

        plugin = keepalive_plugin(keepalive_seconds=1, stale_after=2)
        async with Scheduler(host=HOST, port=0, dashboard_address=f"{HOST}:0", plugins=[plugin]) as scheduler:
            started = time.monotonic()
            with dask.config.set({"distributed.client.heartbeat": "60s"}):
                client = await Client(scheduler.address, asynchronous=True)
            try:
                assert plugin.connected(time.time()) == 1
                registered = True
                while scheduler.status == Status.running and time.monotonic() - started < 15:
                    registered = client.id in scheduler.clients  # the connection stays open all along
                    await asyncio.sleep(0.05)
                await asyncio.wait_for(scheduler.finished(), timeout=15)
                return time.monotonic() - started, registered
            finally:
                await client.close()

    took, connected = asyncio.run(scenario())
    assert connected
    assert 2.5 <= took <= 6
