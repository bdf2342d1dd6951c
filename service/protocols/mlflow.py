"""MLflow's scoring protocol (`POST /invocations`), as `mlflow models serve` takes it (docs/protocols.md)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import Any

from service.errors import InputError
from service.explain import Explain, explanation_keys
from service.features import named_twice, shown, stripped
from service.protocols.base import Headers, InferenceRequest, InferenceResult, explain_of, media_type, parse_json
from service.protocols.native import NativeCodec, records_of

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
PREDICTION_KEYS = ("label", "probability", "probabilities", "value")


class MlflowCodec:
    """MLflow's protocol for one model, on the native codec's records path."""

    media_types = (b"application/json", b"text/csv")

    def __init__(self, native: NativeCodec) -> None:
        self.native = native

    def decode(self, body: bytes, headers: Headers, explain: Explain | None = None) -> InferenceRequest:
        """A JSON or CSV body → records → model inputs; `params.explain` asks for reasons."""
        is_csv = columnar = media_type(headers) == b"text/csv"  # a table: a column it lacks is lacking in every row
        if is_csv:
            records = records_from_csv(body)
        else:
            doc = parse_json(body, self.native.pre.known_fields)
            records = records_from_json(doc)
            columnar = "dataframe_split" in doc or any(isinstance(doc.get(k), dict) for k in ("instances", "inputs"))
            params = doc.get("params")
            if params is not None and not isinstance(params, dict):  # `"params": 4` meant reasons, or nothing
                raise bad(f'"params" must be an object such as {{"explain": 4}}, not {shown(params)}')
            if explain is None and isinstance(params, dict):
                explain = explain_of(params.get("explain"), '"params.explain"')
        if not records:  # said in MLflow's words, not the native protocol's ("records" is empty)
            raise bad(f"no rows to score: send 1 to {self.native.max_records}")
        if columnar and (why := self.native.pre.missing_columns(list(records[0]), header=is_csv)):  # as files are
            raise bad(why)
        return self.native.from_records(records_of({"records": records}, self.native.max_records), explain)

    def encode(self, result: InferenceResult) -> dict[str, Any]:
        """One object per row (MLflow has no place for ids); warnings beside `predictions`, which
        MLflow's clients read alone."""
        answers = self.native.answers(result)
        doc: dict[str, Any] = {"predictions": [{k: a[k] for k in PREDICTION_KEYS if k in a} for a in answers]}
        if result.effects is not None:  # reasons as columns, as `tabserve score --explain` writes them
            explain = result.request.explain
            keys = explanation_keys(self.native.pre.task, explain)
            for row, answer in zip(doc["predictions"], answers, strict=True):
                row.update(reason_columns(answer.get("reasons", []), explain))
                row.update({f"explanation_{key}": answer["explanation"][key] for key in keys})
        noted = [{"row": i, "warnings": a["warnings"]} for i, a in enumerate(answers) if "warnings" in a]
        if noted:
            doc["warnings"] = noted
        return doc


def reason_columns(reasons: list[dict[str, Any]], explain: Explain | None) -> dict[str, Any]:
    """`reason_1`, `effect_1`, … (or with "all", `effect_<feature>` for every feature)."""
    if explain == "all":
        return {f"effect_{r['field']}": r["effect"] for r in reasons}
    columns: dict[str, Any] = {}
    for i, reason in enumerate(reasons, start=1):
        columns[f"reason_{i}"], columns[f"effect_{i}"] = reason["text"], reason["effect"]
    return columns


def bad(message: str) -> InputError:
    """A body MLflow's server would refuse too."""
    return InputError("malformed", message)


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
            raise bad(f"dataframe_split column {i} must be a name (a string), not {shown(name)}")
    refuse_twice(columns, "dataframe_split columns")
    records = []
    for i, row in enumerate(value["data"]):
        if not isinstance(row, list) or len(row) != len(columns):
            raise bad(f"dataframe_split row {i} must be a list of {len(columns)} values")
        records.append(dict(zip(columns, row, strict=True)))
    index = value.get("index")  # not used, but one that does not fit says the rows are not what was meant
    if index is not None and (not isinstance(index, list) or len(index) != len(records)):
        held = f"{len(index)} labels" if isinstance(index, list) else shown(index)
        raise bad(f"dataframe_split index must be a list of one label per row ({len(records)}), not {held}")
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


def refuse_twice(names: list[str], where: str) -> None:
    """A column named twice: which of the two holds the value is a guess (the last one won), so it is
    refused, as `tabserve score` and the upload route refuse such a header."""
    twice = named_twice(names)
    if twice:
        raise bad(f"column(s) named more than once in the {where}: {', '.join(twice)}")


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
    header = stripped(header)  # as `tabserve score` and the upload route read a header
    refuse_twice(header, "CSV header")
    records = []
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise bad(f"CSV record {i}: expected {len(header)} fields, got {len(row)}")
        records.append({k: (v if v.strip() else None) for k, v in zip(header, row, strict=True)})
    return records


def _csv_rows(text: str) -> Iterator[list[str]]:
    """The rows of a CSV text, blank lines left out; a row the csv module refuses (a field over its
    128 KiB limit) is a 400, and so is a quote never closed, which read the rest of the body into one
    field without a word (MLflow's pandas reader refuses it too)."""
    lines = _Lines(text)
    reader = csv.reader(lines)  # lenient, as pandas: `"x" ,y` is `x ,y`
    row = -1  # the header; records count from 0, blank lines not counted, as the other messages do
    while True:
        start = lines.offset
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise bad(f"CSV {'header' if row < 0 else f'record {row}'}: {exc}") from None
        if lines.offset == len(text) and fields and _ends_quoted(text[start:]):  # the last record held the rest
            raise bad(f'CSV {"header" if row < 0 else f"record {row}"}: a quote (") opened in it is never closed')
        if fields:
            yield fields
            row += 1


def _ends_quoted(record: str) -> bool:
    """Whether a record, read as the csv module reads it, ends inside a quoted field: a quote opens one
    only at a field's start, `""` inside is a quote, and text after a closing quote joins the field."""
    quoted, skip = False, -1
    for found in re.finditer(r'[",\r\n]', record):
        i = found.start()
        if i == skip:
            continue
        if quoted and record[i] == '"':
            if record.startswith('"', i + 1):
                skip = i + 1
            else:
                quoted = False
        elif not quoted and record[i] == '"' and (i == 0 or record[i - 1] in ",\r\n"):
            quoted = True
    return quoted


class _Lines:
    """A text's lines, as the csv module reads them, and the offset of the next."""

    def __init__(self, text: str) -> None:
        self._lines, self.offset = iter(io.StringIO(text, newline="")), 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.offset += len(line)
        return line
