"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import StoreDep

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "live"}


@router.get("/ready", responses={503: {"description": "Models are still loading (or none exist)"}})
def ready(store: StoreDep) -> JSONResponse:
    """Ready once every model is loaded and warm, with the provider each really runs on."""
    models: dict[str, Any] = {m.name: {"version": m.version, "provider": m.provider} for m in store.current.values()}
    status = "ready" if store.ready else "loading"
    return JSONResponse({"status": status, "models": models}, status_code=200 if store.ready else 503)
