"""CSV upload plumbing: body in, scored CSV out, both streamed in bounded memory."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import ClientDisconnect

from monitoring.log import PredictionLog
from service.explain import Explain
from service.features import Reading
from service.scoring.files import CsvSink, CsvSource
from service.scoring.local import Scorer, Summary, score_stream
from service.settings import Settings
from service.store import LoadedModel
from service.telemetry import Telemetry

log = logging.getLogger("tabserve.score")
PIPE_CHUNKS = 16  # body chunks in flight to the scorer
INFLATE_PIECE = 1 << 16  # most bytes inflated at once: a little gzip may inflate to a lot
_END = b""


class Cancelled(Exception):
    """The other side of a pipe went away."""


class BodyStopped(Cancelled):
    """The body ended before its end: the client left, or paused past `body_timeout_s`."""


class BodyTooLarge(ValueError):
    """The upload grew past `max_score_bytes`."""


class UploadsBusy(Exception):
    """Every upload slot is taken."""


class AnswerCutShort(Exception):
    """Ends an answer the client must see as incomplete (the connection closes before its last chunk).
    Its cause is logged once by the upload (a warning for the body's fault, an error with its traceback
    for ours), so the server's "Exception in ASGI application" for it is left out (`QUIET_CUT_SHORT`)."""

    @property
    def status(self) -> int:
        """What the metrics count it as: the 200 already sent would hide it among answers served."""
        cause = self.__cause__
        if isinstance(cause, BodyTooLarge):
            return 413
        if isinstance(cause, Cancelled):
            return 499  # nginx's "client closed request": it left, or read nothing for body_timeout_s
        return 400 if isinstance(cause, ValueError) else 500  # the body's fault, else ours


class _QuietCutShort(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], AnswerCutShort))


QUIET_CUT_SHORT = _QuietCutShort()  # on uvicorn's error logger: one instance, added once


class _Stream:
    """A blocking binary stream that `_fill` fills."""

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
        """Nothing to release."""

    @property
    def closed(self) -> bool:
        return False


class BodyPipe(_Stream):
    """The body, from the event loop to the scorer's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop, self.queue = loop, asyncio.Queue[bytes | BaseException](PIPE_CHUNKS)

    async def feed(self, chunks: AsyncIterator[bytes], limit: int) -> None:
        """Copy `chunks` into the pipe; an error ends it."""
        size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"body is over the {limit}-byte limit")
                if chunk:
                    await self.queue.put(chunk)
            await self.queue.put(_END)
        except asyncio.CancelledError:  # the scorer has stopped, or will: never wait for it here
            self._cancel()
        except ClientDisconnect:  # the client's doing, logged as a warning (not an error of ours)
            await self._put(BodyStopped("the body stopped before its end: the client went away or paused too long"))
        except Exception as exc:  # noqa: BLE001 (raised on the reading thread, after the chunks before it)
            await self._put(exc)

    async def _put(self, error: BaseException) -> None:
        try:
            await self.queue.put(error)
        except asyncio.CancelledError:
            self._cancel()

    def _cancel(self) -> None:
        """End the pipe now, dropping unread chunks."""
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
    """A gzip body inflated as read, counted against `limit`."""

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
        if self._inflate.eof:  # a member ended; another may follow
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
    """The answer via a spool file of at most `limit` bytes (many clients send all before reading)."""

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
                self._room.wait(1.0)  # the timeout re-checks for a vanished client
                if self._read != read:
                    read, since = self._read, time.monotonic()
                elif time.monotonic() - since > self._patience:
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
        """Writes are visible as they land."""

    def close(self) -> None:
        """The end is signalled by `finish`."""

    @property
    def closed(self) -> bool:
        return False

    def finish(self, error: BaseException | None) -> None:
        """End of the answer; `error` if cut short."""
        with self._room:
            self._done, self._error = True, error
        self.loop.call_soon_threadsafe(self.ready.set)

    def close_reader(self) -> None:
        """The answer is read or abandoned: drop the spool."""
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
                    if error is not None:  # a body cut short tells the client the answer is incomplete
                        raise AnswerCutShort(str(error)) from error
                    return
                else:
                    await self.ready.wait()
        finally:
            self.close_reader()


class Upload:
    """One upload: body pipe → scorer thread → answer pipe, holding a slot."""

    def __init__(
        self,
        model: LoadedModel,
        settings: Settings,
        telemetry: Telemetry,
        gzip: bool,
        release: Callable[[], None],
        log: PredictionLog | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.model, self.telemetry, self.gzip, self._release, self.log = model, telemetry, gzip, release, log
        self.limit = settings.max_score_bytes
        self.body = BodyPipe(self.loop)
        self.answer = ResponsePipe(
            self.loop, settings.max_spool_bytes, on_closed=self._reader_done, patience_s=settings.body_timeout_s
        )
        self.started: asyncio.Future[None] = self.loop.create_future()
        self._open, self._lock = 2, threading.Lock()  # the scorer and the answer's reader

    def start(
        self,
        chunks: AsyncIterator[bytes],
        keep: list[str] | None,
        keep_all: bool,
        explain: Explain | None = None,
        reading: Reading | None = None,
    ) -> None:
        """Start feeding and scoring; `started` settles at the first output byte. `reading`: how to read
        the body (default: as the training file was read)."""
        self.feeder = asyncio.create_task(self.body.feed(chunks, self.limit))
        args = (keep, keep_all, explain, reading or self.model.pre.read)
        work = threading.Thread(target=self._work, args=args, name="tabserve-score-upload", daemon=True)
        work.start()

    def _work(self, keep: list[str] | None, keep_all: bool, explain: Explain | None, reading: Reading) -> None:
        error: BaseException | None = None
        summary = Summary()
        try:
            stream = Gunzip(self.body, self.limit) if self.gzip else self.body
            model = self.model  # its explainer: None for a bundle without explain.onnx, refused by Scorer
            scorer = Scorer(
                model.ref,
                session=model.session,
                pre=model.pre,
                explain=explain,
                explainer=model.explainer,
                log=self.log,
                drift=model.drift,
                log_waits=False,  # logging never delays the service's answers
                reading=reading,
            )
            source = CsvSource(stream, name="body", reading=reading)
            # one scoring thread per upload leaves cores to the service's requests
            summary = score_stream(
                scorer, source, self._open_out, keep=keep, keep_all=keep_all, workers=1, keep_name="?keep"
            )
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
        """Release the slot once the scorer and the reader are both done."""
        with self._lock:
            self._open -= 1
            last = self._open == 0
        if last:
            self._release()

    def _log(self, summary: Summary, error: BaseException | None) -> None:
        if error is None:
            self.telemetry.rows_scored(self.model.name, summary.rows_scored, self.model.version)
            log.info(
                "scored upload: %d rows, %d with errors, %d warnings on scored rows (%s), %.1f s",
                summary.rows_in,
                summary.rows_failed,
                summary.warnings.total(),
                "; ".join(f"{n} × {text}" for text, n in summary.warnings.most_common(3)) or "none",
                summary.seconds,
            )
            if summary.unclosed_row is not None:
                log.warning("upload: a quote opened in row %d is never closed: the body's rest was read into it",
                            summary.unclosed_row)  # fmt: skip
            if summary.unvalued:
                log.warning(
                    "upload: no row has a value for %s: every row scored as if it were missing", summary.unvalued
                )
            if summary.read_as_utf8:
                log.info("upload: read as UTF-8, not as %s (the training file's encoding): its first bytes beyond "
                         "ASCII are UTF-8", summary.read_as_utf8[""])  # fmt: skip
            if summary.rows_not_utf8:  # the body was read as UTF-8 (the training file's encoding)
                fix = summary.utf8_fix()
                log.warning(
                    "upload: %d rows are not valid UTF-8 (%s): the client should send UTF-8",
                    summary.rows_not_utf8,
                    f"{fix} reads them" if fix else "nor cp1252",
                )
        elif isinstance(error, ValueError | BodyStopped):  # the body's doing (stopped, too large, not CSV)
            log.warning("upload scoring stopped: %s", error)
        elif not isinstance(error, Cancelled):  # ours (a bug, memory, ONNX Runtime): with its traceback
            log.error("upload scoring failed: %s", error, exc_info=error)


class Uploads:
    """An app's `max_uploads` upload slots."""

    def __init__(self, settings: Settings, telemetry: Telemetry, log: PredictionLog | None = None) -> None:
        self.settings, self.telemetry, self.log = settings, telemetry, log
        self._slots = threading.BoundedSemaphore(settings.max_uploads)

    def open(self, model: LoadedModel, gzip: bool) -> Upload:
        """A new upload in a free slot, else UploadsBusy."""
        if not self._slots.acquire(blocking=False):
            raise UploadsBusy(f"{self.settings.max_uploads} uploads are being scored already; try again shortly")
        try:
            return Upload(model, self.settings, self.telemetry, gzip, self._slots.release, self.log)
        except BaseException:
            self._slots.release()  # no spool file could be made: the slot must not leak
            raise
