"""Waiting in tests for something that happens in another process or thread (a server up, a scan done)."""

from __future__ import annotations

import time

import httpx


def wait_for(predicate, timeout: float, what: str):
    """``predicate()``'s first truthy result within ``timeout`` seconds; an HTTP error or a missing key counts as
    not yet. Fails naming ``what`` and the last error."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            last_error = exc
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})")
