"""One actor per database: two real `guard run` processes in enforce mode on one real PostgreSQL, either of them
SIGKILLed and restarted 50 times while actions keep coming due — every action is carried out exactly once.

Each cycle seeds new waste (one target of each action, and a protected near miss of each), waits a random moment,
kills one of the two daemons (the actor or the standby, at random) and starts it again. The lease (guard.lease)
must hand acting from one process to the other without a mutating call made twice or a row left to both.
"""

from __future__ import annotations

import random
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from crash_account import REGION, CrashAccount, seed_crash_account
from crash_daemon import Launcher
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from test_action_crash import CALLS, daemon_env, held_answers, target
from test_postgres import _fresh_database, postgres_url  # noqa: F401 — the PostgreSQL server fixture

from guard.sandbox import SandboxServer, sandbox_client

pytestmark = pytest.mark.integration

CYCLES = 50
SEED = 7_531
LEASE_TTL = "2s"


def audit_rows(url: str) -> list[dict]:
    engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"))
    try:
        with engine.connect() as connection:
            exists = connection.execute(text("SELECT to_regclass('public.actions')")).scalar()
            if exists is None:
                return []
            return [dict(row._mapping) for row in connection.execute(
                text("SELECT id, action, resource_id, status FROM actions ORDER BY id"))]
    finally:
        engine.dispose()


def merge(accounts: list[CrashAccount]) -> CrashAccount:
    merged = CrashAccount()
    for account in accounts:
        for name in ("volumes", "addresses", "snapshots", "log_groups", "untouchable"):
            getattr(merged, name).extend(getattr(account, name))
    return merged


def test_two_daemons_on_one_database_act_exactly_once_through_50_kills(
        sandbox: SandboxServer, postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    rng = random.Random(SEED)
    url = _fresh_database(postgres_url, "two_daemons")
    sandbox.reset()
    accounts = [seed_crash_account(sandbox.endpoint_url, per_kind=1, prefix="c00-")]
    env = daemon_env(sandbox, tmp_path / "unused.db") | {
        "GUARD_DATABASE_URL": url, "GUARD_LEASE_TTL": LEASE_TTL, "GUARD_LISTEN": "127.0.0.1:0"}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    started = time.monotonic()
    with Launcher() as launcher, held_answers(sandbox):
        daemons = [launcher.start(env, tmp_path, log) for log in logs]
        try:
            for cycle in range(1, CYCLES + 1):
                accounts.append(seed_crash_account(sandbox.endpoint_url, per_kind=1, prefix=f"c{cycle:02d}-"))
                time.sleep(rng.uniform(0.2, 1.2))
                victim = rng.randrange(2)
                daemons[victim].kill()
                daemons[victim] = launcher.start(env, tmp_path, logs[victim])
            account = merge(accounts)
            expected = set(account.targets())
            deadline = time.monotonic() + 120
            while True:
                rows = audit_rows(url)
                if {(r["action"], r["resource_id"]) for r in rows} == expected and all(
                        r["status"] == "done" for r in rows):
                    break
                assert time.monotonic() < deadline, (
                    f"not all done: {Counter(r['status'] for r in rows)}, "
                    f"missing {sorted(expected - {(r['action'], r['resource_id']) for r in rows})[:5]}")
                time.sleep(0.2)
        finally:
            for daemon in daemons:
                if daemon.poll() is None:
                    daemon.signal(signal.SIGTERM)
                    daemon.wait(timeout=30)
    print(f"{CYCLES} kill/restart cycles and {len(expected)} actions in {time.monotonic() - started:.1f}s")

    resources = {resource for _, resource in expected}
    operations = {op for ops in CALLS.values() for op in ops}
    mutating = [r for r in sandbox.requests()  # the actions' calls, not the seeding's
                if r.mutating and r.operation in operations and target(r) in resources]
    assert [(r.name, target(r), r.status) for r in mutating if r.status != 200] == []
    made = Counter((r.operation, target(r)) for r in mutating)
    assert {call: n for call, n in made.items() if n > 1} == {}, "a mutating call was made twice"
    assert set(made) == {(op, resource) for action, resource in expected for op in CALLS[action]}
    ec2 = sandbox_client(sandbox.endpoint_url, "ec2", REGION)
    kept = ({v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
            | {a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]}
            | {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]})
    protected = [r for r in account.untouchable if not r.startswith("/")]
    assert set(protected) <= kept, "a protected resource was changed"
    rows = audit_rows(url)
    assert Counter((r["action"], r["resource_id"]) for r in rows) == Counter(dict.fromkeys(expected, 1))
    assert all(r["status"] == "done" for r in rows)

    # acting moved between the two: each process (and several of its restarts) held the lease at some point
    became = [len(re.findall(r"is\s+now\s+the\s+actor", log.read_text())) for log in logs]
    assert all(n >= 2 for n in became), became
