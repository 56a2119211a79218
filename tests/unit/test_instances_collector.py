"""Parsing what DescribeInstances says about a stopped instance."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from guard.collectors.instances import stopped_since


@pytest.mark.parametrize(("reason", "expected"), [
    ("User initiated (2024-05-01 12:34:56 GMT)", datetime(2024, 5, 1, 12, 34, 56, tzinfo=timezone.utc)),
    ("User initiated (2026-11-26 08:54:44 UTC)", datetime(2026, 11, 26, 8, 54, 44, tzinfo=timezone.utc)),
    ("Server.ScheduledStop (2023-01-02 03:04:05 GMT)", datetime(2023, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
    ("User initiated", None),
    ("", None),
    (None, None),
    ("Client.InstanceInitiatedShutdown: Instance initiated shutdown", None),
])
def test_stop_time_comes_from_the_state_transition_reason(reason: str | None, expected: datetime | None) -> None:
    assert stopped_since(reason) == expected
