"""The Open Inference Protocol (KServe V2): one input tensor per feature in, tensors out
(docs/protocols.md)."""

from __future__ import annotations

import math
import operator
import struct
from typing import Any, Literal

import msgspec
import numpy as np

from service.encoders import RecordEncoder
from service.errors import InputError
from service.explain import Effects, Explain, Explainer, explanation_keys
from service.features import Encoded, Preprocess, near_miss, shown
from service.protocols.base import (
    ABSENT,
    NO_ID,
    Headers,
    InferenceRequest,
    InferenceResult,
    checked_ids,
    colons,
    explain_of,
    parse_json,
    unechoable,
    unseen_levels,
)

NUMERIC_TYPES = {
    "BOOL": "?",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
CATEGORICAL_TYPES = {"BYTES", *(t for t in NUMERIC_TYPES if t.startswith(("INT", "UINT")))}
NUMERIC_FEATURE_TYPES = {t for t in NUMERIC_TYPES if t != "BOOL"}
INT_RANGES = {t: (int(np.iinfo(c).min), int(np.iinfo(c).max)) for t, c in NUMERIC_TYPES.items() if "INT" in t}
FLOAT_MAX = {"FP16": float(np.finfo(np.float16).max), "FP32": float(np.finfo(np.float32).max), "FP64": math.inf}
ATTRIBUTIONS = "attributions"  # the output of each feature's effect (service/explain.py)
# the outputs that come with it, saying what the effects explain (the class: multiclass only)
EXPLANATION = [ATTRIBUTIONS, *(f"explanation_{key}" for key in explanation_keys("multiclass", "all"))]


def misfit(datatype: str, value: Any) -> str | None:
    """Why a JSON value is not of its tensor's declared datatype (None: it is, or it is null, taken as
    missing; BYTES holds text or a coded level's number, read as sent)."""
    if value is None:
        return None
    if datatype == "BYTES":  # an object was read as its JSON text; true is matched by its text, as on /predict
        return f"{shown(value)} is not text, a number or true/false (BYTES)" if isinstance(value, dict) else None
    if datatype == "BOOL":
        return None if isinstance(value, bool) else f"{shown(value)} is not true or false ({datatype})"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{shown(value)} is not a number ({datatype} declared)"
    if datatype in INT_RANGES:
        low, high = INT_RANGES[datatype]
        return None if isinstance(value, int) and low <= value <= high else f"{shown(value)} is not an {datatype} value"
    return None if abs(value) <= FLOAT_MAX[datatype] else f"{shown(value)} is beyond {datatype}'s range"


def check_typed(name: str, datatype: str, values: list[Any]) -> None:
    """A tensor's JSON data against its declared datatype (INT8 [1000], INT64 [70.9] and FP64 ["$1,000"]
    were read as numbers anyway); the usual all-number column costs one array's check."""
    if not values or (datatype == "BYTES" and dict not in set(map(type, values))):
        return
    array = np.asarray(values) if type(values[0]) in (int, float) else None  # else: text, null or nested
    if array is not None and array.dtype.kind in "iuf":
        if datatype in INT_RANGES:
            low, high = INT_RANGES[datatype]
            if array.dtype.kind != "f" and low <= array.min() and array.max() <= high:
                return
        elif datatype in FLOAT_MAX and not np.abs(array[np.isfinite(array)]).max(initial=0) > FLOAT_MAX[datatype]:
            return
    for row, value in enumerate(values):
        problem = misfit(datatype, value)
        if problem:
            raise bad(f"input '{name}', element {row}: {problem}")


def bad(message: str) -> InputError:
    """A request that does not fit the model's inputs."""
    return InputError("invalid", message)


def header_length(value: bytes | None) -> int | None:
    """The Inference-Header-Content-Length header as a byte count (None when absent)."""
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18:
        raise InputError("malformed", f"Inference-Header-Content-Length must be a byte count, not {value[:40]!r}")
    return int(value)


def checked_id(request_id: Any) -> Any:
    """The request's id, refused when it could not be echoed exactly."""
    problem = unechoable(request_id) if request_id is not NO_ID else None
    if problem:
        raise bad(f'"id": {problem}')
    return request_id


def split_binary(body: bytes, header_length: int | None) -> tuple[bytes, bytes]:
    """(JSON part, binary part) of a request body (binary tensor extension when a length is given)."""
    if header_length is None:
        return body, b""
    if not 0 < header_length <= len(body):
        raise bad(f"Inference-Header-Content-Length {header_length} does not fit a {len(body)}-byte body")
    return body[:header_length], body[header_length:]


def input_columns(pre: Preprocess, doc: Any, binary: bytes, max_records: int) -> tuple[dict[str, Any], int]:
    """The request's input tensors → one column per feature, checked against the model; an id
    column's tensor (optional, BYTES or integers) is kept under its name too."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise bad('request must be a JSON object with a non-empty "inputs" list')
    kinds = {**input_kinds(pre), **{c: "id" for c in pre.id_columns if c not in pre.kinds}}
    columns: dict[str, Any] = {}
    rows: int | None = None
    offset = 0
    for i, tensor in enumerate(doc["inputs"]):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise bad(f"input {i} must be an object with a name, shape, datatype and data")
        name = tensor["name"]
        if name not in kinds:
            guess = near_miss(name, list(kinds))
            hint = f"did you mean {guess!r}? " if guess else ""
            raise bad(f"unknown input {shown(name)}; {hint}the model's inputs are: {', '.join(kinds)}")
        values, offset = _tensor_values(name, kinds[name], tensor, binary, offset)
        if name in columns:
            raise bad(f"input '{name}' is given twice")
        if rows is None:
            rows = len(values)
        elif len(values) != rows:
            raise bad(f"input '{name}' has {len(values)} rows; earlier inputs have {rows}")
        columns[name] = values
    missing = [n for n in kinds if n not in columns and kinds[n] != "id"]
    if missing:
        raise bad(f"missing input(s): {', '.join(missing)}")
    if offset < len(binary):  # sizes that do not add up: which bytes belong to which input is a guess
        raise bad(f"the binary part holds {len(binary) - offset} bytes past the last input's binary_data_size")
    assert rows is not None
    if rows == 0:
        raise bad("inputs hold no rows")
    if rows > max_records:
        raise InputError("too_large", f"{rows} rows in one request; the limit is {max_records}")
    return columns, rows


def datatypes_of(kind: str) -> set[str]:
    """The datatypes an input of this kind takes: a date is text (its age is the model's number)."""
    return NUMERIC_FEATURE_TYPES if kind == "numeric" else {"BYTES"} if kind == "date" else CATEGORICAL_TYPES


def _tensor_values(name: str, kind: str, tensor: dict[str, Any], binary: bytes, offset: int) -> tuple[Any, int]:
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if not isinstance(datatype, str) or datatype not in datatypes_of(kind):  # an id as a level
        want = {"numeric": "a numeric type (FP32, FP64, INT64, ...)", "date": "BYTES (the date as text)"}.get(
            kind, "BYTES (or an integer type)"
        )
        raise bad(f"input '{name}' is {kind}: datatype must be {want}, not {datatype!r}")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))
    ):
        raise bad(f"input '{name}': shape must be [N] or [N, 1], not {shape!r}")
    rows = shape[0]
    parameters = tensor.get("parameters")
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"input '{name}': binary_data_size must be a byte count, not {size!r}")
        if offset + size > len(binary):
            raise bad(f"input '{name}': binary_data_size {size!r} runs past the body")
        if "data" in tensor:  # two values for one input: the JSON one was dropped without a word
            raise bad(f"input '{name}' has both data and binary_data_size: which values are meant is a guess")
        values = _from_binary(name, datatype, binary[offset : offset + size])
        offset += size
    else:
        if "data" not in tensor:
            raise bad(f"input '{name}' has no data")
        values = _flatten(name, tensor["data"])
        check_typed(name, datatype, values)
    if len(values) != rows:
        raise bad(f"input '{name}': shape {shape} says {rows} values, data holds {len(values)}")
    return values, offset


def _flatten(name: str, data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise bad(f"input '{name}': data must be a list (flat or nested)")
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _from_binary(name: str, datatype: str, raw: bytes) -> Any:
    if datatype != "BYTES":
        dtype = np.dtype(NUMERIC_TYPES[datatype])
        if len(raw) % dtype.itemsize:
            raise bad(f"input '{name}': {len(raw)} bytes is not a whole number of {datatype} values")
        return np.frombuffer(raw, dtype=dtype)
    values, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise bad(f"input '{name}': truncated BYTES element")
        (length,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + length > len(raw):
            raise bad(f"input '{name}': truncated BYTES element")
        try:
            values.append(raw[at : at + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise bad(f"input '{name}', element {len(values)}: not valid UTF-8") from None
        at += length
    return values


class V2Codec:
    """The Open Inference Protocol for one model."""

    media_types = None  # JSON, or JSON followed by binary tensors

    def __init__(self, pre: Preprocess, max_records: int, explainer: Explainer | None = None) -> None:
        self.pre, self.max_records, self.explainer = pre, max_records, explainer
        self.outputs = [o["name"] for o in output_metadata(pre, explainer is not None)]
        # what an explain.onnx would add: asked of a bundle without one, refused as such by the data plane
        self.explained = [o["name"] for o in output_metadata(pre, True) if o["name"] not in self.outputs]
        self.encoder = RecordEncoder(pre)
        self._single = _single_row_decoder(pre)
        self._layouts: dict[tuple[tuple[Any, ...], tuple[Any, ...]], tuple[Any, Any, Any]] = {}

    def decode(self, body: bytes, headers: Headers, explain: Explain | None = None) -> InferenceRequest:
        """A request body (JSON, or JSON then binary tensors) → model inputs, its id and outputs;
        the `attributions` output, or the `explain` parameter, asks for each feature's effect."""
        text, binary = split_binary(body, header_length(headers.get(b"inference-header-content-length")))
        single = self._single_row(text) if not binary and explain is None else None
        if single is not None:
            return single
        doc = parse_json(text)
        outputs = check_outputs(self.outputs, doc, self.explained)
        parameters = doc.get("parameters") if isinstance(doc, dict) else None
        if parameters is not None and not isinstance(parameters, dict):  # `[1]`, `"explain"`: meant something
            raise bad(f'"parameters" must be an object such as {{"explain": 4}}, not {shown(parameters)}')
        if explain is None and isinstance(parameters, dict):
            explain = explain_of(parameters.get("explain"), 'parameter "explain"')
        if explain is None and outputs is not None and any(name in EXPLANATION for name in outputs):
            explain = "all"
        if explain is not None and outputs is not None:  # the effects and what they explain, beside the outputs picked
            outputs = [*outputs, *(n for n in self.outputs if n in EXPLANATION and n not in outputs)]
        columns, rows = input_columns(self.pre, doc, binary, self.max_records)
        enc = self._checked(self.pre.encode_columns(columns, rows))
        ids = [(c, columns[c] if c in columns else [ABSENT] * rows) for c in self.pre.id_columns]
        sent = checked_ids(ids) if any(c in columns for c in self.pre.id_columns) else []  # log, canary
        request = InferenceRequest(enc, sent, checked_id(doc.get("id", NO_ID)), outputs, explain)
        request.levels = unseen_levels(enc, columns.get)
        return request

    def _single_row(self, text: bytes) -> InferenceRequest | None:
        """One plain value per feature tensor, typed while parsing; None: the full path decides.
        Clients send one layout every time, so a layout is checked once and remembered."""
        try:
            request = self._single.decode(text)
        except (msgspec.MsgspecError, RecursionError):  # a deep "id": the full path explains it
            return None
        inputs = request.inputs
        keys = 1 + 4 * len(inputs) + (request.id is not msgspec.UNSET)
        if request.outputs is not None:
            keys += 1 + sum(output.keys() for output in request.outputs)
        if colons(text) != keys:  # a key twice (msgspec keeps the last), or one it skipped: the full path
            return None
        shapes = list(map(_SHAPE, inputs))
        if shapes.count([1]) + shapes.count([1, 1]) != len(inputs):
            return None
        key = (tuple(map(_NAME, inputs)), tuple(map(_DATATYPE, inputs)))
        layout = self._layouts.get(key)
        if layout is None:
            layout = _layout(self.pre, key[0], key[1])
            if layout is None:
                return None
            if len(self._layouts) < LAYOUTS_KEPT:
                self._layouts[key] = layout
        outputs = (
            None
            if request.outputs is None
            else known_outputs(self.outputs, [o.name for o in request.outputs], self.explained)
        )
        if request.parameters is not None or (outputs is not None and any(n in EXPLANATION for n in outputs)):
            return None  # parameters (`explain`) and attributions: the full path reads them
        values = [data[0] for data in map(_DATA, inputs)]
        num_at, cat_at, typed = layout
        for i, datatype in typed:  # the inputs whose data has a type to check (not BYTES)
            problem = misfit(datatype, values[i])
            if problem:
                raise bad(f"input '{key[0][i]}', element 0: {problem}")
        request_id = NO_ID if request.id is msgspec.UNSET else checked_id(request.id)
        enc = self._checked(self.encoder.encode_flat(num_at(values), cat_at(values), 1))
        return InferenceRequest(enc, [], request_id, outputs)

    @staticmethod
    def _checked(enc: Encoded) -> Encoded:
        if enc.errors:
            first = enc.errors[min(enc.errors)]
            where = f"element {first.row}" if first.field is None else f"input '{first.field}', element {first.row}"
            raise bad(f"{where}: {first.reason}")
        return enc

    def encode(self, result: InferenceResult) -> dict[str, Any]:
        """The outputs asked for and the request's id; warnings in `parameters` as one string
        (parameter values are scalars)."""
        pre, out, request = self.pre, result.out, result.request
        rows = len(out)
        tensors: dict[str, dict[str, Any]] = {}
        if pre.task == "regression":
            tensors["value"] = {"name": "value", "datatype": "FP32", "shape": [rows], "data": out[:, 0].tolist()}
        else:
            flat = out.ravel().tolist()  # one conversion serves every tensor
            if pre.task == "binary":
                positive = flat[1::2]
                labels = list(map(str, pre.binary_labels(positive)))
            else:
                labels = list(map(str, pre.labels_for(out)))
            tensors["label"] = {"name": "label", "datatype": "BYTES", "shape": [rows], "data": labels}
            if pre.task == "binary":
                tensors["probability"] = {"name": "probability", "datatype": "FP32", "shape": [rows], "data": positive}
            shape = [rows, out.shape[1]]
            tensors["probabilities"] = {"name": "probabilities", "datatype": "FP32", "shape": shape, "data": flat}
        outputs = request.outputs
        if result.effects is not None:
            tensors.update(self._explanation(result.effects, tensors.get("label", {}).get("data", [])))
        answer: dict[str, Any] = {
            "model_name": result.model,
            "model_version": str(result.version),
            "outputs": list(tensors.values()) if outputs is None else [tensors[n] for n in outputs],
        }
        if request.id is not NO_ID:
            answer["id"] = request.id
        warnings = request.enc.warnings
        if warnings:
            notes = [f"element {row}: {text}" for row in sorted(warnings) for text in warnings[row]]
            answer["parameters"] = {"warnings": "; ".join(notes)}
        return answer

    def _explanation(self, found: Effects, labels: list[str]) -> dict[str, dict[str, Any]]:
        """`attributions` [N, features] and what they explain: the score, its reference, the class."""
        rows = len(found.score)
        tensors = {
            ATTRIBUTIONS: {
                "name": ATTRIBUTIONS,
                "datatype": "FP32",
                "shape": list(found.effects.shape),
                "data": found.effects.ravel().tolist(),
            }
        }
        for key, values in (("score", found.score), ("reference", found.baseline)):
            name = f"explanation_{key}"
            tensors[name] = {"name": name, "datatype": "FP32", "shape": [rows], "data": values.tolist()}
        if self.pre.task == "multiclass" and self.explainer is not None:
            classes = list(map(str, self.explainer.explained_labels(found, labels)))
            tensors["explanation_class"] = {
                "name": "explanation_class",
                "datatype": "BYTES",
                "shape": [rows],
                "data": classes,
            }
        return tensors


class _Output(msgspec.Struct, gc=False):
    name: str
    parameters: dict[str, Any] | None = None  # `binary_data`, which JSON answers leave aside

    def keys(self) -> int:
        """The keys it was written with (flat parameters): for the count of a body's keys."""
        return 1 if self.parameters is None else 2 + len(self.parameters)


def _single_row_decoder(pre: Preprocess) -> msgspec.json.Decoder[Any]:
    """One-row requests; `Literal` names and datatypes arrive as the same objects (hashes cached)."""
    tensor = msgspec.defstruct(
        "Tensor",
        [
            ("name", Literal[tuple(pre.kinds)]),
            ("datatype", Literal[(*NUMERIC_TYPES, "BYTES")]),
            ("shape", list[int]),
            ("data", tuple[float | int | str | None]),  # exactly one plain value
        ],
        gc=False,
    )
    fields: list[Any] = [
        ("inputs", list[tensor]),  # type: ignore[valid-type]
        ("id", Any, msgspec.UNSET),
        ("outputs", list[_Output] | None, None),
        ("parameters", dict[str, Any] | None, None),
    ]
    return msgspec.json.Decoder(msgspec.defstruct("SingleRowRequest", fields, gc=False))


_NAME, _DATATYPE = operator.attrgetter("name"), operator.attrgetter("datatype")
_SHAPE, _DATA = operator.attrgetter("shape"), operator.attrgetter("data")
LAYOUTS_KEPT = 64


def _layout(pre: Preprocess, names: tuple[Any, ...], datatypes: tuple[Any, ...]) -> tuple[Any, Any, Any] | None:
    """Pickers of the `num` and `cat` values, if every feature is there once with a fitting datatype,
    and the (position, datatype) of each input whose data is typed."""
    kinds = input_kinds(pre)
    at = {name: i for i, name in enumerate(names)}
    if len(at) != len(names) or at.keys() != kinds.keys():
        return None
    for name, datatype in zip(names, datatypes, strict=True):
        if datatype not in datatypes_of(kinds[name]):
            return None
    typed = [(i, datatype) for i, datatype in enumerate(datatypes) if datatype != "BYTES"]
    return _picker([at[f.name] for f in pre.numeric]), _picker([at[f.name] for f in pre.categorical]), typed


def _picker(positions: list[int]) -> Any:
    """A C-speed function: values → the values at these positions, as a list."""
    if len(positions) >= 2:
        get = operator.itemgetter(*positions)
        return lambda values: list(get(values))
    return lambda values: [values[i] for i in positions]


def check_outputs(known: list[str], doc: Any, explained: list[str]) -> list[str] | None:
    """The outputs a request names (None: all), which must be the model's; checked before any work."""
    wanted = doc.get("outputs") if isinstance(doc, dict) else None
    if wanted is None:
        return None
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
        raise bad('"outputs" must be a list of objects with a name')
    return known_outputs(known, [o["name"] for o in wanted], explained) if wanted else None


def known_outputs(known: list[str], names: list[str] | None, explained: list[str]) -> list[str] | None:
    """Output names a request asks for (None or none: all), which must be the model's, or `explained`:
    reasons asked of a bundle without explain.onnx, which the data plane refuses, saying so."""
    if not names:
        return None
    unknown = [name for name in names if name not in known and name not in explained]
    if unknown:
        raise bad(f"unknown output(s) {', '.join(unknown)}; the model gives: {', '.join(known)}")
    twice = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if twice is not None:  # the answer held it twice: a response's outputs are named once each
        raise bad(f"output '{twice}' is asked for twice")
    return names


def output_metadata(pre: Preprocess, explainable: bool = False) -> list[dict[str, Any]]:
    """The output tensors a client gets (`attributions`: each feature's effect, in input order, on request)."""
    if pre.task == "regression":
        outputs = [{"name": "value", "datatype": "FP32", "shape": [-1]}]
    else:
        outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]}]
        if pre.task == "binary":
            outputs.append({"name": "probability", "datatype": "FP32", "shape": [-1]})
        outputs.append({"name": "probabilities", "datatype": "FP32", "shape": [-1, len(pre.labels)]})
    if explainable:
        outputs.append({"name": ATTRIBUTIONS, "datatype": "FP32", "shape": [-1, len(pre.features)]})
        for key in explanation_keys(pre.task, "all"):
            datatype = "BYTES" if key == "class" else "FP32"
            outputs.append({"name": f"explanation_{key}", "datatype": datatype, "shape": [-1]})
    return outputs


def input_kinds(pre: Preprocess) -> dict[str, str]:
    """Each feature's kind as an input: numeric, categorical, or date (a numeric the model reads from text)."""
    return {name: "date" if name in pre.dates else kind for name, kind in pre.kinds.items()}


def input_metadata(pre: Preprocess) -> list[dict[str, Any]]:
    """The input tensors a client sends: one per feature, batch axis -1."""
    kinds = input_kinds(pre)
    return [
        {"name": f.name, "datatype": "FP64" if kinds[f.name] == "numeric" else "BYTES", "shape": [-1]}
        for f in pre.features
    ]
