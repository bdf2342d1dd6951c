"""Scoring JSON records: validate, encode, batch, answer. Knows nothing of HTTP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service.features import Encoded, Preprocess
from service.store import LoadedModel


class RequestError(ValueError):
    """A request that cannot be scored; `details` name the record and the field."""

    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.details = status, message, details or []

    def to_json(self) -> dict[str, Any]:
        """The error body."""
        doc: dict[str, Any] = {"error": self.message}
        if self.details:
            doc["details"] = self.details
        return doc


def records_of(doc: Any, max_records: int) -> list[dict[str, Any]]:
    """The `records` list of a request body, checked for shape and size."""
    if not isinstance(doc, dict) or "records" not in doc:
        raise RequestError(422, 'body must be a JSON object with a "records" list')
    records = doc["records"]
    if not isinstance(records, list):
        raise RequestError(422, '"records" must be a list of objects')
    if not records:
        raise RequestError(422, f'"records" is empty: send 1 to {max_records} records')
    if len(records) > max_records:
        raise RequestError(413, f"{len(records)} records in one request; the limit is {max_records}")
    bad = [i for i, r in enumerate(records) if not isinstance(r, dict)]
    if bad:
        details = [{"record": i, "field": None, "message": "expected an object"} for i in bad[:20]]
        raise RequestError(422, f"record {bad[0]} is not a JSON object", details)
    return records


def encode(pre: Preprocess, records: Sequence[dict[str, Any]]) -> Encoded:
    """Records → model inputs; any unparsable value fails the request, naming record and field."""
    return checked(pre.encode_records(records))


def checked(enc: Encoded) -> Encoded:
    """Encoded rows, or the 422 naming the record and field of every value that could not be used."""
    if enc.errors:
        errors = [enc.errors[row] for row in sorted(enc.errors)]
        details = [{"record": e.row, "field": e.field, "message": e.reason} for e in errors[:100]]
        raise RequestError(422, str(errors[0]), details)
    return enc


@dataclass(slots=True)
class Prepared:
    """A request ready for inference: its encoded rows and the id values its answers pass through.

    It holds nothing else of the request, so the body and the parsed records are freed
    before the request waits for its batch: the allocator then keeps reusing the same, cached,
    memory instead of holding every waiting request's records (BENCHMARKS.md).
    """

    enc: Encoded
    ids: list[tuple[str, list[Any]]]


def prepare(pre: Preprocess, records: Sequence[dict[str, Any]]) -> Prepared:
    """Encode records (errors name record and field) and keep the id columns that pass through."""
    enc = encode(pre, records)
    return Prepared(enc, checked_ids([(col, [r.get(col, ABSENT) for r in records]) for col in pre.id_columns]))


ABSENT = object()  # an id column a record does not have
INT_RANGE = range(-(2**63), 2**64)  # what JSON encoders echo exactly


def checked_ids(ids: list[tuple[str, list[Any]]]) -> list[tuple[str, list[Any]]]:
    """The id values, or the 422 naming the first one that could not be echoed exactly."""
    for col, values in ids:
        if all(type(v) is str for v in values):  # the usual ids: nothing to check
            continue
        for row, value in enumerate(values):
            problem = unechoable(value)
            if problem:
                detail = {"record": row, "field": col, "message": problem}
                raise RequestError(422, f"record {row}, field '{col}': {problem}", [detail])
    return ids


def unechoable(value: Any) -> str | None:
    """Why an id value cannot be echoed as it was sent (None: it can)."""
    if isinstance(value, int) and not isinstance(value, bool) and value not in INT_RANGE:
        return "an integer beyond 64 bits cannot be echoed exactly; send the id as a string"
    if isinstance(value, list | dict):
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError as exc:
            return f"cannot be echoed ({exc}); send the id as a string"
    return None


def answers(pre: Preprocess, out: np.ndarray, job: Prepared) -> list[dict[str, Any]]:
    """One answer per record: label and probability / class probabilities / value, ids, warnings."""
    if pre.task == "binary":
        probabilities = out[:, 1].tolist()
        result = [
            {"label": label, "probability": p}
            for label, p in zip(pre.binary_labels(probabilities), probabilities, strict=True)
        ]
    elif pre.task == "multiclass":
        names = [str(label) for label in pre.labels]
        result = [
            {"label": label, "probabilities": dict(zip(names, r, strict=True))}
            for label, r in zip(pre.labels_for(out), out.tolist(), strict=True)
        ]
    else:
        result = [{"value": v} for v in out[:, 0].tolist()]
    for col, values in job.ids:
        for answer, value in zip(result, values, strict=True):
            if value is not ABSENT:
                answer[col] = value
    for row, messages in job.enc.warnings.items():
        result[row]["warnings"] = messages
    return result


async def predict(model: LoadedModel, job: Prepared, timeout: float | None = None) -> dict[str, Any]:
    """Score a prepared request through the model's batcher; the answer names the model and version."""
    out = await model.infer(job.enc, timeout)
    return {
        "model": model.name,
        "version": model.version,
        "predictions": answers(model.pre, out, job),
    }
