"""POST /models/{name}/score: the HTTP side of CSV uploads (service/scoring/upload.py)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.deps import PlaneDep, SettingsDep, UploadsDep
from service.explain import checked_explain
from service.features import text_encoding
from service.scoring.upload import BodyTooLarge, ResponsePipe, UploadsBusy
from service.settings import Settings
from service.store import ModelNotFound

log = logging.getLogger("tabserve.score")
router = APIRouter(tags=["score"])
# the body is read as a stream, not a declared parameter, so the spec says it here
CSV_BODY = {
    "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string", "format": "binary"}}}}
}
RETRY_AFTER_S = 5  # uploads take seconds to minutes: a short wait is enough


class PipeResponse(StreamingResponse):
    """A ResponsePipe streamed without calling `receive`, which would swallow the body being read."""

    def __init__(self, answer: ResponsePipe, headers: dict[str, str]) -> None:
        super().__init__(answer.chunks(), media_type="text/csv", headers=headers)
        self.answer = answer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.answer.close_reader()  # also when the client left before the first chunk


def _check_upload(request: Request, settings: Settings) -> tuple[bool, str | None]:
    """415 or 413 from the headers; whether the body is gzip, and the charset the Content-Type names."""
    content_type, *params = request.headers.get("content-type", "").split(";")
    content_type = content_type.strip().lower()
    if content_type not in ("text/csv", "application/csv"):
        raise HTTPException(415, f"Content-Type must be text/csv, not {content_type or 'missing'!r}")
    named = [p.split("=", 1) for p in params if "=" in p]
    charset = next((v.strip().strip('"') for k, v in named if k.strip().lower() == "charset"), None)
    if charset is not None and not text_encoding(charset):
        raise HTTPException(415, f"Content-Type charset {charset!r} is not an encoding tabserve reads")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise HTTPException(415, f"Content-Encoding {encoding!r} is not supported: send the CSV as is, or gzip")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > settings.max_score_bytes:
        raise HTTPException(413, f"body of {length} bytes is over the {settings.max_score_bytes}-byte limit")
    return encoding != "identity", charset or None


def _refused(exc: Exception) -> JSONResponse:
    """A failure before the first output byte, as JSON."""
    status = 413 if isinstance(exc, BodyTooLarge) else 422 if isinstance(exc, ValueError) else 500
    if status == 500:
        log.error("upload scoring failed: %r", exc)
    return JSONResponse({"error": str(exc) or type(exc).__name__}, status_code=status)


@router.post(
    "/models/{name}/score",
    responses={200: {"content": {"text/csv": {}}}, 404: {}, 413: {}, 415: {}, 422: {}, 503: {}},
    response_class=PipeResponse,
    status_code=200,  # else FastAPI looks for it in the response class's __init__
    openapi_extra=CSV_BODY,
)
async def score(
    name: str,
    request: Request,
    plane: PlaneDep,
    uploads: UploadsDep,
    settings: SettingsDep,
    keep: Annotated[list[str] | None, Query(description="Input column to copy to the output (repeatable).")] = None,
    keep_all: Annotated[bool, Query(description="Copy every input column.")] = False,
    explain: Annotated[
        str | None,
        Query(description="Reason codes: N (1-100) adds reason_1, effect_1 … per row; `all`, effect_<feature>."),
    ] = None,
    sep: Annotated[str | None, Query(description="CSV delimiter (default: told by the header).")] = None,
    decimal: Annotated[
        str | None, Query(description="Decimal mark of the file's numbers, . or , (default: the training file's).")
    ] = None,
    encoding: Annotated[
        str | None,
        Query(description="Text encoding (default: the Content-Type's charset, else the training file's)."),
    ] = None,
) -> Any:
    """Score a CSV upload (`Content-Type: text/csv`): one output row per input row, in order, with
    the id columns (or `keep`), the predictions, any reason columns, `warning` and `error`; streamed
    both ways."""
    gzip, charset = _check_upload(request, settings)
    try:
        reasons = checked_explain(explain or None, "?explain")  # `?explain=` asks nothing, as on /predict
        model = plane.model(name)
        reading = model.pre.read.but(sep, encoding, decimal, flag="?")
        if encoding is None and charset:  # a label clients often set by default: preferred, as the bundle's is
            reading = replace(reading, encoding=charset)
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    try:
        upload = uploads.open(model, gzip)
    except UploadsBusy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    upload.start(request.stream(), keep, keep_all, reasons, reading)
    try:
        await upload.started
    except BaseException as exc:  # before the first byte: a JSON error; cancelling is raised
        upload.answer.close_reader()
        if not isinstance(exc, Exception):
            raise
        return _refused(exc)
    headers = {"x-tabserve-model": upload.model.name, "x-tabserve-version": str(upload.model.version)}
    return PipeResponse(upload.answer, headers=headers)
