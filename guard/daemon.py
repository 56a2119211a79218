"""The long-running daemon: APScheduler scans each region on an interval and checks registered clusters' keepalives
every few seconds; uvicorn serves the API, same process."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from datetime import datetime, timedelta, timezone

import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler

from guard.admin_token import stored_admin_token
from guard.api import create_app
from guard.aws import Aws
from guard.clusters import ClusterRegistry, Keepalive, KeepaliveReport
from guard.engine import Scanner, ScanReport
from guard.lease import Lease
from guard.metrics import DaemonMetrics
from guard.notify import Notifier
from guard.ownership import InstanceOwners
from guard.rule import Registry
from guard.settings import ConfigError, Settings
from guard.store import Store, scope_of

log = logging.getLogger(__name__)


class Daemon:
    """Scheduler + scanner + store + metrics + HTTP app, wired from settings."""

    def __init__(self, settings: Settings, registry: Registry, aws: Aws | None = None):
        self.settings = settings
        self.store = Store(settings.database_url, scope_of(settings))
        self.aws = aws or Aws()
        self.clusters = ClusterRegistry(self.store)
        self.metrics = DaemonMetrics(self.store, self.aws.counter, rules=settings.enabled_rules(),
                                     regions=settings.regions, clusters=self.clusters)
        self.scanner = Scanner(settings, registry, self.aws, self.store, on_scan=self._on_scan)
        self.keepalive = Keepalive(settings, self.clusters, self.scanner.actuator, self.aws)
        if settings.api_token is not None:
            self.api_token, self.token_generated = settings.api_token.get_secret_value(), False
        else:
            self.api_token, self.token_generated = stored_admin_token(self.store)
        self.token_stored = settings.api_token is None
        """The admin token is the database's (GUARD_API_TOKEN is not set): the same across restarts."""
        self._socket: socket.socket | None = None
        """The HTTP server's listening socket, bound by :meth:`check_listen`."""
        self._server: uvicorn.Server | None = None
        self._ready: set[str] = set()
        self._ready_lock = threading.Lock()
        self._failing: dict[str, frozenset[str]] = {}
        """Region → the error sources of its last scan: a failure is announced when it starts, not every scan."""
        self._announcing: set[int] = set()
        """Findings whose announcement is being delivered (not sent twice while a slow webhook retries)."""
        self._announce_lock = threading.Lock()
        self.notifier = Notifier(settings.webhook_url.get_secret_value()) if settings.webhook_url else None
        self.lease = Lease(self.store, settings.lease_ttl)
        self.scanner.acts = self.scanner.actuator.may_act = self.lease.held
        self.lease.on_change(lambda held: self.metrics.actor.set(1 if held else 0))
        self.app = create_app(self.store, self.metrics, self.api_token, settings.regions, self.ready_regions,
                              self.scanner.actuator.audit, clusters=self.clusters,
                              owner_tokens={owner: token.get_secret_value()
                                            for owner, token in settings.api_tokens.items()},
                              check_owners=InstanceOwners(self.aws).check, lease=self.lease)
        interval = settings.scan_interval.total_seconds()
        self.scheduler = BackgroundScheduler(
            timezone=timezone.utc,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": int(max(interval, 1))},
        )
        self.lease.start()  # the actor if the database's lease is free, else standby; renewed or retried from now

    def ready_regions(self) -> set[str]:
        with self._ready_lock:
            return set(self._ready)

    def _on_scan(self, report: ScanReport) -> None:
        self.metrics.observe(report)
        if report.status == "ok":
            with self._ready_lock:
                self._ready.add(report.region)
        log.info("scan %s: %s, %d findings, %d API calls, %.2fs", report.region, report.status,
                 len(report.findings), sum(report.api_calls.values()), report.duration_seconds)
        for error in report.errors:
            log.warning("scan %s: %s: %s", report.region, error["source"], error["error"])
        sources = frozenset(error["source"] for error in report.errors)
        new_errors = [dict(error, region=report.region) for error in report.errors
                      if error["source"] not in self._failing.get(report.region, frozenset())]
        self._failing[report.region] = sources
        if self.notifier and self.lease.held():  # the standby stays quiet: the actor announces
            # batched messages sent off the scan's thread: a slow webhook never delays scanning
            announce = self._to_announce(report)
            if announce:
                threading.Thread(target=self._announce, args=(announce,), name="notify", daemon=True).start()
            for send, items in ((self.notifier.planned_actions, report.actions.planned),
                                (self.notifier.executed_actions, report.actions.executed),
                                (self.notifier.failures, new_errors + report.actions.failed)):
                if items:
                    threading.Thread(target=send, args=(items,), name="notify", daemon=True).start()

    def _to_announce(self, report: ScanReport) -> list[dict]:
        """New findings, plus open ones with an action configured that no message has announced yet (a webhook
        that was down, or added later): an action is due only after its finding was announced."""
        acting = {rule_id for rule_id, config in self.settings.rule_configs.items()
                  if config.enabled and config.action != "notify"}
        opened = {finding["id"] for finding in report.opened}
        unannounced = [] if not acting or report.account_id == "unknown" else [
            row.as_dict() for row in self.store.open_findings(report.account_id, report.region)
            if row.rule in acting and row.notified_at is None and row.id not in opened]
        with self._announce_lock:
            findings = [f for f in [*report.opened, *unannounced] if f["id"] not in self._announcing]
            self._announcing.update(finding["id"] for finding in findings)
        return findings

    def _announce(self, findings: list[dict]) -> None:
        """Send the findings; the ones the message listed may end their actions' grace (a finding is never acted on
        unseen). Those only counted in "… and N more" stay unannounced and go out with the next scan's message."""
        try:
            delivery = self.notifier.new_findings(findings)
            if delivery.delivered:
                self.store.mark_notified([finding["id"] for finding in delivery.shown], datetime.now(timezone.utc))
        finally:
            with self._announce_lock:
                self._announcing.difference_update(finding["id"] for finding in findings)

    def check_keepalive(self) -> KeepaliveReport:
        """The keepalive job: expire registered clusters past their limits and terminate them (see guard.clusters)."""
        try:
            report = self.keepalive.check()
        except Exception:  # the next check, seconds away, tries again; a crash must not end the job
            log.exception("keepalive check failed")
            return KeepaliveReport()
        self.metrics.observe_actions(report.actions)
        if self.notifier:
            for send, items in ((self.notifier.executed_actions, report.actions.executed),
                                (self.notifier.failures, report.actions.failed)):
                if items:
                    threading.Thread(target=send, args=(items,), name="notify", daemon=True).start()
        return report

    def prune(self, now: datetime | None = None):
        """The retention job (at startup, then hourly): the actor deletes history older than ``settings.retention``;
        a standby leaves the shared database alone."""
        if not self.lease.held():
            return None
        try:
            pruned = self.store.prune(now or datetime.now(timezone.utc), self.settings.retention)
        except Exception:  # tomorrow's run tries again; a failed prune never stops the daemon
            log.exception("pruning old history failed")
            return None
        log.info("pruned %d scans, %d resolved findings, %d finished actions past retention",
                 pruned.scans, pruned.findings, pruned.actions)
        return pruned

    def start_scheduler(self, first_scan_now: bool = True) -> None:
        """One job per region, the keepalive job and the hourly prune: never overlapping themselves, missed runs
        coalesced into one."""
        interval = self.settings.scan_interval
        now = datetime.now(timezone.utc)
        first = now + (timedelta(0) if first_scan_now else interval)
        for region in self.settings.regions:
            self.scheduler.add_job(self.scanner.scan, "interval", args=[region], id=f"scan:{region}",
                                   name=f"scan {region}", seconds=interval.total_seconds(), next_run_time=first)
        every = self.settings.keepalive_check_interval.total_seconds()
        self.scheduler.add_job(self.check_keepalive, "interval", id="keepalive", name="keepalive check",
                               seconds=every, next_run_time=now, misfire_grace_time=int(max(every, 1)))
        self.scheduler.add_job(self.prune, "interval", id="prune", name="prune history past retention",
                               hours=1, next_run_time=now, misfire_grace_time=3600)
        self.scheduler.start()

    def check_listen(self) -> None:
        """Bind the listen address now and keep the socket for :meth:`serve`: a bad or busy address fails with one
        line before the first scan, and port 0 gets a free port from the system (see :attr:`listen_address`)."""
        if self._socket is not None:
            return
        host, port = self._host_port()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._socket = socket.create_server((host, port), family=family, reuse_port=False)
        except OSError as exc:
            raise ConfigError(f"listen = {self.settings.listen!r}: cannot listen there: {exc.strerror or exc}; "
                              "pick a free host:port (GUARD_LISTEN)") from None

    @property
    def listen_address(self) -> tuple[str, int]:
        """(host, port) the HTTP server listens on — the port the system chose when the setting says port 0 (the
        address is bound on first use, see :meth:`check_listen`)."""
        self.check_listen()
        assert self._socket is not None
        return self._host_port()[0], self._socket.getsockname()[1]

    @property
    def url(self) -> str:
        """The HTTP server's base URL, e.g. ``http://127.0.0.1:9464``."""
        host, port = self.listen_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _host_port(self) -> tuple[str, int]:
        host, _, port = self.settings.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def serve(self) -> None:
        """Run the HTTP server in this thread on the socket bound by :meth:`check_listen` until SIGINT/SIGTERM, then
        stop the scheduler."""
        self.check_listen()
        sock = self._socket
        assert sock is not None
        host, port = self.listen_address
        server = self._server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port,
                                                              log_level="warning", access_log=False))
        # uvicorn re-raises the signal that stopped it; answering it here lets the scheduler and store close cleanly.
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.run(sockets=[sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.shutdown()

    def stop_serving(self) -> None:
        """Ask :meth:`serve` (running in another thread) to return, as SIGTERM does."""
        if self._server is not None:
            self._server.should_exit = True

    def shutdown(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.lease.release()
        if self.notifier:
            self.notifier.close()
        self.store.close()
