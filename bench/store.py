"""The store's retention benchmark (``store-N``): a SQLite database holding N scans, as a daemon without retention
would have after months, and what one /metrics scrape costs on it — without the hot indexes (a database made by an
earlier version), with them, and after the retention job has pruned it (then VACUUMed)."""

from __future__ import annotations

import random
import sqlite3
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prometheus_client import generate_latest
from sqlalchemy import event, insert

from guard.audit import AuditLog
from guard.aws import CallCounter
from guard.metrics import DaemonMetrics
from guard.settings import Retention
from guard.store import FindingRow, ScanRow, Scope, Store

REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1")
RULES = ("idle-vms", "detached-volumes", "idle-gpu", "orphaned-snapshots")
SCAN_EVERY = timedelta(minutes=5)
SCRAPES = 30
HOT_INDEXES = ("ix_scans_latest", "ix_scans_latest_by_status", "ix_scans_priced", "ix_scans_finished_at",
               "ix_findings_resolved", "ix_actions_resource", "ix_actions_status_finished", "ix_actions_finding")
"""The indexes added with retention; dropped to measure a database as an earlier version left it."""


@dataclass
class Stage:
    name: str
    scans: int
    findings: int
    file_bytes: int
    scrape_ms_median: float
    scrape_ms_p95: float
    statements_per_scrape: float


@dataclass
class StoreCase:
    scans: int
    seed_seconds: float
    index_seconds: float
    prune_seconds: float
    stages: list[Stage]


def _seed(store: Store, scans: int, now: datetime, rng: random.Random) -> None:
    running = [{"owner": f"team-{i % 7}", "instance_type": f"m5.{['large', 'xlarge', '2xlarge'][i % 3]}",
                "count": 1 + i % 5, "usd": 0.096 * (1 + i % 5), "price_unknown": 0} for i in range(20)]
    collectors = {name: True for name in ("instances", "volumes", "snapshots", "metrics", "gpu-metrics",
                                          "launch-sources", "addresses", "logs")}
    calls = {"ec2.DescribeInstances": 2, "ec2.DescribeVolumes": 1, "cloudwatch.GetMetricData": 6}
    per_region = scans // len(REGIONS)
    batch: list[dict] = []
    with store.engine.begin() as connection:
        for index in range(per_region):
            finished = now - SCAN_EVERY * (per_region - index)
            for region in REGIONS:
                status = "ok" if rng.random() > 0.05 else "partial"
                batch.append({"account_id": "123456789012", "region": region,
                              "started_at": finished - timedelta(seconds=20), "finished_at": finished,
                              "status": status, "api_calls": 9, "api_calls_by_operation": calls, "errors": [],
                              "rules_evaluated": list(RULES), "rules_skipped": [], "findings_open": 40,
                              "running_hourly_usd": running if status == "ok" else None,
                              "collectors": collectors})
            if len(batch) >= 4000:
                connection.execute(insert(ScanRow), batch)
                batch.clear()
        if batch:
            connection.execute(insert(ScanRow), batch)
        findings = []
        for index in range(scans // 10):  # resolved over the last year, the newest 400 still open
            resolved = now - timedelta(days=365) * (scans // 10 - index) / (scans // 10)
            state = "open" if index >= scans // 10 - 400 else "resolved"
            findings.append({"rule": RULES[index % 4], "account_id": "123456789012", "region": REGIONS[index % 4],
                             "resource_id": f"i-{index:017x}", "resource_type": "instance",
                             "owner": f"team-{index % 7}", "severity": "medium", "waste_hourly_usd": 0.1,
                             "summary": "idle", "suggested_action": "stop", "billing": "", "evidence": {"cpu": 1.2},
                             "state": state, "first_seen": resolved - timedelta(days=1), "last_seen": resolved,
                             "resolved_at": None if state == "open" else resolved})
        connection.execute(insert(FindingRow), findings)


def _scrape(store: Store, metrics: DaemonMetrics) -> tuple[float, float, float]:
    statements = 0

    def count(*_: object) -> None:
        nonlocal statements
        statements += 1

    event.listen(store.engine, "before_cursor_execute", count)
    times = []
    try:
        generate_latest(metrics.registry)  # warm the connection pool and SQLite's page cache
        statements = 0
        for _ in range(SCRAPES):
            clock = time.process_time()
            generate_latest(metrics.registry)
            times.append((time.process_time() - clock) * 1000)
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], statements / SCRAPES


def _stage(name: str, path: Path, store: Store, metrics: DaemonMetrics) -> Stage:
    median, p95, statements = _scrape(store, metrics)
    with sqlite3.connect(path) as connection:
        scans = connection.execute("SELECT count(*) FROM scans").fetchone()[0]
        findings = connection.execute("SELECT count(*) FROM findings").fetchone()[0]
    return Stage(name, scans, findings, path.stat().st_size, median, p95, statements)


def run_case(workdir: Path, scans: int, say=lambda text: None) -> StoreCase:
    path = workdir / "guard.db"
    url = f"sqlite:///{path}"
    scope = Scope(rules=RULES, regions=REGIONS)  # the daemon's store is scoped to its configuration
    store = Store(url, scope)
    AuditLog(store)
    now = datetime.now(timezone.utc)
    say(f"seeding {scans:,} scans over {len(REGIONS)} regions")
    clock = time.perf_counter()
    _seed(store, scans, now, random.Random(13))
    seed_seconds = time.perf_counter() - clock
    store.close()
    stages = []

    def measure(name: str, store: Store) -> None:
        metrics = DaemonMetrics(store, CallCounter(), list(RULES), list(REGIONS))
        say(f"scraping /metrics {SCRAPES}× ({name})")
        stages.append(_stage(name, path, store, metrics))
        store.close()

    measure("unscoped (GROUP BY region), without the retention indexes: as before", _as_before(Store(url)))
    measure("scoped to the daemon's regions, without the retention indexes", _as_before(Store(url, scope)))
    clock = time.perf_counter()
    store = Store(url, scope)  # a daemon starting on it adds the missing indexes
    AuditLog(store)
    index_seconds = time.perf_counter() - clock
    measure("scoped, with the retention indexes", store)
    store = Store(url, scope)
    say("pruning with the default retention")
    clock = time.perf_counter()
    store.prune(datetime.now(timezone.utc), Retention())
    prune_seconds = time.perf_counter() - clock
    store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("VACUUM")
    measure("pruned (default retention) and VACUUMed", Store(url, scope))
    return StoreCase(scans, seed_seconds, index_seconds, prune_seconds, stages)


def _as_before(store: Store) -> Store:
    """The store on the database as an earlier version left it: without the indexes opening it just added."""
    with store.engine.begin() as connection:
        for name in HOT_INDEXES:
            connection.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
    return store


def heading(scans: int) -> str:
    return f"Store: {scans:,} scans, retention and /metrics"


def render(case: StoreCase, head: str) -> tuple[str, str]:
    from bench.results import count, table

    rows = [[stage.name, count(stage.scans), count(stage.findings), f"{stage.file_bytes / 2**20:,.1f}",
             f"{stage.scrape_ms_median:,.1f}", f"{stage.scrape_ms_p95:,.1f}", f"{stage.statements_per_scrape:g}"]
            for stage in case.stages]
    span = SCAN_EVERY * (case.scans // len(REGIONS))
    body = f"""{head}

A SQLite database with {case.scans:,} scans ({len(REGIONS)} regions, one every {SCAN_EVERY.seconds // 60} minutes: \
what {span.days:,} days of a daemon without retention leave) and a finding per ten scans (resolved over the last \
year, the newest 400 open), seeded in \
{case.seed_seconds:.0f} s. A /metrics scrape is the daemon's registry rendered in-process (`generate_latest`), \
{SCRAPES} times; its time is this process's CPU time. The daemon's store is scoped to its regions, and reads each \
region's latest scans by index seeks; an unscoped store (`guard findings` and other tools) groups by region over the \
whole table, as every /metrics scrape did before; SQL statements counted by SQLAlchemy's \
`before_cursor_execute`. Opening the store adds the missing indexes in {case.index_seconds:.1f} s; the default \
retention's first prune took {case.prune_seconds:.1f} s (batches of 5,000 \
rows).

{table(["database", "scans", "findings", "file (MiB)", "scrape median (ms CPU)", "scrape p95 (ms CPU)",
        "SQL statements per scrape"], rows, align="lrrrrrr")}
"""
    return heading(case.scans), body
