"""Score a file or stream on this machine, in bounded memory: every input row has an output row."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort
import pyarrow as pa

from service.bundle import MODEL_FILE, BundleRef, process_alive
from service.features import Preprocess, near_miss
from service.runtime import Device, create_session
from service.scoring.columns import NOT_UTF8, ArrowEncoder, invalid_utf8_rows, mark_rows, text_column
from service.scoring.files import ROW, UNPARSED, ScoringError, Sink, Source, format_of, numbered, open_sink, open_source

__all__ = [
    "Scorer",
    "ScoringError",
    "Summary",
    "prediction_columns",
    "remove_stale",
    "score_file",
    "score_stream",
    "temporary",
]

Progress = Callable[[int, int], None]  # (rows done, bytes read)
OnError = Callable[[int, str], None]  # (row number, message)
ORT_ROWS = 1024  # rows per ONNX Runtime call: small enough to stay in cache
READ_AHEAD = 1  # blocks the reading thread may have ready before the scorers take them
KEPT_ERRORS = 100
KEPT_WARNINGS = 1000  # distinct warning texts counted (unseen free-text levels could be endless)
OTHER_WARNINGS = "other warnings"


@dataclass
class Summary:
    """What a run did; rows_in == rows_scored + rows_failed."""

    rows_in: int = 0
    rows_scored: int = 0
    rows_failed: int = 0
    seconds: float = 0.0
    errors: list[tuple[int, str]] = field(default_factory=list)  # the first KEPT_ERRORS
    # warnings on scored rows: text → rows
    warnings: Counter[str] = field(default_factory=Counter)

    def count_warnings(self, counts: Counter[str]) -> None:
        """Add a block's warning counts, past KEPT_WARNINGS texts under one entry."""
        for message, rows in counts.items():
            if message not in self.warnings and len(self.warnings) >= KEPT_WARNINGS:
                message = OTHER_WARNINGS
            self.warnings[message] += rows

    @property
    def rows_per_second(self) -> float:
        """Rows in per second."""
        return self.rows_in / self.seconds if self.seconds else 0.0


def prediction_columns(pre: Preprocess) -> list[str]:
    """The columns the model adds."""
    if pre.task == "binary":
        return ["label", "probability"]
    if pre.task == "multiclass":
        return ["label", *(f"probability_{label}" for label in pre.labels)]
    return ["value"]


@dataclass
class Scored:
    """One block scored."""

    batch: pa.RecordBatch
    errors: list[tuple[int, str]]
    rows: int
    warnings: Counter[str]


class Scorer:
    """One bundle's session and contract (`pre`), applied to Arrow batches."""

    def __init__(
        self,
        ref: BundleRef,
        device: Device = "auto",
        threads: int = 1,
        session: ort.InferenceSession | None = None,
        pre: Preprocess | None = None,
    ) -> None:
        self.name, self.version = ref.name, ref.version
        self.pre = pre if pre is not None else ref.preprocess
        self.session = session or create_session(ref.path / MODEL_FILE, device, threads)
        self.names = [f.name for f in self.pre.features]
        self.encoder = ArrowEncoder(self.pre)
        self._labels = pa.array(self.pre.labels)

    def check_columns(self, columns: list[str]) -> None:
        """Fail early when the input lacks feature columns."""
        missing = [n for n in self.names if n not in columns]
        if missing:
            unused = [c for c in columns if c not in self.names]
            guesses = {n: near_miss(n, unused) for n in missing}
            hints = "; ".join(f"is {g!r} meant to be {n!r}?" for n, g in guesses.items() if g is not None)
            raise ScoringError(
                f"input is missing {len(missing)} column(s) the model needs: {', '.join(missing)}"
                + (f" ({hints})" if hints else "")
            )

    def plan(self, source: Source, keep: list[str] | None, keep_all: bool) -> tuple[list[str], pa.Schema]:
        """Check a source's columns; the columns to read and the output schema."""
        self.check_columns(source.columns)
        kept = kept_columns(source, self.pre, keep, keep_all)
        wanted = list(dict.fromkeys([*kept, *self.names]))
        twice = [name for name in wanted if source.columns.count(name) > 1]
        if twice:  # which of the two holds the value is a guess: refuse rather than pick one
            raise ScoringError(f"column(s) named more than once in the input's header: {', '.join(twice)}")
        return wanted, self.output_schema([(c, source.type_of(c)) for c in kept])

    def output_schema(self, kept: list[tuple[str, pa.DataType]]) -> pa.Schema:
        """Kept columns, predictions, `error`; the scoring model in the metadata."""
        fields = [pa.field(name, kind) for name, kind in kept]
        if self.pre.task == "regression":
            fields.append(pa.field("value", pa.float64()))
        else:
            fields.append(pa.field("label", self._labels.type))
            fields += [pa.field(name, pa.float64()) for name in prediction_columns(self.pre)[1:]]
        provenance = {"tabserve.model": self.name, "tabserve.version": str(self.version)}
        if self.pre.task == "binary":
            threshold = self.pre.threshold if self.pre.threshold is not None else 0.5
            provenance["tabserve.threshold"] = repr(threshold)
        return pa.schema([*fields, pa.field("error", pa.string())], metadata=provenance)

    def predict(self, num: np.ndarray, cat: np.ndarray) -> np.ndarray:
        """ONNX Runtime over the rows, ORT_ROWS at a time."""
        parts = [
            self.session.run(None, {"num": num[i : i + ORT_ROWS], "cat": cat[i : i + ORT_ROWS]})[0]
            for i in range(0, len(num), ORT_ROWS)
        ]
        return np.concatenate(parts) if parts else np.empty((0, self.pre.n_outputs), np.float32)

    def score_batch(self, batch: pa.RecordBatch, schema: pa.Schema) -> Scored:
        """Score one `numbered` block; failed rows get empty predictions and the reason."""
        enc = self.encoder.encode(batch)  # checks the UTF-8 of every feature value it reads
        n_kept = len(schema) - len(prediction_columns(self.pre)) - 1
        for name in schema.names[:n_kept]:
            if name not in self.names:
                mark_rows(enc, invalid_utf8_rows(text_column(batch.column(name))), name, NOT_UTF8)
        out = self.predict(enc.num, enc.cat)
        rows = batch.column(ROW).to_numpy()
        messages = {r: f"row {rows[r]}, field '{e.field}': {e.reason}" for r, e in enc.errors.items()}
        unparsed = batch.column(UNPARSED)
        if unparsed.null_count < batch.num_rows:
            for r in np.flatnonzero(unparsed.is_valid().to_numpy(zero_copy_only=False)).tolist():
                messages[r] = f"row {rows[r]}: {unparsed[r].as_py()}"
        failed = np.zeros(batch.num_rows, dtype=bool)
        failed[list(messages)] = True
        error_col = pa.nulls(batch.num_rows, pa.string())
        if messages:
            texts = np.full(batch.num_rows, None, dtype=object)
            for r, message in messages.items():
                texts[r] = message
            error_col = pa.array(texts, pa.string())
        kept = [batch.column(name) for name in schema.names[:n_kept]]
        scored = pa.RecordBatch.from_arrays([*kept, *self._predictions(out, failed), error_col], schema=schema)
        warnings = Counter(w for r, texts in enc.warnings.items() if r not in messages for w in texts)
        return Scored(scored, [(int(rows[r]), messages[r]) for r in sorted(messages)], batch.num_rows, warnings)

    def _predictions(self, out: np.ndarray, failed: np.ndarray) -> list[pa.Array]:
        if self.pre.task == "regression":
            return [pa.array(out[:, 0].astype(np.float64), mask=failed)]
        labels = self._labels.take(pa.array(self.pre.label_index(out), mask=failed))
        if self.pre.task == "binary":
            return [labels, pa.array(out[:, 1].astype(np.float64), mask=failed)]
        return [labels, *(pa.array(out[:, k].astype(np.float64), mask=failed) for k in range(out.shape[1]))]


def kept_columns(source: Source, pre: Preprocess, keep: list[str] | None, keep_all: bool) -> list[str]:
    """The pass-through columns: `keep`, all, or the id columns present."""
    if keep_all:
        return list(source.columns)
    wanted = keep if keep is not None else pre.id_columns
    missing = [c for c in wanted if c not in source.columns]
    if keep is not None and missing:
        raise ScoringError(f"--keep names column(s) not in the input: {', '.join(missing)}")
    return [c for c in wanted if c in source.columns]


def score_stream(
    scorer: Scorer,
    source: Source,
    open_out: Callable[[pa.Schema], Sink],
    *,
    keep: list[str] | None = None,
    keep_all: bool = False,
    progress: Progress | None = None,
    on_error: OnError | None = None,
    workers: int = 0,
) -> Summary:
    """Score `source` into the sink `open_out(schema)` gives; rows out == rows in."""
    started, summary = time.perf_counter(), Summary()
    try:
        wanted, schema = scorer.plan(source, keep, keep_all)
    except BaseException:
        source.close()
        raise
    workers = workers or min(2, os.cpu_count() or 1)
    sink = open_out(schema)

    def record(scored: Scored) -> None:
        sink.write(scored.batch)
        summary.rows_in += scored.rows
        summary.rows_failed += len(scored.errors)
        summary.count_warnings(scored.warnings)
        for row, message in scored.errors:
            if len(summary.errors) < KEPT_ERRORS:
                summary.errors.append((row, message))
            if on_error:
                on_error(row, message)
        if progress:
            progress(summary.rows_in, source.position())

    blocks = read_ahead(numbered(source, wanted))
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="tabserve-score") as pool:
            inflight: deque[Future[Scored]] = deque()
            try:
                for batch in blocks:
                    inflight.append(pool.submit(scorer.score_batch, batch, schema))
                    while len(inflight) > workers:
                        record(inflight.popleft().result())
                while inflight:
                    record(inflight.popleft().result())
            finally:
                for future in inflight:
                    future.cancel()
    finally:
        blocks.close()
        source.close()
        sink.close()
    summary.rows_scored = summary.rows_in - summary.rows_failed
    summary.seconds = time.perf_counter() - started
    return summary


_T = TypeVar("_T")
_DONE = object()


def read_ahead(items: Iterator[_T], depth: int = READ_AHEAD) -> Generator[_T, None, None]:
    """`items` made on a thread of its own, up to `depth` ahead; its errors raise in the consumer."""
    ready: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        last: tuple[object, BaseException | None] = (_DONE, None)
        try:
            for item in items:
                if stop.is_set():
                    return
                ready.put((item, None))
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 (raised again in the consumer)
            last = (None, exc)
        finally:
            getattr(items, "close", lambda: None)()  # the source is let go on the thread that read it
        if not stop.is_set():
            ready.put(last)

    producer = threading.Thread(target=produce, name="tabserve-read", daemon=True)
    producer.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        # room for the producer's last put, whatever it was doing when told to stop
        with suppress(queue.Empty):
            while True:
                ready.get_nowait()
        # it finishes the block in hand; a process that exits while it is inside Arrow aborts
        producer.join()


def score_file(
    scorer: Scorer,
    source: Path | Source,
    target: Path,
    *,
    keep: list[str] | None = None,
    keep_all: bool = False,
    chunk_rows: int = 16_384,
    progress: Progress | None = None,
    on_error: OnError | None = None,
    workers: int = 0,
) -> Summary:
    """Score `source` into `target` (format by extension) under a temporary name, then rename."""
    fmt = format_of(target)
    reader = open_source(source, chunk_rows) if isinstance(source, Path) else source
    remove_stale(target)
    tmp = temporary(target)
    try:
        summary = score_stream(
            scorer,
            reader,
            lambda schema: open_sink(tmp, schema, fmt),
            keep=keep,
            keep_all=keep_all,
            progress=progress,
            on_error=on_error,
            workers=workers,
        )
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return summary


def temporary(target: Path) -> Path:
    """Where `target` is written before the rename (with this process's id)."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def remove_stale(target: Path) -> None:
    """Remove `target`'s temporaries whose processes no longer run."""
    prefix = f".{target.name}.tmp-"
    with suppress(OSError):
        for path in target.parent.iterdir():
            pid = path.name[len(prefix) :]
            if path.name.startswith(prefix) and pid.isdecimal() and not process_alive(int(pid)):
                with suppress(OSError):
                    path.unlink()
