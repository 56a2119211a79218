"""Crash safety of the action phase: `guard run` in enforce mode, SIGKILLed at random points while it acts.

Each run seeds a small account (detached volumes, unattached Elastic IPs, orphaned snapshots, log groups without
retention, and a protected or already-fixed twin of each), starts the daemon as its own process, kills it with
SIGKILL at a seeded random moment of its action phase, restarts it and lets it finish. Then the emulator's own
request log must show every intended mutating call made exactly once and nothing else changed, every call must
have its audit row (written before the call, done after the restart), and the account must be in its final state.

The emulator holds its answers to mutating calls, and to the read an action makes of its resource just before its
call, for a few milliseconds (``SandboxServer.latency``: AWS answers in tens of milliseconds where moto takes one),
so kills can land in the moment a change is made but the daemon has not heard of it yet, and in the moment an
intent is committed but its call not made. Each run records where its kill landed; the runs must between them
cover both kinds of unfinished intent, one kill before the first intent and one after the last action.

`guard run` is a separate process each time: the installed console script in the first run, then (to spare ~2.5 s
of imports per start) a fork of a launcher that has imported the daemon (``crash_daemon``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from crash_account import ACCOUNT_ID, REGION, RETENTION_DAYS, CrashAccount, seed_crash_account
from crash_daemon import DaemonProcess, Launcher, console_script
from listening import DAEMON_LINE, found_in

from guard.actions.executors import KEY_TAG
from guard.sandbox import SandboxServer, sandbox_client
from guard.sandbox.server import ServedRequest

pytestmark = pytest.mark.integration

RUNS = 30
BASE_SEED = 42_024
CHANGE_LATENCY = 0.02
"""Seconds the emulator holds its answer to each mutating call, once made: the daemon does not know yet."""
OBSERVE_LATENCY = 0.01
"""Seconds it holds its answer to the read an action makes just before its call: the intent is committed, the call
not made yet."""

ACTING_RULES = {"detached-volumes": "snapshot-then-delete", "unattached-eips": "release",
                "orphaned-snapshots": "delete", "log-retention": "set-retention"}
OTHER_RULES = ("idle-vms", "idle-gpu", "chatty-s3", "debug-logging", "idle-nat-gateways", "stopped-instance-volumes")

CALLS = {"snapshot-then-delete": ("CreateSnapshot", "DeleteVolume"), "release": ("ReleaseAddress",),
         "delete": ("DeleteSnapshot",), "set-retention": ("PutRetentionPolicy",)}
"""The mutating operations each action makes on its resource, in order."""
TARGET_PARAMS = ("VolumeId", "AllocationId", "SnapshotId", "logGroupName", "InstanceId.1", "PublicIp")
FINAL_NOT_DONE = ("failed", "skipped", "cancelled")
OBSERVE_PARAMS = ("VolumeId.1", "AllocationId.1", "SnapshotId.1", "logGroupNamePrefix")
"""Parameters of the reads by id an executor makes to look at its resource (inventory reads list everything)."""


def target(request: ServedRequest) -> str | None:
    """The resource a mutating request acts on."""
    return next((str(request.params[name]) for name in TARGET_PARAMS if name in request.params), None)


def observing(request: ServedRequest) -> bool:
    """A read of one resource by id: an action looking at its resource right before its call."""
    return not request.mutating and any(name in request.params for name in OBSERVE_PARAMS)


def hold(request: ServedRequest) -> float:
    return CHANGE_LATENCY if request.mutating else OBSERVE_LATENCY if observing(request) else 0.0


def daemon_env(sandbox: SandboxServer, database: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GUARD_")} | sandbox.env | {
        "GUARD_MODE": "enforce",
        "GUARD_ALLOWED_ACCOUNTS": ACCOUNT_ID,
        "GUARD_REGIONS": REGION,
        "GUARD_SCAN_INTERVAL": "1s",
        "GUARD_MIN_RESOURCE_AGE": "0s",
        "GUARD_MAX_ACTIONS_PER_CYCLE": "100",
        "GUARD_MAX_ACTIONS_PER_HOUR": "1000",
        "GUARD_DATABASE_URL": f"sqlite:///{database}",
        "GUARD_LISTEN": "127.0.0.1:0",  # the port it picks is read from its log
        "GUARD_API_TOKEN": "crash-test-token-0123456789",
        "GUARD_LEASE_TTL": "1s",  # a restart after SIGKILL waits for the killed process's lease to expire
    }
    for rule, action in ACTING_RULES.items():
        prefix = f"GUARD_RULES__{rule.upper().replace('-', '_')}__"
        env |= {f"{prefix}ACTION": action, f"{prefix}GRACE": "0s"}
    for rule in OTHER_RULES:
        env[f"GUARD_RULES__{rule.upper().replace('-', '_')}__ENABLED"] = "false"
    return env


def action_rows(database: Path) -> list[dict]:
    """The audit rows, read-only (the daemon may be writing)."""
    if not database.exists():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
        connection.row_factory = sqlite3.Row
        try:
            rows = connection.execute("SELECT id, key, rule, action, resource_id, status, detail, error "
                                      "FROM actions ORDER BY id").fetchall()
        except sqlite3.OperationalError as exc:  # the daemon has not made the table yet
            if "no such table" in str(exc):
                return []
            raise
    return [dict(row) | {"detail": json.loads(row["detail"] or "{}")} for row in rows]


def done(rows: list[dict], expected: set[tuple[str, str]]) -> bool:
    """Every expected action has its row, and every row is done."""
    return ({(row["action"], row["resource_id"]) for row in rows} == expected
            and all(row["status"] == "done" for row in rows))


def settled(rows: list[dict], expected: set[tuple[str, str]]) -> bool:
    """All done, or some row ended otherwise (failed, skipped, cancelled): nothing more to wait for."""
    return done(rows, expected) or any(row["status"] in FINAL_NOT_DONE for row in rows)


def ready(log: Path, since: int) -> bool:
    """The daemon that started writing ``log`` at byte ``since`` serves, and has scanned every region."""
    url = found_in(log, DAEMON_LINE, since)
    if url is None:
        return False
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
            return response.status == 200
    except OSError:  # not listening yet, or 503 until a scan of every region finished
        return False


@dataclass(frozen=True)
class KillPlan:
    """SIGKILL ``delay`` seconds after the emulator answered the ``nth`` request of a kind (or all was done)."""

    kind: str
    """``request`` (any), ``observe`` (an action's read of its resource), ``change`` (a mutating call) or ``done``
    (every audit row done)."""
    nth: int
    delay: float

    @classmethod
    def draw(cls, rng: random.Random) -> KillPlan:
        """Mostly inside the action phase: right at an action's last read (intent committed, call not made), right
        at a call (made, the daemon not told), or at random around the calls; a few before the first intent and
        after the last action."""
        draw = rng.random()
        if draw < 0.1:
            return cls("request", 1, rng.uniform(0.0, 0.1))
        if draw < 0.35:
            return cls("observe", rng.randint(1, 12), 0.0)
        if draw < 0.55:
            return cls("change", rng.randint(1, 15), 0.0)
        if draw < 0.9:
            return cls("change", rng.randint(1, 15), rng.uniform(0.0, 0.06))
        return cls("done", 1, rng.uniform(0.0, 0.1))

    def __str__(self) -> str:
        what = "all done" if self.kind == "done" else f"{self.kind} #{self.nth}"
        return f"{what} +{self.delay * 1000:.0f}ms"

    def reached(self, sandbox: SandboxServer, database: Path, expected: set[tuple[str, str]]) -> bool:
        if self.kind == "done":
            return done(action_rows(database), expected)
        wanted = {"request": lambda r: True, "observe": observing, "change": lambda r: r.mutating}[self.kind]
        return sum(1 for request in sandbox.requests() if wanted(request)) >= self.nth


@dataclass
class Landing:
    """Where one kill landed: the intents and calls that existed at that moment."""

    run: int
    seed: int
    plan: KillPlan
    statuses: Counter
    """Audit rows by status when the daemon died."""
    pending_called: int = 0
    """Unfinished intents whose AWS call(s) had all been made."""
    pending_partly: int = 0
    """snapshot-then-delete intents whose snapshot had been made, but not the volume's deletion."""
    pending_not_called: int = 0
    """Unfinished intents whose AWS call had not been made."""
    calls: int = 0
    """Mutating calls made before the kill."""
    unfinished: dict[tuple[str, str], str] = field(default_factory=dict)
    """(action, resource) of each unfinished intent → ``called``, ``partly`` or ``not called``."""

    def __str__(self) -> str:
        rows = ", ".join(f"{n} {status}" for status, n in sorted(self.statuses.items())) or "no rows"
        return (f"run {self.run:2d} (seed {self.seed}) killed at {self.plan}: {rows}; {self.calls} calls made; "
                f"pending: {self.pending_called} called, {self.pending_partly} partly, "
                f"{self.pending_not_called} not called")


def wait_for(condition, process: DaemonProcess, timeout: float, what: str, log: Path, poll: float = 0.002):
    deadline = time.monotonic() + timeout
    checks = 0
    while True:
        result = condition()
        if result:
            return result
        checks += 1
        if checks % 25 == 0 and process.poll() is not None:
            raise AssertionError(f"`guard run` exited ({process.poll()}) while waiting for {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(poll)


def classify(landing: Landing, rows: list[dict], served: list[ServedRequest]) -> None:
    """Fill in the landing from the rows the killed daemon left and the calls the emulator had answered."""
    made = Counter((r.operation, target(r)) for r in served if r.mutating)
    landing.calls = sum(made.values())
    rows_by_target = {(row["action"], row["resource_id"]): row for row in rows}
    for (action, resource), row in rows_by_target.items():
        if row["status"] not in ("pending", "in-progress"):
            continue
        done_calls = [op for op in CALLS[action] if made[(op, resource)]]
        if not done_calls:
            landing.pending_not_called += 1
            landing.unfinished[(action, resource)] = "not called"
        elif len(done_calls) < len(CALLS[action]):
            landing.pending_partly += 1
            landing.unfinished[(action, resource)] = "partly"
        else:
            landing.pending_called += 1
            landing.unfinished[(action, resource)] = "called"
    # write-ahead: no call was made without its intent committed first
    for operation, resource in made:
        action = next((a for a, ops in CALLS.items() if operation in ops), None)
        assert action is not None and (action, resource) in rows_by_target, (
            f"{landing}: {operation} on {resource} was made without an audit row committed before it")


def check_final(run: str, sandbox: SandboxServer, account: CrashAccount, rows: list[dict], landing: Landing) -> None:
    """Exactly-once calls, an audit row per call, intents the kill left finished by looking first, and the account
    in its final state."""
    served = sandbox.requests()
    mutating = [r for r in served if r.mutating]
    failed = [(r.name, target(r), r.status) for r in mutating if r.status != 200]
    assert not failed, f"{run}: mutating calls that AWS refused: {failed}"
    made = Counter((r.operation, target(r)) for r in mutating)
    expected = {(op, resource) for (action, resource) in account.targets() for op in CALLS[action]}
    twice = {call: n for call, n in made.items() if n > 1}
    assert not twice, f"{run}: calls made more than once: {twice}"
    assert set(made) == expected, (f"{run}: missing calls {sorted(expected - set(made))}, "
                                   f"unexpected calls {sorted(set(made) - expected)}")

    by_target = Counter((row["action"], row["resource_id"]) for row in rows)
    assert all(n == 1 for n in by_target.values()), f"{run}: more than one audit row for {by_target}"
    statuses = {(row["action"], row["resource_id"]): row["status"] for row in rows}
    assert statuses == dict.fromkeys(account.targets(), "done"), f"{run}: audit rows {statuses}"
    for row in rows:
        assert row["rule"] == account.targets()[(row["action"], row["resource_id"])], row
    details = {(row["action"], row["resource_id"]): row["detail"] for row in rows}
    for key, state in landing.unfinished.items():
        # resumed after the restart; called again only if the goal did not hold yet (the call was not or partly made)
        assert details[key].get("resumed") is True, f"{run}: {key} ({state}) was not resumed: {details[key]}"
        assert details[key].get("called") is (state != "called"), f"{run}: {key} ({state}): {details[key]}"

    ec2 = sandbox_client(sandbox.endpoint_url, "ec2", REGION)
    volumes = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
    assert not volumes & set(account.volumes), f"{run}: volumes not deleted: {volumes & set(account.volumes)}"
    keys = {row["resource_id"]: row["key"] for row in rows if row["action"] == "snapshot-then-delete"}
    snapshots = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    for volume in account.volumes:
        copies = [s for s in snapshots if s.get("VolumeId") == volume]
        assert len(copies) == 1, f"{run}: {len(copies)} snapshots of {volume}"
        tags = {t["Key"]: t["Value"] for t in copies[0].get("Tags", [])}
        assert copies[0]["State"] == "completed" and tags.get(KEY_TAG) == keys[volume], (run, copies[0])
        assert tags.get("guard:volume-id") == volume, (run, tags)
    snapshot_ids = {s["SnapshotId"] for s in snapshots}
    assert not snapshot_ids & set(account.snapshots), f"{run}: orphaned snapshots left: {snapshot_ids}"
    addresses = {a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]}
    assert not addresses & set(account.addresses), f"{run}: addresses not released: {addresses}"
    groups = sandbox_client(sandbox.endpoint_url, "logs", REGION).describe_log_groups(logGroupNamePrefix="/crash/")
    retention = {g["logGroupName"]: g.get("retentionInDays") for g in groups["logGroups"]}
    assert retention == dict.fromkeys([*account.log_groups, account.untouchable[-1]], RETENTION_DAYS), (run, retention)
    untouched = volumes | snapshot_ids | addresses | set(retention)
    assert set(account.untouchable) <= untouched, f"{run}: protected resources gone: {account.untouchable}"


@contextmanager
def held_answers(sandbox: SandboxServer) -> Iterator[None]:
    sandbox.latency = hold
    try:
        yield
    finally:
        sandbox.latency = None


def test_sigkill_during_actions_then_restart_acts_exactly_once(sandbox: SandboxServer, tmp_path: Path) -> None:
    landings: list[Landing] = []
    started = time.monotonic()
    with Launcher() as launcher:
        for run in range(RUNS):
            seed = BASE_SEED + run
            # run 0 starts the installed console script; the others fork it from a launcher that has imported it
            start = console_script if run == 0 else launcher.start
            landings.append(one_run(run, seed, start, sandbox, tmp_path / f"run-{run:02d}"))
            print(landings[-1])
    print(f"{RUNS} runs in {time.monotonic() - started:.1f}s")

    table = "\n".join(map(str, landings))
    with_called = sum(1 for landing in landings if landing.pending_called or landing.pending_partly)
    with_not_called = sum(1 for landing in landings if landing.pending_not_called)
    assert with_called >= 3, f"only {with_called} kills left an intent whose call had been made:\n{table}"
    assert with_not_called >= 3, f"only {with_not_called} kills left an intent whose call was not made:\n{table}"
    assert any(not landing.statuses for landing in landings), f"no kill landed before the first intent:\n{table}"
    assert any(landing.statuses == Counter({"done": 12}) for landing in landings), (
        f"no kill landed after the last action:\n{table}")


def one_run(run: int, seed: int, start, sandbox: SandboxServer, directory: Path) -> Landing:
    name = f"run {run} (seed {seed})"
    plan = KillPlan.draw(random.Random(seed))
    directory.mkdir()
    database, log = directory / "guard.db", directory / "guard.log"
    sandbox.reset()
    account = seed_crash_account(sandbox.endpoint_url)
    expected = set(account.targets())
    sandbox.clear_requests()

    with held_answers(sandbox):
        first = start(daemon_env(sandbox, database), directory, log)
        try:
            wait_for(lambda: plan.reached(sandbox, database, expected), first, 60, f"{name}: {plan}", log,
                     poll=0.02 if plan.kind == "done" else 0.002)
            time.sleep(plan.delay)
            first.signal(signal.SIGKILL)
            assert first.wait(timeout=30) == -signal.SIGKILL, f"{name}: the daemon was not killed"
        finally:
            first.kill()
        time.sleep(CHANGE_LATENCY + 0.05)  # requests the daemon sent just before dying are answered by now
    rows = action_rows(database)
    landing = Landing(run, seed, plan, Counter(row["status"] for row in rows))
    classify(landing, rows, sandbox.requests())

    since = log.stat().st_size  # the restarted daemon appends to the same log
    restarted = start(daemon_env(sandbox, database), directory, log)
    try:
        # a scan of the restarted daemon has finished (so it looked at what the killed one left), and all is done
        wait_for(lambda: ready(log, since) and settled(action_rows(database), expected), restarted, 60,
                 f"{name}: a scan after the restart, and every action done", log, poll=0.05)
        restarted.signal(signal.SIGTERM)
        code = restarted.wait(timeout=30)
    finally:
        restarted.kill()
    output = log.read_text()
    assert code == 0, f"{name}: `guard run` exited {code} on SIGTERM:\n{output}"
    assert "Traceback" not in output, f"{name}:\n{output}"
    check_final(str(landing), sandbox, account, action_rows(database), landing)
    return landing
