"""Retention: Store.prune deletes old scans, resolved findings and finished actions in batches, never the audit trail
of a resource with an open action; the hot queries' indexes exist, also on a database made before them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import inspect, select

from guard.audit import DONE, FAILED, PENDING, PLANNED, ActionRow, AuditLog, Intent
from guard.settings import Retention, Settings, describe_error
from guard.store import FindingRow, Pruned, ScanRow, Scope, Store

ACCOUNT = "123456789012"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
RETENTION = Retention()  # scans 14 days, findings and actions 180 days


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/g.db")
    AuditLog(store)
    yield store
    store.close()


def scan(store: Store, region: str, finished: datetime, status: str = "ok", running: list | None = []) -> int:  # noqa: B006
    row = store.add_scan(account_id=ACCOUNT, region=region, started_at=finished - timedelta(seconds=2),
                         finished_at=finished, status=status, api_calls=3, api_calls_by_operation={}, errors=[],
                         rules_evaluated=[], rules_skipped=[], findings_open=0, running_hourly_usd=running,
                         collectors={})
    return row.id


def resolved_finding(store: Store, resource_id: str, resolved: datetime) -> int:
    with store.session() as session, session.begin():
        row = FindingRow(rule="idle-vms", account_id=ACCOUNT, region="us-east-1", resource_id=resource_id,
                         resource_type="instance", owner="ana", severity="medium", waste_hourly_usd=0.1,
                         summary="idle", suggested_action="stop", billing="", evidence={}, state="resolved",
                         first_seen=resolved - timedelta(days=1), last_seen=resolved, resolved_at=resolved)
        session.add(row)
    return row.id


def action(audit: AuditLog, key: str, resource_id: str, status: str, at: datetime, finding_id: int | None = None,
           follow_up: str | None = None) -> int:
    intent = Intent(key=key, rule="idle-vms", action="stop", account_id=ACCOUNT, region="us-east-1",
                    resource_id=resource_id, resource_type="instance", owner="ana", finding_id=finding_id,
                    summary="stop", waste_hourly_usd=0.1, params={}, follow_up=follow_up)
    row = audit.record(intent, status, "enforce", at)
    if status in (DONE, FAILED):
        audit.set_fields(row.id, finished_at=at)
    return row.id


def ids(store: Store, model) -> set[int]:
    with store.session() as session:
        return set(session.scalars(select(model.id)).all())


def test_old_scans_go_recent_ones_and_each_regions_newest_stay(store: Store) -> None:
    old = [scan(store, "us-east-1", NOW - timedelta(days=20, minutes=i)) for i in range(5)]
    boundary = scan(store, "us-east-1", NOW - RETENTION.scans)  # exactly at the cutoff: kept
    recent = scan(store, "us-east-1", NOW - timedelta(days=1))
    scan(store, "us-west-2", NOW - timedelta(days=31))
    only_old_west = scan(store, "us-west-2", NOW - timedelta(days=30))  # the region's newest: /metrics shows it
    assert store.prune(NOW, RETENTION, batch=2) == Pruned(scans=6, findings=0, actions=0)
    assert ids(store, ScanRow) == {boundary, recent, only_old_west}
    assert not set(old) & ids(store, ScanRow)


def test_resolved_findings_and_finished_actions_past_retention_go(store: Store) -> None:
    audit = AuditLog(store)
    old_finding = resolved_finding(store, "i-old", NOW - timedelta(days=200))
    recent_finding = resolved_finding(store, "i-recent", NOW - timedelta(days=10))
    old_done = action(audit, "k1", "i-old", DONE, NOW - timedelta(days=200), finding_id=old_finding)
    recent_done = action(audit, "k2", "i-recent", DONE, NOW - timedelta(days=10), finding_id=recent_finding)
    old_failed = action(audit, "k3", "i-other", FAILED, NOW - timedelta(days=181))
    assert store.prune(NOW, RETENTION) == Pruned(scans=0, findings=1, actions=2)
    assert ids(store, FindingRow) == {recent_finding}
    assert ids(store, ActionRow) == {recent_done}
    assert old_done not in ids(store, ActionRow) and old_failed not in ids(store, ActionRow)


def test_the_audit_trail_of_a_resource_with_an_open_action_is_kept(store: Store) -> None:
    audit = AuditLog(store)
    old = NOW - timedelta(days=400)
    finding = resolved_finding(store, "i-1", old)
    first = action(audit, "k1", "i-1", DONE, old, finding_id=finding)
    planned = action(audit, "k2", "i-1", PLANNED, old, finding_id=finding)
    pending_finding = resolved_finding(store, "i-2", old)
    pending = action(audit, "k3", "i-2", PENDING, old, finding_id=pending_finding)
    stop_awaiting_terminate = action(audit, "k4", "i-3", DONE, old, follow_up="terminate")
    assert store.prune(NOW, RETENTION) == Pruned()
    assert ids(store, ActionRow) == {first, planned, pending, stop_awaiting_terminate}
    assert ids(store, FindingRow) == {finding, pending_finding}
    audit.move(planned, (PLANNED,), "cancelled", finished_at=old)
    audit.move(pending, (PENDING,), DONE, finished_at=old)
    audit.set_fields(stop_awaiting_terminate, follow_up=None)
    assert store.prune(NOW, RETENTION) == Pruned(scans=0, findings=2, actions=4)


def test_a_bad_retention_is_one_clear_line() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(retention={"scans": "forever"})
    assert describe_error(caught.value) == (
        "retention.scans = 'forever': expected a duration like '90s', '20 minutes', '2h' or '1h30m' "
        "(set via GUARD_RETENTION__SCANS or guard.toml)")
    with pytest.raises(ValidationError) as caught:
        Settings(retention={"actions": "5 minutes"})
    assert "retention.actions = '5 minutes': expected at least 1 hour" in describe_error(caught.value)
    assert Settings(retention={"scans": "3 days"}).retention.scans == timedelta(days=3)


HOT_INDEXES = {
    "scans": {"ix_scans_latest", "ix_scans_latest_by_status", "ix_scans_priced", "ix_scans_finished_at"},
    "findings": {"ix_findings_open", "ix_findings_resolved"},
    "actions": {"ix_actions_resource", "ix_actions_status_finished", "ix_actions_finding"},
}


def test_a_database_made_without_the_indexes_gains_them_at_startup(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = Store(f"sqlite:///{path}")
    AuditLog(store)
    store.close()
    with sqlite3.connect(path) as connection:  # as an earlier version left it
        for names in HOT_INDEXES.values():
            for name in names:
                connection.execute(f"DROP INDEX IF EXISTS {name}")
    store = Store(f"sqlite:///{path}")
    AuditLog(store)
    present = {table: {index["name"] for index in inspect(store.engine).get_indexes(table)} for table in HOT_INDEXES}
    store.close()
    for table, names in HOT_INDEXES.items():
        assert names <= present[table], table


def test_latest_scans_seek_each_region_and_kind_in_an_index(store: Store) -> None:
    for where in ("", "AND status = 'ok'", "AND running_hourly_usd IS NOT NULL"):
        query = f"SELECT max(id) FROM scans WHERE region = 'us-east-1' {where}"
        with store.engine.connect() as connection:
            plan = " ".join(str(row) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}").all())
        assert "SEARCH scans USING" in plan and "INDEX ix_scans_" in plan and "(region=?" in plan, (query, plan)


@pytest.mark.parametrize("scoped", [False, True])
def test_latest_scans_tell_the_newest_the_newest_ok_and_the_newest_priced_scan_apart(store: Store,
                                                                                      scoped: bool) -> None:
    if scoped:
        store.scope = Scope(regions=("us-east-1", "eu-west-1", "ap-south-1"))
    first = scan(store, "us-east-1", NOW - timedelta(hours=2))
    second = scan(store, "us-east-1", NOW - timedelta(hours=1), status="partial", running=None)
    other = scan(store, "eu-west-1", NOW)
    latest = store.latest_scans()
    assert {region: row.id for region, row in latest.newest.items()} == {"us-east-1": second, "eu-west-1": other}
    assert {region: row.id for region, row in latest.ok.items()} == {"us-east-1": first, "eu-west-1": other}
    assert {region: row.id for region, row in latest.inventory.items()} == {"us-east-1": first, "eu-west-1": other}
