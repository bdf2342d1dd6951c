"""Arrow columns → model inputs by Arrow compute kernels, not a Python call per cell.

Any value a kernel could read differently from `service/features.py` takes the record path itself,
so both give the same arrays, errors and warnings (a test checks).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from service.features import (
    NUMERIC_MISSING,
    CategoricalFeature,
    DateParse,
    Encoded,
    EncodingError,
    Preprocess,
    encode_categorical,
    encode_numeric,
    level_code,
    parse_number,
)

level_codes: Callable[..., bytearray] | None
# the C lookup scans the levels one by one; larger vocabularies keep index_in's hash table
SMALL_VOCAB = 0
try:  # the optional C accelerator (setup.py); without it Arrow's index_in does the lookups
    from service.scoring import _levels

    level_codes, SMALL_VOCAB = _levels.level_codes, _levels.MAX_LEVELS
except ImportError:  # pragma: no cover - an install without a C compiler
    level_codes = None

_MISSING_TOKENS = pa.array(sorted(NUMERIC_MISSING))
NOT_UTF8 = "not valid UTF-8"


def text_column(column: pa.Array) -> pa.Array:
    """Dictionary or large strings → plain strings; other types unchanged."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
        column = column.cast(pa.string())
    return column


def feature_column(column: pa.Array, numeric: bool = False) -> pa.Array:
    """A feature's Arrow column as its text in a CSV reads (how training reads a Parquet): for the
    encoder and the reason codes alike."""
    column = text_column(column)
    kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        # text without Parquet's UTF-8 annotation (older writers); a value that is not UTF-8 stays its row's error
        texts = pa.string() if pa.types.is_binary(kind) else pa.large_string()
        column = text_column(column.view(pa.string_view() if pa.types.is_binary_view(kind) else texts))
    elif pa.types.is_duration(kind):  # its count in its unit, as its text reads
        column = column.cast(pa.int64())
    elif numeric and pa.types.is_decimal(kind):  # a database's NUMERIC(10, 2) amounts, read as their text would be
        column = column.cast(pa.float64())
    elif (pa.types.is_timestamp(kind) or pa.types.is_time64(kind)) and kind.unit == "ns":
        # Python's datetime (and a text's reading) stops at microseconds; without pandas to_pylist refuses finer
        unit = pa.timestamp("us", kind.tz) if pa.types.is_timestamp(kind) else pa.time64("us")
        column = column.cast(unit, safe=False)
    return column


def invalid_utf8_rows(column: pa.Array) -> list[int]:
    """Rows of a string column that are not valid UTF-8."""
    if not pa.types.is_string(column.type):
        return []
    try:
        column.validate(full=True)
        return []
    except pa.ArrowInvalid:
        return [i for i, v in enumerate(column.view(pa.binary()).to_pylist()) if _text(v) is _INVALID]


_INVALID = object()


def _text(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return _INVALID


def _texts(name: str, column: pa.Array, rows: list[int], enc: Encoded) -> list[Any]:
    """A column's values for the exact path; invalid UTF-8 becomes an error and None."""
    if not pa.types.is_string(column.type):
        return list(column.to_pylist())
    values = [_text(v) for v in column.view(pa.binary()).to_pylist()]
    for row, value in zip(rows, values, strict=True):
        if value is _INVALID:
            enc.errors.setdefault(row, EncodingError(row, name, NOT_UTF8))
    return [None if v is _INVALID else v for v in values]


class ArrowEncoder:
    """One bundle's feature contract applied to Arrow record batches."""

    def __init__(self, pre: Preprocess) -> None:
        self.pre = pre
        self._parsers = pre.parsers or [parse_number] * len(pre.numeric)
        self._decimal = pre.read.decimal
        # numeric columns that once needed blanks cleared before Arrow's cast: later blocks
        # go straight there (a failing cast reads the whole block first)
        self._padded: set[str] = set()

    @cached_property
    def _vocabs(self) -> list[pa.Array]:
        return [pa.array(f.vocab_, pa.string()) for f in self.pre.categorical]

    @cached_property
    def _level_bytes(self) -> list[tuple[bytes, ...] | None]:
        """Vocabularies as UTF-8 for the C lookup (None: index_in instead)."""
        usable = level_codes is not None
        return [
            tuple(v.encode() for v in f.vocab_) if usable and len(f.vocab_) <= SMALL_VOCAB else None
            for f in self.pre.categorical
        ]

    def encode(self, batch: pa.RecordBatch | pa.Table) -> Encoded:
        """A batch's feature columns → `num`/`cat`; errors and warnings by row."""
        n = batch.num_rows
        # filled column by column into [k, n] and transposed once: strided writes into the
        # row-major [n, k] arrays cost more than all the Arrow kernels together
        num = np.empty((len(self.pre.numeric), n), dtype=np.float32)
        cat = np.empty((len(self.pre.categorical), n), dtype=np.int64)
        enc = Encoded(num=num, cat=cat)
        for j, feat in enumerate(self.pre.numeric):
            column = _array(batch.column(feat.name), numeric=True)
            num[j] = _numeric(feat.name, column, n, enc, self._padded, self._parsers[j], self._decimal)
        for j, cfeat in enumerate(self.pre.categorical):
            cat[j] = _categorical(
                cfeat, _array(batch.column(cfeat.name)), self._vocabs[j], n, enc, self._level_bytes[j]
            )
        enc.num, enc.cat = np.ascontiguousarray(num.T), np.ascontiguousarray(cat.T)
        self.pre.check_ranges(enc)
        return enc


def _array(column: pa.Array | pa.ChunkedArray, numeric: bool = False) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return feature_column(column, numeric)


def _numeric(
    name: str, column: pa.Array, n: int, enc: Encoded, padded: set[str], parse: Any = parse_number, decimal: str = "."
) -> np.ndarray:
    kind = column.type
    if pa.types.is_null(kind):
        return encode_numeric(name, None, n, enc)
    if isinstance(parse, DateParse):  # a date: every value parsed, whatever its type (Arrow dates too)
        return encode_numeric(name, _texts(name, column, list(range(n)), enc), n, enc, parse)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return encode_numeric(name, column.to_numpy(zero_copy_only=False), n, enc)
    if pa.types.is_string(kind):  # values that parse here are ASCII, so valid UTF-8
        pointed = _with_point(column, decimal)
        fast = _parse_numbers(pointed, name, padded) if pointed is not None else None
        if fast is not None:
            return encode_numeric(name, fast, n, enc)
    # the exact path decides (currency and percent signs, thousands separators, bad values)
    return encode_numeric(name, _texts(name, column, list(range(n)), enc), n, enc, parse)


def _with_point(column: pa.Array, decimal: str) -> pa.Array | None:
    """A decimal-comma column as Arrow's cast reads it (`29,85` → `29.85`); None for one with points
    (thousands separators there, which the cast would read as decimals): the exact path reads it."""
    if decimal != ",":
        return column
    if pc.any(pc.match_substring(column, ".")).as_py():
        return None
    return pc.replace_substring(column, ",", ".")


def _parse_numbers(column: pa.Array, name: str, padded: set[str]) -> np.ndarray | None:
    """Text → float64 by Arrow's cast, or None when a value needs the exact path (unparsable, ±inf, NaN)."""
    # cheapest first: a clean column; one whose only gaps are blanks; then every missing token
    values = None
    if name not in padded:
        try:
            values = column.cast(pa.float64())
        except pa.ArrowInvalid:
            padded.add(name)
    if values is None:
        nothing = pa.scalar(None, pa.string())
        trimmed = pc.ascii_trim_whitespace(column)
        try:
            values = pc.if_else(pc.equal(trimmed, ""), nothing, trimmed).cast(pa.float64())
        except pa.ArrowInvalid:
            missing = pc.is_in(pc.ascii_lower(trimmed), value_set=_MISSING_TOKENS)
            try:
                values = pc.if_else(missing, nothing, trimmed).cast(pa.float64())
            except pa.ArrowInvalid:
                return None
    out = values.to_numpy(zero_copy_only=False)
    if not np.isfinite(out[~np.isnan(out)] if values.null_count else out).all():
        return None
    return np.asarray(out, dtype=np.float64)


def _categorical(
    feat: CategoricalFeature, column: pa.Array, vocab: pa.Array, n: int, enc: Encoded, levels: tuple[bytes, ...] | None
) -> np.ndarray:
    if not pa.types.is_string(column.type):
        if pa.types.is_null(column.type):
            return encode_categorical(feat, None, n, enc)
        return encode_categorical(feat, column.to_pylist(), n, enc)  # 2.0 → "2" etc. as JSON
    if levels is not None and column.null_count == 0 and level_codes is not None:
        _, offsets, data = column.buffers()
        codes = np.frombuffer(level_codes(offsets, data or b"", column.offset, len(column), levels), np.int64)
        unmatched = codes < 0
        if unmatched.any():  # not a level verbatim and not blank: the exact path decides, as below
            rows = np.flatnonzero(unmatched).tolist()
            _exact_codes(feat, column, rows, codes, enc)
        return codes
    found = pc.index_in(column, value_set=vocab)
    if found.null_count == 0:  # the usual block: every value a known level, nothing else to check
        known: np.ndarray = np.add(found.to_numpy(), 1, dtype=np.int64)
        return known
    codes = np.add(found.fill_null(-1).to_numpy(zero_copy_only=False), 1, dtype=np.int64)
    # values not found verbatim that are not blank (unseen, padded, ...) take the exact path
    unmatched = pc.and_(pc.is_null(found), pc.not_equal(column, ""))
    if pc.any(unmatched).as_py():
        _exact_codes(feat, column, np.flatnonzero(unmatched.to_numpy(zero_copy_only=False)).tolist(), codes, enc)
    return np.asarray(codes, dtype=np.int64)


def _exact_codes(feat: CategoricalFeature, column: pa.Array, rows: list[int], codes: np.ndarray, enc: Encoded) -> None:
    """Codes of these rows by the record path (unseen levels warned, bad text an error)."""
    values = _texts(feat.name, column.take(pa.array(rows, pa.int64())), rows, enc)
    for row, value in zip(rows, values, strict=True):
        codes[row] = level_code(row, feat, value, enc)


def mark_rows(enc: Encoded, rows: list[int], field: str, reason: str) -> None:
    """Record a row's problem found outside the features (e.g. a kept column) as its error."""
    for row in rows:
        enc.errors.setdefault(row, EncodingError(row, field, reason))
