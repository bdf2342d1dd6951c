"""Where rows come from and go to: CSV (plain or gzip) and Parquet, files or streams, as Arrow batches.

A source yields record batches of the columns the scorer asks for, read in bounded blocks; a CSV
source also reports the rows Arrow could not parse (wrong number of fields) with their record
numbers, so the scorer can write them back in place. Formats are chosen by file extension.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

Format = Literal["csv", "csv.gz", "parquet"]
HEADER_PROBE = 1 << 16
ROW = "_tabserve_row"  # 1-based input row number (header not counted)
UNPARSED = "_tabserve_unparsed"  # why the reader could not split the row; null for good rows


class ScoringError(ValueError):
    """The input cannot be scored at all (an unknown format, a missing column, an unreadable header)."""


def format_of(path: Path) -> Format:
    """The format a file name asks for: .csv, .csv.gz (.gz) or .parquet (.pq)."""
    name = path.name.lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith(".gz"):
        return "csv.gz"
    if name.endswith(".csv") or name.endswith(".txt") or "." not in name:
        return "csv"
    raise ScoringError(f"{path}: unknown format (use .csv, .csv.gz or .parquet)")


class Source(Protocol):
    """Record batches of a file or stream, in input order."""

    columns: list[str]

    def type_of(self, column: str) -> pa.DataType: ...

    def batches(self, wanted: list[str]) -> Iterator[pa.RecordBatch]: ...

    def take_invalid(self) -> list[tuple[int, str]]: ...

    def position(self) -> int: ...

    def close(self) -> None: ...


class _Replay(io.RawIOBase):
    """A binary stream whose first bytes were already read (to look at the header)."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0 or size >= len(self._head):
                head, self._head = self._head, b""
                more = self._rest.read(-1 if size < 0 else size - len(head))
                return head + (more or b"")
            head, self._head = self._head[:size], self._head[size:]
            return head
        return self._rest.read(size) or b""

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class CsvSource:
    """A CSV byte stream (already decompressed) read with Arrow's streaming reader.

    Every column is read as text (the feature contract parses numbers itself, exactly as for JSON);
    bytes are not checked as UTF-8 here, the scorer reports bad rows instead of failing the file.
    """

    def __init__(self, stream: Any, raw: Any = None, chunk_rows: int = 16_384, name: str = "input") -> None:
        self._raw = raw if raw is not None else stream
        head = b""
        while b"\n" not in head and len(head) < 64 * HEADER_PROBE:
            more = stream.read(HEADER_PROBE)
            if not more:
                break
            head += more
        if not head.strip():
            raise ScoringError(f"{name} is empty")
        first = head.splitlines()[0] if b"\n" in head else head
        self.columns = next(csv.reader([first.decode("utf-8-sig", errors="replace")]), [])
        self._stream = _Replay(head, stream)
        # NOTE: Arrow reads in byte blocks; size them so a block holds about chunk_rows rows
        line = max(len(head) / max(head.count(b"\n"), 1), 16.0)
        self._block = int(min(max(chunk_rows * line, 2 * len(first) + 64, 1024), 1 << 26))
        self._invalid: list[tuple[int, str]] = []

    def type_of(self, column: str) -> pa.DataType:
        return pa.string()

    def _on_invalid(self, row: pcsv.InvalidRow) -> str:
        # NOTE: `number` is the record number with the header as 1 (known as the reader is serial)
        index = (row.number - 2) if row.number is not None else -1
        self._invalid.append((index, f"expected {row.expected_columns} fields, got {row.actual_columns}\0{row.text}"))
        return "skip"

    def batches(self, wanted: list[str]) -> Iterator[pa.RecordBatch]:
        reader = pcsv.open_csv(
            self._stream,
            read_options=pcsv.ReadOptions(use_threads=False, block_size=self._block),
            parse_options=pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=self._on_invalid),
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in wanted},
                include_columns=wanted,
                check_utf8=False,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        yield from reader

    def take_invalid(self) -> list[tuple[int, str]]:
        """Rows skipped since the last call: (0-based data row, 'reason\\0raw text')."""
        got, self._invalid = self._invalid, []
        return got

    def position(self) -> int:
        try:
            return int(self._raw.tell())
        except (OSError, ValueError, AttributeError):
            return 0

    def close(self) -> None:
        self._raw.close()


class ParquetSource:
    """A Parquet file read row group by row group, only the needed columns."""

    def __init__(self, path: Path | pa.NativeFile, chunk_rows: int = 16_384) -> None:
        self._file = pq.ParquetFile(path)
        self._schema = self._file.schema_arrow
        self.columns = list(self._schema.names)
        self._chunk, self._done = chunk_rows, 0
        self._size = path.stat().st_size if isinstance(path, Path) else int(path.size())
        self._rows = max(self._file.metadata.num_rows, 1)

    def type_of(self, column: str) -> pa.DataType:
        return self._schema.field(column).type

    def batches(self, wanted: list[str]) -> Iterator[pa.RecordBatch]:
        for batch in self._file.iter_batches(batch_size=self._chunk, columns=wanted):
            self._done += batch.num_rows
            yield batch

    def take_invalid(self) -> list[tuple[int, str]]:
        return []

    def position(self) -> int:
        return int(self._size * self._done // self._rows)

    def close(self) -> None:
        self._file.close()


def open_source(path: Path, chunk_rows: int = 16_384) -> Source:
    """A source for a file, by extension."""
    fmt = format_of(path)
    if fmt == "parquet":
        return ParquetSource(path, chunk_rows)
    raw = pa.OSFile(str(path), "rb")
    stream = pa.CompressedInputStream(raw, "gzip") if fmt == "csv.gz" else raw
    return CsvSource(stream, raw, chunk_rows, name=str(path))


def open_stream(stream: IO[bytes], chunk_rows: int = 16_384, name: str = "stdin") -> CsvSource:
    """A source for CSV arriving on a binary stream (stdin): plain or gzip, told by its first bytes."""
    buffered: Any = stream if hasattr(stream, "peek") else io.BufferedReader(stream)
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        return CsvSource(gzip.GzipFile(fileobj=buffered, mode="rb"), buffered, chunk_rows, name=name)
    return CsvSource(buffered, buffered, chunk_rows, name=name)


def numbered(source: Source, wanted: list[str]) -> Iterator[pa.RecordBatch]:
    """The source's batches with ROW and UNPARSED added, the rows the reader skipped put back in
    place (their fields split as far as possible, UNPARSED saying why), so every input row is in
    the output of whoever consumes this, in input order."""
    pending: list[tuple[int, str]] = []
    next_row = 0
    header = list(source.columns)
    for batch in source.batches(wanted):
        pending += source.take_invalid()
        n = batch.num_rows
        skipped: list[tuple[int, str]] = []
        while pending and pending[0][0] < next_row + n + len(skipped):
            skipped.append(pending.pop(0))
        yield _with_rows(batch, next_row, skipped, header)
        next_row += n + len(skipped)
    pending += source.take_invalid()
    if pending:  # NOTE: unparsable rows after the last good one
        empty = pa.RecordBatch.from_pylist([], schema=pa.schema([(c, source.type_of(c)) for c in wanted]))
        yield _with_rows(empty, next_row, [(next_row + i, why) for i, (_, why) in enumerate(pending)], header)


def _with_rows(batch: pa.RecordBatch, first: int, skipped: list[tuple[int, str]], header: list[str]) -> pa.RecordBatch:
    n = batch.num_rows
    rows = np.arange(first + 1, first + n + len(skipped) + 1, dtype=np.int64)
    if not skipped:
        return _append(batch, rows, pa.nulls(n, pa.string()))
    bad = {position for position, _ in skipped}
    good_rows = rows[~np.isin(rows - 1, list(bad))]
    parts, start = [], 0
    for position, why in skipped:
        cut = int(np.searchsorted(good_rows, position + 1))
        if cut > start:
            parts.append(
                _append(batch.slice(start, cut - start), good_rows[start:cut], pa.nulls(cut - start, pa.string()))
            )
        start = cut
        reason, _, text = why.partition("\0")
        parts.append(_unparsed(batch.schema, header, text, position + 1, reason))
    if start < n:
        parts.append(_append(batch.slice(start), good_rows[start:], pa.nulls(n - start, pa.string())))
    return pa.Table.from_batches(parts).combine_chunks().to_batches()[0]


def _append(batch: pa.RecordBatch, rows: np.ndarray, unparsed: pa.Array) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [*batch.columns, pa.array(rows, pa.int64()), unparsed], names=[*batch.schema.names, ROW, UNPARSED]
    )


def _unparsed(schema: pa.Schema, header: list[str], text: str, row: int, reason: str) -> pa.RecordBatch:
    """One row the reader skipped: its fields where they can be told apart, and why."""
    fields = next(csv.reader([text]), [])
    cells = []
    for name in schema.names:
        at = header.index(name) if name in header else -1
        cells.append(fields[at] if 0 <= at < len(fields) else "")
    arrays = [
        pa.array([cell], pa.string()) if pa.types.is_string(schema.field(i).type) else pa.nulls(1, schema.field(i).type)
        for i, cell in enumerate(cells)
    ]
    return _append(pa.RecordBatch.from_arrays(arrays, schema=schema), np.array([row]), pa.array([reason], pa.string()))


class Sink(Protocol):
    """Scored batches out, in order."""

    def write(self, batch: pa.RecordBatch) -> None: ...

    def close(self) -> None: ...


def csv_write_options() -> pcsv.WriteOptions:
    """How every engine writes CSV: header, strings quoted, nulls empty."""
    return pcsv.WriteOptions(quoting_style="needed")


class CsvSink:
    """CSV out (strings quoted, nulls empty) to a path or a binary stream; gzip by request."""

    def __init__(self, target: str | IO[bytes] | pa.NativeFile, schema: pa.Schema, gzip: bool = False) -> None:
        self._out = pa.CompressedOutputStream(target, "gzip") if gzip else target
        self._writer = pcsv.CSVWriter(self._out, schema, write_options=csv_write_options())

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def close(self) -> None:
        self._writer.close()
        if isinstance(self._out, pa.CompressedOutputStream):
            self._out.close()


class ParquetSink:
    """Parquet out (one row group per written batch or two)."""

    def __init__(self, target: str, schema: pa.Schema) -> None:
        self._writer = pq.ParquetWriter(target, schema)

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def close(self) -> None:
        self._writer.close()


def open_sink(path: Path, schema: pa.Schema, fmt: Format) -> Sink:
    """A sink writing `path` in the given format."""
    if fmt == "parquet":
        return ParquetSink(str(path), schema)
    return CsvSink(str(path), schema, gzip=fmt == "csv.gz")
