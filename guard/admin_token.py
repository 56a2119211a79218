"""The admin API token when ``GUARD_API_TOKEN`` is not set: generated once, kept in the database.

A token made afresh at every start would turn every SDK client and scraper into a 401 after a restart (and every
daemon on one shared database would have its own). So the first start stores one, and every later start — and every
other daemon on the same database — reads that same one. The database then holds a credential: a SQLite file is
made readable by its owner only.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import datetime, timezone

from sqlalchemy import String, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from guard.store import Base, Store, UTCDateTime

log = logging.getLogger(__name__)

ADMIN_TOKEN = "admin-api-token"


class SecretRow(Base):
    """A secret the daemon made for itself (today only the admin API token)."""

    __tablename__ = "daemon_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


def stored_admin_token(store: Store) -> tuple[str, bool]:
    """(the database's admin token, whether this call generated it). Safe when two daemons start at once: the first
    insert wins and both read it back."""
    with store.session() as session:
        found = session.scalar(select(SecretRow.value).where(SecretRow.name == ADMIN_TOKEN))
    if found is not None:
        return found, False
    generated = secrets.token_urlsafe(24)
    try:
        with store.session() as session, session.begin():
            session.add(SecretRow(name=ADMIN_TOKEN, value=generated, created_at=datetime.now(timezone.utc)))
    except IntegrityError:  # another daemon stored one first
        with store.session() as session:
            return session.scalar(select(SecretRow.value).where(SecretRow.name == ADMIN_TOKEN)), False
    _owner_only(store.url)
    return generated, True


def _owner_only(url: str) -> None:
    """chmod 600 a SQLite database file, now that it holds a credential."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return
    try:
        if os.stat(parsed.database).st_mode & 0o077:
            os.chmod(parsed.database, 0o600)
            log.info("database %s now holds the admin API token: made readable by its owner only", parsed.database)
    except OSError as exc:
        log.warning("database %s holds the admin API token but could not be made owner-only: %s", parsed.database,
                    exc.strerror or exc)
