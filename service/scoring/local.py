"""Score a file or stream on this machine, in bounded memory: every input row has an output row."""

from __future__ import annotations

import dataclasses
import json
import queue
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc

from monitoring.log import PredictionLog
from service.atomic import written_whole
from service.bundle import EXPLAIN_FILE, EXPLAIN_STATS_FILE, MODEL_FILE, BundleRef
from service.cpus import cpu_budget
from service.drift import Drift
from service.explain import Effects, Explain, Explainer, explanation_keys
from service.features import Encoded, EncodingError, Preprocess, Reading, near_miss
from service.runtime import Device, create_session
from service.scoring.columns import NOT_UTF8, ArrowEncoder, feature_column, invalid_utf8_rows, mark_rows, text_column
from service.scoring.files import (
    ROW,
    UNPARSED,
    ScoringError,
    Sink,
    Source,
    numbered,
    open_sink,
    open_source,
    output_format_of,
    reads_as,
)

__all__ = [
    "ReasonColumns",
    "Scorer",
    "ScoringError",
    "Summary",
    "prediction_columns",
    "score_file",
    "score_stream",
    "scoring_workers",
]

Progress = Callable[[int, int], None]  # (rows done, bytes read)
OnError = Callable[[int, str], None]  # (row number, message)
ORT_ROWS = 1024  # rows per ONNX Runtime call: small enough to stay in cache
ALIGN_ROWS = 16  # explanation calls start where a row's number modulo this says (ORT_ROWS is a multiple)
READ_AHEAD = 1  # blocks the reading thread may have ready before the scorers take them
MAX_WORKERS = 2  # scoring threads: a third gained nothing on two cores (BENCHMARKS.md), beside the reader
KEPT_ERRORS = 100
KEPT_WARNINGS = 1000  # distinct warning texts counted (unseen free-text levels could be endless)
KEPT_SENTENCES = 1 << 14  # sentences remembered across blocks, per feature and outcome
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
    rows_not_utf8: int = 0  # failed rows whose error is NOT_UTF8
    not_utf8_values: list[bytes] = field(default_factory=list)  # the first KEPT_ERRORS such cells, raw
    valued: np.ndarray | None = None  # per feature (num, then cat): a value the model can use, in some row
    unvalued: list[str] = field(default_factory=list)  # features with none in any row: said once for the file
    unclosed_row: int | None = None  # the row whose quote is never closed: the file's rest went into it
    unclosed_file: str | None = None  # its file's name, when a run (Ray's) reads several
    # file (or "": the one input) → the training file's encoding, given up for UTF-8 past an ASCII start
    read_as_utf8: dict[str, str] = field(default_factory=dict)

    def count_valued(self, valued: np.ndarray) -> None:
        """Add a block's features that had a value in some row."""
        self.valued = valued if self.valued is None else self.valued | valued

    def count_not_utf8(self, values: list[bytes]) -> None:
        """Add a block's cells that are not UTF-8 (one per failed row)."""
        self.rows_not_utf8 += len(values)
        self.not_utf8_values += values[: KEPT_ERRORS - len(self.not_utf8_values)]

    def utf8_fix(self) -> str | None:
        """The encoding that reads every kept cell that is not UTF-8: cp1252 (Western exports), or None."""
        return "cp1252" if self.not_utf8_values and reads_as(self.not_utf8_values, "cp1252") else None

    def encoding_hint(self, option: str = "--encoding") -> str | None:
        """How many rows were not valid UTF-8 and the `option` that reads them; None when none were."""
        if not self.rows_not_utf8:
            return None
        fix = self.utf8_fix()
        how = f"{option} {fix} reads them" if fix else f"pass {option} with the file's encoding, or save it as UTF-8"
        return f"{self.rows_not_utf8:,} rows are not valid UTF-8: {how}"

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
    not_utf8: list[bytes] = field(default_factory=list)  # each failed row's cell that is not UTF-8
    valued: np.ndarray | None = None  # per feature: a value the model can use in some row of the block


class Scorer:
    """One bundle's session and contract (`pre`), applied to Arrow batches."""

    def __init__(
        self,
        ref: BundleRef,
        device: Device = "auto",
        threads: int = 1,
        session: ort.InferenceSession | None = None,
        pre: Preprocess | None = None,
        explain: Explain | None = None,
        explainer: Explainer | None = None,
        log: PredictionLog | None = None,
        drift: Drift | None = None,
        log_waits: bool = True,
        reading: Reading | None = None,
    ) -> None:
        self.name, self.version = ref.name, ref.version
        self.log, self.log_request = log, f"{self.name}-{secrets.token_hex(4)}"  # one request id per file
        self.log_at = time.time()  # and one time: blocks finish out of order, and `_row` orders a file's rows
        self.drift = drift  # the service's live window, which uploads count into too
        self.log_waits = log_waits  # a file waits for the log's writer; an upload in the service drops and counts
        self.pre = pre if pre is not None else ref.preprocess
        if reading is not None and reading.decimal != self.pre.read.decimal:  # `--decimal`: this file's mark
            self.pre = dataclasses.replace(self.pre, read=dataclasses.replace(self.pre.read, decimal=reading.decimal))
        self.reasons: ReasonColumns | None = None
        if explain is not None:  # before the model's session: a bundle without explain.onnx fails first
            self.reasons = ReasonColumns(explainer or open_explainer(ref, self.pre, device, threads), explain)
        self.session = session or create_session(ref.path / MODEL_FILE, device, threads)
        self.names = [f.name for f in self.pre.features]
        self.encoder = ArrowEncoder(self.pre)
        self._lookalikes: dict[tuple[str, ...], dict[str, list[str]]] = {}
        self._labels = pa.array(self.pre.labels)

    def check_columns(self, columns: list[str]) -> None:
        """Fail early when the input lacks feature columns."""
        why = self.pre.missing_columns(columns)
        if why:
            raise ScoringError(why)

    def plan(
        self, source: Source, keep: list[str] | None, keep_all: bool, keep_name: str = "--keep"
    ) -> tuple[list[str], pa.Schema]:
        """Check a source's columns; the columns to read and the output schema."""
        self.check_columns(source.columns)
        kept = kept_columns(source, self.pre, keep, keep_all, keep_name)
        logged = [c for c in self.pre.id_columns if c in source.columns] if self.log is not None else []
        # a look-alike column (JSON lines' `Tenure` beside `tenure`) is read for its rows' warnings
        lookalikes = [
            g for gs in self.pre.lookalikes(source.columns).values() for g in gs if source.columns.count(g) == 1
        ]
        wanted = list(dict.fromkeys([*kept, *self.names, *logged, *lookalikes]))
        twice = [name for name in wanted if source.columns.count(name) > 1]
        if twice:  # which of the two holds the value is a guess: refuse rather than pick one
            raise ScoringError(f"column(s) named more than once in the input's header: {', '.join(twice)}")
        nested = [f"{n} ({source.type_of(n)})" for n in self.names if pa.types.is_nested(source.type_of(n))]
        if nested:  # a list or a struct is no one value (training refuses such a column too)
            raise ScoringError(f"feature column(s) holding lists or structs, not values: {', '.join(nested)}")
        schema = self.output_schema([(c, source.type_of(c)) for c in kept])
        clash = [c for c in kept if c in schema.names[len(kept) :]]
        if clash:  # two columns of one name: a reader takes either, or refuses the file
            how = f"keep others with {keep_name}" if keep_all else f"leave them out of {keep_name}"
            raise ScoringError(
                f"input column(s) {', '.join(clash)} would be written twice, kept and as the output's own "
                f"(a scored file scored again?): rename them or {how}"
            )
        return wanted, schema

    def output_schema(self, kept: list[tuple[str, pa.DataType]]) -> pa.Schema:
        """Kept columns, predictions, reasons, `warning`, `error`; the scoring model in the metadata."""
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
        added = self.reasons.fields() if self.reasons is not None else []
        notes = [pa.field("warning", pa.string()), pa.field("error", pa.string())]
        return pa.schema([*fields, *added, *notes], metadata=provenance)

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
        self._warn_lookalikes(batch, enc)
        n_added = len(self.reasons.fields()) if self.reasons is not None else 0
        n_kept = len(schema) - len(prediction_columns(self.pre)) - n_added - 2
        for name in schema.names[:n_kept]:
            if name not in self.names:
                mark_rows(enc, invalid_utf8_rows(text_column(batch.column(name))), name, NOT_UTF8)
        out = self.predict(enc.num, enc.cat)
        rows = batch.column(ROW).to_numpy()
        messages = {r: EncodingError.at(f"row {rows[r]}", e.field, e.reason) for r, e in enc.errors.items()}
        unparsed = batch.column(UNPARSED)
        if unparsed.null_count < batch.num_rows:
            for r in np.flatnonzero(unparsed.is_valid().to_numpy(zero_copy_only=False)).tolist():
                messages[r] = f"row {rows[r]}: {unparsed[r].as_py()}"
        for r in np.flatnonzero(~np.isfinite(out).all(axis=1)).tolist():  # never a NaN score written
            messages.setdefault(r, f"row {rows[r]}, {self.pre.too_far(enc.num[r])}")
        found = None
        if self.reasons is not None:  # as /predict refuses a record it cannot explain: never an empty reason
            found = self.reasons.effects(enc.num, enc.cat, int(rows[0]) - 1 if batch.num_rows else 0)
            for r in self.reasons.explainer.unexplained(found).tolist():  # not numbers, or not adding up
                messages.setdefault(
                    r, f"row {rows[r]} could not be explained: {self.pre.too_far(enc.num[r], 'explain')}"
                )
        failed = np.zeros(batch.num_rows, dtype=bool)
        failed[list(messages)] = True
        warned = {r: "; ".join(texts) for r, texts in enc.warnings.items() if r not in messages}
        kept = [batch.column(name) for name in schema.names[:n_kept]]
        if self.log is not None:
            self._log(batch, enc, out, rows, failed)
        if self.drift is not None:
            self.drift.update(enc.num[~failed], enc.cat[~failed], out[~failed])
        label_index = self.pre.label_index(out) if self.pre.task != "regression" else None
        added = [] if self.reasons is None or found is None else self.reasons.columns(batch, found, failed)
        notes = [_text_column(batch.num_rows, warned), _text_column(batch.num_rows, messages)]
        columns = [*kept, *self._predictions(out, label_index, failed), *added, *notes]
        scored = pa.RecordBatch.from_arrays(columns, schema=schema)
        warnings = Counter(w for r, texts in enc.warnings.items() if r in warned for w in texts)
        errors = [(int(rows[r]), messages[r]) for r in sorted(messages)]
        num, cat = enc.num[~failed], enc.cat[~failed]  # the rows scored: a failed row's cell is its error's
        valued = np.concatenate([~np.isnan(num).all(axis=0), (cat != 0).any(axis=0)])
        return Scored(scored, errors, batch.num_rows, warnings, self._not_utf8(batch, enc, unparsed), valued)

    def _warn_lookalikes(self, batch: pa.RecordBatch, enc: Encoded) -> None:
        """As `/predict` warns a record: a feature with no value in a row where a look-alike column has
        one (the guess among the row's look-alikes with a value, as `near_miss` picks among a record's)."""
        names = tuple(batch.schema.names)
        if names not in self._lookalikes:  # difflib once per set of columns, not per block
            self._lookalikes[names] = self.pre.lookalikes([n for n in names if n not in (ROW, UNPARSED)])
        for name, guesses in self._lookalikes[names].items():
            valued = np.stack([~_blank(batch.column(g)) for g in guesses])
            picked: dict[tuple[bool, ...], str | None] = {}  # rows with the same look-alikes filled: one pick
            for row in np.flatnonzero(_blank(batch.column(name)) & valued.any(axis=0)).tolist():
                key = tuple(valued[:, row].tolist())
                if key not in picked:
                    picked[key] = near_miss(name, [g for g, has in zip(guesses, key, strict=True) if has])
                if picked[key] is not None:
                    self.pre.warn_lookalike(enc, row, name, picked[key])  # type: ignore[arg-type]

    @staticmethod
    def _not_utf8(batch: pa.RecordBatch, enc: Encoded, unparsed: pa.Array) -> list[bytes]:
        """The raw cell of each row whose error is NOT_UTF8 (at most 256 bytes of it): the summary's hint."""
        cells = []
        for r, error in sorted(enc.errors.items()):
            if error.reason == NOT_UTF8 and error.field is not None and not unparsed[r].is_valid:
                cells.append(batch.column(error.field).view(pa.binary())[r].as_py()[:256])
        return cells

    def _log(self, batch: pa.RecordBatch, enc: Encoded, out: np.ndarray, rows: np.ndarray, failed: np.ndarray) -> None:
        """The scored rows to the prediction log, numbered by their row in the file; waits for room."""
        assert self.log is not None
        ok = ~failed
        keep = pa.array(ok)
        present = set(batch.schema.names)
        n = int(ok.sum())
        ids = [  # every id column, in the model's order (one the file lacks: missing)
            (c, batch.column(c).filter(keep).cast(pa.string()).to_pylist() if c in present else [None] * n)
            for c in self.pre.id_columns
        ]
        levels = {f.name: batch.column(f.name).filter(keep) for f in self.pre.categorical}
        self.log.add(
            self.name, self.version, self.pre, enc.num[ok], enc.cat[ok], out[ok], ids,
            levels=levels, request=self.log_request, rows=rows[ok], wait=self.log_waits, at=self.log_at,
        )  # fmt: skip

    def _predictions(self, out: np.ndarray, label_index: np.ndarray | None, failed: np.ndarray) -> list[pa.Array]:
        if label_index is None:
            return [pa.array(out[:, 0].astype(np.float64), mask=failed)]
        labels = self._labels.take(pa.array(label_index, mask=failed))
        if self.pre.task == "binary":
            return [labels, pa.array(out[:, 1].astype(np.float64), mask=failed)]
        return [labels, *(pa.array(out[:, k].astype(np.float64), mask=failed) for k in range(out.shape[1]))]


def _blank(column: pa.Array) -> np.ndarray:
    """Rows with no value (`features.has_value`): null, NaN, or text of nothing but spaces."""
    blank = column.is_null(nan_is_null=True)
    if pa.types.is_string(text_column(column).type):
        blank = pc.or_(blank, pc.equal(pc.utf8_trim_whitespace(text_column(column)), ""))
    return np.asarray(blank.fill_null(True).to_numpy(zero_copy_only=False), dtype=bool)


def _text_column(n: int, texts: dict[int, str]) -> pa.Array:
    """`n` rows of text, null but at the given rows (most batches have none: no array of Nones built)."""
    if not texts:
        return pa.nulls(n, pa.string())
    column = np.full(n, None, dtype=object)
    for r, text in texts.items():
        column[r] = text
    return pa.array(column, pa.string())


def open_explainer(ref: BundleRef, pre: Preprocess, device: Device = "auto", threads: int = 1) -> Explainer:
    """The bundle's explanation graph and statistics; ScoringError for a bundle from before them."""
    path = ref.path / EXPLAIN_FILE
    if not path.is_file():
        raise ScoringError(f"{ref.name} version {ref.version} has no {EXPLAIN_FILE}: retrain it for reason codes")
    stats = json.loads((ref.path / EXPLAIN_STATS_FILE).read_text())
    return Explainer(pre, create_session(path, device, threads), stats)


class ReasonColumns:
    """`explain`: `reason_i`/`effect_i` per row (or `effect_<feature>` with "all"), then
    `explanation_class` (multiclass) and with "all" `explanation_score` and `explanation_reference`.
    Each sentence is `Explainer.text`'s, made once per feature, value as read and outcome, not once
    per row and reason."""

    def __init__(self, explainer: Explainer, explain: Explain) -> None:
        self.explainer, self.explain = explainer, explain
        self.k = len(explainer.names) if explain == "all" else min(explain, len(explainer.names))
        # the outcomes a sentence can end with: per label (multiclass; else one), raises then lowers
        self._labels = explainer.pre.labels if explainer.pre.task == "multiclass" else [None]
        self._classes = pa.array(explainer.pre.labels)
        self.keys = explanation_keys(explainer.pre.task, explain)
        # per feature and outcome: value as read → sentence
        self._sentences: list[dict[Any, str]] = [{} for _ in range(len(explainer.names) * 2 * len(self._labels))]

    def fields(self) -> list[pa.Field]:
        """The columns added before `warning` and `error`."""
        said = [
            pa.field(f"explanation_{key}", self._classes.type if key == "class" else pa.float64()) for key in self.keys
        ]
        if self.explain == "all":
            return [*(pa.field(f"effect_{name}", pa.float64()) for name in self.explainer.names), *said]
        slots = range(1, self.k + 1)
        return [
            *(
                pa.field(f"{kind}_{i}", pa.float64() if kind == "effect" else pa.string())
                for i in slots
                for kind in ("reason", "effect")
            ),
            *said,
        ]

    def effects(self, num: np.ndarray, cat: np.ndarray, first: int = 0) -> Effects:
        """The explanation graph over the rows (the first is input row `first`, 0-based), ORT_ROWS at a time."""
        # ONNX Runtime's kernels sum a row differently by its place in the call modulo a few rows:
        # each row goes where its row number puts it, so where blocks are cut (engine, chunk size)
        # changes no effect
        lead, n = first % ALIGN_ROWS, len(num)
        size = -(-(lead + n) // ALIGN_ROWS) * ALIGN_ROWS
        num, cat = _padded(num, lead, size), _padded(cat, lead, size)
        parts = [self.explainer.run(num[i : i + ORT_ROWS], cat[i : i + ORT_ROWS]) for i in range(0, size, ORT_ROWS)]
        if not parts:
            empty = np.empty(0, np.float32)
            return Effects(np.empty((0, len(self.explainer.names)), np.float32), empty, empty, np.empty(0, np.int64))
        outputs = ("effects", "score", "baseline", "target")
        return Effects(*(np.concatenate([getattr(p, name) for p in parts])[lead : lead + n] for name in outputs))

    def columns(self, batch: pa.RecordBatch, found: Effects, failed: np.ndarray) -> list[pa.Array]:
        """A block's added columns from its rows' `effects`; empty cells for failed rows and for reasons
        past the last one found."""
        numbers = {"score": found.score, "reference": found.baseline}
        explanation = [
            self._classes.take(pa.array(found.target, mask=failed))
            if key == "class"
            else pa.array(numbers[key].astype(np.float64), mask=failed)
            for key in self.keys
        ]
        if self.explain == "all":
            effects = [
                pa.array(found.effects[:, j].astype(np.float64), mask=failed) for j in range(len(self.explainer.names))
            ]
            return [*effects, *explanation]
        order, keep = self.explainer.order(found, self.k)
        keep &= ~failed[:, None]
        picked = np.take_along_axis(found.effects, order, axis=1)
        # the class the effects explain (the graph's: the label served but on a near-tie), as /predict names it
        label = found.target if len(self._labels) > 1 else np.zeros(len(order), np.intp)
        outcome = 2 * label[:, None] + (picked <= 0)  # as Explainer.outcome: > 0 raises (a kept effect is never 0)
        sentence, texts = self._sentences_of(batch, order, keep, outcome)
        out = []
        for i in range(order.shape[1]):
            empty = ~keep[:, i]
            out += [
                texts.take(pa.array(sentence[:, i], mask=empty)),
                pa.array(picked[:, i].astype(np.float64), mask=empty),
            ]
        return [*out, *explanation]

    def _sentences_of(
        self, batch: pa.RecordBatch, order: np.ndarray, keep: np.ndarray, outcome: np.ndarray
    ) -> tuple[np.ndarray, pa.Array]:
        """Each kept reason's index into the block's distinct sentences, and those sentences."""
        k, names, n_out = order.shape[1], self.explainer.names, 2 * len(self._labels)
        at = np.flatnonzero(keep)  # the reasons kept, as positions in order.ravel(), grouped by feature
        feature = order.ravel()[at].astype(np.uint8 if len(names) < 256 else np.intp)  # uint8 sorts by radix
        by_feature = np.argsort(feature, kind="stable")
        at, feature = at[by_feature], feature[by_feature]
        bounds = np.searchsorted(feature, np.arange(len(names) + 1)).tolist()
        sentence = np.zeros(order.size, np.int64)
        texts: list[str] = []
        for j in (j for j in range(len(names)) if bounds[j] < bounds[j + 1]):
            where = at[bounds[j] : bounds[j + 1]]
            column = feature_column(batch.column(names[j]), self.explainer.pre.kinds[names[j]] == "numeric")
            values = pc.dictionary_encode(column.take(pa.array(where // k)), null_encoding="encode")
            pair = values.indices.to_numpy(zero_copy_only=False).astype(np.int64) * n_out + outcome.ravel()[where]
            seen = np.zeros(len(values.dictionary) * n_out, bool)
            seen[pair] = True
            pairs = np.flatnonzero(seen)
            number = np.empty(len(seen), np.int64)
            number[pairs] = np.arange(len(texts), len(texts) + len(pairs))
            sentence[where] = number[pair]
            levels = values.dictionary.to_pylist()
            texts += [self._sentence(j, levels[p // n_out], p % n_out) for p in pairs.tolist()]
        return sentence.reshape(order.shape), pa.array(texts, pa.string())

    def _sentence(self, j: int, value: Any, outcome: int) -> str:
        """`Explainer.text` of feature j with this value and outcome (remembered across blocks)."""
        known = self._sentences[j * 2 * len(self._labels) + outcome]
        # 1, 1.0 and True are one dict key but may read differently (a level "1" or "1.0")
        key = value if value is None or type(value) is str else (type(value), value)
        text = known.get(key)
        if text is None:
            if len(known) >= KEPT_SENTENCES:
                known.clear()
            effect = 1.0 if outcome % 2 == 0 else -1.0
            text = known[key] = self.explainer.text(self.explainer.names[j], value, effect, self._labels[outcome // 2])
        return text


def _padded(rows: np.ndarray, lead: int, size: int) -> np.ndarray:
    """`rows` after `lead` rows of zeros, zeros after them up to `size` rows."""
    if lead == 0 and len(rows) == size:
        return rows
    out = np.zeros((size, rows.shape[1]), rows.dtype)
    out[lead : lead + len(rows)] = rows
    return out


def kept_columns(
    source: Source, pre: Preprocess, keep: list[str] | None, keep_all: bool, keep_name: str = "--keep"
) -> list[str]:
    """The pass-through columns: `keep`, all, or the id columns present; `keep_name` is how the caller
    spells `keep` (`?keep` over HTTP)."""
    if keep_all:  # but columns with no name given more than once (delimiters ending each line): no one is meant
        return [c for c in source.columns if c.strip() or source.columns.count(c) == 1]
    wanted = keep if keep is not None else pre.id_columns
    missing = [c for c in wanted if c not in source.columns]
    if keep is not None and missing:
        raise ScoringError(f"{keep_name} names column(s) not in the input: {', '.join(missing)}")
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
    keep_name: str = "--keep",
) -> Summary:
    """Score `source` into the sink `open_out(schema)` gives; rows out == rows in."""
    started, summary = time.perf_counter(), Summary()
    try:
        wanted, schema = scorer.plan(source, keep, keep_all, keep_name)
    except BaseException:
        source.close()
        raise
    workers = workers or scoring_workers(cpu_budget().cpus)
    sink = open_out(schema)

    def record(scored: Scored) -> None:
        sink.write(scored.batch)
        summary.rows_in += scored.rows
        summary.rows_failed += len(scored.errors)
        summary.count_warnings(scored.warnings)
        summary.count_not_utf8(scored.not_utf8)
        if scored.valued is not None and scored.rows:
            summary.count_valued(scored.valued)
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
    if getattr(source, "unclosed_quote", False):
        summary.unclosed_row = summary.rows_in
    if given_up := getattr(source, "read_as_utf8", None):
        summary.read_as_utf8[""] = given_up
    if summary.valued is not None and summary.rows_scored > 1:  # a column left empty by an export: no row says so
        names = [*(f.name for f in scorer.pre.numeric), *(f.name for f in scorer.pre.categorical)]
        summary.unvalued = [name for name, seen in zip(names, summary.valued, strict=True) if not seen]
    return summary


def scoring_workers(cpus: int) -> int:
    """Scoring threads for a CPU budget: one per CPU, up to MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, cpus))


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
    fmt = output_format_of(target)
    reader = open_source(source, chunk_rows, scorer.pre.read) if isinstance(source, Path) else source
    with written_whole(target) as tmp:
        return score_stream(
            scorer,
            reader,
            lambda schema: open_sink(tmp, schema, fmt),
            keep=keep,
            keep_all=keep_all,
            progress=progress,
            on_error=on_error,
            workers=workers,
        )
