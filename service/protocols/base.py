"""What every codec decodes a body into (`InferenceRequest`) and encodes an answer from (`InferenceResult`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import numpy as np
import orjson

from service.errors import InputError
from service.explain import Effects, Explain, checked_explain
from service.features import Encoded, shown

Headers = Mapping[bytes, bytes]  # lower-case names, as ASGI gives them
ABSENT = object()  # an id column a record does not have
NO_ID = object()  # a request without an id of its own (null is an id a client may send)
INT_RANGE = range(-(2**63), 2**64)  # what JSON encoders echo exactly


@dataclass(slots=True)
class InferenceRequest:
    """A decoded request: model inputs and what the answer passes back (nothing else of the body,
    which is freed while the request waits for its batch, unless reasons quote its values)."""

    enc: Encoded
    ids: list[tuple[str, list[Any]]] = field(default_factory=list)  # id columns, per record
    id: Any = NO_ID  # the request's own id (KServe V2)
    outputs: list[str] | None = None  # the outputs asked for (None: all)
    explain: Explain | None = None  # reasons per record (None: none)
    values: list[dict[str, Any]] | None = None  # the records as sent, when reasons quote them
    levels: dict[str, Any] | None = None  # a field's values as sent, where a level was unseen (for the log)
    request_id: str | None = None  # the client's X-Request-ID (the log's request id)


@dataclass(slots=True)
class InferenceResult:
    """A request's model outputs and the version that gave them."""

    model: str
    version: int
    out: np.ndarray
    request: InferenceRequest
    effects: Effects | None = None  # each feature's effect, when reasons were asked for


class Codec(Protocol):
    """One protocol for one loaded model."""

    @property
    def media_types(self) -> tuple[bytes, ...] | None:
        """The Content-Types it decodes (None: any)."""

    def decode(self, body: bytes, headers: Headers, explain: Explain | None = None) -> InferenceRequest:
        """A body → model inputs; `explain` (from the URL) asks for reasons as the body can."""

    def encode(self, result: InferenceResult) -> dict[str, Any]: ...


def parse_json(raw: bytes, record_fields: frozenset[str] | None = None) -> Any:
    """The body as Python values; msgspec keeps integers beyond 64 bits exact (never a silent float).
    A key given twice in one object is refused (a parser keeps one of the two values silently), but
    for a record's field outside `record_fields` (a field every path ignores, once or twice)."""
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        where = _beyond_float64(raw) if "out of range" in str(exc) else None
        if where:  # msgspec says `$[...][0][...]`: the field, by its path
            raise InputError("invalid", f"a number beyond float64's range at {where}") from None
        raise InputError("malformed", f"malformed JSON: {exc}") from None
    except RecursionError:
        raise InputError("malformed", "malformed JSON: nested too deeply") from None
    if maybe_twice(raw, doc):
        refuse_keys_twice(raw, record_fields)
    return doc


class _EveryField(frozenset[str]):
    def __contains__(self, key: object) -> bool:
        return True


EVERY_FIELD = _EveryField()  # as `record_fields`: every field of a record counts (feedback: ids and outcome)


def colons(raw: bytes) -> int:
    """One per key in a JSON text, and any inside strings: more than its keys could mean a key twice."""
    if len(raw) < 4096:
        return raw.count(b":")
    return int(np.count_nonzero(np.frombuffer(raw, np.uint8) == ord(":")))  # 7x bytes.count on large bodies


def maybe_twice(raw: bytes, doc: Any) -> bool:
    """Whether a key may appear twice in the text `doc` was decoded from. Every key is followed by a
    colon and a kept key was counted once: more colons than keys means a key twice or a colon inside
    a string, which the second count (strings' colons) tells apart; only then the exact search."""
    found = colons(raw)
    if found <= _quick_keys(doc):
        return False
    if b"\\u003" in raw.lower():  # an escaped colon reads as one but is none in the text: no count then
        return True
    keys, inside = _keys_and_colons(doc)
    return found - inside > keys


def _quick_keys(doc: Any) -> int:
    """A count of the keys `doc` holds, exact for the usual bodies, never more than there are."""
    if type(doc) is not dict:
        return 0
    n = len(doc)
    for value in doc.values():
        if type(value) is dict:
            n += len(value)
        elif type(value) is list and all(type(item) is dict for item in value):  # records
            n += sum(map(len, value))
    return n


def _keys_and_colons(doc: Any) -> tuple[int, int]:
    """Every key, and the colons inside every key and string, anywhere in `doc`."""
    keys = inside = 0
    stack = [doc]
    while stack:
        value = stack.pop()
        if type(value) is dict:
            keys += len(value)
            inside += sum(key.count(":") for key in value)
            stack.extend(value.values())
        elif type(value) is list:
            stack.extend(value)
        elif type(value) is str:
            inside += value.count(":")
    return keys, inside


JsonPath = tuple[str | int, ...]


def _walk(doc: Any) -> Iterator[tuple[JsonPath, Any]]:
    """Every value of a decoded JSON document with its path (keys and indexes), in document order."""
    stack: list[tuple[JsonPath, Any]] = [((), doc)]
    while stack:
        path, value = stack.pop()
        yield path, value
        if isinstance(value, dict):
            stack.extend(((*path, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(value))))


def json_path(path: JsonPath) -> str:
    """`$.records[0].tenure`: how an error names where in the body a value is."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


class _Twice(dict[str, Any]):
    """An object whose `twice` keys appeared more than once."""

    twice: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    twice = _Twice(obj)
    twice.twice = []
    for key, _ in pairs:
        if key in seen and key not in twice.twice:
            twice.twice.append(key)
        seen.add(key)
    return twice


def keys_twice(raw: bytes) -> list[tuple[JsonPath, str]]:
    """Each key given twice in one object of a JSON text, with the path of that object (`()`: the root)."""
    try:
        doc = json.loads(raw, object_pairs_hook=_pairs)
    except RecursionError:
        raise InputError("malformed", "malformed JSON: nested too deeply") from None
    return [(path, key) for path, value in _walk(doc) for key in getattr(value, "twice", [])]


def refuse_keys_twice(raw: bytes, record_fields: frozenset[str] | None) -> None:
    """The error naming a key given twice (a record's field by record), if there is one that counts:
    with `record_fields`, an object in a top-level list (`$.records[3]`) is a record, and a field of
    it outside them is ignored, once or twice."""
    for path, key in keys_twice(raw):
        inside = record_fields is not None and len(path) >= 2 and isinstance(path[1], int)
        if inside and (key if len(path) == 2 else path[2]) not in record_fields:  # type: ignore[operator]
            continue  # in a field no path reads
        record = inside and len(path) == 2
        where = f"record {path[1]}" if record else json_path(path)
        raise InputError(
            "invalid",
            f"{where}: field {shown(key)} is given twice: which value is meant is a guess; send it once",
            [{"record": path[1] if record else None, "field": key, "message": "given twice"}],
        )


def _beyond_float64(raw: bytes) -> str | None:
    """The JSON path (`$.records[0].tenure`) of the first number too large for a float64, which
    Python's own parser reads as inf (only on this error's path: it is slower). Integers are read as
    floats: as ints, past 4,300 digits Python refuses them and no path was named."""
    try:
        doc = json.loads(raw, parse_int=float)
    except (ValueError, RecursionError):
        return None
    return next((json_path(path) for path, value in _walk(doc) if isinstance(value, float) and math.isinf(value)), None)


def checked(enc: Encoded) -> Encoded:
    """Encoded rows, or the error naming each value that could not be used."""
    if enc.errors:
        errors = [enc.errors[row] for row in sorted(enc.errors)]
        details = [{"record": e.row, "field": e.field, "message": e.reason} for e in errors[:100]]
        raise InputError("invalid", str(errors[0]), details)
    return enc


def checked_ids(ids: list[tuple[str, list[Any]]]) -> list[tuple[str, list[Any]]]:
    """The id values, or the error naming the first that cannot be echoed exactly."""
    for col, values in ids:
        if all(type(v) is str for v in values):  # the usual ids: nothing to check
            continue
        for row, value in enumerate(values):
            problem = unechoable(value)
            if problem:
                detail = {"record": row, "field": col, "message": problem}
                raise InputError("invalid", f"record {row}, field '{col}': {problem}", [detail])
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


def unseen_levels(enc: Encoded, column: Callable[[str], Any]) -> dict[str, Any] | None:
    """The values as sent of each field where a level the model never saw was scored as missing
    (the prediction log keeps the level); None, the usual case, when there was none."""
    if not enc.tally:
        return None
    fields = [name for name, kind in enc.tally if kind == "unseen_level"]
    return {name: column(name) for name in fields} or None


def explain_of(value: Any, where: str = '"explain"') -> Explain | None:
    """A request's `explain` value, or the error naming it."""
    try:
        return checked_explain(value, where)
    except ValueError as exc:
        raise InputError("invalid", str(exc)) from None


def media_type(headers: Headers) -> bytes:
    """The Content-Type without its parameters, lower case."""
    value = headers.get(b"content-type", b"")
    return value.split(b";")[0].strip().lower()
