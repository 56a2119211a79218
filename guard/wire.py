"""The wire schema the SDK and the daemon share: registering a cluster, its heartbeats, and how the daemon shows it.

Pydantic only (no daemon code), so the SDK — installed on laptops — can import it without the daemon's dependencies.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

CLUSTER_ID_PATTERN = r"^vmg-[a-z0-9]{6,32}$"
OWNER_TAG = "owner"
"""Tag the SDK puts on every resource it launches: the owner. The daemon registers, and terminates, a cluster's
instances only when this tag names the cluster's registered owner."""

ClusterState = Literal["running", "closed", "expired", "terminating", "terminated"]
"""running (heartbeating) → closed (the SDK shut it down) | expired (keepalive or idle timeout passed) →
terminating (the daemon's terminate action is under way) → terminated."""


class ClusterRegistration(BaseModel):
    """What the SDK tells the daemon after launching a cluster (``POST /v1/clusters``)."""

    model_config = ConfigDict(extra="forbid")

    cluster_id: str = Field(pattern=CLUSTER_ID_PATTERN, description="made by the SDK, e.g. vmg-3f9a2c1b")
    owner: str = Field(min_length=1, max_length=256, description="who launched it; must match the token's owner")
    region: str = Field(pattern=r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+$")
    instance_ids: list[str] = Field(min_length=1, description="the scheduler first, then the workers")
    instance_types: list[str] = Field(min_length=1)
    security_group_id: str | None = None
    keepalive_seconds: int = Field(ge=10, description="terminate when no heartbeat came for this long")
    idle_timeout_seconds: int | None = Field(None, ge=60, description="terminate when no task ran for this long")
    max_lifetime_seconds: int | None = Field(None, ge=60)
    hourly_usd: float | None = Field(None, ge=0, description="estimated $/hour of the whole cluster")
    tags: dict[str, str] = Field(default_factory=dict)


class Heartbeat(BaseModel):
    """The SDK's periodic "still here" (``POST /v1/clusters/{id}/heartbeat``), with what the cluster is doing."""

    model_config = ConfigDict(extra="forbid")

    tasks_processing: int = Field(0, ge=0, description="tasks running or queued on the cluster now")
    tasks_completed: int = Field(0, ge=0, description="tasks that finished since the last heartbeat (short tasks "
                                 "between two beats count as activity too)")
    workers: int = Field(0, ge=0, description="workers connected to the scheduler")
    s3_requests: dict[str, dict[str, NonNegativeInt]] | None = Field(
        None, description="bucket → S3 operation class (GET, PUT, LIST, HEAD, …) → requests since the last heartbeat; "
                          "read by the chatty-s3 rule", examples=[{"features": {"LIST": 1200, "GET": 40}}])
    log_bytes_by_level: dict[str, NonNegativeInt] | None = Field(
        None, description="log level (debug, info, …) → bytes logged since the last heartbeat; read by the "
                          "debug-logging rule", examples=[{"debug": 52_000_000, "info": 800_000}])


class ClusterOut(ClusterRegistration):
    """A registered cluster as the daemon shows it (``GET /v1/clusters``)."""

    model_config = ConfigDict(extra="ignore")

    account_id: str | None = None
    state: ClusterState
    registered_at: str
    last_heartbeat: str
    last_activity: str
    expires_at: str = Field(description="when the keepalive (or idle timeout) runs out if nothing changes")
    reason: str | None = Field(None, description="why it expired or was terminated")
    usage: dict[str, dict] = Field(default_factory=dict, description="the last reported s3_requests and "
                                   "log_bytes_by_level: {field: {\"at\": time, \"value\": {...}}}")
