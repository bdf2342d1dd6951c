"""Delayed labels: outcomes posted against the ids of logged predictions (monitoring/feedback.py)."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from monitoring.feedback import Feedback, LogUnreadable, Stored, records_of
from service.api.deps import PlaneDep, SettingsDep, TelemetryDep
from service.api.predict import HttpError, inflated
from service.errors import InputError
from service.store import ModelNotFound

router = APIRouter(prefix="/models", tags=["monitoring"])
logger = logging.getLogger("tabserve.feedback")
MEDIA_TYPES = ("application/json", "text/csv")
STATUS = {"malformed": 400, "too_large": 413, "invalid": 422}
# feedback calls looked up at once per process: each reads the log for its ids, and fifty at once
# held fifty reads (8.9 GB); the rest wait their turn, bounded by the client's own timeout
LOOKUPS_AT_ONCE = 2


@router.post("/{name}/feedback", responses={404: {}, 409: {}, 413: {}, 415: {}, 422: {}, 500: {}})
async def feedback(
    name: str, request: Request, plane: PlaneDep, settings: SettingsDep, telemetry: TelemetryDep, partial: bool = False
) -> Any:
    """Outcomes for logged predictions, keyed by the model's id column: `{"records": [{"customerID": "…",
    "Churn": "Yes"}]}` or a CSV. A record whose id was never scored, or whose outcome is not a label, is
    named; with `?partial=true` the others are stored, else nothing is."""
    if plane.log is None:
        raise HTTPException(409, "the service runs without a prediction log (--log DIR): feedback has nothing to join")
    try:
        model = plane.model(name)
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise HTTPException(415, f"Content-Type must be application/json or text/csv, not {media!r}")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > settings.max_body_bytes:
        raise HTTPException(413, f"body of {length} bytes is over the {settings.max_body_bytes}-byte limit")
    body = await request.body()
    if len(body) > settings.max_body_bytes:
        raise HTTPException(413, f"body is over the {settings.max_body_bytes}-byte limit")
    encoding = request.headers.get("content-encoding", "identity").encode("latin-1")
    try:  # as the scoring routes read it: a gzip body was read as CSV (a 500) or JSON
        body = inflated(body, {b"content-encoding": encoding}, settings.max_body_bytes)
    except HttpError as exc:
        raise HTTPException(exc.status, exc.message) from None
    log = plane.log

    def store() -> Stored:
        log.flush()  # what this process scored a moment ago is on disk to be found
        return Feedback(log.location, model.name, model.pre).submit(records_of(body, media), partial)

    try:
        async with _lookups(request):
            stored = await asyncio.to_thread(store)
    except InputError as exc:
        return JSONResponse(exc.to_json(), STATUS[exc.kind])
    except LogUnreadable as exc:  # the log is the server's to mend: a 500 that says what to mend
        logger.error("feedback for %s: %s", model.name, exc)
        return JSONResponse({"error": str(exc)}, 500)
    pre_of = functools.partial(plane.store.preprocess_of, model.name)
    telemetry.live(model.name, model.pre, settings.monitor_window, pre_of).add_all(stored.labelled)
    shadow = plane.store.shadows.get(model.name)
    if shadow is not None:  # the challenger's outputs on the same records, when it shadowed them
        shadow.labelled(stored.labelled)
    return {"model": model.name, "stored": stored.stored, "duplicates": stored.duplicates, "refused": stored.refused}


def _lookups(request: Request) -> asyncio.Semaphore:
    """The app's feedback slots (made on its loop, at its first feedback call)."""
    state = request.app.state
    if getattr(state, "feedback_lookups", None) is None:
        state.feedback_lookups = asyncio.Semaphore(LOOKUPS_AT_ONCE)
    slots: asyncio.Semaphore = state.feedback_lookups
    return slots
