"""Reading a training file as text cells: CSV (delimiter, encoding and decimal mark detected or
given), Parquet, JSON lines and Excel, header names stripped; how it was read is a `Reading`."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
import zlib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.features import Reading, named_twice
from service.scoring import files
from training.config import TrainConfig

GUESS_BYTES = 1 << 20  # what an encoding is guessed from
GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """The input data cannot be trained on; the message says why in one line."""


def read_data(cfg: TrainConfig) -> tuple[pd.DataFrame, Reading]:
    """The training file as text cells, and how it was read (detected, or as `cfg` says)."""
    df = read_csv(cfg.data, sep=cfg.sep, decimal=cfg.decimal, encoding=cfg.encoding, categorical=cfg.categorical)
    return df, df.attrs["read"]


def read_csv(
    path: str | Path,
    sep: str | None = None,
    decimal: str | None = None,
    encoding: str | None = None,
    categorical: Collection[str] = (),
) -> pd.DataFrame:
    """Read every cell as text (types are inferred later, the same way scoring parses them). A CSV's
    delimiter, encoding and decimal mark are detected unless given; Parquet, JSON lines and Excel are
    read as the same data written to a CSV would be, a typed number in a `categorical` column keyed as scoring
    keys it (`1.5` whatever the mark). How it was read: `df.attrs["read"]`."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    with p.open("rb") as fh:
        head = fh.read(4096)
    suffix = p.name.lower()
    gzipped = head[:2] == GZIP_MAGIC  # told by its first bytes, as scoring tells a gzip stream (files.open_stream)
    try:
        if suffix.endswith((".parquet", ".pq")) or head[:4] == b"PAR1":
            table = _read_parquet(p)
            return _typed_file(p, "parquet", decimal, lambda _: table, categorical)
        if suffix.endswith((".jsonl", ".ndjson")):
            return _typed_file(p, "jsonl", decimal, lambda mark: _read_jsonl(p, mark), categorical)
        if suffix.endswith((".xlsx", ".xlsm", ".xls", ".xlsb", ".ods")):
            return _typed_file(p, "excel", decimal, lambda mark: files.read_excel(p, mark), categorical)
    except files.ScoringError as exc:
        raise DataError(str(exc)) from None
    raw = _gunzipped(p) if gzipped else None
    text_head = raw[:4096] if raw is not None else head
    plain = suffix.removesuffix(".gz") if gzipped else suffix
    encoding = encoding or files.bom_encoding(text_head)  # UTF-16 text has NUL bytes: no binary file
    wide = encoding is not None and codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
    if plain.endswith((".json", ".xml", ".zip", ".gz")) or (b"\x00" in text_head and not wide):
        raise DataError(f"{p} is not a CSV text file; supported: {files.FORMATS_TEXT}")
    return _read_text_csv(p, sep, decimal, encoding, raw)


def _gunzipped(p: Path) -> bytes:
    """A gzip file's content (a .csv.gz trains as the CSV inside it, as `tabserve score` reads it)."""
    try:
        return gzip.decompress(p.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{p} is not a readable gzip file: {exc}") from None


def _typed_file(
    p: Path, fmt: str, decimal: str | None, table_for: Callable[[str], Any], categorical: Collection[str]
) -> pd.DataFrame:
    """A Parquet, JSON-lines or Excel file as text cells, its numbers' fractions written with the
    decimal mark its text cells are read with (given, or detected from them): written `1.234`, a
    number read with a comma mark would be 1234."""
    if decimal is not None:
        return _with_reading(
            _checked_frame(_text_frame(table_for(decimal), p, decimal, categorical), p), Reading(format=fmt), decimal
        )
    point = _checked_frame(_text_frame(table_for("."), p, "."), p)
    commas = table_for(",")
    comma = _text_frame(commas, p, ",")
    # typed numbers (a Parquet float column, an Excel number cell, a JSON number beside text) are no
    # evidence: they are the cells written differently under the two marks
    mark = detect_decimal(point.where(point == comma, ""))
    if mark == ".":
        return _with_reading(point, Reading(format=fmt), mark)
    return _with_reading(_checked_frame(_text_frame(commas, p, ",", categorical), p), Reading(format=fmt), mark)


def _read_jsonl(p: Path, decimal: str) -> Any:
    lines = files.read_jsonl(p, decimal)
    # as a CSV row that cannot be split: training data is fixed, not guessed at
    if lines.invalid:
        raise DataError(f"{p}: {lines.invalid[0][1]} ({len(lines.invalid)} such line(s)): fix or remove them")
    if lines.twice:
        _, _, line, keys = lines.twice[0]
        raise DataError(f"{p}: line {line}: {files.twice_text(*keys[0])}: which value is meant is a guess")
    return lines.table


def _with_reading(df: pd.DataFrame, reading: Reading, decimal: str | None) -> pd.DataFrame:
    df.attrs["read"] = Reading(reading.sep, decimal or detect_decimal(df), reading.encoding, reading.format)
    if decimal is None and df.attrs["read"].decimal == "." and (grouped := _grouped_or_not(df)):
        df.attrs["warnings"] = [*df.attrs.get("warnings", []), *grouped]
    return df


_GROUPED = re.compile(r"^[-+]?[1-9]\d{0,2}\.\d{3}$")  # `1.234.567` is no number under a point: no question


def _grouped_or_not(df: pd.DataFrame) -> list[str]:
    """A warning for each column whose every number with a point has three digits after it (`1.169`,
    `5.951`, `250`): a German export's thousands, or fractions of three decimals? Nothing in the file
    tells; read as fractions, said rather than guessed silently (credit amounts were read as 1.169)."""
    found = []
    for col in df.columns:
        values = df[col].head(2000).astype(str).str.strip()
        pointed = values[values.str.contains(".", regex=False)]
        if len(pointed) and pointed.str.fullmatch(_GROUPED).all():
            found.append(
                f"{col!r}: every value with a point has three digits after it ({pointed.iloc[0]!r}), read as "
                f"{float(pointed.iloc[0]):g}: if the point groups thousands (a European export), pass --decimal ','"
            )
    return found[:3]


def _read_text_csv(
    p: Path, sep: str | None, decimal: str | None, encoding: str | None, raw: bytes | None = None
) -> pd.DataFrame:
    raw = p.read_bytes() if raw is None else raw
    guessed = encoding is None and not files.is_utf8(raw)
    encoding = encoding or ("utf-8" if not guessed else files.detect_encoding(raw[:GUESS_BYTES]))
    try:
        text = raw.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{p} is not valid {encoding} at byte {exc.start}: pass --encoding (e.g. cp1252)") from None
    if not text.strip():
        raise DataError(f"{p} is empty")
    sep = sep or sniff_sep(text)
    # the first rows as the scorer samples them (and no copy of a large file's whole text)
    first = files.first_rows(text[: files.PROBE_BYTES], sep, whole=len(text) <= files.PROBE_BYTES) or [[]]
    names = files.header_for_rows(first[0], first[1:])
    if misfit := _misfit(names, first[1:]):
        raise DataError(f"{p}: {misfit}")
    header = _header(names, p)
    # a header one field short: named here, as the scorer names it (pandas would take a first field as the
    # index, and a trailing delimiter's empty field shifts every value one column left); one field long
    # (a delimiter closing the header line alone): its blank last name dropped, as the scorer drops it
    fitted = {"header": 0, "names": header, "usecols": list(range(len(header)))}
    widened = fitted if len(names) != len(first[0]) else {}
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False, **widened)
    except pd.errors.EmptyDataError:
        raise DataError(f"{p} is empty") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{p} is not a readable CSV: {str(exc).splitlines()[0]}") from None
    df.columns = header if len(header) == df.shape[1] else files.stripped(list(df.columns))
    df = _checked_frame(df, p)
    reading = Reading(sep, "", codecs.lookup(encoding).name, "csv")
    if guessed:  # infer_schema lists it with the file's other warnings
        df.attrs["warnings"] = [f"{p.name} is " + files.guessed_encoding_note(raw[:GUESS_BYTES], encoding)]
    return _with_reading(df, reading, decimal)


def _misfit(header: list[str], rows: list[list[str]]) -> str | None:
    """What is wrong where most of the first rows have more fields than the header (as
    `files.header_for_rows` names it): a report's title above the table, or cells past the header."""
    widths = [len(row) for row in rows if any(cell.strip() for cell in row)]
    width = max(set(widths), key=widths.count, default=0)
    if width <= max(len(header), 1):
        return None
    start = next(i for i, row in enumerate(rows) if len(row) == width)
    if start or files.names_above_values(rows[0], rows[1:]):
        return (
            f"line 1 has {len(header)} field(s) but the lines below it have {width} (from line {start + 2}): is "
            "there a title above the header? The header must be the first line: remove the lines above it"
        )
    return f"the header has {len(header)} field(s) but the rows below it have {width}: name every column in the header"


# how pandas names a column whose header cell is blank (`df.to_csv`'s index, a spreadsheet's trailing
# empty columns): training leaves it out, as scoring would not find it by that name
UNNAMED = re.compile(r"Unnamed: \d+")


def _header(names: list[str], p: Path) -> list[str]:
    """Header names stripped; a blank one (or spaces) named as pandas names a blank one (UNNAMED).
    A name given twice is refused: pandas would rename the second one silently ("tenure.1")."""
    header = [name or f"Unnamed: {i}" for i, name in enumerate(files.stripped(names))]
    twice = named_twice(header)
    if twice:
        raise DataError(f"column(s) named more than once in the header of {p}: {', '.join(twice)}")
    return header


def sniff_sep(text: str) -> str:
    """The delimiter that splits the first lines into the same, largest number of fields; on a tie,
    the one that leaves no quote inside a field (`a;"b,c"` is `;`-separated)."""
    lines = text.splitlines()[:50]
    best, key = ",", (1, 0)
    for sep in files.SEPARATORS:
        try:
            rows = [row for row in csv.reader(lines, delimiter=sep) if row]
        except csv.Error:
            continue
        widths = {len(row) for row in rows}
        width = max(widths, default=0) if len(widths) <= 2 else 0  # a quoted newline may cut one line short
        stray = sum('"' in cell for row in rows for cell in row)
        if (width, -stray) > key:
            best, key = sep, (width, -stray)
    return best


_COMMA_DECIMAL = re.compile(r"^[-+(]?\D{0,4}\d+,(?:\d{1,2}|\d{4,})\D{0,4}$|\d\.\d{3},\d")
_POINT_DECIMAL = re.compile(r"^[-+(]?\D{0,4}\d+\.(?:\d{1,2}|\d{4,})\D{0,4}$|\d,\d{3}\.\d")


def detect_decimal(df: pd.DataFrame) -> str:
    """`,` when more number-like cells read `12,50` than `12.50` (a European export), else `.`."""
    sample = df.head(2000)
    comma = point = 0
    for col in sample.columns:
        values = sample[col].astype(str)
        comma += int(values.str.contains(_COMMA_DECIMAL).sum())
        point += int(values.str.contains(_POINT_DECIMAL).sum())
    return "," if comma > point else "."


def _checked_frame(df: pd.DataFrame, p: Path) -> pd.DataFrame:
    if df.empty:
        raise DataError(f"{p} has a header but no data rows")
    if df.shape[1] < 2:
        raise DataError(f"{p} has {df.shape[1]} column; need a target and at least one feature")
    return df


def _read_parquet(p: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(p)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{p} is not a readable Parquet file: {exc}") from None


def _text_frame(table: Any, p: Path, decimal: str, categorical: Collection[str] = ()) -> pd.DataFrame:
    """Every column as text, nulls as empty cells: what the same data looks like read from a CSV
    whose decimal mark is `decimal`. A typed column taken as categorical keeps its point: scoring
    keys the number 1.5 as level `1.5`, so `1,5` would be unseen on the very file trained on."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = _header(table.column_names, p)
    columns = {}
    for name, column in zip(names, table.columns, strict=True):
        try:
            text = pc.cast(column, pa.string())
        except pa.ArrowException as exc:  # nested values (lists, structs) have no one text
            raise DataError(f"{p}: column {name!r} ({column.type}) cannot be read as values: {exc}") from None
        if (
            decimal != "."
            and name not in categorical
            and (pa.types.is_floating(column.type) or pa.types.is_decimal(column.type))
        ):
            text = _with_mark(column, text, decimal)
        columns[name] = pc.fill_null(text, "").to_numpy(zero_copy_only=False).astype(object)
    return pd.DataFrame(columns)


def _with_mark(column: Any, text: Any, decimal: str) -> Any:
    """A number column's text with `decimal` for its point; Arrow's exponent form (`1.5e-7`) written
    out, as a decimal-comma reader refuses it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cells = pc.replace_substring(text, ".", decimal).to_pylist()
    for i in np.flatnonzero(pc.fill_null(pc.match_substring(text, "e"), False).to_numpy(zero_copy_only=False)):
        cells[i] = files.fraction_text(column[int(i)].as_py(), decimal)
    return pa.array(cells, pa.string())
