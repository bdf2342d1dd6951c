"""Admin (token required): reload the model store on demand; promote, canary, roll back and shadow
(the same decisions as `tabserve promote|rollback|shadow`, recorded in release.json)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from service import bundle, release
from service.api.deps import SettingsDep, StoreDep
from service.features import shown
from service.protocols.base import keys_twice
from service.store import ModelStore


def authorized(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """The admin token, or 403 (admin off) / 401."""
    if not settings.admin_token:
        raise HTTPException(403, "admin endpoints are disabled: set TABSERVE_ADMIN_TOKEN")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), settings.admin_token.encode()):
        raise HTTPException(
            401,
            "a valid 'Authorization: Bearer <admin token>' header is required",
            headers={"WWW-Authenticate": 'Bearer realm="tabserve admin"'},
        )


Admin = Annotated[None, Depends(authorized)]


async def once_each(request: Request, _: Admin) -> None:
    """A key given twice is refused (422), as on the scoring routes: `{"version": 1, "version": 9}`
    promoted 9, the last, without a word."""
    raw = await request.body()
    try:
        twice = keys_twice(raw) if raw.strip() else []
    except Exception:  # noqa: BLE001 - not JSON: the body's own validation says so
        return
    if twice:
        raise HTTPException(422, f"field {shown(twice[0][1])} is given twice: which value is meant is a guess")


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(once_each)])


@router.post("/reload", responses={401: {}, 403: {}})
async def reload(store: StoreDep, _: Admin) -> dict[str, Any]:
    """Load new bundle versions now; answers what was loaded, what serves, and what is refused."""
    report = await store.refresh()
    current = {m.name: m.version for m in store.current.values()}
    return {**report.to_json(), "current": current, "refused": store.refused()}


class Decision(BaseModel):
    # a misspelt key is refused: `{"versoin": 5}` promoted the challenger, not version 5
    model_config = ConfigDict(extra="forbid")
    why: str = Field("", max_length=500)


class Promotion(Decision):
    # strict: `true` or "2" is no version number (a lax int read them as 1 and 2), nor a share
    version: StrictInt | None = Field(None, description="the version to promote (default: the challenger)")
    canary: float | None = Field(
        None, gt=0, lt=100, allow_inf_nan=False, strict=True, description="percent of traffic instead of all of it"
    )


class Shadowing(Decision):
    on: StrictBool  # "yes" or 1 is no answer (a lax bool read them as true)


@router.post("/models/{name}/promote", responses={401: {}, 403: {}, 404: {}, 409: {}})
async def promote(name: str, store: StoreDep, _: Admin, body: Promotion | None = None) -> dict[str, Any]:
    """Make a version champion, or (`canary`) let it answer that percent of the traffic, sticky per id.
    No body: the challenger becomes champion."""
    body = body or Promotion()
    canary = body.canary / 100 if body.canary is not None else None
    return await _decide(store, name, "promote", body.version, canary=canary, why=body.why)


@router.post("/models/{name}/rollback", responses={401: {}, 403: {}, 404: {}, 409: {}})
async def rollback(name: str, store: StoreDep, _: Admin, body: Decision | None = None) -> dict[str, Any]:
    """Put the previous champion back (and end any canary)."""
    return await _decide(store, name, "rollback", why=body.why if body else "")


@router.post("/models/{name}/shadow", responses={401: {}, 403: {}, 404: {}, 409: {}})
async def shadow(name: str, body: Shadowing, store: StoreDep, _: Admin) -> dict[str, Any]:
    """Turn the challenger's shadow scoring on or off for this model."""
    return await _decide(store, name, "shadow", shadow=body.on, why=body.why)


async def _decide(
    store: ModelStore, name: str, action: str, version: int | None = None, **options: Any
) -> dict[str, Any]:
    root = store.settings.models_dir
    try:
        bundle.check_name(name)  # never a path outside the store
    except bundle.BundleError:
        raise HTTPException(404, f"no model named {name!r} in the store") from None
    if not bundle.versions(root, name):
        raise HTTPException(404, f"no model named {name!r} in the store")
    try:
        release.refuse_control_characters(options.get("why", ""))
    except release.ReleaseError as exc:
        raise HTTPException(422, str(exc)) from None
    try:
        await asyncio.to_thread(release.decide, root, name, action, version, by="admin API", **options)
    except release.ReleaseError as exc:
        raise HTTPException(409, str(exc)) from None
    report = await store.refresh()  # this worker now; the others at their next poll
    return {"model": name, **store.release_state(name), "failed": report.failed}
