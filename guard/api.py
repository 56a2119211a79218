"""The HTTP API: /metrics, /healthz, /readyz and the token-protected /v1 resources (OpenAPI at /docs)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

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


class Readiness(BaseModel):
    ready: bool
    regions_scanned: list[str]
    regions_pending: list[str]


def create_app(store: Store, metrics: DaemonMetrics, api_token: str, regions: list[str],
               ready: Callable[[], set[str]]) -> FastAPI:
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

    return app
