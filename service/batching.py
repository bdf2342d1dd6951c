"""Adaptive micro-batching: concurrent requests become one ONNX Runtime call, split back in order."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter

import numpy as np

RunFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
BatchHook = Callable[[int, float], None]  # (rows, seconds) of every ORT call


class QueueFull(RuntimeError):
    """The model's queue is at its limit; the caller should answer 503 with Retry-After."""


@dataclass(slots=True)
class _Pending:
    num: np.ndarray
    cat: np.ndarray
    future: asyncio.Future[np.ndarray]


class AdaptiveBatcher:
    """Every request gets a future; one task gathers rows, runs the model once, splits the results.

    A batch closes at `max_batch_size` rows, or after `max_delay_ms` of waiting for more (0: it
    takes whatever queued while the previous batch ran). Inference runs on one dedicated thread, so
    the event loop keeps accepting requests, and the next batch fills while this one runs.
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
    ) -> None:
        self._run, self._on_batch = run, on_batch
        self.max_batch_size, self.max_queue, self.enabled = max_batch_size, max_queue, enabled
        self._delay = max_delay_ms / 1000
        self._pending: deque[_Pending] = deque()
        self._queued_rows = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tabserve-infer")
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._pending)

    async def predict(self, num: np.ndarray, cat: np.ndarray) -> np.ndarray:
        """Model output rows for these input rows, in order."""
        loop = asyncio.get_running_loop()
        if not self.enabled or (self._closed and (self._task is None or self._task.done())):
            return await loop.run_in_executor(self._executor, self._timed_run, num, cat)
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests already queued")
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append(_Pending(num, cat, future))
        self._queued_rows += len(num)
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._worker())
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    def close(self) -> None:
        """Stop taking new batches once the queue is empty (a retired model version)."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def _worker(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._delay and self._queued_rows < self.max_batch_size:
                await self._wait_for_more()
            await self._execute(self._take())

    async def _wait_for_more(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._delay
        while self._queued_rows < self.max_batch_size and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Pending]:
        batch = [self._pending.popleft()]
        rows = len(batch[0].num)
        while self._pending and rows + len(self._pending[0].num) <= self.max_batch_size:
            item = self._pending.popleft()
            batch.append(item)
            rows += len(item.num)
        self._queued_rows -= rows
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        if len(batch) == 1:
            num, cat = batch[0].num, batch[0].cat
        else:
            num = np.concatenate([p.num for p in batch])
            cat = np.concatenate([p.cat for p in batch])
        try:
            out = await loop.run_in_executor(self._executor, self._timed_run, num, cat)
        except Exception as exc:  # noqa: BLE001 - the failure belongs to every request of the batch
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        start = 0
        for p in batch:
            end = start + len(p.num)
            if not p.future.done():  # NOTE: a client that went away cancelled its future
                p.future.set_result(out[start:end])
            start = end

    def _timed_run(self, num: np.ndarray, cat: np.ndarray) -> np.ndarray:
        if self._on_batch is None:
            return self._run(num, cat)
        started = perf_counter()
        out = self._run(num, cat)
        self._on_batch(len(num), perf_counter() - started)
        return out
