"""The micro-batcher on a real ONNX Runtime session of the churn bundle (no HTTP): batches form,
answers go back to their own requests, failures stay within their batch, retired batchers finish."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from service import bundle
from service.batching import AdaptiveBatcher, DeadlineExceeded, QueueFull
from service.runtime import create_session
from tests.service.conftest import telco_records

Run = Callable[[np.ndarray, np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def model(churn_bundle: bundle.BundleRef) -> tuple[Run, np.ndarray, np.ndarray]:
    """The bundle's session as a run function, and 64 rows of real encoded telco records."""
    session = create_session(churn_bundle.path / bundle.MODEL_FILE, "cpu", 1)
    enc = churn_bundle.preprocess.encode_records(telco_records(64))

    def run(num: np.ndarray, cat: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run(None, {"num": num, "cat": cat})[0]
        return out

    return run, enc.num, enc.cat


def batcher(run: Run, batches: list[int], **settings: object) -> AdaptiveBatcher:
    options: dict[str, object] = dict(max_batch_size=1024, max_delay_ms=0, max_queue=1000) | settings
    return AdaptiveBatcher(run, on_batch=lambda rows, _: batches.append(rows), **options)  # type: ignore[arg-type]


def test_concurrent_requests_share_calls_and_get_their_own_rows(model: tuple[Run, np.ndarray, np.ndarray]) -> None:
    run, num, cat = model
    expected = run(num, cat)
    batches: list[int] = []

    async def scenario() -> list[np.ndarray]:
        b = batcher(run, batches)
        # NOTE: requests of 1, 2 and 3 rows, all sent at once
        spans = [(i, i + 1 + i % 3) for i in range(0, 60, 4)]
        outs = await asyncio.gather(*(b.predict(num[s:e], cat[s:e]) for s, e in spans))
        return [np.allclose(out, expected[s:e], atol=1e-6) for out, (s, e) in zip(outs, spans, strict=True)]

    assert all(asyncio.run(scenario()))
    assert sum(batches) == sum(1 + i % 3 for i in range(0, 60, 4))
    assert len(batches) < 15, batches  # NOTE: 15 requests, far fewer ORT calls


@pytest.mark.parametrize("batching", [True, False])
def test_on_the_event_loop_same_answers_no_thread(model: tuple[Run, np.ndarray, np.ndarray], batching: bool) -> None:
    """A worker with one CPU runs ORT on its loop: batches still form, answers and failures go
    to their own requests, and no inference thread is started."""
    run, num, cat = model
    expected = run(num, cat)
    batches: list[int] = []
    bad = num[:1].copy()
    bad[0, 0] = np.inf

    def run_or_fail(n: np.ndarray, c: np.ndarray) -> np.ndarray:
        if np.isinf(n).any():
            raise RuntimeError("ORT refused the batch")
        return run(n, c)

    async def scenario() -> tuple[list[object], object]:
        b = batcher(run_or_fail, batches, on_loop=True, enabled=batching)
        outs = await asyncio.gather(*(b.predict(num[i : i + 2], cat[i : i + 2]) for i in range(0, 60, 2)))
        failed = await asyncio.gather(b.predict(bad, cat[:1]), return_exceptions=True)
        return list(outs), failed[0]

    threads_before = {t.ident for t in threading.enumerate()}
    outs, failed = asyncio.run(scenario())
    assert all(np.allclose(out, expected[i : i + 2], atol=1e-6) for out, i in zip(outs, range(0, 60, 2), strict=True))
    assert isinstance(failed, RuntimeError)
    assert not [t for t in threading.enumerate() if t.ident not in threads_before and t.name == "tabserve-infer"]
    assert len(batches) < 30 if batching else len(batches) == 30, batches  # the failed call is not timed


def test_max_batch_size_and_max_delay(model: tuple[Run, np.ndarray, np.ndarray]) -> None:
    run, num, cat = model
    batches: list[int] = []

    async def scenario() -> float:
        b = batcher(run, batches, max_batch_size=8, max_delay_ms=200)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await b.predict(num[:1], cat[:1])  # NOTE: alone: waits the delay for company, then goes
        waited = loop.time() - started
        await asyncio.gather(*(b.predict(num[i : i + 1], cat[i : i + 1]) for i in range(20)))
        return waited

    waited = asyncio.run(scenario())
    assert waited >= 0.19
    assert batches[0] == 1 and max(batches) == 8 and sum(batches[1:]) == 20, batches


def test_a_failure_reaches_its_batch_only(model: tuple[Run, np.ndarray, np.ndarray]) -> None:
    run, num, cat = model

    def run_or_fail(n: np.ndarray, c: np.ndarray) -> np.ndarray:
        if np.isinf(n).any():
            raise RuntimeError("ORT refused the batch")
        return run(n, c)

    bad = num[:1].copy()
    bad[0, 0] = np.inf
    gate = threading.Event()

    def gated(n: np.ndarray, c: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return run_or_fail(n, c)

    async def scenario() -> list[object]:
        b = batcher(gated, [])
        first = asyncio.ensure_future(b.predict(num[:1], cat[:1]))  # NOTE: holds the thread
        await asyncio.sleep(0.05)
        # these queue behind it and form the second batch, with the bad one among them
        rest = [asyncio.ensure_future(b.predict(n, cat[:1])) for n in (num[1:2], bad, num[2:3])]
        await asyncio.sleep(0.05)
        gate.set()
        second = await asyncio.gather(*rest, return_exceptions=True)
        after = await b.predict(num[3:4], cat[3:4])  # NOTE: a later batch is not hurt
        return [await first, *second, after]

    first, *second, after = asyncio.run(scenario())
    assert isinstance(first, np.ndarray) and isinstance(after, np.ndarray)
    assert all(isinstance(r, RuntimeError) and "refused" in str(r) for r in second)


@pytest.mark.parametrize("batching", [True, False])
def test_queue_limit_raises_queue_full(model: tuple[Run, np.ndarray, np.ndarray], batching: bool) -> None:
    run, num, cat = model
    gate = threading.Event()

    def slow(n: np.ndarray, c: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return run(n, c)

    async def scenario() -> list[object]:
        b = batcher(slow, [], max_queue=3, enabled=batching)
        first = asyncio.ensure_future(b.predict(num[:1], cat[:1]))
        await asyncio.sleep(0.05)  # NOTE: on the thread now; the next ones fill the queue
        queued = [asyncio.ensure_future(b.predict(num[:1], cat[:1])) for _ in range(3 if batching else 2)]
        await asyncio.sleep(0)
        assert b.depth == 3
        with pytest.raises(QueueFull):
            await b.predict(num[:1], cat[:1])
        gate.set()
        answered = [await first, *await asyncio.gather(*queued)]
        assert b.depth == 0
        return answered

    assert all(isinstance(out, np.ndarray) for out in asyncio.run(scenario()))


def test_batching_off_and_a_retired_batcher_still_answer(model: tuple[Run, np.ndarray, np.ndarray]) -> None:
    run, num, cat = model
    expected = run(num[:4], cat[:4])
    batches: list[int] = []

    async def scenario() -> tuple[list[np.ndarray], list[np.ndarray]]:
        off = batcher(run, batches, enabled=False)
        alone = await asyncio.gather(*(off.predict(num[i : i + 1], cat[i : i + 1]) for i in range(4)))
        retired = batcher(run, [])
        waiting = [asyncio.ensure_future(retired.predict(num[i : i + 1], cat[i : i + 1])) for i in range(2)]
        retired.close()  # NOTE: requests already queued are still answered ...
        answered = await asyncio.gather(*waiting)
        await asyncio.sleep(0.05)
        late = await retired.predict(num[2:4], cat[2:4])  # ... and so is one arriving after
        return alone, [*answered, late]

    alone, retired = asyncio.run(scenario())
    assert batches == [1, 1, 1, 1]
    assert np.allclose(np.concatenate(alone), expected, atol=1e-6)
    assert np.allclose(np.concatenate(retired), expected, atol=1e-6)


def test_deadlines_answer_504_whether_queued_or_running(model: tuple[Run, np.ndarray, np.ndarray]) -> None:
    run, num, cat = model
    release = threading.Event()

    def slow(n: np.ndarray, c: np.ndarray) -> np.ndarray:
        release.wait(5)  # a stuck inference call, until the test lets it go
        return run(n, c)

    async def scenario() -> tuple[list[object], float]:
        b = batcher(slow, [])
        loop = asyncio.get_running_loop()
        started = loop.time()
        running = asyncio.ensure_future(b.predict(num[:1], cat[:1], timeout=0.2))  # on the stuck call
        await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(b.predict(num[:2], cat[:2], timeout=0.2))  # waits behind it
        patient = asyncio.ensure_future(b.predict(num[:3], cat[:3]))  # no deadline: answered at the end
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        took = loop.time() - started
        release.set()
        outcomes.append(await patient)
        return outcomes, took

    (running, queued, patient), took = asyncio.run(scenario())
    assert isinstance(running, DeadlineExceeded) and isinstance(queued, DeadlineExceeded)
    assert took < 4.0  # the sweep answered them while the call was still stuck (it is held for 5 s)
    assert np.allclose(patient, run(num[:3], cat[:3]))  # type: ignore[arg-type]


def test_answered_rows_reach_the_observer_with_their_notes(model: tuple[Run, np.ndarray, np.ndarray]) -> None:
    """The observer (the prediction log) gets each batch's answered rows, in order, with each
    request's note; a request answered 504 is not among them; an observer that fails harms no one."""
    run, num, cat = model
    release = threading.Event()
    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, object]]]] = []

    def slow(n: np.ndarray, c: np.ndarray) -> np.ndarray:
        release.wait(5)
        return run(n, c)

    async def scenario() -> list[object]:
        b = batcher(slow, [], on_answered=lambda *batch: seen.append(batch))
        # NOTE: one batch of three requests; the middle one's deadline passes while the call is stuck
        first = asyncio.ensure_future(b.predict(num[:2], cat[:2], note="first"))
        late = asyncio.ensure_future(b.predict(num[2:5], cat[2:5], timeout=0.1, note="late"))
        last = asyncio.ensure_future(b.predict(num[5:6], cat[5:6], note="last"))
        await asyncio.sleep(0.3)
        release.set()
        return await asyncio.gather(first, late, last, return_exceptions=True)

    first, late, last = asyncio.run(scenario())
    assert isinstance(late, DeadlineExceeded)
    assert len(seen) == 1
    got_num, got_cat, got_out, notes = seen[0]
    assert notes == [(2, "first"), (1, "last")]
    rows = [0, 1, 5]
    assert np.array_equal(got_num, num[rows]) and np.array_equal(got_cat, cat[rows])
    assert np.allclose(got_out, run(num[rows], cat[rows]), atol=1e-6)
    assert np.allclose(np.concatenate([first, last]), got_out)  # type: ignore[list-item]

    def broken(*_: object) -> None:
        raise RuntimeError("observer bug")

    async def unharmed() -> list[np.ndarray]:
        b = batcher(run, [], on_answered=broken)
        once = await b.predict(num[:1], cat[:1], note=1)
        return [once, await b.predict(num[1:3], cat[1:3], note=2)]  # the batcher goes on after the failure

    once, twice = asyncio.run(unharmed())
    assert np.allclose(np.concatenate([once, twice]), run(num[:3], cat[:3]), atol=1e-6)
