"""Admin: reload the model store on demand (token required)."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException

from service.api.deps import SettingsDep, StoreDep

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/reload", responses={401: {}, 403: {}})
async def reload(
    store: StoreDep, settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """Load new bundle versions now; answers what was loaded, what serves, and what is refused."""
    if not settings.admin_token:
        raise HTTPException(403, "admin endpoints are disabled: set TABSERVE_ADMIN_TOKEN")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), settings.admin_token.encode()):
        raise HTTPException(
            401,
            "a valid 'Authorization: Bearer <admin token>' header is required",
            headers={"WWW-Authenticate": 'Bearer realm="tabserve admin"'},
        )
    report = await store.refresh()
    current = {m.name: m.version for m in store.current.values()}
    return {**report.to_json(), "current": current, "refused": store.refused()}
