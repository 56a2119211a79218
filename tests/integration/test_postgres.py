"""The store on a real PostgreSQL server (Debian's postgresql, started for the test on a Unix socket)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from guard.audit import ApprovalError, Intent
from guard.sandbox import GroundTruth
from guard.settings import Retention
from guard.store import Pruned


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL server binaries not found: `make test` installs Debian's postgresql package")
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bin_dir = _pg_bin()
    # Not pytest's tmp_path: its parents are private to root, and the server runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="vmguard-pg-"))
    os.chmod(root, 0o755)
    data = root / "data"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = pwd.getpwnam("postgres")
        shutil.chown(data, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "guard"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"),
                    "-o", f"-c listen_addresses='' -k {data}", "start"], check=True, capture_output=True)
    try:  # no TCP port to pick (or lose to another process): only the Unix socket in the data directory
        yield f"postgresql://guard@/postgres?host={data}"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_scan_and_restart_on_postgres(team_account: GroundTruth, make_scanner, postgres_url: str) -> None:
    scanner = make_scanner(database_url=postgres_url)
    for region in ("us-east-1", "us-west-2"):
        assert scanner.scan(region).status == "ok"
    rows = scanner.store.findings()
    assert {(r.rule, r.region, r.resource_id) for r in rows} == set(team_account.expected())
    assert all(r.first_seen.tzinfo is not None for r in rows)
    first_seen = {r.id: r.first_seen for r in rows}
    scanner.store.close()

    again = make_scanner(database_url=postgres_url)
    assert again.scan("us-east-1").status == "ok"
    assert {r.id: r.first_seen for r in again.store.findings()} == first_seen
    assert len(again.store.scans()) == 3
    summary = again.store.open_summary()
    assert sum(count for *_, count, _, _ in summary) == len(team_account.expected())

    latest = again.store.latest_scans()
    assert set(latest.newest) == set(latest.ok) == set(latest.inventory) == {"us-east-1", "us-west-2"}
    next_year = datetime.now(timezone.utc) + timedelta(days=365)
    assert again.store.prune(next_year, Retention()) == Pruned(scans=1)  # us-east-1's first scan; the newest stay
    assert {scan.id for scan in again.store.scans()} == {scan.id for scan in latest.newest.values()}


def _fresh_database(url: str, name: str) -> str:
    """A new, empty database on the same server."""
    engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def test_the_action_audit_trail_on_postgres(team_account: GroundTruth, make_scanner, postgres_url: str) -> None:
    url = _fresh_database(postgres_url, "actions")
    rules = {"unattached-eips": {"action": "release", "grace": "0s", "act_on_unmanaged": True}}
    planner = make_scanner(database_url=url, mode="dry-run", min_resource_age="0s", rules=rules)
    planned = planner.scan("us-east-1").actions.planned
    assert len(planned) == 2 and {row["status"] for row in planned} == {"would-do"}
    audit = planner.actuator.audit
    chosen = planned[0]["id"]
    audit.approve(chosen, by="cli:alice", now=datetime.now(timezone.utc))
    with pytest.raises(ApprovalError, match="is approved, not would-do"):
        audit.approve(chosen, by="cli:bob", now=datetime.now(timezone.utc))
    row = audit.get(chosen)
    duplicate = Intent(key=row.key, rule=row.rule, action=row.action, account_id=row.account_id, region=row.region,
                       resource_id=row.resource_id, resource_type=row.resource_type, owner=row.owner,
                       finding_id=row.finding_id, summary="", waste_hourly_usd=None, params={})
    assert audit.record(duplicate, "pending", "enforce", datetime.now(timezone.utc)) is None

    approver = make_scanner(database_url=url, mode="dry-run", min_resource_age="0s", rules=rules,
                            allowed_accounts="123456789012")
    executed = approver.scan("us-east-1").actions.executed
    assert [row["id"] for row in executed] == [chosen]
    done = audit.get(chosen)
    assert done.status == "done" and done.approved_by == "cli:alice" and done.started_at <= done.finished_at
    assert sorted(r.status for r in audit.actions()) == ["done", "would-do"]
