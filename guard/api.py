"""The HTTP API: /metrics, /healthz, /readyz and the token-protected /v1 resources (OpenAPI at /docs).

A bearer token names who calls: the admin token (``api_token``) is ``*`` and may do everything; an owner's token
(``api_tokens``) reads /v1 like the admin token, but registers, heartbeats, closes and lists only that owner's
clusters, and cannot approve actions.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, field_validator

from guard import wire
from guard.audit import STATUSES, ApprovalError, AuditLog
from guard.aws import describe_aws_error
from guard.clusters import CLOSED, RUNNING, ClusterRegistry
from guard.lease import Lease
from guard.metrics import DaemonMetrics
from guard.ownership import NotVisibleYet, NotYourInstances
from guard.store import Store
from guard.wire import ClusterOut, ClusterState

ADMIN = "*"
"""The owner the admin token (``api_token``) stands for: every owner."""
MAX_SECONDS = 10 * 365 * 86400
MAX_ITEMS = 10_000
_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")
_GROUP_ID = re.compile(r"sg-[0-9a-f]{8,17}")
_INSTANCE_TYPE = re.compile(r"[a-z0-9][a-z0-9.\-]{1,63}")


class ClusterRegistration(wire.ClusterRegistration):
    """``guard.wire.ClusterRegistration`` with the bounds the daemon can store (an id, a count, a finite price)."""

    @field_validator("keepalive_seconds", "idle_timeout_seconds", "max_lifetime_seconds")
    @classmethod
    def _bounded_seconds(cls, value: int | None) -> int | None:
        if value is not None and value > MAX_SECONDS:
            raise ValueError(f"expected at most {MAX_SECONDS} seconds (10 years)")
        return value

    @field_validator("hourly_usd")
    @classmethod
    def _finite_price(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value > 1e7):
            raise ValueError("expected a finite number of USD per hour, at most 10000000")
        return value

    @field_validator("instance_ids")
    @classmethod
    def _instance_ids(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_ITEMS:
            raise ValueError(f"expected at most {MAX_ITEMS} instances")
        bad = [item for item in value if not _INSTANCE_ID.fullmatch(item)]
        if bad:
            raise ValueError(f"{bad[0][:40]!r} is not an EC2 instance id (i-0123456789abcdef0)")
        return value

    @field_validator("instance_types")
    @classmethod
    def _instance_types(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_ITEMS:
            raise ValueError(f"expected at most {MAX_ITEMS} instance types")
        bad = [item for item in value if not _INSTANCE_TYPE.fullmatch(item)]
        if bad:
            raise ValueError(f"{bad[0][:40]!r} is not an EC2 instance type (m7g.large)")
        return value

    @field_validator("security_group_id")
    @classmethod
    def _group_id(cls, value: str | None) -> str | None:
        if value is not None and not _GROUP_ID.fullmatch(value):
            raise ValueError(f"{value[:40]!r} is not a security group id (sg-0123456789abcdef0)")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 50 or any(not 1 <= len(k) <= 128 or len(v) > 256 for k, v in value.items()):
            raise ValueError("expected at most 50 tags, keys of 1-128 and values of at most 256 characters (as EC2)")
        return value


class Heartbeat(wire.Heartbeat):
    """``guard.wire.Heartbeat`` with the bounds the daemon can store."""

    @field_validator("tasks_processing", "tasks_completed", "workers")
    @classmethod
    def _bounded_count(cls, value: int) -> int:
        if value > 10**9:
            raise ValueError("expected at most 1000000000")
        return value

    @field_validator("s3_requests")
    @classmethod
    def _bounded_requests(cls, value: dict[str, dict[str, int]] | None) -> dict[str, dict[str, int]] | None:
        if value is not None:
            _check_counts(value)
            for operations in value.values():
                _check_counts(operations)
        return value

    @field_validator("log_bytes_by_level")
    @classmethod
    def _bounded_bytes(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None:
            _check_counts(value)
        return value


def _check_counts(value: dict) -> None:
    if len(value) > MAX_ITEMS or any(len(k) > 256 for k in value):
        raise ValueError(f"expected at most {MAX_ITEMS} entries with names of at most 256 characters")
    if any(isinstance(count, int) and count > 2**62 for count in value.values()):
        raise ValueError("expected counts of at most 2**62")


class FindingOut(BaseModel):
    """A finding as the API and `guard findings --format json` return it (a stable contract)."""

    id: int
    rule: str
    resource_id: str
    resource_type: str
    account_id: str
    region: str
    owner: str
    severity: Literal["info", "low", "medium", "high"]
    waste_hourly_usd: float | None
    summary: str
    evidence: dict[str, Any]
    state: Literal["open", "resolved"]
    first_seen: str
    last_seen: str
    resolved_at: str | None
    notified_at: str | None = Field(description="when the webhook delivered the message announcing it")
    suggested_action: str
    billing: str


class ScanOut(BaseModel):
    id: int
    account_id: str
    region: str
    started_at: str
    finished_at: str
    duration_seconds: float
    status: Literal["ok", "partial", "failed"]
    api_calls: int
    api_calls_by_operation: dict[str, int]
    errors: list[dict[str, str]]
    rules_evaluated: list[str]
    rules_skipped: list[str]
    findings_open: int


class ActionOut(BaseModel):
    """An action's audit row: the intent (what, on what, why, who approved) and its outcome."""

    id: int
    key: str = Field(description="idempotency key: the same action for the same cause is never recorded twice")
    rule: str
    action: Literal["stop", "terminate", "snapshot-then-delete", "release", "set-retention", "delete",
                    "terminate-cluster"]
    account_id: str
    region: str
    resource_id: str
    resource_type: str
    owner: str
    finding_id: int | None
    parent_id: int | None = Field(description="the stop action a terminate follows")
    params: dict[str, Any]
    summary: str
    waste_hourly_usd: float | None
    status: Literal[STATUSES]
    mode: str
    approved_by: str | None
    planned_at: str
    approved_at: str | None
    started_at: str | None
    finished_at: str | None
    detail: dict[str, Any]
    error: str | None


class Approval(BaseModel):
    by: str = Field(min_length=1, max_length=200, pattern=r"\S",
                    description="who approves (recorded in the audit trail); not blank")


class Readiness(BaseModel):
    ready: bool
    regions_scanned: list[str]
    regions_pending: list[str]
    role: Literal["actor", "standby"] = Field(description=(
        "actor: this process holds the database's lease and acts; standby: it scans and serves read-only, the "
        "actor (another process on the same database) acts"))
    actor: str | None = Field(description="the lease holder (host:pid:id), None while nobody holds it")


def create_app(store: Store, metrics: DaemonMetrics, api_token: str, regions: list[str],
               ready: Callable[[], set[str]], audit: AuditLog | None = None,
               clusters: ClusterRegistry | None = None, owner_tokens: Mapping[str, str] | None = None,
               clock: Callable[[], datetime] | None = None,
               check_owners: Callable[[wire.ClusterRegistration], None] | None = None,
               lease: Lease | None = None) -> FastAPI:
    """The app; ``ready()`` returns the regions that have completed a successful scan; ``owner_tokens`` maps an
    owner to its token (the admin ``api_token`` stands for every owner); ``clock`` stamps heartbeats;
    ``check_owners`` reads a registration's instances from EC2 (see guard.ownership) before accepting it."""
    app = FastAPI(
        title="vmguard",
        description="Findings, scans, actions and registered clusters of the vmguard daemon. /v1 needs "
                    "`Authorization: Bearer <token>`: the admin token, or an owner's token (its own clusters).",
        version="1",
    )
    bearer = HTTPBearer(auto_error=False)
    known = [(api_token.encode(), ADMIN)] + [(token.encode(), owner) for owner, token in (owner_tokens or {}).items()]
    clock = clock or (lambda: datetime.now(timezone.utc))
    clusters = clusters or ClusterRegistry(store)

    def owner_of(presented: str | None) -> str | None:
        """The owner a token names (``*`` for the admin token), None for no or a wrong token."""
        found = None
        for secret, owner in known:  # every token compared, in constant time each
            if presented is not None and secrets.compare_digest(presented.encode(), secret):
                found = owner
        return found

    def unauthorized() -> HTTPException:
        return HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token (GUARD_API_TOKEN, or an "
                                                           "owner's token from GUARD_API_TOKENS)",
                             headers={"WWW-Authenticate": "Bearer"})

    def principal(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        """The owner the bearer token names (``*`` for the admin token); 401 when there is none or it is wrong."""
        found = owner_of(credentials.credentials if credentials is not None else None)
        if found is None:
            raise unauthorized()
        return found

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each wrong field and what is allowed; the values sent are not echoed back. A body that is not
        even JSON is found before the token is checked: without a known token that is a 401 all the same."""
        if request.url.path.startswith("/v1/"):
            scheme, _, presented = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or owner_of(presented.strip() or None) is None:
                error = unauthorized()
                return JSONResponse(status_code=error.status_code, content={"detail": error.detail},
                                    headers=error.headers)
        errors = [{"type": error.get("type", "value_error"), "loc": [str(part) for part in error.get("loc", ())],
                   "msg": str(error.get("msg", "invalid")).removeprefix("Value error, ")} for error in exc.errors()]
        message = "; ".join(f"{'.'.join(e['loc'][1:] if len(e['loc']) > 1 else e['loc']) or 'body'}: {e['msg']}"
                            for e in errors[:5])
        return JSONResponse(status_code=422,
                            content={"detail": errors, "message": message})

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, summary="Ready once every region has had a successful scan",
             responses={503: {"model": Readiness}})
    def readyz(response: Response) -> Readiness:
        done = ready()
        acting = lease is None or lease.held()
        readiness = Readiness(ready=all(r in done for r in regions), regions_scanned=sorted(done),
                              regions_pending=[r for r in regions if r not in done],
                              role="actor" if acting else "standby",
                              actor=lease.current_holder() if lease is not None else None)
        if not readiness.ready:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return readiness

    @app.get("/v1/findings", response_model=list[FindingOut], dependencies=[Depends(principal)],
             summary="Findings, costliest first")
    def findings(state: Literal["open", "resolved", "all"] = "open", rule: str | None = None,
                 region: str | None = None, limit: int = Query(1000, ge=1, le=10000)) -> list[dict[str, Any]]:
        return [row.as_dict() for row in store.findings(state=state, rule=rule, region=region, limit=limit)]

    @app.get("/v1/scans", response_model=list[ScanOut], dependencies=[Depends(principal)],
             summary="Recent scans, newest first")
    def scans(region: str | None = None, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        return [row.as_dict() for row in store.scans(region=region, limit=limit)]

    audit = audit or AuditLog(store)

    @app.get("/v1/actions", response_model=list[ActionOut], dependencies=[Depends(principal)],
             summary="The action audit trail, newest first")
    def actions(status: Literal[STATUSES] | None = None, rule: str | None = None, region: str | None = None,
                limit: int = Query(1000, ge=1, le=10000)) -> list[dict[str, Any]]:
        return [row.as_dict() for row in audit.actions(status=status, rule=rule, region=region, limit=limit)]

    @app.get("/v1/actions/{action_id}", response_model=ActionOut, dependencies=[Depends(principal)],
             summary="One action", responses={404: {"description": "no such action"}})
    def action(action_id: int) -> dict[str, Any]:
        row = audit.get(action_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"action {action_id}: no such action")
        return row.as_dict()

    @app.post("/v1/actions/{action_id}/approve", response_model=ActionOut,
              summary="Approve one planned (would-do) action: it runs at its region's next scan, through every gate",
              responses={403: {"description": "an owner's token: approving needs the admin token"},
                         404: {"description": "no such action"}, 409: {"description": "not a planned action"}})
    def approve(action_id: int, approval: Approval, caller: str = Depends(principal)) -> dict[str, Any]:
        if caller != ADMIN:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "approving an action needs the admin token "
                                                           "(GUARD_API_TOKEN), not an owner's token")
        if audit.get(action_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"action {action_id}: no such action")
        try:
            row = audit.approve(action_id, by=f"api:{approval.by}", now=datetime.now(timezone.utc))
        except ApprovalError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return row.as_dict()

    # -- registered clusters ----------------------------------------------------------------------------------------

    def mine(cluster_id: str, caller: str):
        row = clusters.get(cluster_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"cluster {cluster_id}: no such cluster")
        if caller != ADMIN and row.owner != caller:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"cluster {cluster_id} is not {caller}'s: an owner's "
                                                           "token reaches only that owner's clusters")
        return row

    def not_running(row) -> HTTPException:
        why = f" ({row.reason})" if row.reason else ""
        return HTTPException(status.HTTP_409_CONFLICT, f"cluster {row.cluster_id} is {row.state}{why}: it is no "
                                                       "longer running; launch a new cluster")

    @app.post("/v1/clusters", response_model=ClusterOut, status_code=status.HTTP_201_CREATED,
              summary="Register a cluster the SDK launched: the daemon terminates it when its heartbeats stop",
              responses={403: {"description": "the owner is not the token's owner, or an instance is tagged with "
                                              "another owner"},
                         409: {"description": "a cluster with this id is registered already"},
                         503: {"description": "EC2 does not show the instances yet, or cannot be read: retry"}})
    def register(registration: ClusterRegistration, caller: str = Depends(principal)) -> dict[str, Any]:
        if caller != ADMIN and registration.owner != caller:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this token is {caller}'s: it registers only {caller}'s "
                                                           f"clusters, not {registration.owner!r}'s")
        if check_owners is not None:
            try:
                check_owners(registration)
            except NotYourInstances as exc:
                raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
            except NotVisibleYet as exc:
                raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc),
                                    headers={"Retry-After": "2"}) from None
            except Exception as exc:  # no network, throttled, denied: the daemon cannot vouch for the owner now
                raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                    f"cannot read the cluster's instances from EC2: {describe_aws_error(exc)}; "
                                    "register again shortly", headers={"Retry-After": "5"}) from None
        row = clusters.register(registration, registered_by=caller, now=clock())
        if row is None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"cluster {registration.cluster_id} is registered already; "
                                                          "a new cluster needs a new id")
        return row.as_dict()

    @app.post("/v1/clusters/{cluster_id}/heartbeat", response_model=ClusterOut,
              summary="The cluster is alive (and what it is doing): its keepalive starts again",
              responses={403: {"description": "not this token's owner's cluster"}, 404: {"description": "unknown"},
                         409: {"description": "the cluster is no longer running (closed, expired, terminated)"}})
    def heartbeat(cluster_id: str, beat: Heartbeat, caller: str = Depends(principal)) -> dict[str, Any]:
        mine(cluster_id, caller)
        row, recorded = clusters.heartbeat(cluster_id, beat, clock())
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"cluster {cluster_id}: no such cluster")
        if not recorded:
            raise not_running(row)
        return row.as_dict()

    @app.delete("/v1/clusters/{cluster_id}", status_code=status.HTTP_204_NO_CONTENT,
                summary="The SDK shut the cluster down itself: no more heartbeats are expected",
                responses={403: {"description": "not this token's owner's cluster"}, 404: {"description": "unknown"},
                           409: {"description": "the daemon expired it already (see its state and reason)"}})
    def close(cluster_id: str, caller: str = Depends(principal)) -> Response:
        row = mine(cluster_id, caller)
        if row.state != CLOSED and not clusters.move(cluster_id, (RUNNING,), CLOSED, clock(),
                                                     reason="closed by the SDK"):
            raise not_running(clusters.get(cluster_id))
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.get("/v1/clusters", response_model=list[ClusterOut],
             summary="Registered clusters, newest first (an owner's token: only that owner's)")
    def list_clusters(caller: str = Depends(principal), state: ClusterState | None = None, owner: str | None = None,
                      limit: int = Query(1000, ge=1, le=10000)) -> list[dict[str, Any]]:
        if caller != ADMIN and owner not in (None, caller):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this token is {caller}'s: it lists only {caller}'s "
                                                           "clusters")
        rows = clusters.clusters(state=state, owner=owner if caller == ADMIN else caller, limit=limit)
        return [row.as_dict() for row in rows]

    @app.get("/v1/clusters/{cluster_id}", response_model=ClusterOut, summary="One registered cluster",
             responses={403: {"description": "not this token's owner's cluster"}, 404: {"description": "unknown"}})
    def one_cluster(cluster_id: str, caller: str = Depends(principal)) -> dict[str, Any]:
        return mine(cluster_id, caller).as_dict()

    return app
