"""The on-VM agent: what a cluster's VM runs, a Dask scheduler or a Dask worker that ends itself.

    python -m sdk.vm --config '<json>' --host <ip to bind> [--scheduler <host:port>]

The EC2 user-data starts it (and powers the VM off when it exits); the sandbox runs it as a local process per
"VM". The JSON config is ``VmConfig``'s fields. Every way the agent ends is an exit, and the exit ends the VM:

- scheduler: Dask's own ``idle_timeout`` (no task ran for ``idle_timeout_seconds``) and the keepalive plugin
  (no client has been connected for ``keepalive_seconds``: the laptop is gone) close the scheduler;
- worker: it closes when its scheduler goes away, or when it found none within ``scheduler_wait_seconds``;
- both: ``max_lifetime_seconds`` after the start, and on SIGTERM/SIGINT.

With a ``tls`` entry in the config (``sdk.security``), the agent first fetches the cluster's TLS material from
the presigned URL there (checking its sha256), and scheduler and worker then listen and connect on ``tls://``
only, refusing any peer without a certificate of the cluster's own CA.

The agent counts what its process does for the SDK's heartbeats (``sdk.usage``): S3 requests, log volume by level,
and, on the scheduler, tasks finished.

A normal close exits 0; a bad config or command line 2; a server that could not start (a worker that never
reached its scheduler, an address in use) 1. A close that
hangs (a task that will not stop, say) is cut short ``CLOSE_GRACE_SECONDS`` later by a hard exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from sdk import usage

if TYPE_CHECKING:
    from distributed import Scheduler, Worker
    from distributed.core import Server
    from distributed.security import Security

log = logging.getLogger("sdk.vm")

SCHEDULER_WAIT_SECONDS = 120.0
"""How long a worker tries to reach its scheduler (at start) before it gives up and exits, by default."""
CLOSE_GRACE_SECONDS = 30.0
"""How long a close may take before the process exits anyway."""
STALE_CLIENT_SECONDS = 60.0
"""A client not heard from for this long (Dask clients heartbeat every 5 s) no longer counts as connected: a
laptop that vanished without closing its connection must not keep the cluster alive."""

EXIT_OK, EXIT_NOT_STARTED, EXIT_USAGE, EXIT_FORCED = 0, 1, 2, 3
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_FIRE_AND_FORGET = "fire-and-forget"
"""The client the scheduler always has, for ``fire_and_forget`` futures: not a connected client."""

Role = Literal["scheduler", "worker"]


class ConfigError(ValueError):
    """The agent's JSON config is malformed."""


@dataclass(frozen=True)
class VmConfig:
    """What a VM runs; the JSON the SDK writes into the user-data (unknown keys are ignored)."""

    role: Role
    cluster_id: str
    keepalive_seconds: float
    scheduler_port: int = 8786
    dashboard_port: int | None = 8787
    idle_timeout_seconds: float | None = None
    max_lifetime_seconds: float | None = None
    log_level: str = "INFO"
    nthreads: int | None = None
    memory_limit: str | int | None = "auto"
    scheduler_wait_seconds: float = SCHEDULER_WAIT_SECONDS
    """A worker's bounded wait for its scheduler at start (optional in the JSON)."""
    tls: dict[str, str] | None = None
    """Where the cluster's TLS material is (``url``, a presigned GET) and its ``sha256``; None: plain TCP."""

    @classmethod
    def from_json(cls, text: str) -> VmConfig:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--config is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError("--config must be a JSON object")
        known = {f.name for f in fields(cls)}
        missing = sorted({"role", "cluster_id", "keepalive_seconds"} - raw.keys())
        if missing:
            raise ConfigError(f"--config lacks {', '.join(missing)}")
        config = cls(**{key: value for key, value in raw.items() if key in known})
        config._check()
        return config

    def _check(self) -> None:
        if self.role not in ("scheduler", "worker"):
            raise ConfigError(f"role must be 'scheduler' or 'worker', not {self.role!r}")
        if not isinstance(self.cluster_id, str) or not self.cluster_id:
            raise ConfigError("cluster_id must be a non-empty string")
        for name in ("keepalive_seconds", "idle_timeout_seconds", "max_lifetime_seconds", "scheduler_wait_seconds"):
            value = getattr(self, name)
            if value is None and name in ("idle_timeout_seconds", "max_lifetime_seconds"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        for name in ("scheduler_port", "dashboard_port"):
            value = getattr(self, name)
            if value is None and name == "dashboard_port":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be a TCP port, not {value!r}")
        if self.nthreads is not None and (isinstance(self.nthreads, bool) or not isinstance(self.nthreads, int)
                                          or self.nthreads < 1):
            raise ConfigError(f"nthreads must be a positive integer, not {self.nthreads!r}")
        if not isinstance(logging.getLevelName(str(self.log_level).upper()), int):
            raise ConfigError(f"log_level must be a logging level name, not {self.log_level!r}")
        if self.tls is not None and not (isinstance(self.tls, dict) and all(
                isinstance(self.tls.get(key), str) and self.tls[key] for key in ("url", "sha256"))):
            raise ConfigError("tls must be an object with the material's 'url' and 'sha256'")


def _keepalive_plugin_class() -> type:
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Keepalive(SchedulerPlugin):
        """The dead-man switch: closes the scheduler when no client has been connected for ``keepalive_seconds``.

        Counted from the scheduler's start, then from the moment the last client went away (or was last heard
        from, for one that went silent for ``STALE_CLIENT_SECONDS``).
        """

        name = "vmguard-keepalive"

        def __init__(self, keepalive_seconds: float, stale_after: float = STALE_CLIENT_SECONDS) -> None:
            self.keepalive_seconds = keepalive_seconds
            self.stale_after = stale_after
            self.last_connected = time.time()
            self.scheduler: Scheduler | None = None
            self._closing: asyncio.Task | None = None

        async def start(self, scheduler: Scheduler) -> None:
            from tornado.ioloop import PeriodicCallback

            self.scheduler = scheduler
            self.last_connected = time.time()
            every_ms = max(100, min(1000, int(self.keepalive_seconds * 250)))
            # started (and stopped at close) with the scheduler's own periodic callbacks
            scheduler.periodic_callbacks[self.name] = PeriodicCallback(self.check, every_ms)

        def add_client(self, scheduler: Scheduler, client: str) -> None:
            log.info("client %s connected", client)
            self.last_connected = time.time()

        def remove_client(self, scheduler: Scheduler, client: str) -> None:
            log.info("client %s disconnected", client)
            self.last_connected = time.time()

        def connected(self, now: float) -> int:
            """How many clients are connected and alive; moves ``last_connected`` on."""
            assert self.scheduler is not None
            alive = 0
            for client_id, state in list(self.scheduler.clients.items()):
                if client_id == _FIRE_AND_FORGET:
                    continue
                if now - state.last_seen <= self.stale_after:
                    alive += 1
                else:
                    self.last_connected = max(self.last_connected, state.last_seen)
            if alive:
                self.last_connected = now
            return alive

        def check(self) -> None:
            from distributed.core import Status

            scheduler = self.scheduler
            if scheduler is None or self._closing is not None or scheduler.status in (Status.closing,
                                                                                        Status.closed):
                return
            now = time.time()
            if self.connected(now) or now - self.last_connected <= self.keepalive_seconds:
                return
            log.warning("no client connected for %.0fs (keepalive %ss): closing the scheduler",
                        now - self.last_connected, self.keepalive_seconds)
            self._closing = asyncio.ensure_future(scheduler.close(reason="vmguard-keepalive-expired"))

    return Keepalive


def keepalive_plugin(keepalive_seconds: float, stale_after: float = STALE_CLIENT_SECONDS) -> Any:
    """The scheduler plugin that closes the scheduler when no client has been connected for ``keepalive_seconds``."""
    return _keepalive_plugin_class()(keepalive_seconds, stale_after)


def _security(config: VmConfig) -> Security | None:
    """The cluster's TLS (fetched from the presigned URL of the config), or None for a plain-TCP config."""
    if config.tls is None:
        return None
    from sdk.security import fetch_material, vm_security

    return vm_security(fetch_material(config.tls["url"], config.tls["sha256"]))


def _scheduler(config: VmConfig, host: str, security: Security | None) -> Scheduler:
    from distributed import Scheduler

    dashboard = f"{host}:{config.dashboard_port}" if config.dashboard_port is not None else f"{host}:0"
    # The HTTP server (health, metrics; the dashboard when bokeh is installed) binds to this VM's address only.
    return Scheduler(host=host, port=config.scheduler_port, dashboard_address=dashboard,
                     protocol="tls" if security else "tcp", security=security,
                     dashboard=config.dashboard_port is not None, idle_timeout=config.idle_timeout_seconds,
                     plugins=[keepalive_plugin(config.keepalive_seconds), usage.task_counter()])


def _worker(config: VmConfig, host: str, scheduler_address: str, security: Security | None) -> Worker:
    from distributed import Worker

    scheme = "tls" if security else "tcp"
    address = scheduler_address if "://" in scheduler_address else f"{scheme}://{scheduler_address}"
    return Worker(address, host=host, protocol=scheme, security=security,
                  nthreads=config.nthreads or os.cpu_count() or 1, memory_limit=config.memory_limit,
                  death_timeout=config.scheduler_wait_seconds, dashboard_address=f"{host}:0")


class _Watchdog:
    """A thread that ends the process whatever the event loop does: at ``max_lifetime + grace`` after the start,
    and ``grace`` after the server began closing."""

    def __init__(self, server: Server, max_lifetime: float | None, grace: float = CLOSE_GRACE_SECONDS) -> None:
        self.server = server
        self.deadline = time.monotonic() + max_lifetime + grace if max_lifetime else None
        self.grace = grace
        self._thread = threading.Thread(target=self._run, name="vmguard-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from distributed.core import Status

        closing_since: float | None = None
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            if closing_since is None and self.server.status in (Status.closing, Status.closing_gracefully,
                                                                 Status.closed):
                closing_since = now
            late = (self.deadline is not None and now > self.deadline) or (
                closing_since is not None and now - closing_since > self.grace)
            if late:
                log.error("the agent did not close in time: exiting hard")
                logging.shutdown()
                os._exit(EXIT_FORCED)


async def run(config: VmConfig, host: str, scheduler_address: str | None = None) -> int:
    """Run the agent until its server closes; the exit code."""
    if config.role == "worker" and not scheduler_address:
        raise ConfigError("a worker needs --scheduler <host:port>")
    try:
        security = await asyncio.to_thread(_security, config)
    except ValueError as exc:  # SdkError: not fetched in time, or not the material the config names
        log.error("the %s could not start: %s", config.role, exc)
        return EXIT_NOT_STARTED
    if config.role == "scheduler":
        server: Server = _scheduler(config, host, security)
    else:
        assert scheduler_address is not None
        server = _worker(config, host, scheduler_address, security)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    started = False
    closing: list[asyncio.Task] = []

    def close(reason: str) -> None:
        if closing:
            return
        log.info("closing: %s", reason)
        if started:
            closing.append(asyncio.ensure_future(server.close(reason=reason)))
        elif main is not None:
            closing.append(main)
            main.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, close, signal.Signals(signum).name)
    if config.max_lifetime_seconds:
        loop.call_later(config.max_lifetime_seconds, close, f"max lifetime of {config.max_lifetime_seconds}s")
    _Watchdog(server, config.max_lifetime_seconds).start()
    try:
        await server
    except asyncio.CancelledError:
        return EXIT_OK
    except (OSError, RuntimeError, asyncio.TimeoutError) as exc:
        cause = f"{exc} ({exc.__cause__})" if exc.__cause__ else str(exc)
        log.error("the %s could not start: %s", config.role, cause)
        return EXIT_NOT_STARTED
    started = True
    log.info("%s of cluster %s serving at %s", config.role, config.cluster_id, server.address)
    await server.finished()
    log.info("%s closed", config.role)
    return EXIT_OK


def _configure_logging(level: str) -> None:
    """The process logs at ``level`` to stderr; the usage meter counts what it writes from then on."""
    number = logging.getLevelName(level.upper())
    logging.basicConfig(level=number, stream=sys.stderr, format=LOG_FORMAT, force=True)
    # Dask's import sets its loggers' levels (ours must come after) and, finding the root's handler, adds none of
    # its own: its records are written (and counted) like every other
    import distributed  # noqa: F401

    logging.getLogger("sdk").setLevel(number)
    logging.getLogger("distributed").setLevel(number)
    usage.install()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdk.vm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the VM's JSON config")
    parser.add_argument("--host", required=True, help="the address to bind (this VM's private IP)")
    parser.add_argument("--scheduler", help="a worker's scheduler, host:port")
    args = parser.parse_args(argv)
    try:
        config = VmConfig.from_json(args.config)
        if config.role == "worker" and not args.scheduler:
            raise ConfigError("a worker needs --scheduler <host:port>")
    except ConfigError as exc:
        print(f"sdk.vm: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(config.log_level)
    return asyncio.run(run(config, args.host, args.scheduler))


if __name__ == "__main__":
    sys.exit(main())
