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
    """Ready once every model is loaded and warm, with the provider each really runs on. Versions and
    release files refused are listed but leave it ready: one model's broken file would take the
    service (every other model) out of its load balancer."""
    models: dict[str, Any] = {m.name: {"version": m.version, "provider": m.provider} for m in store.current.values()}
    if store.ready:
        return JSONResponse({"status": "ready", "models": models, "refused": store.refused()})
    if not store.refreshed:
        return JSONResponse({"status": "loading", "models": models}, status_code=503)
    where = store.settings.models_dir  # read, and nothing in it loads: not a wait, a store to fill
    why = f"{where} holds no servable bundle (publish one with tabserve train; refused ones: GET /models)"
    return JSONResponse({"status": "no models", "models": models, "why": why}, status_code=503)
