"""The heartbeat benchmark: ``wrk`` POSTs heartbeats to a running daemon (``guard run``) on loopback, at several
concurrencies, each for a bounded time.

One registered cluster receives every heartbeat (each one a committed database write, as in production); the
daemon's scan has run before and does not run during the load.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.daemon import OWNER, DaemonProcess
from bench.emulator import Emulator, clean_env

SCRIPT = Path(__file__).with_name("heartbeat.lua")
CONCURRENCIES = (1, 8, 32, 128)
DURATION_SECONDS = 10
THREADS = 2
TIMEOUT_SECONDS = 5


class WrkMissing(RuntimeError):
    """wrk is not installed."""


@dataclass(frozen=True)
class Load:
    connections: int
    threads: int
    duration_seconds: float
    requests: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.duration_seconds if self.duration_seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class HeartbeatCase:
    loads: list[Load]
    wrk_version: str
    daemon_rss_bytes: int


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing("wrk is not installed: `apt-get install wrk` (make bench does it)")
    return path


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout
    return out.split()[1] if len(out.split()) > 1 else "unknown"


def _register(daemon: DaemonProcess) -> str:
    from guard.wire import ClusterRegistration
    from sdk.daemon_client import DaemonClient

    cluster_id = f"vmg-{secrets.token_hex(5)}"
    client = DaemonClient(daemon.url, daemon.owner_token)
    try:
        registered = client.register(ClusterRegistration(
            cluster_id=cluster_id, owner=OWNER, region=daemon.region,
            instance_ids=[f"i-{n:017x}" for n in range(1, 10)], instance_types=["m5.large"],
            keepalive_seconds=1200, idle_timeout_seconds=3600))
    finally:
        client.close()
    if not registered:
        raise RuntimeError("the daemon did not accept the cluster; see its log")
    return cluster_id


def parse(output: str, connections: int, threads: int) -> Load:
    """The JSON line ``heartbeat.lua`` prints when wrk is done."""
    line = next(line for line in reversed(output.splitlines()) if line.startswith("{"))
    data = json.loads(line)
    errors = {name: data[key] for name, key in (("connect", "connect_errors"), ("read", "read_errors"),
                                                ("write", "write_errors"), ("non-2xx", "status_errors"),
                                                ("timeout", "timeouts"))}
    return Load(connections=connections, threads=threads, duration_seconds=data["duration_us"] / 1e6,
                requests=data["requests"], errors=errors, p50_ms=data["p50_us"] / 1000, p90_ms=data["p90_us"] / 1000,
                p99_ms=data["p99_us"] / 1000, max_ms=data["max_us"] / 1000)


def run_case(emulator: Emulator, workdir: Path, concurrencies: tuple[int, ...] = CONCURRENCIES,
             duration: int = DURATION_SECONDS, say=lambda text: None) -> HeartbeatCase:
    wrk = wrk_path()
    emulator.reset()
    loads = []
    with DaemonProcess(emulator, workdir / "daemon") as daemon:
        url = f"{daemon.url}/v1/clusters/{_register(daemon)}/heartbeat"
        for connections in concurrencies:
            threads = min(THREADS, connections)
            say(f"{connections} connections for {duration}s")
            done = subprocess.run(
                [wrk, f"--threads={threads}", f"--connections={connections}", f"--duration={duration}s",
                 f"--timeout={TIMEOUT_SECONDS}s", f"--script={SCRIPT}", url],
                capture_output=True, text=True, timeout=duration + 60, env=clean_env(BENCH_TOKEN=daemon.owner_token))
            if done.returncode != 0:
                raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
            loads.append(parse(done.stdout, connections, threads))
        rss = daemon.memory()["rss_bytes"]
    return HeartbeatCase(loads, wrk_version(wrk), rss)


HEADING = "Heartbeat endpoint under load"


def render(case: HeartbeatCase, head: str) -> tuple[str, str]:
    from bench.results import count, mib, table

    rows = [[load.connections, load.threads, f"{load.duration_seconds:.1f}", count(load.requests),
             f"{load.requests_per_second:,.0f}", f"{load.p50_ms:.1f}", f"{load.p99_ms:.1f}", f"{load.max_ms:.1f}",
             count(load.error_count) + (" (" + ", ".join(f"{k} {v}" for k, v in load.errors.items() if v) + ")"
                                         if load.error_count else "")]
            for load in case.loads]
    body = f"""{head}

`wrk {case.wrk_version}` (`bench/heartbeat.lua`) POSTs the SDK's heartbeat body with an owner's token to \
`/v1/clusters/{{id}}/heartbeat` of `guard run` (one process, uvicorn, SQLite) on loopback; every heartbeat is a \
committed write. wrk and the daemon share the machine's cores. Daemon RSS after the load: \
{mib(case.daemon_rss_bytes)} MiB.

{table(["connections", "wrk threads", "seconds", "requests", "requests/s", "p50 (ms)", "p99 (ms)", "max (ms)",
        "errors"], rows)}
"""
    return HEADING, body
