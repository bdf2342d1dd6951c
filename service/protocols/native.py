"""The native protocol: `{"records": [...]}` in, one answer per record out.

Three rungs decode a body, each faster than the next for what it takes, all to identical inputs
(tests/service/test_native_codec.py, test_plain_decoder.py): the optional C decoder, msgspec structs
typed from the schema, then the general path, which accepts, imputes, warns or explains anything.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import numpy as np

from service.encoders import Fields, RecordEncoder
from service.errors import InputError
from service.explain import Explain, Explainer
from service.features import CategoricalFeature, Encoded, NumericFeature, Preprocess
from service.protocols.base import (
    ABSENT,
    Headers,
    InferenceRequest,
    InferenceResult,
    checked,
    checked_ids,
    colons,
    explain_of,
    parse_json,
    unseen_levels,
)

PlainDecoder: type[_records.Decoder] | None
try:  # the optional C accelerator (setup.py); without it every body takes the msgspec rung
    from service.protocols import _records

    PlainDecoder = _records.Decoder
except ImportError:  # pragma: no cover - an install without a C compiler
    PlainDecoder = None


class NativeCodec:
    """The native protocol for one model."""

    media_types = (b"application/json",)

    def __init__(self, pre: Preprocess, max_records: int, explainer: Explainer | None = None) -> None:
        self.pre, self.max_records, self.explainer = pre, max_records, explainer
        self.encoder = RecordEncoder(pre)
        self.typed = TypedRecords(pre, self.encoder) if all(f.vocab_ for f in pre.categorical) else None

    def decode(self, body: bytes, headers: Headers | None = None, explain: Explain | None = None) -> InferenceRequest:
        """A body → model inputs and ids; errors name the record and the field."""
        if self.typed is not None and explain is None:  # the typed rungs hand back a body that asks for reasons
            request = self.typed.decode(body, self.max_records)
            if request is not None:
                return request
        doc = parse_json(body, self.pre.known_fields)
        records = records_of(doc, self.max_records)
        if explain is None:
            explain = explain_of(doc.get("explain"))
        return self.from_records(records, explain)

    def from_records(self, records: Sequence[dict[str, Any]], explain: Explain | None = None) -> InferenceRequest:
        """The general path: checked records → model inputs and the id values that pass through."""
        enc = checked(self.encoder.encode(records))
        ids = [(col, [r.get(col, ABSENT) for r in records]) for col in self.pre.id_columns]
        levels = unseen_levels(enc, lambda name: [r.get(name) for r in records])
        if explain is None:
            return InferenceRequest(enc, checked_ids(ids), levels=levels)
        return InferenceRequest(enc, checked_ids(ids), explain=explain, values=list(records), levels=levels)

    def encode(self, result: InferenceResult) -> dict[str, Any]:
        """The answer: the model, its version and one prediction per record."""
        return {"model": result.model, "version": result.version, "predictions": self.answers(result)}

    def answers(self, result: InferenceResult) -> list[dict[str, Any]]:
        """One answer per record: label and probability / class probabilities / value, ids, warnings."""
        pre, out, request = self.pre, result.out, result.request
        if pre.task == "binary":
            probabilities = out[:, 1].tolist()
            answers = [
                {"label": label, "probability": p}
                for label, p in zip(pre.binary_labels(probabilities), probabilities, strict=True)
            ]
        elif pre.task == "multiclass":
            names = [str(label) for label in pre.labels]
            answers = [
                {"label": label, "probabilities": dict(zip(names, r, strict=True))}
                for label, r in zip(pre.labels_for(out), out.tolist(), strict=True)
            ]
        else:
            answers = [{"value": v} for v in out[:, 0].tolist()]
        for col, values in request.ids:
            for answer, value in zip(answers, values, strict=True):
                if value is not ABSENT:
                    answer[col] = value
        for row, messages in request.enc.warnings.items():
            answers[row]["warnings"] = messages
        if result.effects is not None and self.explainer is not None and request.explain is not None:
            found, of = result.effects, self.explainer.stats["score"]
            labels = self.explainer.explained_labels(found, [a.get("label") for a in answers])
            reasons = self.explainer.reasons(found, request.explain, request.values or [], labels)
            for answer, these, score, base, label in zip(
                answers, reasons, found.score.tolist(), found.baseline.tolist(), labels, strict=True
            ):
                answer["reasons"] = these
                answer["explanation"] = {"score": score, "reference": base, "of": of}
                if pre.task == "multiclass":
                    answer["explanation"]["class"] = label
        return answers


def records_of(doc: Any, max_records: int) -> list[dict[str, Any]]:
    """The `records` list of a request body, checked for shape and size."""
    if not isinstance(doc, dict) or "records" not in doc:
        raise InputError("invalid", 'body must be a JSON object with a "records" list')
    records = doc["records"]
    if not isinstance(records, list):
        raise InputError("invalid", '"records" must be a list of objects')
    if not records:
        raise InputError("invalid", f'"records" is empty: send 1 to {max_records} records')
    if len(records) > max_records:
        raise InputError("too_large", f"{len(records)} records in one request; the limit is {max_records}")
    bad = [i for i, r in enumerate(records) if not isinstance(r, dict)]
    if bad:
        details = [{"record": i, "field": None, "message": "expected an object"} for i in bad[:20]]
        raise InputError("invalid", f"record {bad[0]} is not a JSON object", details)
    return records


class TypedRecords:
    """The C and msgspec rungs: the usual body (every feature, numbers, known levels; nulls allowed)."""

    def __init__(self, pre: Preprocess, encoder: RecordEncoder) -> None:
        self.pre, self.encoder = pre, encoder
        names = {f.name: f"f{i}" for i, f in enumerate(pre.features)}
        ids = {col: f"id{j}" for j, col in enumerate(pre.id_columns)}
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
            (names[f.name], _level_type(f) if isinstance(f, CategoricalFeature) else _number_type(f))
            for f in pre.features
        ]  # required: an absent feature takes the general path (imputed, maybe a warning)
        fields += [(attr, Any, msgspec.UNSET) for attr in ids.values()]
        rename = {attr: name for name, attr in [*names.items(), *ids.items()]}
        record = msgspec.defstruct("Record", fields, rename=rename, gc=False)
        # `explain` is read only to hand such a body to the general path (the C rung takes `records` alone)
        body = msgspec.defstruct("Body", [("records", list[record]), ("explain", Any, msgspec.UNSET)])  # type: ignore[valid-type]
        self._decoder = msgspec.json.Decoder(body)
        self._numbers = Fields([names[f.name] for f in pre.numeric], operator.attrgetter)
        self._levels = Fields([names[f.name] for f in pre.categorical], operator.attrgetter)
        self._ids = [(col, operator.attrgetter(attr)) for col, attr in ids.items()]
        self.plain = plain_decoder(pre)

    def decode(self, raw: bytes, max_records: int) -> InferenceRequest | None:
        """The body's model inputs and ids, or None when the general path must decide."""
        if self.plain is not None:
            decoded = self.plain.decode(raw, max_records)
            if decoded is not None:
                return self.from_plain(*decoded)
        try:
            typed = self._decoder.decode(raw)
        except (msgspec.MsgspecError, RecursionError):  # a deep id value: the general path explains it
            return None
        if typed.explain is not msgspec.UNSET:  # type: ignore[attr-defined]
            return None
        records = typed.records  # type: ignore[attr-defined]
        n = len(records)
        if not 0 < n <= max_records:
            return None
        ids = [(col, [ABSENT if v is msgspec.UNSET else v for v in map(get, records)]) for col, get in self._ids]
        keys = 1 + n * len(self.pre.features) + sum(v is not ABSENT for _, values in ids for v in values)
        if colons(raw) != keys:  # a field twice (msgspec keeps the last), or one it skipped: the general path
            return None
        if n == 1:  # the most frequent request: its fields picked, not flattened
            numbers, levels = self._numbers.one(records[0]), self._levels.one(records[0])
        else:
            numbers, levels = self._numbers.flat(records), self._levels.flat(records)
        enc = self.encoder.encode_flat(numbers, levels, n)
        return InferenceRequest(checked(enc), checked_ids(ids))

    def from_plain(self, num: bytearray, cat: bytearray, n: int, ids: list[list[Any]]) -> InferenceRequest:
        """The C decoder's arrays as model inputs, with the range warnings every path gives."""
        pre = self.pre
        enc = Encoded(
            np.frombuffer(num, np.float32).reshape(n, len(pre.numeric)),
            np.frombuffer(cat, np.int64).reshape(n, len(pre.categorical)),
        )
        self.encoder.check_ranges(enc)  # and check_known: the C decoder takes nulls as missing
        return InferenceRequest(checked(enc), list(zip(pre.id_columns, ids, strict=True)))


def plain_decoder(pre: Preprocess) -> _records.Decoder | None:
    """The C decoder of plain bodies for this model, or None where it is not built or cannot be."""
    if PlainDecoder is None or pre.dates:  # a date is text the C decoder does not read
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


def _number_type(feature: NumericFeature) -> Any:
    return str | None if feature.date is not None else float | None


def _level_type(feature: CategoricalFeature) -> Any:
    return Literal[feature.vocab_] | None
