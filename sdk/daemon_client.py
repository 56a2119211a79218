"""The SDK's side of the daemon's cluster API: register a cluster, heartbeat it, say it was closed.

The daemon is a second guard, not a dependency: when none is configured or it cannot be reached, the SDK warns once
and the cluster is guarded by its on-VM dead-man switch alone. Calls are short (timeouts, no retry storms): a
heartbeat that fails is logged at WARNING with the reason and tried again at the next beat; a registration the
daemon cannot check yet (503: EC2 does not show the new instances yet) is retried a few times, as it asks.
"""

from __future__ import annotations

import logging
import os
import time
import warnings

import httpx

from guard.wire import ClusterRegistration, Heartbeat

log = logging.getLogger(__name__)

MAX_RETRY_WAIT = 5.0
"""Seconds at most between two registration attempts, whatever Retry-After says."""
URL_ENV = "VMGUARD_DAEMON_URL"
TOKEN_ENV = "VMGUARD_TOKEN"


class DaemonUnavailable(UserWarning):
    """The cluster runs without the daemon watching it; only the on-VM dead-man switch guards it."""


class DaemonClient:
    """Talks to one daemon with one bearer token (the token names the owner)."""

    def __init__(self, url: str, token: str, timeout: float = 5.0, transport: httpx.BaseTransport | None = None,
                 register_attempts: int = 5):
        self.url = url.rstrip("/")
        self.register_attempts = register_attempts
        self._client = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                    headers={"Authorization": f"Bearer {token}", "User-Agent": "vmguard-sdk"})

    @classmethod
    def from_env(cls, url: str | None = None, token: str | None = None) -> DaemonClient | None:
        """The configured daemon (arguments over ``VMGUARD_DAEMON_URL``/``VMGUARD_TOKEN``), or None with a warning."""
        url = url or os.environ.get(URL_ENV)
        token = token or os.environ.get(TOKEN_ENV)
        if not url or not token:
            missing = URL_ENV if not url else TOKEN_ENV
            warnings.warn(f"no vmguard daemon configured ({missing} is not set): the cluster is guarded only by its "
                          "on-VM dead-man switch (keepalive, max_lifetime)", DaemonUnavailable, stacklevel=3)
            return None
        return cls(url, token)

    def register(self, registration: ClusterRegistration) -> bool:
        """Tell the daemon about a new cluster; False (with a warning) when it could not be told."""
        return self._send("POST", "/v1/clusters", registration.model_dump(mode="json"), "register the cluster",
                          attempts=self.register_attempts)

    def heartbeat(self, cluster_id: str, beat: Heartbeat) -> bool:
        return self._send("POST", f"/v1/clusters/{cluster_id}/heartbeat", beat.model_dump(mode="json"),
                          "send a heartbeat", quiet=True)

    def closed(self, cluster_id: str) -> bool:
        """The SDK shut the cluster down itself: the daemon stops expecting heartbeats."""
        return self._send("DELETE", f"/v1/clusters/{cluster_id}", None, "report the cluster closed")

    def close(self) -> None:
        self._client.close()

    def _send(self, method: str, path: str, body: dict | None, what: str, quiet: bool = False,
              attempts: int = 1) -> bool:
        for attempt in range(1, attempts + 1):
            try:
                response = self._client.request(method, path, json=body)
            except httpx.HTTPError as exc:
                problem = f"cannot reach the vmguard daemon at {self.url} ({type(exc).__name__})"
                break
            if response.is_success:
                return True
            detail = _detail(response)
            problem = f"the vmguard daemon refused to {what}: HTTP {response.status_code}" + (
                f" ({detail})" if detail else "")
            if response.status_code != 503 or attempt == attempts:
                break
            time.sleep(min(_seconds(response.headers.get("Retry-After")), MAX_RETRY_WAIT))
        if quiet:
            log.warning("%s; tried again at the next heartbeat", problem)
        else:
            warnings.warn(f"{problem}; the cluster is guarded by its on-VM dead-man switch", DaemonUnavailable,
                          stacklevel=4)
        return False


def _seconds(retry_after: str | None) -> float:
    try:
        return max(float(retry_after or 1), 0.0)
    except ValueError:
        return 1.0


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else ""
