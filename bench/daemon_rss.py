"""The daemon's memory benchmark (opt-in at 10,000): ``guard run`` with every shipped rule, its resident memory
once its first scan of a seeded fleet is done."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.daemon import DaemonProcess
from bench.emulator import Emulator
from bench.seeding import FleetPlan


@dataclass
class DaemonRssCase:
    plan: FleetPlan
    seed_seconds: float
    ready_seconds: float
    memory: dict[str, int]
    scan: dict[str, Any]


def run_case(emulator: Emulator, workdir: Path, instances: int, say=lambda text: None) -> DaemonRssCase:
    plan = FleetPlan.of(instances)
    say(f"seeding {plan.instances:,} instances and {plan.volumes:,} volumes")
    clock = time.perf_counter()
    emulator.seed(plan)
    seed_seconds = time.perf_counter() - clock
    say(f"seeded in {seed_seconds:.1f}s; guard run, first scan")
    clock = time.perf_counter()
    with DaemonProcess(emulator, workdir / "daemon", region=plan.region, ready_timeout=3600) as daemon:
        ready = time.perf_counter() - clock
        memory = daemon.memory()
        scan = daemon.get("/v1/scans?limit=1")[0]
    emulator.reset()
    return DaemonRssCase(plan, seed_seconds, ready, memory, scan)


def heading(instances: int, opt_in: bool) -> str:
    return f"Daemon memory: {instances:,} instances" + (" (opt-in)" if opt_in else "")


def render(case: DaemonRssCase, head: str, opt_in: bool) -> tuple[str, str]:
    from bench.results import count, mib, table

    scan = case.scan
    calls = scan.get("api_calls_by_operation") or {}
    rows = [
        ["daemon RSS after its first scan (MiB)", mib(case.memory["rss_bytes"])],
        ["daemon peak RSS (MiB)", mib(case.memory["peak_rss_bytes"])],
        ["first scan: status", scan.get("status", "?")],
        ["first scan: AWS API calls", count(scan.get("api_calls"))],
        ["first scan: open findings", count(scan.get("findings_open"))],
        ["first scan: duration (s)", f"{scan.get('duration_seconds', 0):,.1f}"],
        ["start to first scan done (s)", f"{case.ready_seconds:,.1f}"],
    ]
    body = f"""{head}

`guard run` (every shipped rule, observe mode, SQLite) against {case.plan.instances:,} running instances \
(half idle) and {case.plan.volumes:,} detached volumes, seeded in {case.seed_seconds:.0f} s; memory read from \
`/proc/PID/status` once the first scan is recorded.

{table(["", "value"], rows)}

First scan's AWS calls by operation: {", ".join(f"{op} {n:,}" for op, n in sorted(calls.items())) or "—"}
"""
    return heading(case.plan.instances, opt_in), body
