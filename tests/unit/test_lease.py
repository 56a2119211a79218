"""The actor lease on a real SQLite file: one holder at a time, handed over when the holder lets go or goes quiet,
never trusted past its renewal, and the daemon's role in /readyz and guard_actor."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from guard.lease import Lease, LeaseRow
from guard.store import Store

TTL = timedelta(seconds=1)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'guard.db'}")
    yield store
    store.close()


def test_one_holder_at_a_time(store: Store) -> None:
    first, second = Lease(store, TTL, holder="a"), Lease(store, TTL, holder="b")
    assert first.try_acquire() is True and first.held()
    assert second.try_acquire() is False and not second.held()
    assert first.try_acquire() is True  # the holder renews
    assert second.current_holder() == first.current_holder() == "a"


def test_a_released_lease_is_taken_at_once(store: Store) -> None:
    first, second = Lease(store, timedelta(minutes=5), holder="a"), Lease(store, timedelta(minutes=5), holder="b")
    assert first.try_acquire()
    first.release()
    assert not first.held() and second.try_acquire() and second.current_holder() == "b"


def test_a_holder_that_goes_quiet_is_replaced_after_its_ttl_and_stops_trusting_its_lease_first(store: Store) -> None:
    first, second = Lease(store, TTL, holder="a"), Lease(store, TTL, holder="b")
    assert first.try_acquire()
    time.sleep(TTL.total_seconds() * 0.7)  # no renewal (paused): it no longer acts, the row has not expired yet
    assert not first.held()
    assert second.try_acquire() is False
    time.sleep(TTL.total_seconds() * 0.4)
    assert second.try_acquire() is True and second.held()
    assert first.try_acquire() is False and not first.held()  # back from its pause: standby


def test_the_background_renewal_keeps_the_lease_and_tells_the_listeners(store: Store) -> None:
    changes: list[bool] = []
    first, second = Lease(store, TTL, holder="a"), Lease(store, TTL, holder="b")
    first.on_change(changes.append)
    second_changes: list[bool] = []
    second.on_change(second_changes.append)
    first.start()
    second.start()
    try:
        time.sleep(TTL.total_seconds() * 2.5)
        assert first.held() and not second.held() and changes == [True] and second_changes == []
    finally:
        first.release()
    deadline = time.monotonic() + 5
    while not second.held():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second.release()
    assert changes == [True] and second_changes == [True]


def test_a_holder_whose_row_was_taken_over_stops_at_its_next_renewal(store: Store) -> None:
    lease = Lease(store, TTL, holder="a")
    assert lease.try_acquire()
    with store.session() as session, session.begin():  # another process took it over meanwhile
        session.execute(update(LeaseRow).values(holder="b"))
    assert lease.try_acquire() is False and not lease.held()
