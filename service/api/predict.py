"""POST /predict and /models/{name}/predict as a plain ASGI handler, ahead of FastAPI's stack.

NOTE: this is the hot path. FastAPI's middleware stack, routing, dependency injection and pydantic
validation cost more per request than the whole rest of a single-row prediction, so the app
(service/app.py) hands these routes straight to PredictEndpoint, which decodes the body with
orjson and calls the plain scoring code. Validation is still complete (see
service/predict.py and service/features.py) and /docs still documents these routes per model
(service/api/openapi.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from time import perf_counter
from typing import Any

import orjson

from service.batching import QueueFull
from service.predict import RequestError, predict, records_of
from service.settings import Settings
from service.store import ModelNotFound, ModelStore
from service.telemetry import Telemetry

log = logging.getLogger("tabserve.api")
PREDICT_PATH = re.compile(r"^/(?:models/(?P<name>[^/]+)/)?predict/?$")
JSON_HEADERS = [(b"content-type", b"application/json")]

Scope = MutableMapping[str, Any]


class PredictEndpoint:
    """Answers the predict routes: decode → score (service/predict.py) → encode."""

    def __init__(self, store: ModelStore, settings: Settings, telemetry: Telemetry) -> None:
        self.store, self.settings, self.telemetry = store, settings, telemetry

    def route(self, scope: Scope) -> str | bool | None:
        """The model name a POST to this path is for (None: the default model); False: not ours."""
        if scope["type"] == "http" and scope["method"] == "POST":
            match = PREDICT_PATH.match(scope["path"])
            if match:
                return match["name"]
        return False

    async def handle(self, scope: Scope, receive: Any, send: Any, name: str | None) -> None:
        """Answer one predict request (never raises: every outcome is a JSON response)."""
        started = perf_counter()
        headers = JSON_HEADERS
        try:
            status, body = 200, orjson.dumps(await self._predict(scope, receive, name))
        except RequestError as exc:
            status, body = exc.status, orjson.dumps(exc.to_json())
        except QueueFull as exc:
            status, body = 503, orjson.dumps({"error": f"server busy: {exc}; retry shortly"})
            headers = [*JSON_HEADERS, (b"retry-after", b"1")]
        except Exception:
            log.exception("prediction failed")
            status, body = 500, orjson.dumps({"error": "internal error while scoring; see the server log"})
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        route = "/predict" if name is None else "/models/{name}/predict"
        self.telemetry.request(route, status, perf_counter() - started)

    async def _predict(self, scope: Scope, receive: Any, name: str | None) -> dict[str, Any]:
        check_json_request(scope, self.settings.max_body_bytes)
        raw = await read_body(receive, self.settings.max_body_bytes)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RequestError(400, f"malformed JSON: {exc}") from None
        records = records_of(doc, self.settings.max_records)
        try:
            model = self.store.get(name)
        except ModelNotFound as exc:
            raise RequestError(404 if self.store.ready else 503, str(exc)) from None
        return await predict(model, records)


def check_json_request(scope: Scope, limit: int) -> None:
    """415 unless the body is declared JSON; 413 when Content-Length is over the limit."""
    content_type, length = b"", b""
    for key, value in scope["headers"]:
        if key == b"content-type":
            content_type = value
        elif key == b"content-length":
            length = value
    if content_type != b"application/json" and content_type.split(b";")[0].strip().lower() != b"application/json":
        raise RequestError(415, f"Content-Type must be application/json, not {content_type.decode(errors='replace')!r}")
    if length.isdigit() and int(length) > limit:
        raise RequestError(413, f"body of {int(length)} bytes is over the {limit}-byte limit")


async def read_body(receive: Any, limit: int) -> bytes:
    """The whole request body, refusing (413) as soon as it grows past the limit."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body is over the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
