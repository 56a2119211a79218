"""The write-ahead audit trail of actions: one row per intended action, written before its AWS call.

A row's life: ``would-do`` (planned in dry-run) → ``approved`` (a person said yes) → ``pending`` (intent committed;
the AWS call may or may not have happened) → ``in-progress`` (a multi-step action waiting, e.g. for a snapshot) →
``done`` | ``failed`` | ``skipped`` (a gate said no at the last check) | ``cancelled`` (no longer due). Rows in
``pending``/``in-progress`` after a crash are finished by looking at the resource, never by repeating blindly.
Every status change is a conditional UPDATE, so two processes cannot both move a row forward.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, Index, Integer, String, Text, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from guard.store import Base, Store, UTCDateTime, add_missing_indexes

PLANNED = "would-do"
APPROVED = "approved"
PENDING = "pending"
IN_PROGRESS = "in-progress"
DONE = "done"
FAILED = "failed"
SKIPPED = "skipped"
CANCELLED = "cancelled"
STATUSES = (PLANNED, APPROVED, PENDING, IN_PROGRESS, DONE, FAILED, SKIPPED, CANCELLED)
UNFINISHED = (PENDING, IN_PROGRESS)
"""Intents whose outcome is not recorded yet."""
STARTED = (PENDING, IN_PROGRESS, DONE, FAILED)
"""Rows whose AWS call was (or may have been) made: they count against the caps."""


def idempotency_key(account_id: str, region: str, action: str, resource_id: str, cause: str) -> str:
    """The same action on the same resource for the same cause (a finding, or the stop a terminate follows)."""
    raw = "\x1f".join((account_id, region, action, resource_id, cause))
    return hashlib.sha256(raw.encode()).hexdigest()[:40]


class ActionRow(Base):
    __tablename__ = "actions"
    __table_args__ = (Index("ix_actions_resource", "account_id", "region", "resource_id"),
                      Index("ix_actions_status_finished", "status", "finished_at"),
                      Index("ix_actions_finding", "finding_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    rule: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(512))
    resource_type: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(256))
    finding_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    parent_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """The stop action a terminate follows."""
    follow_up: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """An action still to consider once this one is done and has held (a stop's terminate); cleared when decided."""
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    summary: Mapped[str] = mapped_column(Text, default="")
    waste_hourly_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    mode: Mapped[str] = mapped_column(String(16))
    approved_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    """Who said yes: ``mode:enforce`` for the daemon's own decision, else the person or token that approved."""
    planned_at: Mapped[datetime] = mapped_column(UTCDateTime)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    def as_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id, "key": self.key, "rule": self.rule, "action": self.action,
            "account_id": self.account_id, "region": self.region, "resource_id": self.resource_id,
            "resource_type": self.resource_type, "owner": self.owner, "finding_id": self.finding_id,
            "parent_id": self.parent_id, "params": self.params, "summary": self.summary,
            "waste_hourly_usd": self.waste_hourly_usd, "status": self.status, "mode": self.mode,
            "approved_by": self.approved_by, "planned_at": iso(self.planned_at), "approved_at": iso(self.approved_at),
            "started_at": iso(self.started_at), "finished_at": iso(self.finished_at), "detail": self.detail,
            "error": self.error,
        }


@dataclass(frozen=True)
class Intent:
    """What is about to be done, and why: the fields of a new audit row."""

    key: str
    rule: str
    action: str
    account_id: str
    region: str
    resource_id: str
    resource_type: str
    owner: str
    finding_id: int | None
    summary: str
    waste_hourly_usd: float | None
    params: dict[str, Any]
    parent_id: int | None = None
    follow_up: str | None = None


class ApprovalError(Exception):
    """An approval that cannot be given; the message says why in one line."""


class AuditLog:
    """Reads and conditional writes of the actions table, in the findings store's database."""

    def __init__(self, store: Store):
        self.store = store
        Base.metadata.create_all(store.engine, tables=[ActionRow.__table__])
        add_missing_indexes(store.engine, tables=[ActionRow.__table__])

    def record(self, intent: Intent, status: str, mode: str, now: datetime,
               approved_by: str | None = None) -> ActionRow | None:
        """Commit a new row; None when a row with the same idempotency key exists already (never two intents)."""
        row = ActionRow(key=intent.key, rule=intent.rule, action=intent.action, account_id=intent.account_id,
                        region=intent.region, resource_id=intent.resource_id, resource_type=intent.resource_type,
                        owner=intent.owner, finding_id=intent.finding_id, parent_id=intent.parent_id,
                        follow_up=intent.follow_up, params=intent.params, summary=intent.summary,
                        waste_hourly_usd=intent.waste_hourly_usd, status=status, mode=mode, approved_by=approved_by,
                        planned_at=now, started_at=now if status in STARTED else None, detail={})
        try:
            with self.store.session() as session, session.begin():
                session.add(row)
        except IntegrityError:
            return None
        return row

    def move(self, row_id: int, from_statuses: Iterable[str], status: str, **fields: Any) -> bool:
        """Move a row to ``status`` only if it is still in one of ``from_statuses``; False if it was not."""
        with self.store.session() as session, session.begin():
            result = session.execute(
                update(ActionRow).where(ActionRow.id == row_id, ActionRow.status.in_(list(from_statuses)))
                .values(status=status, **fields))
            return result.rowcount == 1

    def set_fields(self, row_id: int, **fields: Any) -> None:
        with self.store.session() as session, session.begin():
            session.execute(update(ActionRow).where(ActionRow.id == row_id).values(**fields))

    def get(self, row_id: int) -> ActionRow | None:
        with self.store.session() as session:
            return session.get(ActionRow, row_id)

    def by_key(self, key: str) -> ActionRow | None:
        with self.store.session() as session:
            return session.scalars(select(ActionRow).where(ActionRow.key == key)).first()

    def by_keys(self, keys: list[str]) -> list[ActionRow]:
        if not keys:
            return []
        with self.store.session() as session:
            return list(session.scalars(select(ActionRow).where(ActionRow.key.in_(keys))).all())

    def in_status(self, statuses: Iterable[str], account_id: str | None = None,
                  region: str | None = None) -> list[ActionRow]:
        query = select(ActionRow).where(ActionRow.status.in_(list(statuses)))
        if account_id is not None:
            query = query.where(ActionRow.account_id == account_id)
        if region is not None:
            query = query.where(ActionRow.region == region)
        with self.store.session() as session:
            return list(session.scalars(query.order_by(ActionRow.id)).all())

    def awaiting_follow_up(self, account_id: str, region: str) -> list[ActionRow]:
        """Done actions with a follow-up still to decide (stops that may become terminates)."""
        query = select(ActionRow).where(ActionRow.status == DONE, ActionRow.follow_up.is_not(None),
                                        ActionRow.account_id == account_id, ActionRow.region == region)
        with self.store.session() as session:
            return list(session.scalars(query.order_by(ActionRow.id)).all())

    def started_since(self, since: datetime) -> int:
        """Actions whose AWS call was (or may have been) made since ``since``, all regions: the hourly cap."""
        query = select(func.count()).select_from(ActionRow).where(ActionRow.status.in_(STARTED),
                                                                   ActionRow.started_at >= since)
        with self.store.session() as session:
            return session.scalar(query) or 0

    def last_outcomes(self, count: int) -> list[tuple[str, datetime]]:
        """(status, finished_at) of the latest finished executions (done or failed), newest first."""
        query = (select(ActionRow.status, ActionRow.finished_at)
                 .where(ActionRow.status.in_((DONE, FAILED)), ActionRow.finished_at.is_not(None))
                 .order_by(ActionRow.finished_at.desc(), ActionRow.id.desc()).limit(count))
        with self.store.session() as session:
            return [(status, finished) for status, finished in session.execute(query).all()]

    def actions(self, status: str | None = None, rule: str | None = None, region: str | None = None,
                limit: int = 1000) -> list[ActionRow]:
        """Newest first, optionally filtered."""
        query = select(ActionRow)
        if status:
            query = query.where(ActionRow.status == status)
        if rule:
            query = query.where(ActionRow.rule == rule)
        if region:
            query = query.where(ActionRow.region == region)
        with self.store.session() as session:
            return list(session.scalars(query.order_by(ActionRow.id.desc()).limit(limit)).all())

    def approve(self, row_id: int, by: str, now: datetime) -> ActionRow:
        """Approve one planned (``would-do``) action; it runs at the next scan of its region, through the gates."""
        row = self.get(row_id)
        if row is None:
            raise ApprovalError(f"action {row_id}: no such action; `guard actions list` shows the planned ones")
        if row.status != PLANNED:
            raise ApprovalError(f"action {row_id} is {row.status}, not {PLANNED}: only planned actions can be approved")
        if not self.move(row_id, (PLANNED,), APPROVED, approved_by=by, approved_at=now):
            raise ApprovalError(f"action {row_id} changed while approving it; look again with `guard actions show "
                                f"{row_id}`")
        return self.get(row_id)
