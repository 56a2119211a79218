"""guard.audit: the write-ahead action trail on a real SQLite file — one row per intent, conditional moves,
approvals, the counts the gates read, and a database made by an earlier version gaining the new columns."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from guard.audit import (
    APPROVED,
    CANCELLED,
    DONE,
    FAILED,
    IN_PROGRESS,
    PENDING,
    PLANNED,
    SKIPPED,
    ApprovalError,
    AuditLog,
    Intent,
    idempotency_key,
)
from guard.store import Store

ACCOUNT = "123456789012"
REGION = "us-east-1"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def intent(resource_id: str = "eipalloc-1", cause: str = "finding:1", action: str = "release",
           rule: str = "unattached-eips") -> Intent:
    key = idempotency_key(ACCOUNT, REGION, action, resource_id, cause)
    return Intent(key=key, rule=rule, action=action, account_id=ACCOUNT, region=REGION, resource_id=resource_id,
                  resource_type="elastic-ip", owner="ana", finding_id=1, summary=f"{resource_id} unattached",
                  waste_hourly_usd=0.005, params={"key": key})


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/g.db"


@pytest.fixture
def audit(db_url: str) -> Iterator[AuditLog]:
    store = Store(db_url)
    yield AuditLog(store)
    store.close()


def test_one_row_per_idempotency_key(audit: AuditLog) -> None:
    first = audit.record(intent(), PLANNED, "dry-run", T0)
    assert first is not None and first.status == PLANNED and first.started_at is None
    assert audit.record(intent(), PENDING, "enforce", T0 + timedelta(minutes=1)) is None  # same key: refused
    (row,) = audit.actions()
    assert (row.id, row.status, row.mode, row.planned_at) == (first.id, PLANNED, "dry-run", T0)
    # the same action on the same resource for another cause is another intent
    assert audit.record(intent(cause="finding:2"), PLANNED, "dry-run", T0) is not None
    assert len(audit.actions()) == 2


def test_a_started_row_records_when_it_started(audit: AuditLog) -> None:
    row = audit.record(intent(), PENDING, "enforce", T0, approved_by="mode:enforce")
    assert row.started_at == T0 and row.approved_by == "mode:enforce"
    assert audit.get(row.id).as_dict()["started_at"] == T0.isoformat()


def test_move_is_conditional_on_the_current_status(audit: AuditLog) -> None:
    row = audit.record(intent(), PLANNED, "dry-run", T0)
    assert audit.move(row.id, (PLANNED,), PENDING, started_at=T0)
    # a second caller that still believes the row is planned cannot move it
    assert not audit.move(row.id, (PLANNED,), CANCELLED, error="the finding resolved")
    fresh = audit.get(row.id)
    assert (fresh.status, fresh.error, fresh.started_at) == (PENDING, None, T0)
    assert audit.move(row.id, (PENDING, IN_PROGRESS), DONE, finished_at=T0)
    assert not audit.move(row.id, (PENDING, IN_PROGRESS), FAILED, error="late")
    assert audit.get(row.id).status == DONE
    assert not audit.move(10_000, (PLANNED,), APPROVED)  # no such row


def test_only_one_of_two_racing_stores_moves_a_row(db_url: str, audit: AuditLog) -> None:
    """Two processes on one database (here: two stores, eight threads) cannot both start the same action."""
    row = audit.record(intent(), APPROVED, "dry-run", T0)
    other = AuditLog(Store(db_url))
    barrier = threading.Barrier(8)
    won: list[bool] = []

    def start(log: AuditLog) -> None:
        barrier.wait()
        won.append(log.move(row.id, (APPROVED,), PENDING, started_at=T0))

    threads = [threading.Thread(target=start, args=(audit if n % 2 else other,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    other.store.close()
    assert sorted(won) == [False] * 7 + [True]
    assert audit.get(row.id).status == PENDING


def test_approve_moves_a_planned_row_and_records_who(audit: AuditLog) -> None:
    row = audit.record(intent(), PLANNED, "dry-run", T0)
    approved = audit.approve(row.id, by="cli:alice", now=T0 + timedelta(minutes=5))
    assert (approved.status, approved.approved_by, approved.approved_at) == (
        APPROVED, "cli:alice", T0 + timedelta(minutes=5))
    assert audit.get(row.id).status == APPROVED


@pytest.mark.parametrize("status", [APPROVED, PENDING, IN_PROGRESS, DONE, FAILED, SKIPPED, CANCELLED])
def test_only_planned_rows_can_be_approved(audit: AuditLog, status: str) -> None:
    row = audit.record(intent(), status, "enforce", T0, approved_by="api:bob" if status == APPROVED else None)
    with pytest.raises(ApprovalError) as caught:
        audit.approve(row.id, by="cli:mallory", now=T0)
    message = str(caught.value)
    assert "\n" not in message
    assert f"action {row.id}" in message and status in message and PLANNED in message
    after = audit.get(row.id)
    assert after.status == status and after.approved_by in (None, "api:bob")  # nothing changed


def test_approving_an_unknown_action_says_so_in_one_line(audit: AuditLog) -> None:
    with pytest.raises(ApprovalError) as caught:
        audit.approve(4242, by="cli:alice", now=T0)
    assert "\n" not in str(caught.value)
    assert "action 4242" in str(caught.value) and "no such action" in str(caught.value)


def test_started_since_counts_calls_made_or_maybe_made(audit: AuditLog) -> None:
    hour_ago = T0 - timedelta(hours=1)
    audit.record(intent("a"), PLANNED, "dry-run", T0)  # not started
    audit.record(intent("b"), APPROVED, "dry-run", T0)  # not started
    audit.record(intent("c"), PENDING, "enforce", T0)
    audit.record(intent("d"), PENDING, "enforce", T0 - timedelta(hours=2))  # started before the window
    done = audit.record(intent("e"), PENDING, "enforce", T0 - timedelta(minutes=10))
    audit.move(done.id, (PENDING,), DONE, finished_at=T0)
    failed = audit.record(intent("f"), PENDING, "enforce", T0 - timedelta(minutes=20))
    audit.move(failed.id, (PENDING,), FAILED, finished_at=T0)
    skipped = audit.record(intent("g"), PENDING, "enforce", T0)  # the last look said no: no call was made...
    audit.move(skipped.id, (PENDING,), SKIPPED, finished_at=T0)  # ... so it does not count
    planned = audit.record(intent("h"), PLANNED, "dry-run", T0 - timedelta(hours=5))
    audit.move(planned.id, (PLANNED,), IN_PROGRESS, started_at=T0 - timedelta(minutes=1))
    assert audit.started_since(hour_ago) == 4  # c, e, f, h
    assert audit.started_since(T0) == 1
    assert audit.started_since(T0 - timedelta(days=1)) == 5


def test_last_outcomes_are_the_newest_finished_executions(audit: AuditLog) -> None:
    outcomes = [("a", DONE, 1), ("b", FAILED, 3), ("c", FAILED, 2), ("d", SKIPPED, 4), ("e", DONE, 5)]
    for resource_id, status, minute in outcomes:
        row = audit.record(intent(resource_id), PENDING, "enforce", T0)
        audit.move(row.id, (PENDING,), status, finished_at=T0 + timedelta(minutes=minute))
    audit.record(intent("f"), PENDING, "enforce", T0)  # unfinished: no outcome yet
    assert audit.last_outcomes(3) == [(DONE, T0 + timedelta(minutes=5)), (FAILED, T0 + timedelta(minutes=3)),
                                      (FAILED, T0 + timedelta(minutes=2))]
    assert len(audit.last_outcomes(10)) == 4  # the skipped and the unfinished are not outcomes
    assert audit.last_outcomes(0) == []


def test_actions_filters_newest_first(audit: AuditLog) -> None:
    audit.record(intent("a"), PLANNED, "dry-run", T0)
    audit.record(intent("vol-1", action="snapshot-then-delete", rule="detached-volumes"), PLANNED, "dry-run", T0)
    audit.record(intent("b"), DONE, "enforce", T0)
    assert [row.resource_id for row in audit.actions()] == ["b", "vol-1", "a"]
    assert [row.resource_id for row in audit.actions(status=PLANNED)] == ["vol-1", "a"]
    assert [row.resource_id for row in audit.actions(rule="detached-volumes")] == ["vol-1"]
    assert audit.actions(region="eu-west-1") == []
    assert len(audit.actions(limit=1)) == 1


def test_idempotency_key_is_stable_and_distinct_per_cause() -> None:
    key = idempotency_key(ACCOUNT, REGION, "stop", "i-1", "finding:7")
    assert key == idempotency_key(ACCOUNT, REGION, "stop", "i-1", "finding:7")
    assert len(key) == 40 and all(c in "0123456789abcdef" for c in key)
    others = {
        idempotency_key(ACCOUNT, REGION, "stop", "i-1", "finding:8"),  # a later finding on the same resource
        idempotency_key(ACCOUNT, REGION, "stop", "i-1", "after:7"),
        idempotency_key(ACCOUNT, REGION, "terminate", "i-1", "finding:7"),
        idempotency_key(ACCOUNT, REGION, "stop", "i-2", "finding:7"),
        idempotency_key(ACCOUNT, "us-west-2", "stop", "i-1", "finding:7"),
        idempotency_key("210987654321", REGION, "stop", "i-1", "finding:7"),
        idempotency_key(ACCOUNT, REGION, "stop", "i-1finding:7", ""),  # fields do not run into each other
    }
    assert key not in others and len(others) == 7


OLD_FINDINGS = """
CREATE TABLE findings (
    id INTEGER NOT NULL PRIMARY KEY, rule VARCHAR(64) NOT NULL, account_id VARCHAR(32) NOT NULL,
    region VARCHAR(32) NOT NULL, resource_id VARCHAR(256) NOT NULL, resource_type VARCHAR(64) NOT NULL,
    owner VARCHAR(256) NOT NULL, severity VARCHAR(16) NOT NULL, waste_hourly_usd FLOAT, summary TEXT NOT NULL,
    suggested_action VARCHAR(64) NOT NULL, billing VARCHAR(64) NOT NULL, evidence JSON NOT NULL,
    state VARCHAR(16) NOT NULL, first_seen DATETIME NOT NULL, last_seen DATETIME NOT NULL, resolved_at DATETIME
)
"""


def test_a_database_from_an_earlier_version_gains_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:  # the findings table as the version before actions made it
        connection.execute(OLD_FINDINGS)
        connection.execute(
            "INSERT INTO findings (rule, account_id, region, resource_id, resource_type, owner, severity, "
            "waste_hourly_usd, summary, suggested_action, billing, evidence, state, first_seen, last_seen) "
            "VALUES ('unattached-eips', ?, ?, 'eipalloc-1', 'elastic-ip', 'ana', 'low', 0.005, 'unattached', "
            "'release', 'unattached-eips', '{\"public_ip\": \"3.3.3.3\"}', 'open', "
            "'2024-05-01 12:00:00.000000', '2024-05-01 12:05:00.000000')", (ACCOUNT, REGION))
    connection.close()

    store = Store(f"sqlite:///{path}")
    try:
        (row,) = store.findings()
        assert (row.resource_id, row.owner, row.waste_hourly_usd, row.evidence) == (
            "eipalloc-1", "ana", 0.005, {"public_ip": "3.3.3.3"})
        assert row.first_seen == T0 and row.notified_at is None
        store.mark_notified([row.id], T0 + timedelta(hours=1))
        assert store.findings()[0].notified_at == T0 + timedelta(hours=1)
        audit = AuditLog(store)  # the actions table is new: made empty
        assert audit.actions() == []
        assert audit.record(intent(), PLANNED, "dry-run", T0) is not None
    finally:
        store.close()
    with sqlite3.connect(path) as connection:
        columns = {name for _, name, *_ in connection.execute("PRAGMA table_info(findings)")}
    connection.close()
    assert "notified_at" in columns
    Store(f"sqlite:///{path}").close()  # opening it again is a no-op (nothing to add twice)
