"""POST /models/{name}/score: a CSV body streamed in, the scored CSV streamed back.

The same scorer as `tabserve score` (service/scoring/local.py) runs on a worker thread; the body
reaches it through a bounded pipe and its output leaves through another, so neither the upload nor
the answer is ever held whole (a slow client slows the scorer down instead of filling memory).
Problems found before the first output byte (missing columns, wrong content type, a body declared
larger than the limit) are JSON errors; per-row problems are rows with the reason in `error`.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.deps import SettingsDep, StoreDep, TelemetryDep
from service.store import ModelNotFound

if TYPE_CHECKING:
    from service.scoring.files import CsvSink

log = logging.getLogger("tabserve.score")
router = APIRouter(tags=["score"])
PIPE_CHUNKS = 16  # NOTE: body chunks in flight to the scorer; with ~64 KiB chunks about 1 MiB
_END = b""


class Cancelled(Exception):
    """The other side of a pipe went away."""


class BodyTooLarge(ValueError):
    """The upload grew past `max_score_bytes`."""


class _Stream:
    """A blocking binary stream for Arrow's reader: bytes come from `_fill`, wait in a buffer and
    leave through `read` (locked: Arrow may read from its I/O thread and the caller's)."""

    def __init__(self) -> None:
        self._buffer, self._eof = bytearray(), False
        self._lock = threading.Lock()

    def read(self, size: int = -1) -> bytes:
        with self._lock:
            while not self._eof and (size < 0 or len(self._buffer) < size):
                self._fill()
            n = len(self._buffer) if size < 0 else min(size, len(self._buffer))
            out = bytes(self._buffer[:n])
            del self._buffer[:n]
            return out

    def _fill(self) -> None:
        """Add bytes to the buffer, or set `_eof`."""
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to release; the feeder ends with the request."""

    @property
    def closed(self) -> bool:
        return False


class BodyPipe(_Stream):
    """The request body, fed from the event loop, read on the scorer's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop, self.queue = loop, asyncio.Queue[bytes | BaseException](PIPE_CHUNKS)

    async def feed(self, request: Request, limit: int) -> None:
        """Copy the request body into the pipe; an error (too big, disconnect) ends it."""
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"body is over the {limit}-byte limit")
                if chunk:
                    await self.queue.put(chunk)
            await self.queue.put(_END)
        except BaseException as exc:  # noqa: BLE001 (handed to the reading thread)
            await self.queue.put(exc if isinstance(exc, Exception) else Cancelled("request cancelled"))

    def _fill(self) -> None:
        item = asyncio.run_coroutine_threadsafe(self.queue.get(), self.loop).result()
        if isinstance(item, BaseException):
            raise item
        if item == _END:
            self._eof = True
        self._buffer += item


class Gunzip(_Stream):
    """A gzip body inflated as it is read (`Content-Encoding: gzip`; concatenated gzip members,
    as `cat a.gz b.gz` makes, are one stream)."""

    def __init__(self, raw: BodyPipe) -> None:
        super().__init__()
        self.raw = raw
        self._inflate, self._in_member = zlib.decompressobj(wbits=31), False

    def _fill(self) -> None:
        data = self.raw.read(1 << 16)
        if not data:
            if self._in_member:
                raise ValueError("Content-Encoding gzip: the body ends inside a gzip member (truncated)")
            self._eof = True
        while data:
            self._in_member = True
            try:
                self._buffer += self._inflate.decompress(data)
            except zlib.error as exc:
                raise ValueError(f"Content-Encoding gzip: the body is not valid gzip ({exc})") from None
            if not self._inflate.eof:
                return
            data, self._in_member = self._inflate.unused_data, False
            self._inflate = zlib.decompressobj(wbits=31)


class ResponsePipe:
    """The scorer's output (written on its thread) spooled to an unnamed temporary file and read
    back by the streaming response as it grows.

    NOTE: many HTTP clients (requests, httpx's sync client) send the whole body before reading
    any of the answer. A bounded in-memory pipe would then stall the scorer, the scorer would stop
    reading the body, and both ends would wait forever; the spool lets the answer wait on disk
    (the page cache, mostly) while memory stays flat.
    """

    READ = 1 << 20

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.ready = loop, asyncio.Event()
        self.cancelled = threading.Event()
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed when the response ends)
        self._lock = threading.Lock()
        self._written = self._read = 0
        self._done = False
        self._error: BaseException | None = None

    def write(self, data: Any) -> int:
        if self.cancelled.is_set():
            raise Cancelled("client went away")
        with self._lock:
            self._file.seek(self._written)
            n = self._file.write(data)
            self._written += n
        self.loop.call_soon_threadsafe(self.ready.set)
        return n

    def flush(self) -> None:
        """Writes are visible to the reader as they land."""

    def close(self) -> None:
        """The end is signalled by `finish`."""

    @property
    def closed(self) -> bool:
        return False

    def finish(self, error: BaseException | None) -> None:
        """End of the answer: None when complete, else the error that cut it short."""
        with self._lock:
            self._done, self._error = True, error
        self.loop.call_soon_threadsafe(self.ready.set)

    def _next(self) -> tuple[bytes, bool, BaseException | None]:
        with self._lock:
            chunk = b""
            if self._written > self._read:
                self._file.seek(self._read)
                chunk = self._file.read(min(self._written - self._read, self.READ))
                self._read += len(chunk)
            return chunk, self._done and self._read == self._written, self._error

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                self.ready.clear()
                chunk, finished, error = self._next()
                if chunk:
                    yield chunk
                elif finished:
                    if error is not None:
                        # NOTE: the status line is gone already: ending the chunked body early is
                        # how HTTP tells the client the answer is incomplete
                        raise error
                    return
                else:
                    await self.ready.wait()
        finally:
            self.cancelled.set()
            self._file.close()


class PipeResponse(StreamingResponse):
    """A streaming response that leaves `receive` alone.

    NOTE: Starlette's StreamingResponse listens for a disconnect by calling `receive()` while it
    streams, which swallows the request body this endpoint is still reading.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@router.post(
    "/models/{name}/score",
    responses={200: {"content": {"text/csv": {}}}, 404: {}, 413: {}, 415: {}, 422: {}},
    response_class=PipeResponse,
    # NOTE: the body is read as a stream (not a declared parameter), so the spec says it here
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def score(
    name: str,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    telemetry: TelemetryDep,
    keep: Annotated[list[str] | None, Query(description="Input column to copy to the output (repeatable).")] = None,
    keep_all: Annotated[bool, Query(description="Copy every input column.")] = False,
) -> Any:
    """Score a CSV upload (`Content-Type: text/csv`): one output row per input row, in order, with
    the id columns (or `keep`), the predictions and `error`; streamed both ways."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("text/csv", "application/csv"):
        raise HTTPException(415, f"Content-Type must be text/csv, not {content_type or 'missing'!r}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise HTTPException(415, f"Content-Encoding {encoding!r} is not supported: send the CSV as is, or gzip")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > settings.max_score_bytes:
        raise HTTPException(413, f"body of {length} bytes is over the {settings.max_score_bytes}-byte limit")
    try:
        model = store.get(name)
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    # NOTE: imported here: pyarrow costs ~55 MB of resident memory a service without uploads never needs
    from service.scoring.files import CsvSink, CsvSource
    from service.scoring.local import Scorer, Summary, score_stream

    loop = asyncio.get_running_loop()
    body, answer = BodyPipe(loop), ResponsePipe(loop)
    started: asyncio.Future[None] = loop.create_future()
    feeder = asyncio.create_task(body.feed(request, settings.max_score_bytes))
    scorer = Scorer(model.ref, session=model.session)

    def settle(error: BaseException | None) -> None:
        if not started.done():
            started.set_result(None) if error is None else started.set_exception(error)

    def open_out(schema: Any) -> CsvSink:
        loop.call_soon_threadsafe(settle, None)
        return CsvSink(answer, schema)

    def work() -> None:
        error: BaseException | None = None
        summary = Summary()
        try:
            stream = body if encoding == "identity" else Gunzip(body)
            summary = score_stream(scorer, CsvSource(stream, name="body"), open_out, keep=keep, keep_all=keep_all)
        except BaseException as exc:  # noqa: BLE001 (reported to the client either way)
            error = exc
        loop.call_soon_threadsafe(settle, error or RuntimeError("the scorer wrote nothing"))
        loop.call_soon_threadsafe(feeder.cancel)
        answer.finish(error)
        if error is None:
            telemetry.rows_scored(model.name, summary.rows_scored)
            log.info(
                "scored upload: %d rows, %d with errors, %d warnings on scored rows (%s), %.1f s",
                summary.rows_in,
                summary.rows_failed,
                summary.warnings.total(),
                "; ".join(f"{n} × {text}" for text, n in summary.warnings.most_common(3)) or "none",
                summary.seconds,
            )
        elif not isinstance(error, Cancelled):
            log.warning("upload scoring stopped: %s", error)

    threading.Thread(target=work, name="tabserve-score-upload", daemon=True).start()
    try:
        await started
    except Exception as exc:  # noqa: BLE001 - every failure before the first byte is a JSON error
        feeder.cancel()
        status = 413 if isinstance(exc, BodyTooLarge) else 422 if isinstance(exc, ValueError) else 500
        if status == 500:
            log.error("upload scoring failed: %r", exc)
        return JSONResponse({"error": str(exc) or type(exc).__name__}, status_code=status)
    headers = {"x-tabserve-model": model.name, "x-tabserve-version": str(model.version)}
    return PipeResponse(answer.chunks(), media_type="text/csv", headers=headers)
