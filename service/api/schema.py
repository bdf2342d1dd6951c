"""A bundle's feature schema as a JSON-schema request body and an example record."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from service.features import NumericFeature, Preprocess

F32_MAX = float(np.finfo(np.float32).max)

# the numeric text `features.parse_number` reads, short enough never to overflow float32 (the model's input):
# plain decimals with an optional one-digit exponent, thousands-grouped decimals, or a missing-value token
NUMERIC_TEXT = (
    r"^\s*(?:[-+]?(?:(?:\d{1,20}(?:\.\d{0,20})?|\.\d{1,20})(?:[eE][-+]?\d)?|\d{1,3}(?:,\d{3}){1,6}(?:\.\d{0,20})?)"
    r"|(?:[Nn][Aa][Nn]?|[Nn]/[Aa]|[Nn][Uu][Ll][Ll]|[Nn][Oo][Nn][Ee]|\?|--?|#[Nn]/[Aa])?)\s*$"
)


def feature_doc(pre: Preprocess) -> list[dict[str, Any]]:
    """Features in input order with their type and training statistics or levels."""
    docs: list[dict[str, Any]] = []
    for f in pre.features:
        if isinstance(f, NumericFeature) and f.date is not None:
            docs.append({"name": f.name, "kind": "date", "type": "string", "reference": f.date.reference})
        elif isinstance(f, NumericFeature):
            docs.append(
                {
                    "name": f.name,
                    "kind": "numeric",
                    "type": "number",
                    "median": f.median_,
                    "mean": f.mean_,
                    "std": f.std_,
                    "min": f.min_,
                    "max": f.max_,
                }
            )
        else:
            docs.append({"name": f.name, "kind": "categorical", "type": "string", "levels": list(f.vocab_)})
    return docs


def example_record(pre: Preprocess, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """A real training row when the bundle keeps one (metrics.json `data.example`); for an older
    bundle, each numeric at its training median and each category at its first level."""
    stored = ((metrics or {}).get("data") or {}).get("example")
    if isinstance(stored, dict):
        return stored
    record: dict[str, Any] = {col: "example-id" for col in pre.id_columns}
    for f in pre.features:
        if isinstance(f, NumericFeature) and f.date is not None:  # the date as old as the median one
            record[f.name] = (f.date.reference_ - dt.timedelta(days=f.median_)).date().isoformat()
        elif isinstance(f, NumericFeature):
            record[f.name] = round(f.median_, 4)
        else:
            record[f.name] = f.vocab_[0] if f.vocab_ else None
    return record


def record_schema(pre: Preprocess) -> dict[str, Any]:
    """JSON schema of one record: every feature with its type and allowed levels."""
    props: dict[str, Any] = {col: {"description": "identifier; passed through to the answer"} for col in pre.id_columns}
    for f in pre.features:
        if isinstance(f, NumericFeature) and f.date is not None:
            props[f.name] = {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": f"date (e.g. 2023-04-17, as in the training file); the feature is its age in days "
                f"at {f.date.reference[:10]}; null or absent → imputed",
            }
        elif isinstance(f, NumericFeature) and f.unit:
            props[f.name] = {
                "anyOf": [
                    {"type": "number", "minimum": -F32_MAX, "maximum": F32_MAX},
                    {"type": "null"},
                    {"type": "string"},
                ],
                "description": f"numeric, in {f.unit} (numbers, or text such as '{f.unit}1,234.50' or '(1,200)'); "
                f"trained on [{f.min_:g}, {f.max_:g}]; null or absent → imputed with the median {f.median_:g}",
            }
        elif isinstance(f, NumericFeature):
            props[f.name] = {
                "anyOf": [
                    {"type": "number", "minimum": -F32_MAX, "maximum": F32_MAX},  # the model reads float32
                    {"type": "null"},
                    {"type": "string", "pattern": NUMERIC_TEXT},
                ],
                "description": f"numeric (numbers or numeric strings); trained on [{f.min_:g}, {f.max_:g}]; "
                f"null or absent → imputed with the median {f.median_:g}",
            }
        else:
            levels = ", ".join(repr(v) for v in f.vocab_[:50]) + (" …" if len(f.vocab_) > 50 else "")
            props[f.name] = {
                # numbers and booleans are matched by their text (2.0 and "2" are one level), as
                # `features.category_key` does; objects and lists are refused (422)
                "type": ["string", "number", "boolean", "null"],
                "description": f"categorical, one of: {levels}. Other levels are scored as unseen "
                "(with a warning); numbers and booleans are matched by their text; null or absent means missing",
                "examples": list(f.vocab_[:5]),
            }
    return {
        "type": "object",
        "description": "One record. Fields that are not features are ignored; a record with none of the "
        "model's features is refused (422).",
        "properties": props,
        "additionalProperties": True,
        "anyOf": [{"required": [f.name]} for f in pre.features],  # at least one feature (null counts)
    }


def request_schema(pre: Preprocess, max_records: int) -> dict[str, Any]:
    """The predict request body. The record limit is a server setting, answered 413 (declared), not
    part of the body's shape."""
    records = {
        "type": "array",
        "minItems": 1,
        "items": record_schema(pre),
        "description": f"1 to {max_records} records (413 beyond)",
    }
    return {"type": "object", "required": ["records"], "properties": {"records": records}}
