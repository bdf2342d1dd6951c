"""MLflow scoring protocol codec (`POST /invocations`): payload → records, answers → predictions.

Accepts what `mlflow models serve` accepts for a pyfunc model: a JSON object with exactly one of
`dataframe_split`, `dataframe_records`, `instances` or `inputs` (plus optional `params`), or a
`text/csv` body. Records then go through the same validation and batcher as `/predict`; the
answer is `{"predictions": [...]}` with one object per row (label and probability, class
probabilities or value), the shape MLflow gives for a model that returns a DataFrame.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from service.predict import RequestError

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def bad(message: str) -> RequestError:
    """A 400 (rendered in MLflow's error shape by the endpoint)."""
    return RequestError(400, message)


def records_from_json(doc: Any) -> list[dict[str, Any]]:
    """The rows of an MLflow JSON payload as records."""
    if not isinstance(doc, dict):
        raise bad(f"the body must be a JSON object with one of: {', '.join(FORMATS)}")
    given = [k for k in FORMATS if k in doc]
    if len(given) != 1:
        found = f"found {', '.join(given)}" if given else "found none"
        raise bad(f"the body must hold exactly one of {', '.join(FORMATS)} ({found})")
    unknown = [k for k in doc if k not in (*FORMATS, "params")]
    if unknown:
        raise bad(f"unknown key(s) {', '.join(unknown)}: expected one of {', '.join(FORMATS)} and optional params")
    key = given[0]
    value = doc[key]
    if key == "dataframe_split":
        return _split(value)
    if key == "dataframe_records":
        return _records(key, value)
    return _instances(key, value)


def _split(value: Any) -> list[dict[str, Any]]:
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("columns"), list)
        or not isinstance(value.get("data"), list)
    ):
        raise bad('dataframe_split must be {"columns": [...], "data": [[...], ...]} (index optional)')
    columns = value["columns"]
    for i, name in enumerate(columns):
        if not isinstance(name, str):
            raise bad(f"dataframe_split column {i} must be a name (a string), not {name!r}")
    records = []
    for i, row in enumerate(value["data"]):
        if not isinstance(row, list) or len(row) != len(columns):
            raise bad(f"dataframe_split row {i} must be a list of {len(columns)} values")
        records.append(dict(zip(columns, row, strict=True)))
    return records


def _records(key: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise bad(f"{key} must be a list of objects (one per row)")
    return value


def _instances(key: str, value: Any) -> list[dict[str, Any]]:
    """`instances`/`inputs`: a list of row objects, or one object of equal-length columns."""
    if isinstance(value, list):
        return _records(key, value)
    if isinstance(value, dict) and value:
        lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise bad(f"{key} as columns must map every name to a list of the same length")
        names = list(value)
        return [dict(zip(names, row, strict=True)) for row in zip(*value.values(), strict=True)]
    raise bad(f"{key} must be a list of row objects or an object of columns")


def records_from_csv(body: bytes) -> list[dict[str, Any]]:
    """A CSV body (header row first) as records of strings (blank cells are missing values)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise bad(f"CSV body is not UTF-8: {exc}") from None
    rows = _csv_rows(text)
    header = next(rows, None)
    if not header:
        raise bad("CSV body is empty")
    records = []
    for i, row in enumerate(rows):
        if not row:
            continue
        if len(row) != len(header):
            raise bad(f"CSV row {i}: expected {len(header)} fields, got {len(row)}")
        records.append({k: (v if v.strip() else None) for k, v in zip(header, row, strict=True)})
    return records


def _csv_rows(text: str) -> Iterator[list[str]]:
    """The rows of a CSV text; a row the csv module refuses (a field over its 128 KiB limit) is a 400."""
    reader = csv.reader(io.StringIO(text, newline=""))
    row = -1  # the header; data rows count from 0, as in the other messages
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise bad(f"CSV {'header' if row < 0 else f'row {row}'}: {exc}") from None
        yield fields
        row += 1


def predictions(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The MLflow answer: one object per row (ids dropped: MLflow has no place for them).

    Per-row warnings (an unseen level, a value outside the training range) go in a
    `warnings` list beside `predictions`, `[{"row": i, "warnings": [...]}]`, only when there are
    any: MLflow's clients read `predictions` alone, so the rows' columns stay what they expect,
    and nothing the caller sent is ignored without saying so.
    """
    doc: dict[str, Any] = {
        "predictions": [
            {k: v for k, v in a.items() if k in ("label", "probability", "probabilities", "value")} for a in answers
        ]
    }
    noted = [{"row": i, "warnings": a["warnings"]} for i, a in enumerate(answers) if "warnings" in a]
    if noted:
        doc["warnings"] = noted
    return doc
