"""The findings and scans store (SQLAlchemy): SQLite by default, PostgreSQL by URL.

A finding's lifecycle: ``open`` (first_seen, refreshed last_seen) → ``resolved`` (resolved_at) when a successful
evaluation of its rule no longer produces it. A finding that comes back opens a new row, so history is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    and_,
    create_engine,
    delete,
    event,
    exists,
    false,
    func,
    inspect,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from guard.model import Finding


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value is not None else None


class Base(DeclarativeBase):
    pass


class FindingRow(Base):
    __tablename__ = "findings"
    __table_args__ = (Index("ix_findings_open", "state", "account_id", "region", "rule", "resource_id"),
                      Index("ix_findings_resolved", "state", "resolved_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(256))
    resource_type: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(256))
    severity: Mapped[str] = mapped_column(String(16))
    waste_hourly_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    summary: Mapped[str] = mapped_column(Text)
    suggested_action: Mapped[str] = mapped_column(String(64))
    billing: Mapped[str] = mapped_column(String(64), default="")
    evidence: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="open")
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    """When the webhook delivered the message announcing this finding (an action's grace needs it)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "resource_id": self.resource_id,
            "resource_type": self.resource_type,
            "account_id": self.account_id,
            "region": self.region,
            "owner": self.owner,
            "severity": self.severity,
            "waste_hourly_usd": self.waste_hourly_usd,
            "summary": self.summary,
            "evidence": self.evidence,
            "state": self.state,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "notified_at": self.notified_at.isoformat() if self.notified_at else None,
            "suggested_action": self.suggested_action,
            "billing": self.billing,
        }


class ScanRow(Base):
    __tablename__ = "scans"
    __table_args__ = (
        Index("ix_scans_latest", "region", "id"),
        Index("ix_scans_latest_by_status", "region", "status", "id"),
        Index("ix_scans_priced", "region", "id",
              sqlite_where=text("running_hourly_usd IS NOT NULL"),
              postgresql_where=text("running_hourly_usd IS NOT NULL")),
        Index("ix_scans_finished_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(32), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))  # ok | partial | failed
    api_calls: Mapped[int] = mapped_column(Integer)
    api_calls_by_operation: Mapped[dict] = mapped_column(JSON)
    errors: Mapped[list] = mapped_column(JSON)
    rules_evaluated: Mapped[list] = mapped_column(JSON)
    rules_skipped: Mapped[list] = mapped_column(JSON)
    findings_open: Mapped[int] = mapped_column(Integer)
    running_hourly_usd: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    """[{owner, instance_type, count, usd, price_unknown}, …]; NULL when the instances were unknown."""
    collectors: Mapped[dict] = mapped_column(JSON, default=dict)
    """Snapshot part → whether its collector succeeded, for the collectors that ran."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account_id": self.account_id,
            "region": self.region,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_seconds": round((self.finished_at - self.started_at).total_seconds(), 3),
            "status": self.status,
            "api_calls": self.api_calls,
            "api_calls_by_operation": self.api_calls_by_operation,
            "errors": self.errors,
            "rules_evaluated": self.rules_evaluated,
            "rules_skipped": self.rules_skipped,
            "findings_open": self.findings_open,
        }


@dataclass(frozen=True)
class Reconciled:
    opened: int
    refreshed: int
    resolved: int
    new: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    """The findings this evaluation opened, as the API shows them (for notifications)."""


class StoreError(Exception):
    """The database could not be opened; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class Scope:
    """What the daemon currently watches: reads ignore findings of disabled rules and unconfigured regions."""

    rules: tuple[str, ...] | None = None
    regions: tuple[str, ...] | None = None


def scope_of(settings) -> Scope:
    """The scope of a daemon configured with ``settings`` (its enabled rules, its regions)."""
    return Scope(rules=tuple(settings.enabled_rules()), regions=tuple(settings.regions))


@dataclass
class LatestScans:
    """Per region: the newest scan, the newest ``ok`` one, and the newest that knew the running instances."""

    newest: dict[str, ScanRow] = field(default_factory=dict)
    ok: dict[str, ScanRow] = field(default_factory=dict)
    inventory: dict[str, ScanRow] = field(default_factory=dict)


PRUNE_BATCH = 5000
OPEN_ACTIONS = ("would-do", "approved", "pending", "in-progress")
"""Action statuses whose resource keeps its whole audit trail (see guard.audit)."""
FINISHED_ACTIONS = ("done", "failed", "skipped", "cancelled")


@dataclass(frozen=True)
class Pruned:
    """Rows deleted by one :meth:`Store.prune`."""

    scans: int = 0
    findings: int = 0
    actions: int = 0


class Store:
    """All reads and writes of findings and scans."""

    def __init__(self, url: str, scope: Scope | None = None):
        self.url = url
        self.scope = scope or Scope()
        try:
            self.engine = _make_engine(url)
            Base.metadata.create_all(self.engine)
            _add_missing_columns(self.engine)
            add_missing_indexes(self.engine)
        except ModuleNotFoundError as exc:
            raise StoreError(f"database_url needs the {exc.name} driver, which is not installed: "
                             f"pip install {exc.name}") from None
        except SQLAlchemyError as exc:
            shown = make_url(url).render_as_string(hide_password=True)
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise StoreError(f"database_url = {shown!r}: cannot open the database: {reason}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _scoped(self, query, rule_column=None, region_column=None):
        if self.scope.rules is not None and rule_column is not None:
            query = query.where(rule_column.in_(self.scope.rules))
        if self.scope.regions is not None and region_column is not None:
            query = query.where(region_column.in_(self.scope.regions))
        return query

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return self._sessions()

    def reconcile(self, account_id: str, region: str, rule: str, findings: Iterable[Finding],
                  undetermined: Iterable[str], now: datetime) -> Reconciled:
        """Apply one successful evaluation of ``rule`` in a region: open, refresh, resolve."""
        produced = {finding.resource_id: finding for finding in findings}
        keep_open = set(undetermined)
        opened = refreshed = resolved = 0
        new_rows: list[FindingRow] = []
        with self.session() as session, session.begin():
            open_rows = session.scalars(
                select(FindingRow).where(
                    FindingRow.state == "open",
                    FindingRow.account_id == account_id,
                    FindingRow.region == region,
                    FindingRow.rule == rule,
                )
            ).all()
            seen = set()
            for row in open_rows:
                finding = produced.get(row.resource_id)
                if finding is not None and row.resource_id not in seen:
                    _refresh(row, finding, now)
                    seen.add(row.resource_id)
                    refreshed += 1
                elif row.resource_id not in keep_open:
                    row.state = "resolved"
                    row.resolved_at = now
                    resolved += 1
            for resource_id, finding in produced.items():
                if resource_id in seen:
                    continue
                row = FindingRow(account_id=account_id, rule=rule, region=region, resource_id=resource_id,
                                 state="open", first_seen=now)
                _refresh(row, finding, now)
                session.add(row)
                new_rows.append(row)
                opened += 1
        return Reconciled(opened=opened, refreshed=refreshed, resolved=resolved,
                          new=tuple(row.as_dict() for row in new_rows))

    def add_scan(self, **fields: Any) -> ScanRow:
        with self.session() as session, session.begin():
            row = ScanRow(**fields)
            session.add(row)
        return row

    def findings(self, state: str = "open", rule: str | None = None, region: str | None = None,
                 limit: int | None = None) -> list[FindingRow]:
        query = self._scoped(select(FindingRow), FindingRow.rule, FindingRow.region)
        if state != "all":
            query = query.where(FindingRow.state == state)
        if rule:
            query = query.where(FindingRow.rule == rule)
        if region:
            query = query.where(FindingRow.region == region)
        query = query.order_by(FindingRow.waste_hourly_usd.desc().nulls_last(), FindingRow.id)
        if limit:
            query = query.limit(limit)
        with self.session() as session:
            return list(session.scalars(query).all())

    def mark_notified(self, finding_ids: Iterable[int], now: datetime) -> None:
        """Record that these findings were announced (only the first announcement counts)."""
        ids = list(finding_ids)
        if not ids:
            return
        with self.session() as session, session.begin():
            session.execute(update(FindingRow).where(FindingRow.id.in_(ids), FindingRow.notified_at.is_(None))
                            .values(notified_at=now))

    def open_findings(self, account_id: str, region: str) -> list[FindingRow]:
        """Open findings of one account region (all rules), oldest first."""
        query = select(FindingRow).where(FindingRow.state == "open", FindingRow.account_id == account_id,
                                         FindingRow.region == region).order_by(FindingRow.first_seen, FindingRow.id)
        with self.session() as session:
            return list(session.scalars(query).all())

    def scans(self, region: str | None = None, limit: int = 100) -> list[ScanRow]:
        query = self._scoped(select(ScanRow), region_column=ScanRow.region).order_by(ScanRow.id.desc()).limit(limit)
        if region:
            query = query.where(ScanRow.region == region)
        with self.session() as session:
            return list(session.scalars(query).all())

    def latest_scans(self) -> LatestScans:
        """Each region's newest scan, newest fully successful scan and newest scan that priced the running
        instances, read in one query (what one /metrics scrape shows)."""
        kinds = (true(), ScanRow.status == "ok", ScanRow.running_hourly_usd.is_not(None))
        if self.scope.regions is not None:  # an index seek per region and kind, however long the history
            ids = [select(func.max(ScanRow.id)).where(ScanRow.region == region, kind).scalar_subquery()
                   for region in self.scope.regions for kind in kinds]
            wanted = or_(false(), *(ScanRow.id == each for each in ids))
        else:
            wanted = or_(*(ScanRow.id.in_(select(func.max(ScanRow.id)).where(kind).group_by(ScanRow.region))
                           for kind in kinds))
        with self.session() as session:
            rows = session.scalars(select(ScanRow).where(wanted).order_by(ScanRow.id)).all()
        latest = LatestScans()
        for row in rows:  # ascending id: the last row written per region and kind is the newest
            latest.newest[row.region] = row
            if row.status == "ok":
                latest.ok[row.region] = row
            if row.running_hourly_usd is not None:
                latest.inventory[row.region] = row
        return latest

    def open_resource_waste(self) -> list[tuple[str, str, str, float]]:
        """(region, owner, resource id, $/h) of open findings, once per resource and billing line (the largest)."""
        query = (
            select(FindingRow.region, FindingRow.owner, FindingRow.resource_id,
                   func.max(FindingRow.waste_hourly_usd))
            .where(FindingRow.state == "open", FindingRow.waste_hourly_usd.is_not(None))
            .group_by(FindingRow.region, FindingRow.owner, FindingRow.resource_id, FindingRow.billing)
        )
        query = self._scoped(query, FindingRow.rule, FindingRow.region)
        with self.session() as session:
            return [tuple(row) for row in session.execute(query).all()]

    def open_summary(self) -> list[tuple[str, str, str, str, int, float, int]]:
        """(rule, region, owner, severity, count, priced waste $/h, count with unknown price) of open findings."""
        query = (
            select(
                FindingRow.rule, FindingRow.region, FindingRow.owner, FindingRow.severity,
                func.count(), func.coalesce(func.sum(FindingRow.waste_hourly_usd), 0.0),
                func.count() - func.count(FindingRow.waste_hourly_usd),
            )
            .where(FindingRow.state == "open")
            .group_by(FindingRow.rule, FindingRow.region, FindingRow.owner, FindingRow.severity)
        )
        query = self._scoped(query, FindingRow.rule, FindingRow.region)
        with self.session() as session:
            return [tuple(row) for row in session.execute(query).all()]


    def prune(self, now: datetime, retention, batch: int = PRUNE_BATCH) -> Pruned:
        """Delete what is older than ``retention`` (``.scans``, ``.findings``, ``.actions`` durations), in batches of
        ``batch`` rows per transaction so a first prune of a big database never holds the write lock for long.

        Scans finished before ``now - retention.scans`` go, except each region's newest scan (what /metrics shows).
        Resolved findings resolved before ``now - retention.findings`` and finished actions (done, failed, skipped,
        cancelled) finished before ``now - retention.actions`` go, unless their resource still has an open action
        (would-do, approved, pending, in-progress) or a done action with a follow-up still to decide: that resource's
        audit trail is kept whole. Never prunes across the scope: every region and rule of the database counts.
        """
        scans = self._prune_batches(self._old_scans(now - retention.scans), ScanRow.__table__, batch)
        actions_table = Base.metadata.tables.get("actions")
        findings = actions = 0
        if actions_table is not None and inspect(self.engine).has_table("actions"):
            kept = _kept_resources(actions_table)
            old_actions = (select(actions_table.c.id)
                           .where(actions_table.c.status.in_(FINISHED_ACTIONS),
                                  func.coalesce(actions_table.c.finished_at, actions_table.c.planned_at,
                                                type_=UTCDateTime())
                                  < now - retention.actions,
                                  actions_table.c.follow_up.is_(None),
                                  ~_resource_in(actions_table, kept)))
            actions = self._prune_batches(old_actions, actions_table, batch)
            open_findings = select(actions_table.c.finding_id).where(
                actions_table.c.status.in_(OPEN_ACTIONS + ("done",)), actions_table.c.finding_id.is_not(None))
            old_findings = (select(FindingRow.id)
                            .where(FindingRow.state == "resolved",
                                   FindingRow.resolved_at < now - retention.findings,
                                   FindingRow.id.not_in(open_findings),
                                   ~_resource_in(FindingRow.__table__, kept)))
        else:
            old_findings = select(FindingRow.id).where(FindingRow.state == "resolved",
                                                       FindingRow.resolved_at < now - retention.findings)
        findings = self._prune_batches(old_findings, FindingRow.__table__, batch)
        return Pruned(scans=scans, findings=findings, actions=actions)

    def _old_scans(self, cutoff: datetime):
        newest = select(func.max(ScanRow.id)).group_by(ScanRow.region)
        return select(ScanRow.id).where(ScanRow.finished_at < cutoff, ScanRow.id.not_in(newest))

    def _prune_batches(self, ids_query, table, batch: int) -> int:
        total = 0
        while True:
            with self.engine.begin() as connection:
                ids = list(connection.scalars(ids_query.order_by(table.c.id).limit(batch)).all())
                if not ids:
                    return total
                connection.execute(delete(table).where(table.c.id.in_(ids)))
            total += len(ids)
            if len(ids) < batch:
                return total


def _kept_resources(actions):
    """(account, region, resource) whose audit trail stays: an open action, or a done one with a follow-up."""
    return select(actions.c.account_id, actions.c.region, actions.c.resource_id).where(
        or_(actions.c.status.in_(OPEN_ACTIONS), and_(actions.c.status == "done", actions.c.follow_up.is_not(None))))


def _resource_in(table, kept):
    kept = kept.subquery()
    return exists().where(kept.c.account_id == table.c.account_id, kept.c.region == table.c.region,
                          kept.c.resource_id == table.c.resource_id)


def _refresh(row: FindingRow, finding: Finding, now: datetime) -> None:
    row.resource_type = finding.resource_type
    row.owner = finding.owner
    row.severity = finding.severity.value
    row.waste_hourly_usd = finding.waste_hourly_usd
    row.summary = finding.summary
    row.suggested_action = finding.suggested_action
    row.billing = finding.billing
    row.evidence = _jsonable(finding.evidence)
    row.last_seen = now


def _jsonable(evidence: Mapping[str, Any]) -> dict[str, Any]:
    return {key: (value.isoformat() if isinstance(value, datetime) else value) for key, value in evidence.items()}


def _add_missing_columns(engine: Engine) -> None:
    """A database made by an earlier version gains the nullable columns added since (data is kept)."""
    existing = inspect(engine)
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            if not existing.has_table(table.name):
                continue
            present = {column["name"] for column in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present and column.nullable:
                    kind = column.type.compile(dialect=engine.dialect)
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def add_missing_indexes(engine: Engine, tables=None) -> None:
    """A database made by an earlier version gains the indexes added since (``create_all`` only indexes new tables)."""
    existing = inspect(engine)
    with engine.begin() as connection:
        for table in tables or Base.metadata.sorted_tables:
            if not existing.has_table(table.name):
                continue
            present = {index["name"] for index in existing.get_indexes(table.name)}
            for index in table.indexes:
                if index.name not in present:
                    index.create(connection, checkfirst=True)


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        if parsed.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine
