"""The prediction log: every scored record as Parquet under `<root>/<model>/date=YYYY-MM-DD/`.

A batch of answered requests (or a scored file's chunk) copies its rows into a bounded column
buffer per model version; a writer thread turns the buffer into Arrow and appends it to a hidden
Arrow IPC segment per (model, version, day), flushed every `flush_s` (what a `kill -9` can lose). A segment becomes one Parquet file, renamed into place
whole, when it reaches `file_rows` or `rotate_s`, on a new day and on close. A segment a dead
process left behind is turned into Parquet by the next log opened on that root.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import random
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from service.features import Preprocess, category_key

log = logging.getLogger("tabserve.log")
SEGMENT = ".arrows"  # hidden (leading dot) while written: Parquet readers skip it
LEVELS = pa.dictionary(pa.int32(), pa.string())  # categoricals while in a segment; plain text in Parquet


# one request's (ids, levels as sent where one was unseen, request id): what a log entry keeps beside its rows
Note = tuple[Sequence[tuple[str, Sequence[Any]]], dict[str, Any] | None, str | None]


class Buffer:
    """One model version's rows waiting for the writer, column by column in preallocated arrays: a
    request leaves no object of its own behind (thousands a second would keep the garbage collector
    walking them), and the writer takes whole columns."""

    def __init__(self, pre: Preprocess, capacity: int) -> None:
        self.pre, self.capacity, self.size = pre, capacity, 0
        self.num = np.empty((capacity, len(pre.numeric)), np.float32)
        # codes as the narrowest integer that holds them: a quarter of int64's memory traffic on the request path
        widest = max((len(f.vocab_) for f in pre.categorical), default=0)
        self.cat = np.empty((capacity, len(pre.categorical)), np.int16 if widest < 2**15 - 1 else np.int32)
        self.out = np.empty((capacity, pre.n_outputs), np.float32)
        self.ids: list[list[Any]] = [[] for _ in pre.id_columns]
        self.starts: list[int] = []  # each request's first row
        self.ats: list[float] = []  # and its time
        self.requests: list[str | None] = []  # and the client's request id
        self.levels: dict[int, dict[str, Any]] = {}  # first row → levels as sent, where one was unseen (rare)
        self.rows: dict[int, np.ndarray] = {}  # first row → row numbers in a scored file

    def clear(self) -> Buffer:
        """Empty, for reuse (its arrays' pages are already the process's: no page faults the next time)."""
        self.size = 0
        for values in self.ids:
            values.clear()
        for kept in (self.starts, self.ats, self.requests):
            kept.clear()
        self.levels.clear()
        self.rows.clear()
        return self

    def add(self, num: np.ndarray, cat: np.ndarray, out: np.ndarray, notes: list[tuple[int, Note | None]],
            rows: np.ndarray | None, at: float | None = None) -> None:  # fmt: skip
        """Rows answered together, and each request's (rows, note); `at`, their time (default: now)."""
        start = self.size
        self.size = start + len(num)
        self.num[start : self.size], self.cat[start : self.size], self.out[start : self.size] = num, cat, out
        if rows is not None:
            self.rows[start] = rows
        at = time.time() if at is None else at
        for n, note in notes:
            ids, levels, request = note or ((), None, None)
            self.starts.append(start)
            self.ats.append(at)
            self.requests.append(request)
            for values, (_, sent) in zip(self.ids, ids):  # noqa: B905 - a request may send none (V2)
                values.extend(sent)
            for values in self.ids[len(ids) :]:
                values.extend(itertools.repeat(None, n))
            if levels:
                self.levels[start] = levels
            start += n


# the log's and the feedback's own columns, beside the model's fields: a feature or id of one of these
# names would be a second column of that name (training leaves such a feature out, refuses such an id)
OWN_COLUMNS = frozenset(
    {"_at", "_request", "_row", "_model", "_version", "_label", "_probability", "_probabilities", "_value"}
    | {"_outcome", "_target", "_labelled_at"}
)


def output_fields(pre: Preprocess) -> list[pa.Field]:
    """The logged outputs of a model: label and positive-class probability, class probabilities, or value."""
    if pre.task == "regression":
        return [pa.field("_value", pa.float32())]
    label = pa.field("_label", pa.string())
    if pre.task == "binary":
        return [label, pa.field("_probability", pa.float32())]
    return [label, pa.field("_probabilities", pa.list_(pa.float32(), len(pre.labels)))]


class LogSchema:
    """How one model version's scored rows become an Arrow table (excluded fields never become a column)."""

    def __init__(self, model: str, version: int, pre: Preprocess, exclude: frozenset[str]) -> None:
        self.model, self.version, self.pre = model, version, pre
        self.ids = [c for c in pre.id_columns if c not in exclude]
        self.id_positions = [pre.id_columns.index(c) for c in self.ids]
        self.numeric = [(j, f.name) for j, f in enumerate(pre.numeric) if f.name not in exclude]
        self.categorical = [(j, f.name) for j, f in enumerate(pre.categorical) if f.name not in exclude]
        # code 0 (missing or unseen) takes the null at the front
        self.vocab = [pa.array(f.vocab_, pa.string()) for f in pre.categorical]
        self.labels = pa.array([str(label) for label in pre.labels], pa.string()) if pre.labels else None
        fields = [
            pa.field("_at", pa.timestamp("us", tz="UTC")),
            pa.field("_request", LEVELS),
            pa.field("_row", pa.int64()),
            pa.field("_model", LEVELS),
            pa.field("_version", pa.int32()),
            *(pa.field(c, pa.string()) for c in self.ids),
            *(pa.field(name, pa.float32()) for _, name in self.numeric),
            *(pa.field(name, LEVELS) for _, name in self.categorical),
            *output_fields(pre),
        ]
        self.schema = pa.schema(fields)

    def table(self, buf: Buffer, first: int, last: int, made: int, prefix: str) -> pa.Table:
        """The rows of requests `first` to `last` (exclusive) of a buffer; requests without an id of
        their own are named `prefix` + a number counted from `made`."""
        lo = buf.starts[first]
        hi = buf.starts[last] if last < len(buf.starts) else buf.size
        starts = np.asarray(buf.starts[first:last], np.int64)
        counts = np.diff(np.append(starts, hi))
        which = np.repeat(np.arange(len(starts)), counts)
        rows = np.arange(lo, hi) - starts[which]
        for start, numbers in buf.rows.items():
            if lo <= start < hi:
                rows[start - lo : start - lo + len(numbers)] = numbers
        named = pc.binary_join_element_wise(prefix, pa.array(np.arange(made, made + len(starts))).cast(pa.string()), "")
        sent = buf.requests[first:last]
        if any(sent):
            named = pc.coalesce(pa.array(sent, pa.string()), named)
        n = hi - lo
        columns: list[pa.Array] = [
            pa.array((np.asarray(buf.ats[first:last]) * 1e6).astype(np.int64)[which], pa.timestamp("us", tz="UTC")),
            pa.DictionaryArray.from_arrays(pa.array(which.astype(np.int32)), named),
            pa.array(rows, pa.int64()),
            pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array([self.model])),
            pa.array(np.full(n, self.version, np.int32)),
        ]
        columns += [id_texts(buf.ids[j][lo:hi]) for j in self.id_positions]
        columns += [pa.array(buf.num[lo:hi, j], mask=np.isnan(buf.num[lo:hi, j])) for j, _ in self.numeric]
        if self.categorical:
            codes = np.ascontiguousarray(buf.cat[lo:hi].T)  # a row per feature: each column's codes contiguous
            index = (codes - 1).astype(np.int32)
            columns += [self._levels(buf, j, name, lo, hi, index[j], codes[j] == 0) for j, name in self.categorical]
        columns += self._outputs(buf.out[lo:hi])
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _levels(
        self, buf: Buffer, j: int, name: str, lo: int, hi: int, index: np.ndarray, missing: np.ndarray
    ) -> pa.Array:
        """A categorical column: the vocabulary's index (code 0, missing or unseen, is null)."""
        taken = pa.DictionaryArray.from_arrays(pa.array(index, mask=missing), self.vocab[j])
        sent = [(start, lv[name]) for start, lv in buf.levels.items() if lo <= start < hi and name in lv]
        if not sent:
            return taken
        texts: list[str | None] = [None] * (hi - lo)
        for start, values in sent:
            found = level_texts(values).to_pylist()
            texts[start - lo : start - lo + len(found)] = found
        # where the code is 0 but a level was sent: the level as sent (the model saw "missing")
        merged = pc.if_else(pc.is_null(taken), pa.array(texts, pa.string()), taken.cast(pa.string()))
        return merged.dictionary_encode().cast(LEVELS)

    def _outputs(self, out: np.ndarray) -> list[pa.Array]:
        pre = self.pre
        if pre.task == "regression":
            return [pa.array(out[:, 0].astype(np.float32))]
        assert self.labels is not None
        label = self.labels.take(pa.array(pre.label_index(out)))
        if pre.task == "binary":
            return [label, pa.array(out[:, 1].astype(np.float32))]
        flat = pa.array(np.ascontiguousarray(out, np.float32).ravel())
        return [label, pa.FixedSizeListArray.from_arrays(flat, len(pre.labels))]


def id_texts(values: list[Any]) -> pa.Array:
    """Id values as a text column (anything but a string as JSON; absent as missing)."""
    try:
        return pa.array(values, pa.string())  # the usual ids: text already
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return pa.array([text_of(v) for v in values], pa.string())


def text_of(value: Any) -> str | None:
    """An id value as text (JSON for anything but a string); None stays missing."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, np.generic):  # a binary V2 tensor's integer id (np.int64): lost as absent before
        value = value.item()
    if not isinstance(value, int | float | bool | list | dict):  # the codecs' "absent" marker
        return None
    return orjson.dumps(value).decode()


def level_texts(values: Any) -> pa.Array:
    """Raw categorical values (a list, or an Arrow column) as the level text the model compared
    (stripped; empty is missing)."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        text = pc.utf8_trim_whitespace(values.cast(pa.string()))
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        return text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    texts: list[str | None] = []
    for v in values:
        try:
            texts.append(category_key(v))
        except ValueError:
            texts.append(None)
    return pa.array(texts, pa.string())


def writable_folder(root: str, what: str) -> None:
    """A local folder that exists (made here) and can be written, or a ValueError naming it: a log that
    cannot be written lost every record it was given, the run itself answering 0."""
    if not root.strip():
        raise ValueError(f"{what}: an empty path (name a folder)")
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {root}: a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{what} {root}: cannot be made ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {root}: not writable by this user")


@dataclass(frozen=True)
class LogLocation:
    """Where a log lives: its filesystem and root, and the local folder of its open segments."""

    fs: pafs.FileSystem
    root: str
    spool: Path

    @classmethod
    def of(cls, root: str | Path, spool: Path | None = None) -> LogLocation:
        """A log root (a local path, or a URI pyarrow understands)."""
        fs, path = filesystem(root)
        local = isinstance(fs, pafs.LocalFileSystem)
        return cls(fs, path, Path(path) if local else spool or Path(tempfile.gettempdir()) / "tabserve-log-spool")

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def files(self, model: str, kind: str = "") -> list[str]:
        """The whole Parquet files of a model's predictions (kind "") or its feedback (kind "feedback")."""
        base = f"{self.root}/{model}" + (f"/{kind}" if kind else "")
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith(".")
            and i.path[len(base) + 1 :].startswith("date=")
        )

    def segments(self, model: str) -> list[Path]:
        """The segments of a model's predictions still being written (or left by a process that died)."""
        return sorted((self.spool / model).glob(f"date=*/.*{SEGMENT}"))


@dataclass
class Segment:
    """The open IPC file of one (model, version, day) and what rotation needs to know."""

    path: Path
    partition: str  # <model>/date=YYYY-MM-DD, where its Parquet file goes
    writer: pa.ipc.RecordBatchStreamWriter
    handle: Any
    opened: float = field(default_factory=time.monotonic)
    rows: int = 0


@dataclass
class LogCounts:
    """What the log has done, for /metrics (records by model)."""

    written: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


class PredictionLog:
    """Appends scored rows to Parquet files under a root (a local path, or a URI pyarrow understands)."""

    def __init__(
        self,
        root: str | Path,
        *,
        sample: float = 1.0,
        exclude: Iterable[str] = (),
        flush_s: float = 1.0,
        rotate_s: float = 600.0,
        file_rows: int = 500_000,
        buffer_rows: int = 200_000,
        spool: Path | None = None,
    ) -> None:
        # segments sit beside the Parquet files on a local root; an object store gets a local spool
        self.location = LogLocation.of(root, spool)
        if self.location.local:
            writable_folder(str(root), "prediction log")
        self.sample, self.exclude = sample, frozenset(exclude)
        self.flush_s, self.rotate_s, self.file_rows, self.buffer_rows = flush_s, rotate_s, file_rows, buffer_rows
        self.counts = LogCounts()
        self.prefix = f"{secrets.token_hex(4)}-"  # request ids this process makes up
        self._tag = f"{os.getpid()}-{int(time.time())}-{secrets.token_hex(2)}"
        self._buffers: dict[tuple[str, int], Buffer] = {}
        self._spare: dict[tuple[str, int], Buffer] = {}  # written buffers, to fill again
        self._queued = 0  # rows in the buffers
        self._hurried = False  # the writer was asked to start early
        self._lock = threading.Lock()
        self._made = 0  # request ids made up so far
        self._files = itertools.count()
        self._schemas: dict[tuple[str, int], LogSchema] = {}
        self._segments: dict[tuple[str, int, str], Segment] = {}
        self._wake = threading.Condition()
        self._wanted = self._done = 0  # flushes asked for and done, for flush() to wait on
        self._closing = False
        self._retry = False  # a segment could not be published: try again next cycle
        self.recover()
        self._thread = threading.Thread(target=self._run, name="tabserve-log", daemon=True)
        self._thread.start()

    def add(
        self,
        model: str,
        version: int,
        pre: Preprocess,
        num: np.ndarray,
        cat: np.ndarray,
        out: np.ndarray,
        ids: Sequence[tuple[str, Sequence[Any]]] = (),
        levels: dict[str, Any] | None = None,
        request: str | None = None,
        *,
        rows: np.ndarray | None = None,
        wait: bool = False,
        at: float | None = None,
    ) -> None:
        """Queue one request's scored rows (`add_batch` of one)."""
        notes: list[tuple[int, Note | None]] = [(len(num), (ids, levels, request))]
        self.add_batch(model, version, pre, num, cat, out, notes, rows=rows, wait=wait, at=at)

    def add_batch(
        self,
        model: str,
        version: int,
        pre: Preprocess,
        num: np.ndarray,
        cat: np.ndarray,
        out: np.ndarray,
        notes: list[tuple[int, Note | None]],
        *,
        rows: np.ndarray | None = None,
        wait: bool = False,
        at: float | None = None,
    ) -> None:
        """Queue the scored rows of requests answered together, with each one's (rows, note); never
        raises. What does not fit is counted as dropped, or (`wait`, for file scoring, which has no
        client waiting) waits for the writer to make room. `at`: their time, default now (a file's
        blocks share its start, so that its row numbers order them, not which block finished first)."""
        if self.sample < 1.0:
            num, cat, out, notes, rows = self._sampled(num, cat, out, notes, rows)
        n = len(num)
        if not n:
            return
        with self._lock:
            if self._room(model, version, pre, n):  # the usual case, kept short
                self._buffers[model, version].add(num, cat, out, notes, rows, at)
                self._queued += n
                if self._queued > self.buffer_rows // 2 and not self._hurried:
                    self._hurry()  # half full before the flush is due: the writer starts now
                return
        if wait:
            self._wait_for_room(n)
            with self._lock:
                if self._room(model, version, pre, n, alone=True):
                    self._buffers[model, version].add(num, cat, out, notes, rows, at)
                    self._queued += n
                    return
        with self._lock:
            self.counts.dropped[model] = self.counts.dropped.get(model, 0) + n

    def _sampled(self, num: np.ndarray, cat: np.ndarray, out: np.ndarray, notes: list[tuple[int, Note | None]],
                 rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, Note | None]], np.ndarray | None]:  # fmt: skip
        """The requests `sample` keeps (a request's rows stay together)."""
        kept = [random.random() < self.sample for _ in notes]
        if all(kept):
            return num, cat, out, notes, rows
        taken = np.repeat(kept, [n for n, _ in notes])
        notes = [note for note, k in zip(notes, kept, strict=True) if k]
        return num[taken], cat[taken], out[taken], notes, None if rows is None else rows[taken]

    def _hurry(self) -> None:
        self._hurried = True
        with self._wake:
            self._wanted += 1
            self._wake.notify_all()

    def _room(self, model: str, version: int, pre: Preprocess, n: int, alone: bool = False) -> bool:
        """Whether `n` more rows fit (`alone`: or the queue is empty), making the model version's buffer
        if it has none; the lock held."""
        if self._closing or (self._queued + n > self.buffer_rows and not (alone and self._queued == 0)):
            return False
        buf = self._buffers.get((model, version))
        if buf is None:
            spare = self._spare.pop((model, version), None)
            if spare is None or spare.capacity < n or spare.pre is not pre:
                spare = Buffer(pre, max(self.buffer_rows, n))
            buf = self._buffers[model, version] = spare
        return buf.size + n <= buf.capacity

    def _wait_for_room(self, n: int) -> None:
        """Until the queue has room for `n` rows (or is empty), asking the writer to drain it now."""
        with self._wake:
            while not (self._queued == 0 or self._queued + n <= self.buffer_rows) and not self._closing:
                self._wanted += 1
                self._wake.notify_all()
                self._wake.wait(1.0)

    def flush(self, timeout: float = 30.0) -> None:
        """Return once everything queued before the call is in a segment on disk."""
        with self._wake:
            self._wanted += 1
            goal = self._wanted
            self._wake.notify_all()
            self._wake.wait_for(lambda: self._done >= goal or not self._thread.is_alive(), timeout)

    def close(self) -> None:
        """Write everything accepted, turn every segment into Parquet and stop the writer."""
        with self._lock:
            self._closing = True
        with self._wake:
            self._wake.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._wanted > self._done or self._closing, self.flush_s)
                goal, closing = self._wanted, self._closing
            try:
                self._write_queued()
                self._rotate(everything=closing)
                if self._retry:
                    self.recover()
            except Exception:  # the log never takes the service down; it says so
                log.exception("prediction log: writing failed")
            with self._wake:
                self._done = goal
                self._wake.notify_all()
            if closing:
                return

    def _write_queued(self) -> None:
        with self._lock:
            buffers, self._buffers = self._buffers, {}
            self._queued, self._hurried = 0, False
        for (model, version), buf in buffers.items():
            done, key = 0, None
            try:
                schema = self._schema(model, version, buf.pre)
                for day, first, last in days(buf.ats) if buf.starts else []:
                    table = schema.table(buf, first, last, self._made, self.prefix)
                    self._made += last - first
                    key = (model, version, day)
                    segment = self._segment(model, version, day, schema.schema)
                    for batch in table.to_batches():
                        segment.writer.write_batch(batch)
                    segment.handle.flush()
                    segment.rows += table.num_rows
                    self.counts.written[model] = self.counts.written.get(model, 0) + table.num_rows
                    done += table.num_rows
            except Exception:  # one model's failure must not lose the others'
                log.exception("prediction log: records of %s could not be written", model)
                self.counts.dropped[model] = self.counts.dropped.get(model, 0) + buf.size - done
                if key in self._segments:  # a batch may be half written: that segment ends here
                    self._close(self._segments.pop(key), publish=False)
            with self._lock:
                self._spare[model, version] = buf.clear()

    def _schema(self, model: str, version: int, pre: Preprocess) -> LogSchema:
        key = (model, version)
        if key not in self._schemas:
            self._schemas[key] = LogSchema(model, version, pre, self.exclude)
        return self._schemas[key]

    def _segment(self, model: str, version: int, day: str, schema: pa.Schema) -> Segment:
        key = (model, version, day)
        segment = self._segments.get(key)
        if segment is None:
            partition = f"{model}/date={day}"
            folder = self.location.spool / partition
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f".v{version}-{self._tag}-{next(self._files)}{SEGMENT}"
            opening = path.with_name(path.name + ".new")  # not a segment to recovery until it is locked
            handle = open(opening, "wb")  # noqa: SIM115 - open for the segment's life, closed on rotation
            fcntl.flock(handle, fcntl.LOCK_EX)  # held while alive: recovery leaves a live segment alone
            os.rename(opening, path)
            segment = Segment(path, partition, pa.ipc.new_stream(handle, schema), handle)
            self._segments[key] = segment
        return segment

    def _rotate(self, everything: bool) -> None:
        today = day_of(time.time())
        for key, segment in list(self._segments.items()):
            old = time.monotonic() - segment.opened >= self.rotate_s
            if everything or old or segment.rows >= self.file_rows or key[2] != today:
                self._close(self._segments.pop(key), publish=True)

    def _close(self, segment: Segment, publish: bool) -> None:
        """End a segment: publish it as Parquet, or leave it (unlocked) for `recover`, which each
        writer cycle runs after a failure (and every log at start)."""
        try:
            segment.writer.close()
            if publish:
                self._publish(segment.path, segment.partition)
        except Exception:  # a full disk, an object store away: the segment stays for the next try
            log.exception("prediction log: %s could not be published; it will be tried again", segment.path)
            self._retry = True
        finally:
            segment.handle.close()  # the lock goes with it, after the Parquet file is in place

    def _publish(self, segment: Path, partition: str) -> None:
        """One segment → one Parquet file, renamed into place whole; the segment is then removed."""
        table = read_segment(segment)
        if table.num_rows:
            write_whole(self.location, table, f"{self.location.root}/{partition}", published_name(segment))
        segment.unlink()

    def recover(self) -> None:
        """Publish the segments of processes that died (their lock is free) as Parquet files."""
        spool = self.location.spool
        if not spool.is_dir():
            return
        self._retry = False
        for path in sorted(spool.glob(f"*/date=*/.*{SEGMENT}")):
            try:
                with open(path, "rb") as handle:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live process is writing it
                    if not path.exists():
                        continue  # another worker just recovered it
                    log.warning("prediction log: publishing %s, left by a process that stopped or a failed try", path)
                    self._publish(path, f"{path.parent.parent.name}/{path.parent.name}")
            except FileNotFoundError:
                continue  # another worker recovered it first
            except Exception:  # the service starts either way; the next try comes after the next failure or start
                log.exception("prediction log: %s could not be recovered", path)


def write_whole(location: LogLocation, table: pa.Table, folder: str, name: str) -> None:
    """A Parquet file that readers see whole or not at all (a temporary name, then a rename)."""
    location.fs.create_dir(folder, recursive=True)
    final = f"{folder}/{name}"
    temporary = f"{folder}/.{name}.tmp" if location.local else final  # an object store's PUT is whole
    # no Arrow schema inside: every reader sees plain text columns; statistics where readers filter
    pq.write_table(
        table,
        temporary,
        filesystem=location.fs,
        compression="zstd",
        store_schema=False,
        write_statistics=["_at", "_version"],
    )
    if temporary != final:
        location.fs.move(temporary, final)


def plain(table: pa.Table) -> pa.Table:
    """Dictionary-encoded text as plain text: what Parquet readers (DuckDB, pandas, Spark) all read alike."""
    fields = [pa.field(f.name, pa.string()) if pa.types.is_dictionary(f.type) else f for f in table.schema]
    return table.cast(pa.schema(fields))


def published_name(segment: Path) -> str:
    """The name of the Parquet file a segment becomes (`.v1-….arrows` → `v1-….parquet`)."""
    return segment.name[1 : -len(SEGMENT)] + ".parquet"


def logged_parts(
    location: LogLocation, model: str, where: Callable[[pa.Table], pa.Table] | None = None
) -> tuple[list[pa.Table], list[str]]:
    """A model's logged rows: its open segments (plain tables, `where` applied first) and its Parquet
    files, each row in one.

    Segments are read before the files are listed, so one published meanwhile is among the files
    and its segment is left out: no row is missed or counted twice. `where` runs on the mapped
    segment before its text is made plain: a few ids' rows, not a copy of every text column."""
    keep = where or (lambda table: table)
    segments = [(path, plain(keep(read_segment(path)))) for path in location.segments(model)]
    files = location.files(model)
    published = {file.rsplit("/", 1)[-1] for file in files}
    return [table for path, table in segments if table.num_rows and published_name(path) not in published], files


def read_segment(path: Path) -> pa.Table:
    """The whole batches of a segment (one cut short by a crash ends at its last whole batch)."""
    batches, schema = [], None
    try:
        with pa.ipc.open_stream(pa.memory_map(str(path))) as reader:
            schema = reader.schema
            for batch in reader:
                batches.append(batch)
    except (pa.ArrowInvalid, OSError):  # a batch cut short: the whole ones before it stand
        pass
    return pa.Table.from_batches(batches, schema=schema) if schema is not None else pa.table({})


def filesystem(root: str | Path) -> tuple[pafs.FileSystem, str]:
    """A log root as pyarrow's filesystem and the path inside it."""
    text = str(root)
    if "://" in text:
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(text).absolute())


def days(ats: list[float]) -> list[tuple[str, int, int]]:
    """(day, first, last) of each run of requests on one UTC day (a scored file's rows carry its start,
    so the times are not always in order: the runs are found, not assumed)."""
    if day_of(min(ats)) == day_of(max(ats)):
        return [(day_of(ats[0]), 0, len(ats))]
    number = (np.asarray(ats) // 86400).astype(np.int64)
    cuts = [0, *(np.flatnonzero(np.diff(number)) + 1).tolist(), len(ats)]
    return [(day_of(ats[a]), a, b) for a, b in itertools.pairwise(cuts)]


def day_of(at: float) -> str:
    """The UTC day a timestamp falls on, as the partition names it."""
    return time.strftime("%Y-%m-%d", time.gmtime(at))
