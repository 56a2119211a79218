"""guard.store: the findings lifecycle (open -> refreshed -> resolved, history kept) on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.exc import StatementError

from guard.model import Finding, Severity
from guard.store import Reconciled, Scope, Store, StoreError

ACCOUNT = "123456789012"
REGION = "us-east-1"
RULE = "idle-vms"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=1)
T2 = T0 + timedelta(minutes=2)
T3 = T0 + timedelta(minutes=3)


def finding(resource_id: str = "i-1", waste: float | None = 0.096, owner: str = "ana", rule: str = RULE,
            region: str = REGION, severity: Severity = Severity.medium, cpu: float = 0.8) -> Finding:
    return Finding(rule=rule, resource_id=resource_id, resource_type="instance", region=region, owner=owner,
                   severity=severity, waste_hourly_usd=waste, summary=f"{resource_id} idle",
                   suggested_action="stop", evidence={"cpu_avg_percent": cpu, "seen_at": T0})


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/g.db"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    store = Store(db_url)
    yield store
    store.close()


def reconcile(store: Store, findings: list[Finding], now: datetime, undetermined: tuple[str, ...] = (),
              rule: str = RULE, region: str = REGION, account: str = ACCOUNT) -> Reconciled:
    return store.reconcile(account, region, rule, findings, undetermined, now)


def test_reconcile_opens_new_findings(store: Store) -> None:
    assert reconcile(store, [finding("i-1"), finding("i-2", waste=1.006)], T0) == Reconciled(2, 0, 0)
    rows = store.findings()
    assert [row.resource_id for row in rows] == ["i-2", "i-1"]  # most waste first
    row = rows[1]
    assert (row.rule, row.account_id, row.region, row.state) == (RULE, ACCOUNT, REGION, "open")
    assert (row.owner, row.severity, row.waste_hourly_usd) == ("ana", "medium", 0.096)
    assert row.first_seen == T0 and row.last_seen == T0 and row.resolved_at is None
    assert row.evidence == {"cpu_avg_percent": 0.8, "seen_at": T0.isoformat()}  # JSON-safe
    assert row.suggested_action == "stop" and row.summary == "i-1 idle"


def test_second_reconcile_refreshes_and_keeps_first_seen(store: Store) -> None:
    reconcile(store, [finding(cpu=0.8)], T0)
    assert reconcile(store, [finding(cpu=1.2, severity=Severity.high)], T1) == Reconciled(0, 1, 0)
    (row,) = store.findings(state="all")
    assert row.first_seen == T0
    assert row.last_seen == T1
    assert row.state == "open"
    assert row.evidence["cpu_avg_percent"] == 1.2 and row.severity == "high"


def test_absent_finding_is_resolved(store: Store) -> None:
    reconcile(store, [finding("i-1"), finding("i-2")], T0)
    assert reconcile(store, [finding("i-2")], T1) == Reconciled(0, 1, 1)
    assert [row.resource_id for row in store.findings()] == ["i-2"]
    (resolved,) = store.findings(state="resolved")
    assert resolved.resource_id == "i-1"
    assert resolved.resolved_at == T1
    assert resolved.last_seen == T0


def test_empty_successful_evaluation_resolves_everything(store: Store) -> None:
    reconcile(store, [finding("i-1"), finding("i-2")], T0)
    assert reconcile(store, [], T1) == Reconciled(0, 0, 2)
    assert store.findings() == []


def test_undetermined_keeps_an_open_finding_open(store: Store) -> None:
    reconcile(store, [finding("i-1"), finding("i-2")], T0)
    assert reconcile(store, [], T1, undetermined=("i-1",)) == Reconciled(0, 0, 1)
    (row,) = store.findings()
    assert row.resource_id == "i-1"
    assert row.last_seen == T0  # kept open, but not refreshed: nobody saw it idle at T1
    assert row.resolved_at is None


def test_undetermined_without_open_finding_opens_nothing(store: Store) -> None:
    assert reconcile(store, [], T0, undetermined=("i-9",)) == Reconciled(0, 0, 0)
    assert store.findings(state="all") == []


def test_a_finding_that_comes_back_opens_a_new_row(store: Store) -> None:
    reconcile(store, [finding()], T0)
    reconcile(store, [], T1)
    assert reconcile(store, [finding()], T2) == Reconciled(1, 0, 0)
    rows = sorted(store.findings(state="all"), key=lambda row: row.id)
    assert [(row.state, row.first_seen, row.resolved_at) for row in rows] == [
        ("resolved", T0, T1), ("open", T2, None)]
    assert rows[0].id != rows[1].id
    # the old row stays resolved when the new one is refreshed or resolved
    reconcile(store, [], T3)
    assert [row.resolved_at for row in sorted(store.findings(state="all"), key=lambda r: r.id)] == [T1, T3]


def test_other_rules_regions_and_accounts_are_untouched(store: Store) -> None:
    reconcile(store, [finding("i-1")], T0)
    reconcile(store, [finding("i-1", region="eu-west-1")], T0, region="eu-west-1")
    reconcile(store, [finding("vol-1", rule="detached-volumes")], T0, rule="detached-volumes")
    reconcile(store, [finding("i-1")], T0, account="999999999999")

    assert reconcile(store, [], T1) == Reconciled(0, 0, 1)

    still_open = {(row.account_id, row.region, row.rule, row.resource_id) for row in store.findings()}
    assert still_open == {
        (ACCOUNT, "eu-west-1", RULE, "i-1"),
        (ACCOUNT, REGION, "detached-volumes", "vol-1"),
        ("999999999999", REGION, RULE, "i-1"),
    }
    assert all(row.last_seen == T0 for row in store.findings())


def test_findings_filters(store: Store) -> None:
    reconcile(store, [finding("i-1"), finding("i-2", waste=None), finding("i-3", waste=2.0)], T0)
    reconcile(store, [finding("vol-1", rule="detached-volumes")], T0, rule="detached-volumes")
    reconcile(store, [finding("i-1", region="eu-west-1")], T0, region="eu-west-1")
    assert [row.resource_id for row in store.findings(rule=RULE, region=REGION)] == ["i-3", "i-1", "i-2"]
    assert [row.resource_id for row in store.findings(rule="detached-volumes")] == ["vol-1"]
    assert len(store.findings(region="eu-west-1")) == 1
    assert len(store.findings(limit=2)) == 2


def test_reopening_the_store_keeps_everything(db_url: str) -> None:
    first = Store(db_url)
    reconcile(first, [finding("i-1"), finding("i-2")], T0)
    reconcile(first, [finding("i-2")], T1)
    first.close()

    second = Store(db_url)
    try:
        rows = {row.resource_id: row for row in second.findings(state="all")}
        assert rows["i-1"].state == "resolved" and rows["i-1"].resolved_at == T1
        assert rows["i-2"].state == "open" and rows["i-2"].first_seen == T0 and rows["i-2"].last_seen == T1
        # the lifecycle continues across the restart: refreshed, not re-opened
        assert reconcile(second, [finding("i-2")], T2) == Reconciled(0, 1, 0)
        (row,) = second.findings()
        assert (row.first_seen, row.last_seen) == (T0, T2)
    finally:
        second.close()


def test_open_summary_aggregates(store: Store) -> None:
    reconcile(store, [finding("i-1", waste=0.5), finding("i-2", waste=0.25), finding("i-3", waste=None),
                      finding("i-4", owner="bob", severity=Severity.high, waste=1.0),
                      finding("i-5", waste=9.0)], T0)
    reconcile(store, [finding("vol-1", rule="detached-volumes", waste=None)], T0, rule="detached-volumes")
    reconcile(store, [finding("i-1", waste=0.5), finding("i-2", waste=0.25), finding("i-3", waste=None),
                      finding("i-4", owner="bob", severity=Severity.high, waste=1.0)], T1)  # i-5 resolved

    summary = {row[:4]: row[4:] for row in store.open_summary()}
    assert set(summary) == {
        (RULE, REGION, "ana", "medium"), (RULE, REGION, "bob", "high"),
        ("detached-volumes", REGION, "ana", "medium")}
    count, waste, unknown = summary[(RULE, REGION, "ana", "medium")]
    assert (count, unknown) == (3, 1)
    assert waste == pytest.approx(0.75)  # resolved i-5 ($9/h) is not counted
    assert summary[(RULE, REGION, "bob", "high")] == (1, pytest.approx(1.0), 0)
    assert summary[("detached-volumes", REGION, "ana", "medium")] == (1, 0.0, 1)


def test_datetimes_come_back_timezone_aware_utc(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2024, 5, 1, 14, 0, tzinfo=plus_two)  # == T0
    reconcile(store, [finding()], local)
    reconcile(store, [], local + timedelta(minutes=5))
    (row,) = store.findings(state="all")
    for value in (row.first_seen, row.last_seen, row.resolved_at):
        assert value is not None
        assert value.utcoffset() == timedelta(0)
    assert row.first_seen == T0 and row.first_seen.hour == 12
    assert row.resolved_at == T0 + timedelta(minutes=5)
    assert row.as_dict()["first_seen"] == "2024-05-01T12:00:00+00:00"


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        reconcile(store, [finding()], datetime(2024, 5, 1, 12, 0))
    assert store.findings(state="all") == []


def test_reads_are_limited_to_the_scope(db_url: str, store: Store) -> None:
    reconcile(store, [finding("i-1")], T0)
    reconcile(store, [finding("vol-1", rule="detached-volumes", waste=0.01)], T0, rule="detached-volumes")
    reconcile(store, [finding("i-2", region="eu-west-1")], T0, region="eu-west-1")
    scoped = Store(db_url, Scope(rules=("detached-volumes", "idle-vms"), regions=(REGION,)))
    assert {r.resource_id for r in scoped.findings()} == {"i-1", "vol-1"}
    narrower = Store(db_url, Scope(rules=("detached-volumes",), regions=(REGION,)))
    assert [r.resource_id for r in narrower.findings()] == ["vol-1"]
    assert {row[0] for row in narrower.open_summary()} == {"detached-volumes"}
    assert [row[2] for row in narrower.open_resource_waste()] == ["vol-1"]
    assert len(Store(db_url).findings()) == 3  # nothing is deleted: out of scope is only out of sight


def test_a_database_that_cannot_be_opened_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as error:
        Store(f"sqlite:///{tmp_path}/no/such/dir/g.db")
    assert "cannot open the database" in str(error.value) and "\n" not in str(error.value)


def test_reconcile_returns_the_findings_it_opened(store: Store) -> None:
    first = reconcile(store, [finding("i-1"), finding("i-2")], T0)
    assert sorted(row["resource_id"] for row in first.new) == ["i-1", "i-2"]
    assert all(row["state"] == "open" and row["id"] for row in first.new)
    again = reconcile(store, [finding("i-1"), finding("i-2"), finding("i-3")], T1)
    assert [row["resource_id"] for row in again.new] == ["i-3"]
