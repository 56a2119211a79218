"""Clusters the SDK registered, their heartbeats, and keepalive enforcement.

A cluster's life (``guard.wire.ClusterState``): ``running`` while heartbeats come → ``closed`` when the SDK shut it
down itself, or ``expired`` when no heartbeat came for its keepalive (or no task ran for its idle timeout, or it
outlived its max lifetime) → ``terminating`` while the daemon's ``terminate-cluster`` action is under way →
``terminated``. An expired cluster whose action was skipped (protected, say) or failed stays ``expired``, the reason
saying why. Every state change is a conditional UPDATE, so a heartbeat racing the keepalive check never loses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import JSON, Float, Integer, String, Text, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from guard.actions.executors import TERMINATE_CLUSTER
from guard.actions.runner import ActionReport, Actuator
from guard.audit import CANCELLED, DONE, FAILED, IN_PROGRESS, PENDING, SKIPPED, Intent, idempotency_key
from guard.aws import Aws, describe_aws_error
from guard.durations import format_duration
from guard.model import ClusterUsage, UsageReport, freeze_tags
from guard.store import Base, Store, UTCDateTime
from guard.wire import ClusterRegistration, Heartbeat

log = logging.getLogger(__name__)

RUNNING = "running"
CLOSED = "closed"
EXPIRED = "expired"
TERMINATING = "terminating"
TERMINATED = "terminated"
STATES = (RUNNING, CLOSED, EXPIRED, TERMINATING, TERMINATED)
KEEPALIVE_RULE = "keepalive"
"""The audit trail's ``rule`` of the actions keepalive enforcement takes."""
RESERVED_FIELDS = ("s3_requests", "log_bytes_by_level")
"""Heartbeat fields kept for the rules that read them: every report for ``USAGE_RETENTION``, the latest on the row."""
USAGE_RETENTION = timedelta(days=1)
"""How long heartbeats' usage reports are kept: the longest window a rule may judge them over."""


class ClusterRow(Base):
    __tablename__ = "clusters"

    cluster_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256), index=True)
    account_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    region: Mapped[str] = mapped_column(String(32))
    instance_ids: Mapped[list] = mapped_column(JSON)
    instance_types: Mapped[list] = mapped_column(JSON)
    security_group_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    keepalive_seconds: Mapped[int] = mapped_column(Integer)
    idle_timeout_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_lifetime_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    hourly_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    tags: Mapped[dict] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    registered_by: Mapped[str] = mapped_column(String(256))
    """The owner of the token that registered it (``*`` for the admin token)."""
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_heartbeat: Mapped[datetime] = mapped_column(UTCDateTime)
    last_activity: Mapped[datetime] = mapped_column(UTCDateTime)
    """The last heartbeat with tasks processing or completed (the registration until then): the idle timeout counts
    from it."""
    heartbeats: Mapped[int] = mapped_column(Integer, default=0)
    tasks_processing: Mapped[int] = mapped_column(Integer, default=0)
    workers: Mapped[int] = mapped_column(Integer, default=0)
    usage: Mapped[dict] = mapped_column(JSON, default=dict)
    """The reserved heartbeat fields' latest values: {field: {"at": ISO time, "value": {...}}}."""
    state_changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    action_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """The audit row of the terminate-cluster action keepalive enforcement took."""
    watched_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    """When the daemon last started watching it afresh (its start, or the end of a time it could not receive
    heartbeats): the keepalive and idle timeout count from no earlier than this."""

    def _since(self, moment: datetime) -> datetime:
        return max(moment, self.watched_since) if self.watched_since is not None else moment

    def deadline(self) -> tuple[datetime, str]:
        """When the cluster expires if nothing changes, and which limit that is (keepalive, idle, lifetime)."""
        limits = [(self._since(self.last_heartbeat) + timedelta(seconds=self.keepalive_seconds), "keepalive")]
        if self.idle_timeout_seconds is not None:
            limits.append((self._since(self.last_activity) + timedelta(seconds=self.idle_timeout_seconds), "idle"))
        if self.max_lifetime_seconds is not None:
            limits.append((self.registered_at + timedelta(seconds=self.max_lifetime_seconds), "lifetime"))
        return min(limits)

    def expiry_reason(self, now: datetime) -> str | None:
        """Why the cluster has expired by ``now``; None while it has not."""
        deadline, limit = self.deadline()
        if now < deadline:
            return None
        if limit == "keepalive":
            return (f"no heartbeat for {_ago(now, self.last_heartbeat)} "
                    f"(keepalive {format_duration(timedelta(seconds=self.keepalive_seconds))})")
        if limit == "idle":
            return (f"no task ran for {_ago(now, self.last_activity)} "
                    f"(idle timeout {format_duration(timedelta(seconds=self.idle_timeout_seconds or 0))})")
        return (f"running for {_ago(now, self.registered_at)} "
                f"(max lifetime {format_duration(timedelta(seconds=self.max_lifetime_seconds or 0))})")

    def as_dict(self) -> dict[str, Any]:
        """As ``guard.wire.ClusterOut`` shows it."""
        return {
            "cluster_id": self.cluster_id, "owner": self.owner, "region": self.region,
            "instance_ids": list(self.instance_ids), "instance_types": list(self.instance_types),
            "security_group_id": self.security_group_id, "keepalive_seconds": self.keepalive_seconds,
            "idle_timeout_seconds": self.idle_timeout_seconds, "max_lifetime_seconds": self.max_lifetime_seconds,
            "hourly_usd": self.hourly_usd, "tags": dict(self.tags or {}), "account_id": self.account_id,
            "state": self.state, "registered_at": self.registered_at.isoformat(),
            "last_heartbeat": self.last_heartbeat.isoformat(), "last_activity": self.last_activity.isoformat(),
            "expires_at": self.deadline()[0].isoformat(), "reason": self.reason, "usage": dict(self.usage or {}),
        }


class UsageRow(Base):
    """One heartbeat's usage report (only heartbeats that carried one): what the cluster did since the last beat."""

    __tablename__ = "cluster_usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cluster_id: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    s3_requests: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    log_bytes_by_level: Mapped[dict | None] = mapped_column(JSON, nullable=True)


def _ago(now: datetime, then: datetime) -> str:
    return format_duration(max(now - then, timedelta(0)))


class ClusterRegistry:
    """Reads and conditional writes of the clusters table, in the findings store's database."""

    def __init__(self, store: Store):
        self.store = store
        Base.metadata.create_all(store.engine, tables=[ClusterRow.__table__, UsageRow.__table__])

    def register(self, registration: ClusterRegistration, registered_by: str, now: datetime) -> ClusterRow | None:
        """Commit a new running cluster; None when one with this id exists already."""
        row = ClusterRow(
            cluster_id=registration.cluster_id, owner=registration.owner, region=registration.region,
            instance_ids=list(registration.instance_ids), instance_types=list(registration.instance_types),
            security_group_id=registration.security_group_id, keepalive_seconds=registration.keepalive_seconds,
            idle_timeout_seconds=registration.idle_timeout_seconds,
            max_lifetime_seconds=registration.max_lifetime_seconds, hourly_usd=registration.hourly_usd,
            tags=dict(registration.tags), state=RUNNING, registered_by=registered_by, registered_at=now,
            last_heartbeat=now, last_activity=now, heartbeats=0, tasks_processing=0, workers=0, usage={},
            state_changed_at=now)
        try:
            with self.store.session() as session, session.begin():
                session.add(row)
        except IntegrityError:
            return None
        return row

    def watch_from(self, now: datetime) -> int:
        """Every running cluster's keepalive and idle timeout count from ``now`` at the earliest; how many."""
        with self.store.session() as session, session.begin():
            return session.execute(update(ClusterRow).where(ClusterRow.state == RUNNING)
                                   .values(watched_since=now)).rowcount

    def get(self, cluster_id: str) -> ClusterRow | None:
        with self.store.session() as session:
            return session.get(ClusterRow, cluster_id)

    def clusters(self, state: str | None = None, owner: str | None = None, states: Iterable[str] | None = None,
                 limit: int | None = None) -> list[ClusterRow]:
        """Newest first, optionally of one owner and state(s)."""
        query = select(ClusterRow)
        if state is not None:
            query = query.where(ClusterRow.state == state)
        if states is not None:
            query = query.where(ClusterRow.state.in_(list(states)))
        if owner is not None:
            query = query.where(ClusterRow.owner == owner)
        query = query.order_by(ClusterRow.registered_at.desc(), ClusterRow.cluster_id)
        if limit is not None:
            query = query.limit(limit)
        with self.store.session() as session:
            return list(session.scalars(query).all())

    def heartbeat(self, cluster_id: str, beat: Heartbeat, now: datetime) -> tuple[ClusterRow | None, bool]:
        """Record a heartbeat of a running cluster: (the row, True); (the row, False) when it is not running."""
        with self.store.session() as session, session.begin():
            row = session.get(ClusterRow, cluster_id)
            if row is None or row.state != RUNNING:
                return row, False
            usage = dict(row.usage or {})
            for name in RESERVED_FIELDS:
                value = getattr(beat, name)
                if value is not None:
                    usage[name] = {"at": now.isoformat(), "value": dict(value)}
            fields: dict[str, Any] = {"last_heartbeat": now, "heartbeats": ClusterRow.heartbeats + 1,
                                      "tasks_processing": beat.tasks_processing, "workers": beat.workers,
                                      "usage": usage}
            if beat.tasks_processing > 0 or beat.tasks_completed > 0:
                fields["last_activity"] = now
            result = session.execute(update(ClusterRow).where(ClusterRow.cluster_id == cluster_id,
                                                              ClusterRow.state == RUNNING).values(**fields))
            if result.rowcount != 1:
                return row, False
            if beat.s3_requests is not None or beat.log_bytes_by_level is not None:
                session.add(UsageRow(cluster_id=cluster_id, at=now, s3_requests=beat.s3_requests,
                                     log_bytes_by_level=beat.log_bytes_by_level))
                session.execute(delete(UsageRow).where(UsageRow.at < now - USAGE_RETENTION))
        return self.get(cluster_id), True

    def usage(self, now: datetime) -> tuple[ClusterUsage, ...]:
        """Every running cluster with its usage reports of the last ``USAGE_RETENTION``, oldest first."""
        with self.store.session() as session:
            rows = session.scalars(select(ClusterRow).where(ClusterRow.state == RUNNING)
                                   .order_by(ClusterRow.cluster_id)).all()
            reports: dict[str, list[UsageReport]] = {row.cluster_id: [] for row in rows}
            query = (select(UsageRow).where(UsageRow.cluster_id.in_(list(reports)),
                                            UsageRow.at >= now - USAGE_RETENTION)
                     .order_by(UsageRow.at, UsageRow.id))
            for usage in session.scalars(query):
                reports[usage.cluster_id].append(UsageReport(
                    at=usage.at, s3_requests=usage.s3_requests or {},
                    log_bytes_by_level=usage.log_bytes_by_level or {}))
            return tuple(ClusterUsage(cluster_id=row.cluster_id, owner=row.owner, region=row.region,
                                      instance_ids=tuple(row.instance_ids), registered_at=row.registered_at,
                                      reports=tuple(reports[row.cluster_id]), tags=freeze_tags(row.tags))
                         for row in rows)

    def move(self, cluster_id: str, from_states: Iterable[str], state: str, now: datetime, **fields: Any) -> bool:
        """Move a cluster to ``state`` only if it is still in one of ``from_states``; False if it was not."""
        with self.store.session() as session, session.begin():
            result = session.execute(
                update(ClusterRow).where(ClusterRow.cluster_id == cluster_id,
                                         ClusterRow.state.in_(list(from_states)))
                .values(state=state, state_changed_at=now, **fields))
            return result.rowcount == 1

    def expire(self, row: ClusterRow, reason: str, now: datetime) -> bool:
        """running → expired, unless a heartbeat came since ``row`` was read (then it is not expired after all)."""
        with self.store.session() as session, session.begin():
            result = session.execute(
                update(ClusterRow).where(ClusterRow.cluster_id == row.cluster_id, ClusterRow.state == RUNNING,
                                         ClusterRow.last_heartbeat == row.last_heartbeat,
                                         ClusterRow.last_activity == row.last_activity)
                .values(state=EXPIRED, state_changed_at=now, reason=reason))
            return result.rowcount == 1

    def set_fields(self, cluster_id: str, **fields: Any) -> None:
        with self.store.session() as session, session.begin():
            session.execute(update(ClusterRow).where(ClusterRow.cluster_id == cluster_id).values(**fields))

    # -- for the metrics --------------------------------------------------------------------------------------------

    def count_by_state(self) -> dict[str, int]:
        query = select(ClusterRow.state, func.count()).group_by(ClusterRow.state)
        with self.store.session() as session:
            counts = dict.fromkeys(STATES, 0)
            counts.update({state: count for state, count in session.execute(query).all()})
            return counts

    def running_costs(self) -> list[tuple[str, str, float]]:
        """(owner, cluster id, $/hour) of running clusters with an estimated cost."""
        query = (select(ClusterRow.owner, ClusterRow.cluster_id, ClusterRow.hourly_usd)
                 .where(ClusterRow.state == RUNNING, ClusterRow.hourly_usd.is_not(None))
                 .order_by(ClusterRow.owner, ClusterRow.cluster_id))
        with self.store.session() as session:
            return [tuple(row) for row in session.execute(query).all()]

    def heartbeats_by_owner(self) -> dict[str, int]:
        query = select(ClusterRow.owner, func.sum(ClusterRow.heartbeats)).group_by(ClusterRow.owner)
        with self.store.session() as session:
            return {owner: int(total or 0) for owner, total in session.execute(query).all()}


@dataclass
class KeepaliveReport:
    """What one keepalive check did."""

    expired: list[str] = field(default_factory=list)
    """Clusters that expired at this check."""
    actions: ActionReport = field(default_factory=ActionReport)


class Keepalive:
    """The keepalive check: expire clusters past their limits, and terminate them through the action runner.

    The terminate-cluster action is the one the user asked for at launch, so it runs in every mode (unless
    ``enforce_keepalive`` is off) — but like every action it is written to the audit trail before its first AWS
    call, finished after a crash by looking at the instances first, and skipped when a protection tag is found.

    A heartbeat the daemon could not receive must not count against a cluster: at the first check (the daemon just
    started: an upgrade, a reboot) and at the first check after a gap (no successful check for
    ``3 × keepalive_check_interval`` of wall-clock time: a suspended host, a database outage), every running
    cluster is watched afresh, so none expires on keepalive or idle timeout before one full period from then.
    """

    def __init__(self, settings, clusters: ClusterRegistry, actuator: Actuator, aws: Aws):
        self.settings = settings
        self.clusters = clusters
        self.actuator = actuator
        self.aws = aws
        self._lock = threading.Lock()
        self._last_checked: float | None = None
        """Wall-clock time (``time.time()``, which counts a suspended host's sleep) of the last successful check."""

    @property
    def gap_seconds(self) -> float:
        """A longer time without a successful check is a time the daemon may have missed heartbeats."""
        return 3 * self.settings.keepalive_check_interval.total_seconds()

    def check(self, now: datetime | None = None) -> KeepaliveReport:
        now = now or datetime.now(timezone.utc)
        report = KeepaliveReport()
        if not self.actuator.may_act():  # another process holds the lease: it expires and terminates
            return report
        with self._lock:
            self._watch_afresh_after_a_gap(now)
            for row in self.clusters.clusters(state=RUNNING):
                reason = row.expiry_reason(now)
                if reason is None:
                    continue
                if not self.settings.enforce_keepalive:
                    reason += "; not terminated: keepalive enforcement is off (enforce_keepalive = false)"
                if self.clusters.expire(row, reason, now):
                    log.info("cluster %s (%s) expired: %s", row.cluster_id, row.owner, reason)
                    report.expired.append(row.cluster_id)
            intents = self._intents(now) if self.settings.enforce_keepalive else []
            report.actions = self.actuator.act_up_front(intents, TERMINATE_CLUSTER.name, now)
            self._follow_actions(now)
            self._last_checked = time.time()
        return report

    def _watch_afresh_after_a_gap(self, now: datetime) -> None:
        wall = time.time()
        if self._last_checked is not None and wall - self._last_checked <= self.gap_seconds:
            return
        why = ("the daemon started" if self._last_checked is None
               else f"no keepalive check for {format_duration(timedelta(seconds=round(wall - self._last_checked)))}")
        count = self.clusters.watch_from(now)
        if count:
            log.info("%s: the %d running cluster%s may have sent heartbeats the daemon did not receive; none expires "
                     "on keepalive or idle timeout before a full period from now", why, count,
                     "s" if count != 1 else "")

    def intent(self, row: ClusterRow, account_id: str) -> Intent:
        """The terminate-cluster action for an expired cluster (one per cluster: its key is the cluster's)."""
        key = idempotency_key(account_id, row.region, TERMINATE_CLUSTER.name, row.cluster_id, KEEPALIVE_RULE)
        count = len(row.instance_ids)
        group = f" and security group {row.security_group_id}" if row.security_group_id else ""
        return Intent(
            key=key, rule=KEEPALIVE_RULE, action=TERMINATE_CLUSTER.name, account_id=account_id, region=row.region,
            resource_id=row.cluster_id, resource_type=TERMINATE_CLUSTER.resource_type, owner=row.owner,
            finding_id=None, summary=f"{row.reason or 'expired'}: terminate its {count} instance"
                                     f"{'s' if count != 1 else ''}{group}",
            waste_hourly_usd=row.hourly_usd,
            params={"key": key, "instance_ids": list(row.instance_ids), "region": row.region,
                    "security_group_id": row.security_group_id, "managed_tag": self.settings.managed_tag,
                    "protect_tag": self.settings.protect_tag, "owner": row.owner})

    def _intents(self, now: datetime) -> list[Intent]:
        """The actions still to start: expired clusters with no action yet (or whose row a crash left unlinked)."""
        intents = []
        for row in self.clusters.clusters(state=EXPIRED):
            if row.action_id is not None:
                continue
            account_id = row.account_id
            if account_id is None:
                try:
                    account_id = self.aws.account_id(row.region)
                except Exception as exc:  # no credentials or no network: try again at the next check
                    log.warning("cluster %s: cannot tell its account: %s", row.cluster_id, describe_aws_error(exc))
                    continue
                self.clusters.set_fields(row.cluster_id, account_id=account_id)
            intent = self.intent(row, account_id)
            existing = self.actuator.audit.by_key(intent.key)
            if existing is not None:  # recorded before a crash: link it, the runner carries it on
                self.clusters.set_fields(row.cluster_id, action_id=existing.id)
                continue
            intents.append(intent)
        return intents

    def _follow_actions(self, now: datetime) -> None:
        """Each expired or terminating cluster's state follows its action's row."""
        audit = self.actuator.audit
        for row in self.clusters.clusters(states=(EXPIRED, TERMINATING)):
            action = audit.get(row.action_id) if row.action_id is not None else None
            if action is None and row.account_id is not None:
                action = audit.by_key(idempotency_key(row.account_id, row.region, TERMINATE_CLUSTER.name,
                                                      row.cluster_id, KEEPALIVE_RULE))
            if action is None:
                continue
            base = (row.reason or "expired").split("; not terminated:")[0]
            if action.status in (PENDING, IN_PROGRESS):
                self.clusters.move(row.cluster_id, (EXPIRED, TERMINATING), TERMINATING, now, action_id=action.id)
            elif action.status == DONE:
                self.clusters.move(row.cluster_id, (EXPIRED, TERMINATING), TERMINATED, now, action_id=action.id,
                                   reason=f"{base}; terminated by the daemon (action {action.id})")
            elif action.status in (SKIPPED, FAILED, CANCELLED):
                reason = f"{base}; not terminated: {action.error or action.status} (action {action.id})"
                if row.state != EXPIRED or row.reason != reason or row.action_id != action.id:
                    self.clusters.move(row.cluster_id, (EXPIRED, TERMINATING), EXPIRED, now, action_id=action.id,
                                       reason=reason)
