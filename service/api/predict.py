"""The scoring routes (POST /predict, /models/{name}/predict, /v2/.../infer, /invocations) as a
plain ASGI handler, ahead of FastAPI's stack.

This is the hot path. FastAPI's middleware stack, routing, dependency injection and pydantic
validation cost more per request than the whole rest of a single-row prediction, so the app
(service/app.py) hands these routes straight to PredictEndpoint, which decodes the body with
orjson and calls the plain scoring code. Validation is still complete (see
service/predict.py and service/features.py) and /docs still documents these routes per model
(service/api/openapi.py).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import msgspec
import orjson

from service.batching import DeadlineExceeded, QueueFull
from service.predict import RequestError, predict, prepare, records_of
from service.protocols import mlflow, native, v2
from service.settings import Settings
from service.store import LoadedModel, ModelNotFound, ModelStore
from service.telemetry import Telemetry

log = logging.getLogger("tabserve.api")
PREDICT_PATH = re.compile(r"^/(?:models/(?P<name>[^/]+)/)?predict/?$")
V2_INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>\d+))?/infer/?$")
NO_SUCH_VERSION = -1  # a version path segment too long to be a version any store holds
TIMEOUT_HEADER = b"x-request-timeout-ms"  # lowers the request's deadline (never raises it)
JSON_HEADERS = [(b"content-type", b"application/json")]
ROUTES_KEPT = 1024  # parsed request paths remembered (the same few paths come again and again)

Scope = MutableMapping[str, Any]


@dataclass(frozen=True)
class Route:
    """Which scoring front door a request is for."""

    protocol: str  # "native" | "v2" | "mlflow"
    name: str | None = None
    version: int | None = None

    @property
    def template(self) -> str:
        """The route as metrics name it."""
        if self.protocol == "v2":
            return "/v2/models/{name}/infer"
        if self.protocol == "mlflow":
            return "/invocations"
        return "/predict" if self.name is None else "/models/{name}/predict"


class PredictEndpoint:
    """Answers every scoring route (native, KServe V2, MLflow): decode → the same validation and
    batcher (service/predict.py) → encode. The protocols differ only in their codecs."""

    def __init__(self, store: ModelStore, settings: Settings, telemetry: Telemetry) -> None:
        self.store, self.settings, self.telemetry = store, settings, telemetry
        self._routes: dict[str, Route | None] = {}

    def route(self, scope: Scope) -> Route | None:
        """The scoring route a request is for (whatever its method), or None when it is not one of ours."""
        if scope["type"] != "http":
            return None
        path = scope["path"]
        try:
            return self._routes[path]
        except KeyError:
            pass
        route = self._parse(path)
        if len(self._routes) < ROUTES_KEPT:  # bounded: paths come from clients
            self._routes[path] = route
        return route

    @staticmethod
    def _parse(path: str) -> Route | None:
        if path.startswith("/v2/"):
            match = V2_INFER_PATH.match(path)
            if match:
                version = match["version"]
                if version is None:
                    return Route("v2", match["name"])
                return Route("v2", match["name"], int(version) if len(version) <= 18 else NO_SUCH_VERSION)
            return None
        if path in ("/invocations", "/invocations/"):
            return Route("mlflow")
        match = PREDICT_PATH.match(path)
        return Route("native", match["name"]) if match else None

    async def handle(self, scope: Scope, receive: Any, send: Any, route: Route) -> None:
        """Answer one scoring request (never raises: every outcome is a JSON response)."""
        started = perf_counter()
        extra: list[tuple[bytes, bytes]] = []
        try:
            if scope["method"] != "POST":
                # a GET by mistake (curl without -d) should hear "use POST", not "Not Found"
                extra = [(b"allow", b"POST")]
                raise RequestError(
                    405, f"{scope['method']} is not allowed on {scope['path']}: send the request with POST"
                )
            if route.protocol == "v2":
                answer = await self._v2(scope, receive, route)
            elif route.protocol == "mlflow":
                answer = await self._mlflow(scope, receive)
            else:
                answer = await self._predict(scope, receive, route.name)
            status, body = 200, orjson.dumps(answer)
        except RequestError as exc:
            # MLflow answers every bad input with 400 BAD_REQUEST
            status = 400 if route.protocol == "mlflow" and exc.status == 422 else exc.status
            body = orjson.dumps(_error(route, status, exc.to_json()))
        except QueueFull as exc:
            status, body = 503, orjson.dumps(_error(route, 503, {"error": f"server busy: {exc}; retry shortly"}))
            extra = [(b"retry-after", b"1")]
        except DeadlineExceeded as exc:
            status, body = 504, orjson.dumps(_error(route, 504, {"error": f"deadline exceeded: {exc}"}))
        except Exception:
            log.exception("prediction failed")
            doc = {"error": "internal error while scoring; see the server log"}
            status, body = 500, orjson.dumps(_error(route, 500, doc))
        # with a Content-Length the answer goes out in one piece, not chunked
        headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(body)), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.telemetry.request(route.template, status, perf_counter() - started)

    def _model(self, name: str | None) -> LoadedModel:
        try:
            return self.store.get(name)
        except ModelNotFound as exc:
            raise RequestError(404 if self.store.ready else 503, str(exc)) from None

    async def _model_version(self, name: str | None, version: int) -> LoadedModel:
        try:
            return await self.store.get_version(name, version)
        except ModelNotFound as exc:
            raise RequestError(404 if self.store.ready else 503, str(exc)) from None

    def _timeout(self, header: bytes | None) -> float:
        """The request's deadline in seconds: the setting, or less when the client asks."""
        if header is None:
            return self.settings.request_timeout_s
        try:
            wanted = float(header) / 1000 if len(header) <= 32 else math.nan
        except ValueError:
            wanted = math.nan
        if not wanted > 0:  # NaN, zero or negative
            raise RequestError(400, f"{TIMEOUT_HEADER.decode()} must be a positive number of milliseconds")
        return min(wanted, self.settings.request_timeout_s)

    async def _predict(self, scope: Scope, receive: Any, name: str | None) -> dict[str, Any]:
        timeout = self._timeout(check_json_request(scope, self.settings.max_body_bytes))
        raw = await read_body(receive, self.settings.max_body_bytes)
        model = self._model(name)
        fast = native.typed_records(model.pre)
        job = fast.prepare(raw, self.settings.max_records) if fast is not None else None
        if job is None:  # anything unusual: the general path accepts, warns or explains it
            records = records_of(_json(raw), self.settings.max_records)
            job = prepare(model.pre, records)
            del records
        del raw  # freed before the wait for a batch (see Prepared)
        return await predict(model, job, timeout)

    async def _v2(self, scope: Scope, receive: Any, route: Route) -> dict[str, Any]:
        headers = dict(scope["headers"])
        timeout = self._timeout(headers.get(TIMEOUT_HEADER))
        check_length(headers.get(b"content-length", b""), self.settings.max_body_bytes)
        raw = await read_body(receive, self.settings.max_body_bytes)
        text, binary = v2.split_binary(raw, v2.header_length(headers.get(b"inference-header-content-length")))
        if route.version is None:  # the usual request: no coroutine for the lookup
            model = self._model(route.name)
        else:
            model = await self._model_version(route.name, route.version)
        single = None if binary else v2.single_row(model.pre, text)
        if single is not None:
            enc, rows, request_id, outputs = single.enc, 1, single.request_id, single.outputs
        else:
            doc = _json(text)
            outputs = v2.check_outputs(model.pre, doc)
            enc, rows = v2.encode_request(model.pre, doc, binary, self.settings.max_records)
            request_id = v2.checked_id(doc.get("id", v2.NO_ID))
            del doc
        del raw, text, binary, single  # freed before the wait for a batch (see service.predict.Prepared)
        out = await model.infer(enc, timeout)
        return v2.response(model.pre, model.name, model.version, out, outputs, request_id, rows, enc)

    async def _mlflow(self, scope: Scope, receive: Any) -> dict[str, Any]:
        headers = dict(scope["headers"])
        timeout = self._timeout(headers.get(TIMEOUT_HEADER))
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        check_length(headers.get(b"content-length", b""), self.settings.max_body_bytes)
        raw = await read_body(receive, self.settings.max_body_bytes)
        if content_type == b"text/csv":
            records = mlflow.records_from_csv(raw)
        elif content_type == b"application/json":
            records = mlflow.records_from_json(_json(raw))
        else:
            raise RequestError(
                415, f"Content-Type must be application/json or text/csv, not {content_type.decode(errors='replace')!r}"
            )
        records = records_of({"records": records}, self.settings.max_records)
        model = self._model(None)
        job = prepare(model.pre, records)
        del records, raw
        answer = await predict(model, job, timeout)
        return mlflow.predictions(answer["predictions"])


def _json(raw: bytes) -> Any:
    """The body as Python values. msgspec, not orjson: it keeps integers beyond 64 bits exact, so
    an id is echoed as sent or refused by name, never silently turned into a float."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON: nested too deeply") from None


def _error(route: Route, status: int, doc: dict[str, Any]) -> dict[str, Any]:
    """The error body in the route's protocol: MLflow has its own shape, V2 and native share one."""
    if route.protocol != "mlflow":
        return doc
    code = {503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}.get(
        status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"
    )
    message = doc["error"]
    if len(doc.get("details", ())) > 1:  # the first detail is the message itself
        message += "; " + "; ".join(
            f"record {d['record']}, field '{d['field']}': {d['message']}" for d in doc["details"][1:6]
        )
    return {"error_code": code, "message": message}


def check_length(length: bytes, limit: int) -> None:
    """413 when a declared Content-Length is over the limit."""
    if length.isdigit() and (len(length) > 18 or int(length) > limit):
        raise RequestError(413, f"body of {length[:40].decode()} bytes is over the {limit}-byte limit")


def check_json_request(scope: Scope, limit: int) -> bytes | None:
    """415 unless the body is declared JSON; 413 when Content-Length is over the limit. Returns the
    timeout header, if any (read in the same pass over the headers)."""
    content_type, length, timeout = b"", b"", None
    for key, value in scope["headers"]:
        if key == b"content-type":
            content_type = value
        elif key == b"content-length":
            length = value
        elif key == TIMEOUT_HEADER:
            timeout = value
    if content_type != b"application/json" and content_type.split(b";")[0].strip().lower() != b"application/json":
        raise RequestError(415, f"Content-Type must be application/json, not {content_type.decode(errors='replace')!r}")
    check_length(length, limit)
    return timeout


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
