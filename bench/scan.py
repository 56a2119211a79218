"""The scan benchmark: one vmguard scan and one Cloud Custodian run against the same seeded account.

Each client is a process of its own, measured whole (``bench.measure``); the emulator is a third process, whose
request log is cleared before each client and read after it. Seeding happens before and is not measured.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.emulator import ROOT, Emulator, Served, clean_env
from bench.measure import ClientFailed, Measured, run_measured
from bench.seeding import FleetPlan, Truth

POLICY = ROOT / "bench" / "c7n_policy.yml"
RULES = ("idle-vms", "detached-volumes")
TARGET_INSTANCES = 1000
"""The account size the issue's targets are set for."""
SIGNING_NAMES = {"monitoring": "cloudwatch"}
"""The emulator's log names a service by its signing name; botocore's events by its service name."""


@dataclass
class ClientRun:
    """One client's scan of the account."""

    name: str
    measured: Measured
    client_calls: dict[str, int]
    served: Served
    found: dict[str, frozenset[str]]
    emulator_cpu_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def served_calls(self) -> dict[str, int]:
        return {_service_name(name): n for name, n in self.served.calls.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "wall_seconds": self.measured.wall_seconds,
                "cpu_seconds": self.measured.cpu_seconds, "user_seconds": self.measured.user_seconds,
                "system_seconds": self.measured.system_seconds, "peak_rss_bytes": self.measured.peak_rss_bytes,
                "client_calls": self.client_calls, "served_calls": self.served_calls,
                "served_failed": self.served.failed, "found": {k: len(v) for k, v in self.found.items()},
                "emulator_cpu_seconds": self.emulator_cpu_seconds, **self.extra}


def _service_name(name: str) -> str:
    service, _, operation = name.partition(":")
    return f"{SIGNING_NAMES.get(service, service)}:{operation}"


@dataclass
class ScanCase:
    plan: FleetPlan
    seed_seconds: float
    truth: Truth
    runs: list[ClientRun]

    def run_of(self, name: str) -> ClientRun:
        return next(run for run in self.runs if run.name == name)

    def parity(self) -> dict[str, bool]:
        """Per rule: did both clients find the same resource ids (and exactly the seeded ones)?"""
        expected = {"idle-vms": self.truth.idle_instances, "detached-volumes": self.truth.detached_volumes}
        found = [run.found for run in self.runs]
        return {rule: all(f.get(rule, frozenset()) == expected[rule] for f in found) for rule in RULES}


def _cpu(usage: dict[str, float]) -> float:
    return usage["user_seconds"] + usage["system_seconds"]


def _client(emulator: Emulator, name: str, command: list[str], env: dict[str, str], workdir: Path) -> tuple[
        Measured, Served, float]:
    emulator.clear_requests()
    before = _cpu(emulator.usage())
    measured = run_measured(command, env=env, cwd=workdir, log_path=workdir / f"{name}.log")
    emulator_cpu = _cpu(emulator.usage()) - before
    served = emulator.served()
    if measured.returncode != 0:
        raise ClientFailed(f"{name} exited with {measured.returncode}; see {workdir / f'{name}.log'}")
    return measured, served, emulator_cpu


def run_vmguard(emulator: Emulator, plan: FleetPlan, workdir: Path) -> ClientRun:
    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "guard.db"
    database.unlink(missing_ok=True)
    command = [sys.executable, "-m", "bench.vmguard_scan", plan.region, f"sqlite:///{database}"]
    measured, served, emulator_cpu = _client(emulator, "vmguard", command, clean_env(**emulator.env), workdir)
    out = json.loads(measured.stdout)
    if out["status"] != "ok":
        raise ClientFailed(f"the vmguard scan ended {out['status']}: {out['errors']}")
    return ClientRun("vmguard", measured, out["calls"], served,
                     {rule: frozenset(ids) for rule, ids in out["found"].items()}, emulator_cpu,
                     extra={"scan_cpu_seconds": out["scan_cpu_seconds"], "scan_wall_seconds": out["scan_wall_seconds"],
                            "undetermined": len(out["undetermined"])})


def run_c7n(emulator: Emulator, plan: FleetPlan, workdir: Path, c7n_python: Path) -> ClientRun:
    workdir.mkdir(parents=True, exist_ok=True)
    output = workdir / "out"
    calls_path = workdir / "c7n-calls.json"
    command = [str(c7n_python), str(ROOT / "bench" / "c7n_run.py"), str(calls_path), "run", "--dryrun",
               "--cache-period", "0", "-s", str(output), "--region", plan.region, str(POLICY)]
    env = clean_env(**emulator.env, HOME=str(workdir))  # its cache file under the work directory, not ~
    env.pop("PYTHONPATH", None)
    measured, served, emulator_cpu = _client(emulator, "c7n", command, env, workdir)
    keys = {"idle-vms": "InstanceId", "detached-volumes": "VolumeId"}
    found = {rule: frozenset(r[key] for r in json.loads((output / rule / "resources.json").read_text()))
             for rule, key in keys.items()}
    return ClientRun("c7n", measured, json.loads(calls_path.read_text()), served, found, emulator_cpu)


def run_case(emulator: Emulator, plan: FleetPlan, workdir: Path, c7n_python: Path,
             say=lambda text: None) -> ScanCase:
    say(f"seeding {plan.instances:,} instances and {plan.volumes:,} volumes")
    clock = time.perf_counter()
    seeded = emulator.seed(plan)
    seed_seconds = time.perf_counter() - clock
    truth = Truth.of(seeded)
    say(f"seeded in {seed_seconds:.1f}s; vmguard scan")
    runs = [run_vmguard(emulator, plan, workdir / "vmguard")]
    say(f"vmguard: {runs[0].measured.wall_seconds:.1f}s; Cloud Custodian")
    runs.append(run_c7n(emulator, plan, workdir / "c7n", c7n_python))
    say(f"Cloud Custodian: {runs[1].measured.wall_seconds:.1f}s")
    return ScanCase(plan, seed_seconds, truth, runs)


# -- RESULTS.md ----------------------------------------------------------------------------------------------------

def heading(instances: int, opt_in: bool) -> str:
    return f"Scan: {instances:,} instances" + (" (opt-in)" if opt_in else "")


def targets(case: ScanCase) -> list[tuple[str, bool, str]]:
    """The issue's targets (set for 1,000 instances): (what, met, the numbers)."""
    ours, theirs = case.run_of("vmguard"), case.run_of("c7n")
    parity = case.parity()
    ours_calls, theirs_calls = sum(ours.client_calls.values()), sum(theirs.client_calls.values())
    return [
        ("findings parity with Cloud Custodian (same resource ids, and the seeded ones)", all(parity.values()),
         ", ".join(f"{rule}: {'same' if same else 'DIFFERENT'}" for rule, same in parity.items())),
        ("vmguard's API calls ≤ 1/100 of Cloud Custodian's", ours_calls * 100 <= theirs_calls,
         f"{ours_calls:,} vs {theirs_calls:,}"),
        ("vmguard's client CPU seconds below Cloud Custodian's",
         ours.measured.cpu_seconds < theirs.measured.cpu_seconds,
         f"{ours.measured.cpu_seconds:.2f} s vs {theirs.measured.cpu_seconds:.2f} s"),
    ]


def render(case: ScanCase, head: str, c7n_version: str, opt_in: bool) -> tuple[str, str]:
    """(heading, body) of this case's section."""
    from bench.results import count, mib, ratio, seconds, table, verdict

    plan = case.plan
    ours, theirs = case.run_of("vmguard"), case.run_of("c7n")
    peer = f"Cloud Custodian {c7n_version}"
    parity = case.parity()

    def found(rule: str) -> list[str]:
        return [f"{len(ours.found.get(rule, ())):,}", f"{len(theirs.found.get(rule, ())):,}",
                "same ids" if parity[rule] else "**different ids**"]

    rows = [
        ["AWS API calls, counted by the client", count(sum(ours.client_calls.values())),
         count(sum(theirs.client_calls.values())),
         ratio(sum(ours.client_calls.values()), sum(theirs.client_calls.values()))],
        ["AWS API calls, in the emulator's log", count(ours.served.total), count(theirs.served.total),
         ratio(ours.served.total, theirs.served.total)],
        ["client CPU seconds (user + sys, whole process)", seconds(ours.measured.cpu_seconds),
         seconds(theirs.measured.cpu_seconds), ratio(ours.measured.cpu_seconds, theirs.measured.cpu_seconds)],
        ["… of which vmguard's scan itself", seconds(ours.extra.get("scan_cpu_seconds")), "—", ""],
        ["… and its start-up (interpreter, imports, settings, database)",
         seconds(ours.measured.cpu_seconds - ours.extra["scan_cpu_seconds"]) if "scan_cpu_seconds" in ours.extra
         else "—", "—", ""],
        ["wall time (s)", seconds(ours.measured.wall_seconds, 1), seconds(theirs.measured.wall_seconds, 1),
         ratio(ours.measured.wall_seconds, theirs.measured.wall_seconds)],
        ["peak RSS (MiB)", mib(ours.measured.peak_rss_bytes), mib(theirs.measured.peak_rss_bytes),
         ratio(ours.measured.peak_rss_bytes, theirs.measured.peak_rss_bytes)],
        ["emulator CPU seconds spent answering", seconds(ours.emulator_cpu_seconds),
         seconds(theirs.emulator_cpu_seconds), ratio(ours.emulator_cpu_seconds, theirs.emulator_cpu_seconds)],
        ["idle instances found (seeded: " + f"{len(case.truth.idle_instances):,})", *found("idle-vms")],
        ["detached volumes found (seeded: " + f"{len(case.truth.detached_volumes):,})", *found("detached-volumes")],
    ]
    undetermined = ours.extra.get("undetermined", 0)
    notes = [f"vmguard left {undetermined:,} instances undetermined (fewer datapoints in its window than "
             "min_coverage asks: the seeded series had aged)."] if undetermined else []
    failed = {**{f"vmguard {k}": v for k, v in ours.served.failed.items()},
              **{f"Custodian {k}": v for k, v in theirs.served.failed.items()}}
    operations = sorted(set(ours.client_calls) | set(theirs.client_calls) | set(ours.served_calls)
                        | set(theirs.served_calls))
    by_operation = table(
        ["operation", "vmguard (client / emulator)", f"{peer} (client / emulator)"],
        ([operation,
          f"{count(ours.client_calls.get(operation, 0))} / {count(ours.served_calls.get(operation, 0))}",
          f"{count(theirs.client_calls.get(operation, 0))} / {count(theirs.served_calls.get(operation, 0))}"]
         for operation in operations))
    if plan.instances == TARGET_INSTANCES:
        scope = "the issue's targets, set for 1,000 instances"
        checks = "\n".join(f"- {what}: {verdict(met)} ({numbers})" for what, met, numbers in targets(case))
    else:
        scope = "the issue's targets are set for 1,000 instances; the same questions here"
        checks = "\n".join(f"- {what}: {'yes' if met else 'no'} ({numbers})" for what, met, numbers in targets(case))
    body = f"""{head}

Account: {plan.instances:,} running instances in {plan.reservations:,} reservations of {plan.per_reservation} \
({len(case.truth.idle_instances):,} idle, the rest busy; CPUUtilization, NetworkIn and NetworkOut every 5 minutes \
for 3 hours), {plan.volumes:,} detached volumes, in {plan.region}; seeded in {case.seed_seconds:.1f} s (not measured).{
        " One instance per reservation: moto pages DescribeInstances by reservation (see `bench/seeding.py`)."
        if plan.per_reservation == 1 else ""}
vmguard: one scan with idle-vms and detached-volumes enabled. {peer}: `bench/c7n_policy.yml` (CPU only: the fewest \
calls it can make for this check).

{table(["", "vmguard", peer, "vmguard / Custodian"], rows)}

AWS API calls by operation:

{by_operation}
{"" if not failed else chr(10) + "Failed requests in the emulator's log: " + ", ".join(
        f"{k} {v}" for k, v in failed.items()) + chr(10)}{"".join(chr(10) + note + chr(10) for note in notes)}
Checks ({scope}):

{checks}
"""
    return heading(plan.instances, opt_in), body
