"""One actor per database: a lease row that exactly one process holds at a time.

Two daemons on one PostgreSQL (a rolling upgrade, a second replica), or a daemon and `guard scan --once`, must not
both act: each could resume or skip rows the other has in flight. The process holding the ``actor`` lease runs the
action phase, keepalive termination, notifications and the writes a scan makes; every other process is a
*standby*: it scans (its metrics stay live), serves the API (heartbeats included) and writes nothing a scan finds.

The lease is one row (name, holder, expires_at) taken or renewed by a conditional UPDATE — or an INSERT when there is
no row — whose row count says who won; SQLite and PostgreSQL alike. The holder renews it every third of its TTL. It
trusts its lease only until ``TTL × 2/3`` after the moment it *started* its last successful renewal (monotonic
clock), so a holder that stalls (a paused VM, a long GC, a lost database) stops acting before anyone else may take
over; taking over needs the row's ``expires_at`` to have passed. Expiry compares the processes' wall clocks: hosts
sharing a database must keep their clocks within a few seconds of each other (NTP), well inside a third of the TTL.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from sqlalchemy import String, case, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from guard.store import Base, Store, UTCDateTime

log = logging.getLogger(__name__)

ACTOR = "actor"
TRUST = 2 / 3
"""The share of the TTL a holder trusts its lease for, counted from the start of its last renewal."""


class LeaseRow(Base):
    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


def process_id() -> str:
    """``host:pid:random``: unique per process, and says where the holder runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """The ``actor`` lease of one database, as one process sees it."""

    def __init__(self, store: Store, ttl: timedelta, name: str = ACTOR, holder: str | None = None):
        self.store = store
        self.ttl = ttl
        self.name = name
        self.holder = holder or process_id()
        self._trusted_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[bool], None]] = []

    def held(self) -> bool:
        """Whether this process may act now (checked right before every mutating call)."""
        return time.monotonic() < self._trusted_until

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(held)`` whenever this process becomes the actor or stops being it."""
        self._listeners.append(listener)

    def try_acquire(self) -> bool:
        """Take the lease if it is free or expired, renew it if it is ours; whether we hold it now."""
        was = self.held()
        started = time.monotonic()
        try:
            won = self._claim(datetime.now(timezone.utc))
        except SQLAlchemyError as exc:  # the database is unreachable: trust runs out on its own
            log.warning("lease %s: cannot renew: %s", self.name, str(getattr(exc, "orig", None) or exc).splitlines()[0])
            won = False
        if won:
            self._trusted_until = started + self.ttl.total_seconds() * TRUST
        elif was:
            self._trusted_until = 0.0
        if won != was:
            log.info("lease %s: this process (%s) %s", self.name, self.holder,
                     "is now the actor" if won else f"is standby ({self.current_holder() or 'nobody'} acts)")
            for listener in self._listeners:
                listener(won)
        return won

    def _claim(self, now: datetime) -> bool:
        expires = now + self.ttl
        with self.store.session() as session, session.begin():
            taken = session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == self.name, (LeaseRow.holder == self.holder) | (LeaseRow.expires_at < now))
                .values(expires_at=expires,
                        acquired_at=case((LeaseRow.holder == self.holder, LeaseRow.acquired_at), else_=now),
                        holder=self.holder)).rowcount
        if taken == 1:
            return True
        try:
            with self.store.session() as session, session.begin():
                session.add(LeaseRow(name=self.name, holder=self.holder, acquired_at=now, expires_at=expires))
        except IntegrityError:  # someone holds it (or inserted it just now)
            return False
        return True

    def current_holder(self) -> str | None:
        """Who holds the lease according to the database (None when nobody does, or it cannot be read)."""
        try:
            with self.store.session() as session:
                row = session.scalars(select(LeaseRow).where(LeaseRow.name == self.name)).first()
        except SQLAlchemyError:
            return None
        if row is None or row.expires_at < datetime.now(timezone.utc):
            return None
        return row.holder

    def start(self) -> None:
        """Try now, then keep trying (as standby) or renewing (as actor) every third of the TTL."""
        self.try_acquire()
        self._thread = threading.Thread(target=self._keep, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl.total_seconds() / 3):
            self.try_acquire()

    def release(self) -> None:
        """Stop renewing and, if we hold it, let the lease go at once (a clean shutdown hands over without waiting
        for the TTL)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.held():
            return
        self._trusted_until = 0.0
        try:
            with self.store.session() as session, session.begin():
                session.execute(update(LeaseRow).where(LeaseRow.name == self.name, LeaseRow.holder == self.holder)
                                .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        except SQLAlchemyError:
            pass  # it expires by itself
