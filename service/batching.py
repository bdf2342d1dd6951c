"""Adaptive micro-batching (docs/service.md#batching)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic, perf_counter
from typing import Any

import numpy as np

RunFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
BatchHook = Callable[[int, float], None]  # (rows, seconds) of every ORT call
# (num, cat, out, [(rows, note)] of each request) of the requests a batch answered, in order: what a
# prediction log (or a shadow model) takes a batch at a time, so that a request pays nothing for it
AnsweredHook = Callable[[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, Any]]], None]
log = logging.getLogger("tabserve.batching")


class QueueFull(RuntimeError):
    """The model's queue is full: answer 503 with Retry-After."""


class DeadlineExceeded(TimeoutError):
    """Not answered within the deadline (queue wait plus inference): answer 504."""


class NotFinite(ValueError):
    """A request whose outputs are not numbers at these rows (values far beyond training's overflow
    float32 inside the graph): refused, never answered NaN, logged or shadowed."""

    def __init__(self, rows: np.ndarray) -> None:
        super().__init__(f"outputs that are not numbers at rows {rows.tolist()[:5]}")
        self.rows = rows


_NONE = np.empty(0, np.int64)
SWEEP_S = 0.1  # how often requests are checked against their deadlines (no timer per request)


@dataclass(slots=True, eq=False)
class _Pending:
    num: np.ndarray
    cat: np.ndarray
    future: asyncio.Future[np.ndarray]
    deadline: float  # time.monotonic() after which the request is answered 504 (inf: none)
    timeout: float
    note: Any = None  # handed back with the request's rows to `on_answered`

    def expire(self) -> None:
        if not self.future.done():
            self.future.set_exception(DeadlineExceeded(f"not answered within {self.timeout:g} s"))


@dataclass(slots=True, eq=False)
class _Job:
    """One ORT call: the requests it answers and their rows joined."""

    batch: list[_Pending]
    num: np.ndarray
    cat: np.ndarray
    loop: asyncio.AbstractEventLoop
    batched: bool  # False: a request sent alone (batching off, or a retired version): no batch slot


class AdaptiveBatcher:
    """Every request gets a future; a batch of them runs the model once, results split in order.

    One batch at a time runs on a dedicated thread, handed over by a plain queue and answered by one
    `call_soon_threadsafe`: fewer event-loop turns than an executor (BENCHMARKS.md). `on_loop`: on
    the event loop instead, for a worker with one CPU (docs/operations.md#cpu-budget).
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        max_delay_ms: float,
        max_queue: int,
        enabled: bool = True,
        on_batch: BatchHook | None = None,
        on_answered: AnsweredHook | None = None,
        on_loop: bool = False,
    ) -> None:
        self._run, self._on_batch, self.on_answered, self.on_loop = run, on_batch, on_answered, on_loop
        self.max_batch_size, self.max_queue, self.enabled = max_batch_size, max_queue, enabled
        self._delay = max_delay_ms / 1000
        self._pending: deque[_Pending] = deque()
        self._alone = 0  # requests sent one by one (batching off, or a retired version) not yet answered
        self._queued_rows = 0
        self._busy = False  # a batch is on the inference thread
        self._flush_due: asyncio.Handle | None = None  # the next batch is arranged
        self._flush_waits = False  # ... for when the delay is up
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._running: set[_Job] = set()  # jobs handed to the inference thread, not yet answered
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (batching off: sent and not yet answered)."""
        return len(self._pending) + self._alone

    async def predict(
        self, num: np.ndarray, cat: np.ndarray, timeout: float | None = None, note: Any = None
    ) -> np.ndarray:
        """Output rows for these input rows, in order; DeadlineExceeded after `timeout` s. Once
        answered, the rows go to `on_answered` with `note`."""
        loop = asyncio.get_running_loop()
        if len(self._pending) + self._alone >= self.max_queue:
            raise QueueFull(f"{self.depth} requests already queued")
        future: asyncio.Future[np.ndarray] = loop.create_future()
        if timeout is None:
            pending = _Pending(num, cat, future, math.inf, math.inf, note)
        else:
            pending = _Pending(num, cat, future, monotonic() + timeout, timeout, note)
            if self._sweep is None:
                self._sweep = loop.call_later(SWEEP_S, self._expire_late, loop)
        if not self.enabled or self._closed:
            # batching off, or a retired version finishing late requests: one call each
            self._alone += 1
            self._submit(_Job([pending], num, cat, loop, batched=False))
        else:
            self._pending.append(pending)
            self._queued_rows += len(num)
            if not self._busy and (self._flush_due is None or self._flush_waits):
                self._schedule(loop)
        return await future

    def _expire_late(self, loop: asyncio.AbstractEventLoop) -> None:
        now = monotonic()
        for pending in [*self._pending, *(p for job in self._running for p in job.batch)]:
            if pending.deadline <= now:
                pending.expire()
        waiting = self._pending or self._running
        self._sweep = loop.call_later(SWEEP_S, self._expire_late, loop) if waiting else None

    def close(self) -> None:
        """Stop the thread once the queue is answered (a retired version); later requests get a thread each."""
        self._closed = True
        if not self._busy and not self._pending:
            self._stop()

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arrange the next batch: when the delay is up, or after the callbacks already due (so that
        requests arriving together go together)."""
        full = self._queued_rows >= self.max_batch_size
        if self._flush_due is not None:
            if not (full and self._flush_waits):
                return
            self._flush_due.cancel()  # a waiting batch filled up: no need to wait on
        self._flush_waits = bool(self._delay) and not full
        if self._flush_waits:
            self._flush_due = loop.call_later(self._delay, self._flush, loop)
        else:
            self._flush_due = loop.call_soon(self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush_due = None
        if self._busy or not self._pending:
            return
        batch: list[_Pending] = []
        rows, now = 0, monotonic()
        while self._pending:
            item = self._pending[0]
            if item.future.done() or item.deadline <= now:  # nobody waits for it, or too late
                self._pending.popleft()
                self._queued_rows -= len(item.num)
                item.expire()
                continue
            if batch and rows + len(item.num) > self.max_batch_size:
                break
            batch.append(self._pending.popleft())
            rows += len(item.num)
        self._queued_rows -= rows
        if not batch:  # every queued request was past its deadline
            if self._closed:
                self._stop()
            return
        if len(batch) == 1:
            num, cat = batch[0].num, batch[0].cat
        else:
            num = np.concatenate([p.num for p in batch])
            cat = np.concatenate([p.cat for p in batch])
        self._busy = True
        self._submit(_Job(batch, num, cat, loop, batched=True))

    def _submit(self, job: _Job) -> None:
        self._running.add(job)
        if self.on_loop:  # answered as from the thread: by a callback on the loop's next turn
            self._answer(job)
            return
        if self._thread is None or not self._thread.is_alive():
            if self._closed and not job.batched:
                threading.Thread(target=self._answer, args=(job,), daemon=True).start()
                return
            self._thread = threading.Thread(target=self._serve, name="tabserve-infer", daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def _stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._answer(job)

    def _answer(self, job: _Job) -> None:
        try:
            out, error = self._timed_run(job.num, job.cat), None
        except Exception as exc:  # noqa: BLE001 - the failure belongs to every request of the batch
            out, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown): nobody waits
            job.loop.call_soon_threadsafe(self._done, job, out, error)

    def _done(self, job: _Job, out: np.ndarray | None, error: Exception | None) -> None:
        """On the loop: split the output among the batch's requests; start the next batch."""
        self._running.discard(job)
        start, now = 0, monotonic()
        answered: list[_Pending] = []
        # rows whose outputs are not numbers (values that overflow inside the graph): once per batch,
        # one sum to rule them out (a sum that overflows only costs the exact look)
        bad = _NONE if out is None or np.isfinite(out.sum()) else np.flatnonzero(~np.isfinite(out).all(axis=1))
        for p in job.batch:
            end = start + len(p.num)
            if p.deadline < now:  # answered too late: as the sweep would have
                p.expire()
            elif not p.future.done():  # a client that went away cancelled its future
                if error is not None or out is None:
                    p.future.set_exception(error or RuntimeError("no output"))
                elif len(bad) and len(mine := bad[(bad >= start) & (bad < end)]):
                    p.future.set_exception(NotFinite(mine - start))
                else:
                    p.future.set_result(out[start:end])
                    answered.append(p)
            start = end
        if not job.batched:
            self._alone -= 1
        else:
            self._busy = False
            if self._pending:
                self._schedule(job.loop)
            elif self._closed:
                self._stop()
        if answered and self.on_answered is not None:
            self._hand_on(self.on_answered, job, out, answered)  # type: ignore[arg-type]

    @staticmethod
    def _hand_on(hook: AnsweredHook, job: _Job, out: np.ndarray, answered: list[_Pending]) -> None:
        """The answered requests' rows to the hook (the whole batch, the usual case, as it is)."""
        num, cat = job.num, job.cat
        if len(answered) < len(job.batch):  # some were late or gone: only the rows that were answered
            kept = {id(p) for p in answered}
            taken = np.repeat([id(p) in kept for p in job.batch], [len(p.num) for p in job.batch])
            num, cat, out = num[taken], cat[taken], out[taken]
        try:
            hook(num, cat, out, [(len(p.num), p.note) for p in answered])
        except Exception:  # already answered: an observer's failure is logged, never theirs
            log.exception("a batch observer failed")

    def _timed_run(self, num: np.ndarray, cat: np.ndarray) -> np.ndarray:
        if self._on_batch is None:
            return self._run(num, cat)
        started = perf_counter()
        out = self._run(num, cat)
        self._on_batch(len(num), perf_counter() - started)
        return out
