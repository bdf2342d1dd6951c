"""Score a CSV file on this machine: streamed in chunks, every input row accounted for in the output.

Reader → encode (service/features.py) → ONNX Runtime → writer, one chunk at a time, so memory stays
bounded whatever the file size. A row that cannot be scored (wrong number of fields, invalid UTF-8,
an unparsable value) is still written, with empty predictions and the reason in `error`.
The output is written under a temporary name and renamed at the end: an interrupted run never
leaves a truncated file under the output name.
"""

from __future__ import annotations

import csv
import gzip
import os
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from service.bundle import MODEL_FILE, BundleRef
from service.features import Preprocess
from service.runtime import Device, create_session

Progress = Callable[[int, int], None]  # (rows done, bytes read)


class ScoringError(ValueError):
    """The file cannot be scored at all (a missing column, an unreadable header)."""


@dataclass
class Summary:
    """What a run did; rows_in == rows_scored + rows_failed, always."""

    rows_in: int = 0
    rows_scored: int = 0
    rows_failed: int = 0
    seconds: float = 0.0
    errors: list[tuple[int, str]] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        """Throughput of the whole run."""
        return self.rows_in / self.seconds if self.seconds else 0.0


def prediction_columns(pre: Preprocess) -> list[str]:
    """The columns the model adds: label and probability, class probabilities, or value."""
    if pre.task == "binary":
        return ["label", "probability"]
    if pre.task == "multiclass":
        return ["label", *(f"probability_{label}" for label in pre.labels)]
    return ["value"]


def _open_text(path: Path, mode: str, gz: bool) -> IO[str]:
    if gz:
        return gzip.open(path, mode + "t", encoding="utf-8", errors="surrogateescape", newline="")  # type: ignore[return-value]
    return path.open(mode, encoding="utf-8", errors="surrogateescape", newline="")


class Scorer:
    """One bundle's session and contract, applied to chunks of raw CSV rows."""

    def __init__(self, ref: BundleRef, device: Device = "auto", threads: int = 0) -> None:
        self.pre = ref.preprocess
        self.session = create_session(ref.path / MODEL_FILE, device, threads)
        self.names = [f.name for f in self.pre.features]

    def check_header(self, header: list[str]) -> None:
        """Fail before any work when the file lacks feature columns the model needs."""
        missing = [n for n in self.names if n not in header]
        if missing:
            raise ScoringError(f"input is missing {len(missing)} column(s) the model needs: {', '.join(missing)}")

    def score(self, header: list[str], rows: list[list[str]], first_row: int) -> tuple[list[list[Any]], dict[int, str]]:
        """Prediction cells per row, and errors by row offset (those rows get empty predictions)."""
        width = len(header)
        errors: dict[int, str] = {}
        good = []
        for i, row in enumerate(rows):
            problem = _row_problem(row, width)
            if problem:
                errors[i] = f"row {first_row + i}: {problem}"
            else:
                good.append(i)
        index = {name: header.index(name) for name in self.names}
        columns = {n: [rows[i][j] for i in good] for n, j in index.items()}
        enc = self.pre.encode_columns(columns, len(good))
        for k, err in enc.errors.items():
            errors[good[k]] = f"row {first_row + good[k]}, field '{err.field}': {err.reason}"
        out = self._run(enc.num, enc.cat) if good else np.empty((0, self.pre.n_outputs), np.float32)
        cells: list[list[Any]] = [[""] * len(prediction_columns(self.pre)) for _ in rows]
        for k, values in enumerate(self._cells(out)):
            if good[k] not in errors:
                cells[good[k]] = values
        return cells, errors

    def _run(self, num: np.ndarray, cat: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run(None, {"num": num, "cat": cat})[0]
        return out

    def _cells(self, out: np.ndarray) -> list[list[Any]]:
        """Prediction cells for a block of model outputs."""
        if self.pre.task == "regression":
            return [[v] for v in out[:, 0].tolist()]
        labels = self.pre.labels_for(out)
        if self.pre.task == "binary":
            return [[label, p] for label, p in zip(labels, out[:, 1].tolist(), strict=True)]
        return [[label, *r] for label, r in zip(labels, out.tolist(), strict=True)]


def _row_problem(row: list[str], width: int) -> str | None:
    if len(row) != width:
        return f"expected {width} fields, got {len(row)}"
    try:
        "".join(row).encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    return None


def _chunks(reader: Iterator[list[str]], size: int) -> Iterator[list[list[str]]]:
    chunk: list[list[str]] = []
    for row in reader:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def score_csv(
    scorer: Scorer,
    source: Path,
    target: Path,
    *,
    keep: list[str] | None = None,
    keep_all: bool = False,
    chunk_rows: int = 65_536,
    progress: Progress | None = None,
) -> Summary:
    """Stream `source` (CSV or CSV.gz) through the model into `target`; one output row per input row."""
    started, summary = time.perf_counter(), Summary()
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with (
            _open_text(source, "r", source.suffix == ".gz") as src,
            _open_text(tmp, "w", target.suffix == ".gz") as dst,
        ):
            reader = csv.reader(src)
            header = next(reader, None)
            if header is None:
                raise ScoringError(f"{source} is empty")
            scorer.check_header(header)
            kept = header if keep_all else _kept(header, scorer.pre, keep)
            kept_at = [header.index(c) for c in kept]
            writer = csv.writer(dst)
            writer.writerow([*kept, *prediction_columns(scorer.pre), "error"])
            for chunk in _chunks(reader, chunk_rows):
                cells, errors = scorer.score(header, chunk, summary.rows_in + 1)
                for i, row in enumerate(chunk):
                    passthrough = [row[j] if j < len(row) else "" for j in kept_at]
                    writer.writerow([*passthrough, *cells[i], errors.get(i, "")])
                summary.errors += sorted((summary.rows_in + i + 1, msg) for i, msg in errors.items())
                summary.rows_in += len(chunk)
                summary.rows_failed += len(errors)
                if progress:
                    progress(summary.rows_in, _position(src))
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise
    summary.rows_scored = summary.rows_in - summary.rows_failed
    summary.seconds = time.perf_counter() - started
    return summary


def _kept(header: list[str], pre: Preprocess, keep: list[str] | None) -> list[str]:
    wanted = keep if keep is not None else pre.id_columns
    missing = [c for c in wanted if c not in header]
    if keep is not None and missing:
        raise ScoringError(f"--keep names column(s) not in the input: {', '.join(missing)}")
    return [c for c in wanted if c in header]


def _position(src: IO[str]) -> int:
    raw: Any = getattr(src, "buffer", None)
    raw = getattr(raw, "fileobj", None) or getattr(raw, "raw", None) or raw
    try:
        return int(raw.tell()) if raw is not None else 0
    except (OSError, ValueError):
        return 0
