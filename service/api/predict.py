"""The scoring routes as a plain ASGI handler ahead of FastAPI's stack (which costs more than a
prediction): read → decode → infer → encode, plus HTTP's paths, headers, limits and statuses."""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import MutableMapping
from dataclasses import dataclass
from time import perf_counter
from typing import Any
from urllib.parse import parse_qs

import orjson

from service.batching import DeadlineExceeded, QueueFull
from service.dataplane import DataPlane
from service.errors import InputError
from service.explain import Explain
from service.features import EncodingError
from service.protocols import MEDIA_TYPES
from service.protocols.base import explain_of
from service.settings import Settings
from service.store import LoadedModel, ModelNotFound, version_in_path
from service.telemetry import Telemetry

log = logging.getLogger("tabserve.api")
PREDICT_PATH = re.compile(r"^/(?:models/(?P<name>[^/]+)/)?predict/?$")
V2_INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer/?$")
TIMEOUT_HEADER = b"x-request-timeout-ms"  # lowers the request's deadline (never raises it)
REQUEST_ID_HEADER = b"x-request-id"  # kept in the prediction log (a client's trace id)
JSON_HEADERS = [(b"content-type", b"application/json")]
UTF8_BOM = b"\xef\xbb\xbf"  # Windows tools write one; RFC 8259 lets a parser ignore it
BINARY_HEADER = b"inference-header-content-length"  # V2's binary extension: where the JSON part ends
ROUTES_KEPT = 1024  # parsed request paths remembered (the same few paths come again and again)

Scope = MutableMapping[str, Any]


@dataclass(frozen=True)
class ScoringProtocol:
    """A scoring protocol as HTTP serves it."""

    name: str  # its codec's key (service.protocols.codecs_for)
    invalid_status: int  # for a body that does not fit the model (MLflow and V2 say 400)

    @property
    def media_types(self) -> tuple[bytes, ...] | None:
        """The Content-Types its codec decodes (None: any)."""
        return MEDIA_TYPES[self.name]


NATIVE, V2, MLFLOW = ScoringProtocol("native", 422), ScoringProtocol("v2", 400), ScoringProtocol("mlflow", 400)
STATUS = {"malformed": 400, "too_large": 413}


class HttpError(Exception):
    """An answer decided by HTTP alone (method, headers, model lookup)."""

    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or []


@dataclass(frozen=True)
class Route:
    """Which scoring front door a request is for."""

    protocol: ScoringProtocol
    template: str  # the route as metrics name it
    name: str | None = None
    version: int | str | None = None  # text: a segment that names no version (store.version_in_path)


class PredictEndpoint:
    """Answers every scoring route: read → decode → infer → encode."""

    def __init__(self, plane: DataPlane, settings: Settings, telemetry: Telemetry) -> None:
        self.plane, self.settings, self.telemetry = plane, settings, telemetry
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
        route = parse_route(path)
        if len(self._routes) < ROUTES_KEPT:  # bounded: paths come from clients
            self._routes[path] = route
        return route

    async def handle(self, scope: Scope, receive: Any, send: Any, route: Route) -> None:
        """Answer one scoring request (never raises: every outcome is a JSON response)."""
        started = perf_counter()
        extra: list[tuple[bytes, bytes]] = []
        try:
            status, body = 200, orjson.dumps(await self._answer(scope, receive, route))
        except Exception as exc:  # noqa: BLE001 (each outcome is an answer; the unexpected ones are logged)
            status, doc, extra = outcome(exc, route.protocol)
            body = orjson.dumps(mlflow_error(status, doc) if route.protocol is MLFLOW else doc)
        # with a Content-Length the answer goes out in one piece, not chunked
        headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(body)), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.telemetry.request(route.template, status, perf_counter() - started)

    async def _answer(self, scope: Scope, receive: Any, route: Route) -> dict[str, Any]:
        if scope["method"] != "POST":  # a GET by mistake (curl without -d) should hear "use POST"
            message = f"{scope['method']} is not allowed on {scope['path']}: send the request with POST"
            raise HttpError(405, message, [(b"allow", b"POST")])
        headers = dict(scope["headers"])
        check_head(headers, route.protocol.media_types, self.settings.max_body_bytes)
        timeout = self._timeout(headers.get(TIMEOUT_HEADER))
        explain = explain_in_query(scope["query_string"]) if scope.get("query_string") else None
        body = inflated(await read_body(receive, self.settings.max_body_bytes), headers, self.settings.max_body_bytes)
        if body.startswith(UTF8_BOM):  # one prefix test: the usual body pays nothing more
            body = without_bom(body, headers)
        model = await self._model(route)
        codec = model.codecs[route.protocol.name]
        request = codec.decode(body, headers, explain)
        if route.version is None and self.plane.store.canary:  # a canary runs: its ids may go to the challenger
            chosen = self.plane.canary(model, request)
            if chosen is not model:  # the challenger reads the body with its own contract
                model, codec = chosen, chosen.codecs[route.protocol.name]
                request = codec.decode(body, headers, explain)
        del body  # freed before the wait for a batch
        if self.plane.log is not None:
            request.request_id = request_id(headers.get(REQUEST_ID_HEADER))
        return codec.encode(await self.plane.infer(model, request, timeout))

    async def _model(self, route: Route) -> LoadedModel:
        try:
            if route.version is None:  # the usual request: no coroutine for the lookup
                return self.plane.model(route.name)
            return await self.plane.model_version(route.name, route.version)
        except ModelNotFound as exc:
            raise HttpError(404 if self.plane.store.ready else 503, str(exc)) from None

    def _timeout(self, header: bytes | None) -> float:
        """The request's deadline in seconds: the setting, or less when the client asks."""
        if header is None:
            return self.settings.request_timeout_s
        try:
            wanted = float(header) / 1000 if len(header) <= 32 else math.nan
        except ValueError:
            wanted = math.nan
        if not wanted > 0:  # NaN, zero or negative
            raise HttpError(400, f"{TIMEOUT_HEADER.decode()} must be a positive number of milliseconds")
        return min(wanted, self.settings.request_timeout_s)


def parse_route(path: str) -> Route | None:
    """The scoring route of a path, or None."""
    if path.startswith("/v2/"):
        match = V2_INFER_PATH.match(path)
        if not match:
            return None
        version = None if match["version"] is None else version_in_path(match["version"])
        return Route(V2, "/v2/models/{name}/infer", match["name"], version)
    if path in ("/invocations", "/invocations/"):
        return Route(MLFLOW, "/invocations")
    match = PREDICT_PATH.match(path)
    if not match:
        return None
    return Route(NATIVE, "/predict" if match["name"] is None else "/models/{name}/predict", match["name"])


def request_id(header: bytes | None) -> str | None:
    """A client's request id as the log keeps it (at most 128 characters); None when absent."""
    return header[:128].decode("latin-1") if header else None


def explain_in_query(query: bytes) -> Explain | None:
    """`?explain=4` (or `all`): reasons asked for in the URL."""
    values = parse_qs(query.decode("latin-1")).get("explain")
    return explain_of(values[-1], "?explain") if values else None


def outcome(exc: Exception, protocol: ScoringProtocol) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
    """The status, error body and extra headers of a request that did not succeed."""
    if isinstance(exc, InputError):
        return STATUS.get(exc.kind, protocol.invalid_status), exc.to_json(), []
    if isinstance(exc, HttpError):
        return exc.status, {"error": exc.message}, exc.headers
    if isinstance(exc, QueueFull):
        return 503, {"error": f"server busy: {exc}; retry shortly"}, [(b"retry-after", b"1")]
    if isinstance(exc, DeadlineExceeded):
        return 504, {"error": f"deadline exceeded: {exc}"}, []
    log.error("prediction failed", exc_info=exc)
    return 500, {"error": "internal error while scoring; see the server log"}, []


def mlflow_error(status: int, doc: dict[str, Any]) -> dict[str, Any]:
    """An error body in MLflow's shape (its `error_code` follows the status)."""
    code = {503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}.get(
        status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"
    )
    message = doc["error"]
    if len(doc.get("details", ())) > 1:  # the first detail is the message itself
        message += "; " + "; ".join(
            str(EncodingError(d["record"], d["field"], d["message"])) for d in doc["details"][1:6]
        )
    return {"error_code": code, "message": message}


def check_head(headers: dict[bytes, bytes], media_types: tuple[bytes, ...] | None, limit: int) -> None:
    """415 for a Content-Type the protocol does not take; 413 for a declared length over the limit."""
    if media_types is not None:
        content_type = headers.get(b"content-type", b"")
        if content_type not in media_types and content_type.split(b";")[0].strip().lower() not in media_types:
            takes = " or ".join(t.decode() for t in media_types)
            sent = content_type.decode(errors="replace")
            raise HttpError(415, f"Content-Type must be {takes}, not {sent!r}")
    length = headers.get(b"content-length", b"")
    if length.isdigit() and (len(length) > 18 or int(length) > limit):
        raise HttpError(413, f"body of {length[:40].decode()} bytes is over the {limit}-byte limit")


def without_bom(body: bytes, headers: dict[bytes, bytes]) -> bytes:
    """The body after its UTF-8 byte-order mark; a V2 binary header length counted it, so it shrinks too."""
    length = headers.get(BINARY_HEADER)
    if length is not None and length.isdigit() and len(length) <= 18:
        headers[BINARY_HEADER] = b"%d" % (int(length) - len(UTF8_BOM))
    return body[len(UTF8_BOM) :]


GZIP_MEMBERS = 64  # `cat`-ed gzip files in one body; more is no client's doing (each costs a pass)
GZIP_PIECE = 1 << 16  # input fed at once: a member's leftover input is copied, so it stays small


def inflated(body: bytes, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The body as sent under its Content-Encoding: gzip inflated (to at most `limit` bytes), identity
    as is, anything else 415 (a gzip body was parsed as JSON, and a claimed one not read as such)."""
    encoding = headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding in (b"identity", b""):
        return body
    if encoding not in (b"gzip", b"x-gzip"):
        shown = encoding[:40].decode("latin-1")
        raise HttpError(415, f"Content-Encoding {shown!r} is not supported: send the body as is, or gzip")
    out, view, at = bytearray(), memoryview(body), 0
    for _ in range(GZIP_MEMBERS):  # member after member, as `cat a.gz b.gz` makes and gunzip reads
        inflater = zlib.decompressobj(wbits=31)  # the gzip container
        while not inflater.eof and at < len(body):  # in pieces: what is left after a member is copied
            piece = view[at : at + GZIP_PIECE]
            at += len(piece)
            try:
                out += inflater.decompress(piece, limit + 1 - len(out))
            except zlib.error as exc:
                raise HttpError(400, f"Content-Encoding gzip: the body is not valid gzip ({exc})") from None
            if len(out) > limit:
                raise HttpError(413, f"body inflates past the {limit}-byte limit")
        if not inflater.eof:
            raise HttpError(400, "Content-Encoding gzip: the body ends inside a gzip member (truncated)")
        at -= len(inflater.unused_data)
        if at == len(body):
            return bytes(out)
        if body[at] == 0:  # the zero padding some tape and block tools add, once: nothing may follow it
            if body.count(b"\0", at) == len(body) - at:
                return bytes(out)
            raise HttpError(400, "Content-Encoding gzip: the body is not valid gzip (bytes after its zero padding)")
    raise HttpError(400, f"Content-Encoding gzip: more than {GZIP_MEMBERS} gzip members in one body")


async def read_body(receive: Any, limit: int) -> bytes:
    """The whole request body, refusing (413) as soon as it grows past the limit."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"body is over the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
