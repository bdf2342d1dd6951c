"""POST /models/{name}/score: a CSV body streamed in, the scored CSV streamed back.

The same scorer as `tabserve score` (service/scoring/local.py) runs on a worker thread; the body
reaches it through a bounded pipe and its output leaves through another, so neither the upload nor
the answer is ever held whole (a slow client slows the scorer down instead of filling memory).
Problems found before the first output byte (missing columns, wrong content type, a body declared
larger than the limit) are JSON errors; per-row problems are rows with the reason in `error`.
At most `max_uploads` uploads are scored at once (503 beyond); `max_score_bytes` counts the body
after gzip is inflated, and an upload holds a few MB of memory whatever its body inflates to.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.deps import SettingsDep, StoreDep, TelemetryDep
from service.scoring.files import CsvSink, CsvSource
from service.scoring.local import Scorer, Summary, score_stream
from service.settings import Settings
from service.store import LoadedModel, ModelNotFound
from service.telemetry import Telemetry

log = logging.getLogger("tabserve.score")
router = APIRouter(tags=["score"])
PIPE_CHUNKS = 16  # body chunks in flight to the scorer; with ~64 KiB chunks about 1 MiB
INFLATE_PIECE = 1 << 16  # most bytes inflated at once (64 KiB of gzip may inflate to 64 MiB)
RETRY_AFTER_S = 5  # a busy answer's hint: uploads take seconds to minutes, a short wait is enough
_END = b""


class Cancelled(Exception):
    """The other side of a pipe went away."""


class BodyTooLarge(ValueError):
    """The upload grew past `max_score_bytes`."""


class _Stream:
    """A blocking binary stream for the CSV source (read on the scorer's reading thread): bytes come
    from `_fill`, wait in a buffer and leave through `read`."""

    def __init__(self) -> None:
        self._buffer, self._eof = bytearray(), False
        self._lock = threading.Lock()

    def read(self, size: int = -1) -> bytes:
        with self._lock:
            while not self._eof and (size < 0 or len(self._buffer) < size):
                self._fill()
            n = len(self._buffer) if size < 0 else min(size, len(self._buffer))
            with memoryview(self._buffer) as view:
                out = bytes(view[:n])
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
        except asyncio.CancelledError:  # the scorer has stopped, or will: never wait for it here
            self._cancel()
        except Exception as exc:  # noqa: BLE001 (handed to the reading thread, after the chunks before it)
            try:
                await self.queue.put(exc)
            except asyncio.CancelledError:
                self._cancel()

    def _cancel(self) -> None:
        """End the pipe at once: chunks not read yet are dropped."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(Cancelled("request cancelled"))

    def _fill(self) -> None:
        item = asyncio.run_coroutine_threadsafe(self.queue.get(), self.loop).result()
        if isinstance(item, BaseException):
            raise item
        if item == _END:
            self._eof = True
        self._buffer += item


class Gunzip(_Stream):
    """A gzip body inflated as it is read (`Content-Encoding: gzip`; concatenated gzip members,
    as `cat a.gz b.gz` makes, are one stream), a bounded piece at a time, the inflated bytes counted
    against the upload limit."""

    def __init__(self, raw: BodyPipe, limit: int) -> None:
        super().__init__()
        self.raw, self._limit, self._size = raw, limit, 0
        self._inflate, self._in_member, self._tail = zlib.decompressobj(wbits=31), False, b""

    def _fill(self) -> None:
        data = self._tail or self.raw.read(1 << 16)
        if not data and not self._in_member:
            self._eof = True
            return
        self._in_member = True
        try:
            out = self._inflate.decompress(data, INFLATE_PIECE)
        except zlib.error as exc:
            raise ValueError(f"Content-Encoding gzip: the body is not valid gzip ({exc})") from None
        if self._inflate.eof:  # a member ended; what follows may be another
            self._tail, self._in_member = self._inflate.unused_data, False
            self._inflate = zlib.decompressobj(wbits=31)
        elif not data and not out:
            raise ValueError("Content-Encoding gzip: the body ends inside a gzip member (truncated)")
        else:
            self._tail = self._inflate.unconsumed_tail
        self._size += len(out)
        if self._size > self._limit:
            raise BodyTooLarge(f"body is over the {self._limit}-byte limit (counted after gzip is inflated)")
        self._buffer += out


class ResponsePipe:
    """The scorer's output (written on its thread) spooled to an unnamed temporary file and read
    back by the streaming response as it grows.

    Many HTTP clients (requests, httpx's sync client) send the whole body before reading
    any of the answer. A bounded in-memory pipe would then stall the scorer, the scorer would stop
    reading the body, and both ends would wait forever; the spool lets the answer wait on disk
    (the page cache, mostly) while memory stays flat. The file starts again whenever the reader has
    caught up, and it never grows past `limit` bytes (one write past it at most): the writer waits
    for the reader there, so only an answer larger than `limit` still needs a reading client.
    """

    READ = 1 << 20

    def __init__(
        self, loop: asyncio.AbstractEventLoop, limit: int, on_closed: Callable[[], None], patience_s: float = 30.0
    ) -> None:
        self.loop, self.ready = loop, asyncio.Event()
        self._patience = patience_s  # how long a full spool waits for a client that reads nothing
        self.cancelled = threading.Event()
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close_reader)
        self._room = threading.Condition()
        self._limit, self._on_closed = limit, on_closed
        self._written = self._read = 0
        self._done = False
        self._error: BaseException | None = None

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        with self._room:
            read, since = self._read, time.monotonic()
            while self._written and self._written + size > self._limit and self._read < self._written:
                self._check_reader()
                self._room.wait(1.0)  # woken by the reader; the timeout re-checks for a vanished client
                if self._read != read:
                    read, since = self._read, time.monotonic()
                elif time.monotonic() - since > self._patience:  # a client that sends all before reading
                    raise Cancelled(f"the client read none of its answer for {self._patience:g} s with the spool full")
            self._check_reader()
            if self._read == self._written:  # nothing unread: start the file again
                self._file.seek(0)
                self._file.truncate()
                self._written = self._read = 0
            self._file.seek(self._written)
            n = self._file.write(data)
            self._written += n
        self.loop.call_soon_threadsafe(self.ready.set)
        return n

    def _check_reader(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("client went away")

    def flush(self) -> None:
        """Writes are visible to the reader as they land."""

    def close(self) -> None:
        """The end is signalled by `finish`."""

    @property
    def closed(self) -> bool:
        return False

    def finish(self, error: BaseException | None) -> None:
        """End of the answer: None when complete, else the error that cut it short."""
        with self._room:
            self._done, self._error = True, error
        self.loop.call_soon_threadsafe(self.ready.set)

    def close_reader(self) -> None:
        """The answer is read, or will not be: the file goes, a waiting or later write raises Cancelled."""
        with self._room:
            if self.cancelled.is_set():
                return
            self.cancelled.set()
            self._room.notify_all()
            self._file.close()
        self._on_closed()

    def _next(self) -> tuple[bytes, bool, BaseException | None]:
        with self._room:
            chunk = b""
            if self._written > self._read:
                self._file.seek(self._read)
                chunk = self._file.read(min(self._written - self._read, self.READ))
                self._read += len(chunk)
                if self._read == self._written:
                    self._room.notify_all()
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
                        # the status line is gone already: ending the chunked body early is
                        # how HTTP tells the client the answer is incomplete
                        raise error
                    return
                else:
                    await self.ready.wait()
        finally:
            self.close_reader()


class PipeResponse(StreamingResponse):
    """A streaming response of a ResponsePipe that leaves `receive` alone.

    Starlette's StreamingResponse listens for a disconnect by calling `receive()` while it
    streams, which swallows the request body this endpoint is still reading.
    """

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


class Upload:
    """One CSV upload: the body pipe in, the scorer on a thread of its own, the answer pipe out.

    It holds one of the app's upload slots until both the scorer has stopped and the answer is read
    (or abandoned), so the slots bound the scoring threads and the spool files alike.
    """

    def __init__(
        self, model: LoadedModel, settings: Settings, telemetry: Telemetry, gzip: bool, slot: threading.BoundedSemaphore
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.model, self.telemetry, self.gzip, self.slot = model, telemetry, gzip, slot
        self.limit = settings.max_score_bytes
        self.body = BodyPipe(self.loop)
        self.answer = ResponsePipe(
            self.loop, settings.max_spool_bytes, on_closed=self._reader_done, patience_s=settings.body_timeout_s
        )
        self.started: asyncio.Future[None] = self.loop.create_future()
        self._open, self._lock = 2, threading.Lock()  # the scorer and the answer's reader

    def start(self, request: Request, keep: list[str] | None, keep_all: bool) -> None:
        """Feed the body to the pipe and start the scorer; `started` settles at its first output byte."""
        self.feeder = asyncio.create_task(self.body.feed(request, self.limit))
        work = threading.Thread(target=self._work, args=(keep, keep_all), name="tabserve-score-upload", daemon=True)
        work.start()

    def _work(self, keep: list[str] | None, keep_all: bool) -> None:
        error: BaseException | None = None
        summary = Summary()
        try:
            stream = Gunzip(self.body, self.limit) if self.gzip else self.body
            scorer = Scorer(self.model.ref, session=self.model.session)
            # one scoring thread per upload: the service's own requests keep the other core,
            # and each upload's working memory stays one block's worth
            source = CsvSource(stream, name="body")
            summary = score_stream(scorer, source, self._open_out, keep=keep, keep_all=keep_all, workers=1)
        except BaseException as exc:  # noqa: BLE001 (reported to the client either way)
            error = exc
        self.loop.call_soon_threadsafe(self._settle, error or RuntimeError("the scorer wrote nothing"))
        self.loop.call_soon_threadsafe(self.feeder.cancel)
        self.answer.finish(error)
        self._part_done()
        self._log(summary, error)

    def _open_out(self, schema: Any) -> CsvSink:
        self.loop.call_soon_threadsafe(self._settle, None)
        return CsvSink(self.answer, schema)

    def _settle(self, error: BaseException | None) -> None:
        if not self.started.done():
            self.started.set_result(None) if error is None else self.started.set_exception(error)

    def _reader_done(self) -> None:
        self.feeder.cancel()  # nobody reads the answer: stop reading the body too
        self._part_done()

    def _part_done(self) -> None:
        """The scorer or the answer's reader is done; the slot goes back after both."""
        with self._lock:
            self._open -= 1
            last = self._open == 0
        if last:
            self.slot.release()

    def _log(self, summary: Summary, error: BaseException | None) -> None:
        if error is None:
            self.telemetry.rows_scored(self.model.name, summary.rows_scored)
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


def _new_upload(request: Request, model: LoadedModel, settings: Settings, telemetry: Telemetry, gzip: bool) -> Upload:
    """An upload holding one of the app's `max_uploads` slots (made at the first upload); 503 if none is free."""
    slots: threading.BoundedSemaphore | None = getattr(request.app.state, "upload_slots", None)
    if slots is None:
        slots = request.app.state.upload_slots = threading.BoundedSemaphore(settings.max_uploads)
    if not slots.acquire(blocking=False):
        busy = f"{settings.max_uploads} uploads are being scored already; try again shortly"
        raise HTTPException(503, busy, headers={"Retry-After": str(RETRY_AFTER_S)})
    try:
        return Upload(model, settings, telemetry, gzip, slots)
    except BaseException:
        slots.release()  # no spool file could be made: the slot must not leak
        raise


def _check_upload(request: Request, settings: Settings) -> bool:
    """415 or 413 from the headers alone; whether the body is gzip."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("text/csv", "application/csv"):
        raise HTTPException(415, f"Content-Type must be text/csv, not {content_type or 'missing'!r}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise HTTPException(415, f"Content-Encoding {encoding!r} is not supported: send the CSV as is, or gzip")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > settings.max_score_bytes:
        raise HTTPException(413, f"body of {length} bytes is over the {settings.max_score_bytes}-byte limit")
    return encoding != "identity"


def _refused(exc: Exception) -> JSONResponse:
    """A failure before the first output byte, as a JSON error."""
    status = 413 if isinstance(exc, BodyTooLarge) else 422 if isinstance(exc, ValueError) else 500
    if status == 500:
        log.error("upload scoring failed: %r", exc)
    return JSONResponse({"error": str(exc) or type(exc).__name__}, status_code=status)


@router.post(
    "/models/{name}/score",
    responses={200: {"content": {"text/csv": {}}}, 404: {}, 413: {}, 415: {}, 422: {}, 503: {}},
    response_class=PipeResponse,
    status_code=200,  # said here: FastAPI looks for it in the response class's __init__ otherwise
    # the body is read as a stream (not a declared parameter), so the spec says it here
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
    gzip = _check_upload(request, settings)
    try:
        model = store.get(name)
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    upload = _new_upload(request, model, settings, telemetry, gzip)
    upload.start(request, keep, keep_all)
    try:
        await upload.started
    except BaseException as exc:  # a failure before the first byte is a JSON error; cancelling, raised
        upload.answer.close_reader()
        if not isinstance(exc, Exception):
            raise
        return _refused(exc)
    headers = {"x-tabserve-model": model.name, "x-tabserve-version": str(model.version)}
    return PipeResponse(upload.answer, headers=headers)
