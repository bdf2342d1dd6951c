"""The C level lookup of the scoring path (service/scoring/_levels.c) against Arrow's index_in path:
the same codes, errors and warnings for every kind of value, on sliced and empty arrays too."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from service.features import CategoricalFeature, Encoded
from service.scoring import columns

pytestmark = pytest.mark.skipif(columns.level_codes is None, reason="the C accelerator is not built here")

FEATURE = CategoricalFeature("Contract", ("Month-to-month", "One year", "Two year", "Ünïcode"))
VALUES = [*FEATURE.vocab_, "", " One year", "one year", "Two", "Two years", "Ten-year", "ü", "x" * 40]


def _both(column: pa.Array) -> tuple[np.ndarray, Encoded, np.ndarray, Encoded]:
    vocab = pa.array(FEATURE.vocab_, pa.string())
    levels = tuple(v.encode() for v in FEATURE.vocab_)
    fast, slow = Encoded(num=np.empty(0), cat=np.empty(0)), Encoded(num=np.empty(0), cat=np.empty(0))
    got = columns._categorical(FEATURE, column, vocab, len(column), fast, levels)
    want = columns._categorical(FEATURE, column, vocab, len(column), slow, None)
    return got, fast, want, slow


def _same(column: pa.Array) -> None:
    got, fast, want, slow = _both(column)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64 and fast.warnings == slow.warnings
    assert {r: str(e) for r, e in fast.errors.items()} == {r: str(e) for r, e in slow.errors.items()}


def test_random_columns_match_index_in() -> None:
    rng = random.Random(3)
    for _ in range(200):
        column = pa.array([rng.choice(VALUES) for _ in range(rng.randrange(0, 300))], pa.string())
        start = rng.randrange(0, max(len(column), 1))
        _same(column)
        _same(column.slice(start, rng.randrange(0, len(column) - start + 1)))  # NOTE: arrays with an offset


def test_blank_only_invalid_utf8_and_an_unseen_level() -> None:
    _same(pa.array(["", ""], pa.string()))
    _same(pa.array([], pa.string()))
    _same(pa.array(["One year", None, "x"], pa.string()))  # NOTE: nulls (Parquet): index_in decides
    raw = pa.array([b"One year", b"\xff\xfe", b"Two year"], pa.binary()).cast(pa.string(), safe=False)
    got, fast, _, _ = _both(raw)
    assert got.tolist() == [2, 0, 3] and "UTF-8" in str(fast.errors[1])
    _same(raw)
    got, fast, _, _ = _both(pa.array(["Ten-year", "One year"], pa.string()))
    assert got.tolist() == [0, 2] and "unseen level 'Ten-year'" in fast.warnings[0][0]


def test_bad_arguments_are_refused_not_read() -> None:
    column = pa.array(["One year"], pa.string())
    _, offsets, data = column.buffers()
    with pytest.raises(ValueError, match="out of range"):
        columns.level_codes(offsets, data, 0, 5, (b"One year",))  # NOTE: more rows than the offsets hold
    with pytest.raises(ValueError, match="out of range"):
        columns.level_codes(np.array([0, 99], np.int32).tobytes(), data, 0, 1, (b"One year",))
