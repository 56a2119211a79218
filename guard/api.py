"""The HTTP API: /metrics, /healthz, /readyz and the token-protected /v1 resources (OpenAPI at /docs)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from guard.audit import STATUSES, ApprovalError, AuditLog
from guard.metrics import DaemonMetrics
from guard.store import Store


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
    action: Literal["stop", "terminate", "snapshot-then-delete", "release", "set-retention", "delete"]
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


def create_app(store: Store, metrics: DaemonMetrics, api_token: str, regions: list[str],
               ready: Callable[[], set[str]], audit: AuditLog | None = None) -> FastAPI:
    """The app; ``ready()`` returns the regions that have completed a successful scan."""
    app = FastAPI(
        title="vmguard",
        description="Findings, scans and metrics of the vmguard daemon. /v1 needs `Authorization: Bearer <token>`.",
        version="1",
    )
    bearer = HTTPBearer(auto_error=False)

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), api_token.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token (GUARD_API_TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

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
        readiness = Readiness(ready=all(r in done for r in regions), regions_scanned=sorted(done),
                              regions_pending=[r for r in regions if r not in done])
        if not readiness.ready:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return readiness

    @app.get("/v1/findings", response_model=list[FindingOut], dependencies=[Depends(require_token)],
             summary="Findings, costliest first")
    def findings(state: Literal["open", "resolved", "all"] = "open", rule: str | None = None,
                 region: str | None = None, limit: int = Query(1000, ge=1, le=10000)) -> list[dict[str, Any]]:
        return [row.as_dict() for row in store.findings(state=state, rule=rule, region=region, limit=limit)]

    @app.get("/v1/scans", response_model=list[ScanOut], dependencies=[Depends(require_token)],
             summary="Recent scans, newest first")
    def scans(region: str | None = None, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        return [row.as_dict() for row in store.scans(region=region, limit=limit)]

    audit = audit or AuditLog(store)

    @app.get("/v1/actions", response_model=list[ActionOut], dependencies=[Depends(require_token)],
             summary="The action audit trail, newest first")
    def actions(status: Literal[STATUSES] | None = None, rule: str | None = None, region: str | None = None,
                limit: int = Query(1000, ge=1, le=10000)) -> list[dict[str, Any]]:
        return [row.as_dict() for row in audit.actions(status=status, rule=rule, region=region, limit=limit)]

    @app.get("/v1/actions/{action_id}", response_model=ActionOut, dependencies=[Depends(require_token)],
             summary="One action", responses={404: {"description": "no such action"}})
    def action(action_id: int) -> dict[str, Any]:
        row = audit.get(action_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"action {action_id}: no such action")
        return row.as_dict()

    @app.post("/v1/actions/{action_id}/approve", response_model=ActionOut, dependencies=[Depends(require_token)],
              summary="Approve one planned (would-do) action: it runs at its region's next scan, through every gate",
              responses={404: {"description": "no such action"}, 409: {"description": "not a planned action"}})
    def approve(action_id: int, approval: Approval) -> dict[str, Any]:
        if audit.get(action_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"action {action_id}: no such action")
        try:
            row = audit.approve(action_id, by=f"api:{approval.by}", now=datetime.now(timezone.utc))
        except ApprovalError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return row.as_dict()

    return app
