"""The native `/predict` body, decoded straight into typed records when it is the usual request.

`{"records": [...]}` with every feature present, numbers as JSON numbers (or null) and categories
as known levels (or null) is by far the most common body. For it, msgspec decodes the bytes into
structs typed from the bundle's schema: numbers arrive as floats, levels as the very string
objects of the vocabulary (a `Literal` type), nothing else is allocated, and the type checks run
in C while parsing. Anything else — a field absent, a numeric string, an unseen or padded level,
a wrong type, too many or no records, malformed JSON — makes the typed decoder give up, and the
body takes the general path (orjson, `records_of`, `Preprocess.encode_records`), which accepts,
imputes, warns or explains exactly as before. Both paths give identical model inputs; the tests
check it.

Before msgspec, the optional C decoder (`_records.c`) tries the plainest form of that body (only
features and id columns, no escapes, ids as strings): it fills the `num`/`cat` arrays directly and
hands anything else back. All three give identical model inputs (tests/service/test_plain_decoder.py).

Each rung is faster than the one after it for the body it accepts (BENCHMARKS.md).
"""

from __future__ import annotations

import operator
from typing import Any, Literal

import msgspec
import numpy as np

from service.features import CategoricalFeature, Encoded, Fields, Preprocess
from service.predict import ABSENT, Prepared, checked, checked_ids

PlainDecoder: type[_records.Decoder] | None
try:  # the optional C accelerator (setup.py); without it every body takes the msgspec path
    from service.protocols import _records

    PlainDecoder = _records.Decoder
except ImportError:  # pragma: no cover - an install without a C compiler
    PlainDecoder = None

CACHE_KEY = "native-typed-records"


class TypedRecords:
    """One bundle's typed decoder for `{"records": [...]}` bodies."""

    def __init__(self, pre: Preprocess) -> None:
        self.pre = pre
        names = {f.name: f"f{i}" for i, f in enumerate(pre.features)}
        ids = {col: f"id{j}" for j, col in enumerate(pre.id_columns)}
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
            (names[f.name], _level_type(f) if isinstance(f, CategoricalFeature) else float | None) for f in pre.features
        ]  # required: an absent feature takes the general path (imputed, maybe a warning)
        fields += [(attr, Any, msgspec.UNSET) for attr in ids.values()]
        rename = {attr: name for name, attr in [*names.items(), *ids.items()]}
        record = msgspec.defstruct("Record", fields, rename=rename, gc=False)
        self._decoder = msgspec.json.Decoder(msgspec.defstruct("Body", [("records", list[record])]))  # type: ignore[valid-type]
        self._numbers = Fields([names[f.name] for f in pre.numeric], operator.attrgetter)
        self._levels = Fields([names[f.name] for f in pre.categorical], operator.attrgetter)
        self._ids = [(col, operator.attrgetter(attr)) for col, attr in ids.items()]
        self._plain = plain_decoder(pre)

    def prepare(self, raw: bytes, max_records: int) -> Prepared | None:
        """The body's model inputs and ids, or None when the general path must decide."""
        if self._plain is not None:
            decoded = self._plain.decode(raw, max_records)
            if decoded is not None:
                return self._from_plain(*decoded)
        try:
            records = self._decoder.decode(raw).records  # type: ignore[attr-defined]
        except (msgspec.MsgspecError, RecursionError):  # a deep id value: the general path explains it
            return None
        n = len(records)
        if not 0 < n <= max_records:
            return None
        if n == 1:  # the most frequent request: its fields picked, not flattened
            numbers, levels = self._numbers.one(records[0]), self._levels.one(records[0])
        else:
            numbers, levels = self._numbers.flat(records), self._levels.flat(records)
        enc = self.pre.encode_flat(numbers, levels, n)
        ids = [(col, [ABSENT if v is msgspec.UNSET else v for v in map(get, records)]) for col, get in self._ids]
        return Prepared(checked(enc), checked_ids(ids))

    def _from_plain(self, num: bytearray, cat: bytearray, n: int, ids: list[list[Any]]) -> Prepared:
        """The C decoder's arrays as model inputs, with the range warnings every path gives."""
        pre = self.pre
        enc = Encoded(
            np.frombuffer(num, np.float32).reshape(n, len(pre.numeric)),
            np.frombuffer(cat, np.int64).reshape(n, len(pre.categorical)),
        )
        pre.check_ranges(enc)
        return Prepared(enc, list(zip(pre.id_columns, ids, strict=True)))


def plain_decoder(pre: Preprocess) -> _records.Decoder | None:
    """The C decoder of plain bodies for this bundle, or None where it is not built.

    It creates no Python object per value, the cost that dominates the other paths.
    """
    if PlainDecoder is None:
        return None
    try:
        return PlainDecoder(
            [f.name for f in pre.numeric],
            [(f.name, list(f.vocab_)) for f in pre.categorical],
            list(pre.id_columns),
            ABSENT,
        )
    except ValueError:  # a name or level JSON writes escaped, or an id column named as a feature
        return None


def typed_records(pre: Preprocess) -> TypedRecords | None:
    """The bundle's typed decoder (built once, kept with the bundle); None when its schema has a
    categorical feature with no levels at all (nothing a Literal type could name)."""
    return pre.codec(CACHE_KEY, _typed_records)


def _typed_records(pre: Preprocess) -> TypedRecords | None:
    return TypedRecords(pre) if all(f.vocab_ for f in pre.categorical) else None


def _level_type(feature: CategoricalFeature) -> Any:
    return Literal[feature.vocab_] | None
