"""The launch benchmark: the SDK's 1,000-worker launch against one RunInstances per VM, both registered with a
running daemon (``guard run``), each on a freshly reset account (moto slows down with every instance it holds)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.daemon import DaemonProcess
from bench.emulator import Emulator, Served, clean_env
from bench.launchers import REGION
from bench.measure import ClientFailed, Measured, run_measured

LAUNCH_CALLS = ("ec2:RunInstances", "ec2:CreateFleet", "ec2:RequestSpotInstances", "ec2:RequestSpotFleet")
LAUNCHERS = {"sdk": "vmguard SDK", "naive": "one RunInstances per VM (dask-cloudprovider's way)"}


@dataclass
class LaunchRun:
    name: str
    measured: Measured
    out: dict[str, Any]
    served: Served
    registered_instances: int

    @property
    def launch_calls(self) -> int:
        return sum(self.served.calls.get(name, 0) for name in LAUNCH_CALLS)


@dataclass
class LaunchCase:
    workers: int
    runs: list[LaunchRun]

    def run_of(self, name: str) -> LaunchRun:
        return next(run for run in self.runs if run.name == name)


def _fresh_account(emulator: Emulator) -> None:
    """Empty account, EC2 backend warmed up (moto builds it on the first call), request log cleared."""
    from guard.sandbox import sandbox_client

    emulator.reset()
    sandbox_client(emulator.endpoint_url, "ec2", REGION).describe_availability_zones()
    emulator.clear_requests()


def run_case(emulator: Emulator, workdir: Path, workers: int = 1000, say=lambda text: None) -> LaunchCase:
    emulator.reset()
    runs = []
    with DaemonProcess(emulator, workdir / "daemon") as daemon:
        for name in LAUNCHERS:
            _fresh_account(emulator)
            say(f"{name}: launching {workers:,} workers")
            command = [sys.executable, "-m", "bench.launchers", name, str(workers), daemon.url, daemon.owner_token]
            measured = run_measured(command, env=clean_env(**emulator.env), cwd=workdir,
                                    log_path=workdir / f"launch-{name}.log")
            served = emulator.served()
            if measured.returncode != 0:
                raise ClientFailed(f"the {name} launcher exited with {measured.returncode}; see "
                                   f"{workdir / f'launch-{name}.log'}")
            out = json.loads(measured.stdout)
            cluster = daemon.get(f"/v1/clusters/{out['cluster_id']}")
            registered = len(cluster["instance_ids"]) if cluster.get("state") == "running" else 0
            say(f"{name}: {out['wall_seconds']:.1f}s")
            runs.append(LaunchRun(name, measured, out, served, registered))
    emulator.reset()
    return LaunchCase(workers, runs)


def heading(workers: int) -> str:
    return f"Launch: {workers:,} workers"


def render(case: LaunchCase, head: str) -> tuple[str, str]:
    from bench.results import count, mib, ratio, seconds, table

    ours, theirs = case.run_of("sdk"), case.run_of("naive")
    ec2 = sorted(set(ours.served.calls) | set(theirs.served.calls))
    rows = [
        ["EC2 launch calls (RunInstances, CreateFleet, spot requests)", count(ours.launch_calls),
         count(theirs.launch_calls), ratio(ours.launch_calls, theirs.launch_calls)],
        ["all AWS calls (emulator's log)", count(ours.served.total), count(theirs.served.total),
         ratio(ours.served.total, theirs.served.total)],
        ["wall time to all registered with the daemon (s)", seconds(ours.out["wall_seconds"], 1),
         seconds(theirs.out["wall_seconds"], 1), ratio(ours.out["wall_seconds"], theirs.out["wall_seconds"])],
        ["… of which launching (s)", seconds(ours.out["launch_seconds"], 1), seconds(theirs.out["launch_seconds"], 1),
         ratio(ours.out["launch_seconds"], theirs.out["launch_seconds"])],
        ["client CPU seconds (user + sys, whole process)", seconds(ours.measured.cpu_seconds),
         seconds(theirs.measured.cpu_seconds), ratio(ours.measured.cpu_seconds, theirs.measured.cpu_seconds)],
        ["client peak RSS (MiB)", mib(ours.measured.peak_rss_bytes), mib(theirs.measured.peak_rss_bytes),
         ratio(ours.measured.peak_rss_bytes, theirs.measured.peak_rss_bytes)],
        ["instances the daemon holds for the cluster", count(ours.registered_instances),
         count(theirs.registered_instances), ""],
    ]
    failed = {**{f"SDK {k}": v for k, v in ours.served.failed.items()},
              **{f"naive {k}": v for k, v in theirs.served.failed.items()}}
    body = f"""{head}

A cluster of 1 scheduler and {case.workers:,} workers (m5.large, {REGION}), launched by a process of its own and then \
registered with a running daemon (`guard run`, one `POST /v1/clusters`); wall time from the first AWS call to the \
daemon's answer. SDK: `sdk.launch.launch` + `DaemonClient.register`, the two steps of `sdk.Cluster` before it waits \
for Dask to boot (booting is the same for both and not measured). Naive: `bench/launchers.py`, dask-cloudprovider's \
EC2Cluster pattern: one security group, then one `RunInstances` per VM (workers 10 at a time). Each on a freshly \
reset account.

{table(["", LAUNCHERS["sdk"], LAUNCHERS["naive"], "SDK / naive"], rows)}

AWS calls by operation (emulator's log):

{table(["operation", "SDK", "naive"], ([op, count(ours.served.calls.get(op, 0)), count(theirs.served.calls.get(op, 0))]
                                       for op in ec2))}
{"" if not failed else chr(10) + "Failed requests: " + ", ".join(f"{k} {v}" for k, v in failed.items()) + chr(10)}"""
    return heading(case.workers), body
