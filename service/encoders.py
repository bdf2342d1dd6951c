"""Request records → model inputs with the per-value work in C (itemgetter, map(dict.get, ...));
the same arrays, errors and warnings as `Preprocess.encode_records` (tests/service/test_encoders.py)."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from service.features import F32_MAX, Encoded, Preprocess, codes_of, numbers_of

_PLAIN_NUMBERS = (float, int)


class Fields:
    """Named fields of many records, row-major and flat: keys of dicts or (attrgetter) attributes."""

    def __init__(self, names: list[str], getter: Callable[..., Any] = operator.itemgetter) -> None:
        self.names, self.k = names, len(names)
        self._get = getter(*names) if names else None

    def flat(self, records: Sequence[Any]) -> list[Any]:
        """Raises KeyError (AttributeError) when a record lacks a field."""
        if self._get is None:
            return []
        got = list(map(self._get, records))
        return got if self.k == 1 else list(itertools.chain.from_iterable(got))

    def one(self, record: Any) -> Sequence[Any]:
        """The fields of one record; raises as `flat`."""
        if self._get is None:
            return ()
        got = self._get(record)
        return (got,) if self.k == 1 else got

    def flat_lenient(self, records: Sequence[Mapping[str, Any]]) -> list[Any]:
        """As `flat` for dicts, with None for absent fields."""
        return [r.get(name) for r in records for name in self.names]


class RecordEncoder:
    """One model's encoder of request records."""

    def __init__(self, pre: Preprocess) -> None:
        self.pre = pre
        self._known = len(pre.features)  # fields a record with every feature holds, ids aside
        self.numbers = Fields([f.name for f in pre.numeric])
        self.levels = Fields([f.name for f in pre.categorical])
        self._indexes = [f.index_ for f in pre.categorical]
        self._lo, self._hi = (bounds.tolist() for bounds in pre.ranges)
        self._below, self._above = pre.range_messages

    def encode(self, records: Sequence[Mapping[str, Any]]) -> Encoded:
        """JSON-style records → model inputs; absent or null fields are missing."""
        nums, cats = self.numbers, self.levels
        try:
            if len(records) == 1:  # the most frequent request: its fields picked, not flattened
                numbers, levels = nums.one(records[0]), cats.one(records[0])
            else:
                numbers, levels = nums.flat(records), cats.flat(records)
        except KeyError:  # some record lacks a feature: missing, not an error (but see check_absent)
            enc = self.encode_flat(nums.flat_lenient(records), cats.flat_lenient(records), len(records))
            self.pre.check_absent(records, enc)
            return enc
        enc = self.encode_flat(numbers, levels, len(records))
        if self._has_extras(records):
            self.pre.check_lookalikes(records, enc)  # fields beside every feature: a null one may be mistyped
        return enc

    def _has_extras(self, records: Sequence[Mapping[str, Any]]) -> bool:
        """Whether records holding every feature hold more than features and ids (counted in C-level maps)."""
        ids = sum(sum(map(operator.contains, records, itertools.repeat(c))) for c in self.pre.id_columns)
        return sum(map(len, records)) > len(records) * self._known + ids

    def encode_flat(self, numbers: Sequence[Any], levels: Sequence[Any], n_rows: int) -> Encoded:
        """Raw values row-major in `num` / `cat` order (None: missing) → model inputs."""
        # a date feature's value is text to parse, never a plain number
        if n_rows == 1 and not self.pre.dates and (plain := self._plain(numbers, levels)) is not None:
            return plain
        pre = self.pre
        enc = Encoded(num=_EMPTY_NUM, cat=_EMPTY_CAT)
        enc.num = numbers_of(self.numbers.names, numbers, n_rows, enc, pre.parsers)
        enc.cat = codes_of(levels, pre.categorical, self._indexes, enc).reshape(n_rows, self.levels.k)
        self.check_ranges(enc)
        return enc

    def _plain(self, numbers: Sequence[Any], levels: Sequence[Any]) -> Encoded | None:
        """A single record of JSON numbers and known levels, or None."""
        try:
            codes = list(map(dict.get, self._indexes, levels))
        except TypeError:  # an unhashable level
            return None
        if None in codes:
            return None
        for v in numbers:
            if type(v) not in _PLAIN_NUMBERS or not -F32_MAX <= v <= F32_MAX:  # also None, NaN
                return None
        enc = Encoded(np.array([numbers], dtype=np.float32), np.array([codes], dtype=np.int64))
        # within the range as Python numbers is within it in float32 too (the bounds are float32
        # values and rounding keeps order); only values outside need the exact check
        if not (all(map(operator.le, self._lo, numbers)) and all(map(operator.le, numbers, self._hi))):
            self.check_ranges(enc)
        return enc

    def check_ranges(self, enc: Encoded) -> None:
        """`Preprocess.check_ranges`, in plain Python for one record (numpy costs more there)."""
        if enc.num.shape[0] != 1:
            self.pre.check_ranges(enc)
            return
        names, values = self.numbers.names, enc.num[0].tolist()
        if all(v != v for v in values) and not enc.cat.any():  # every number NaN (stops at the first that is not)
            self.pre.check_known(enc)
        for j, v in enumerate(values):
            if v < self._lo[j]:
                enc.warn(0, self._below[j], names[j], "out_of_range")
            elif v > self._hi[j]:
                enc.warn(0, self._above[j], names[j], "out_of_range")


_EMPTY_NUM, _EMPTY_CAT = np.empty(0, np.float32), np.empty(0, np.int64)
