"""The C decoder of plain /predict bodies (service/protocols/_records.c) against the general path.

Whatever it accepts must give exactly the general path's arrays, ids and warnings; whatever else it
sees (thousands of seeded random variants, every prefix of a body, random byte flips) it must hand
back as None, never crash or raise. No HTTP; the real churn bundle.
"""

from __future__ import annotations

import json
import random
import re

import numpy as np
import orjson
import pytest

from service import bundle
from service.errors import InputError
from service.features import Preprocess
from service.protocols import native
from service.protocols.base import ABSENT, InferenceRequest
from tests.service.conftest import telco_records

pytestmark = pytest.mark.skipif(native.PlainDecoder is None, reason="the C accelerator is not built here")


def _general(pre: Preprocess, body: bytes) -> InferenceRequest | None:
    """The general path's answer, or None where it refuses the body (it then explains why)."""
    try:
        return native.NativeCodec(pre, 1000).from_records(native.records_of(orjson.loads(body), 1000))
    except (InputError, orjson.JSONDecodeError):
        return None


def _check(pre: Preprocess, body: bytes) -> bool:
    """Decode with C; when it accepts, compare with the general path. True when C accepted."""
    decoder = native.plain_decoder(pre)
    decoded = decoder.decode(body, 1000)
    if decoded is None:
        return False
    got = native.NativeCodec(pre, 1000).typed.from_plain(*decoded)
    want = _general(pre, body)
    assert want is not None, body
    np.testing.assert_array_equal(got.enc.num, want.enc.num)
    np.testing.assert_array_equal(got.enc.cat, want.enc.cat)
    assert got.enc.num.dtype == want.enc.num.dtype and got.enc.cat.dtype == want.enc.cat.dtype
    assert got.enc.warnings == want.enc.warnings and got.enc.tally == want.enc.tally and not want.enc.errors
    assert [(c, [v is ABSENT or v for v in vs]) for c, vs in got.ids] == [
        (c, [v is ABSENT or v for v in vs]) for c, vs in want.ids
    ]
    return True


NUMBER_TEXTS = [
    "0", "-0", "1", "12", "-3.5", "29.85", "0.1", "1e2", "1E-2", "-2.5e+3", "123456789012345678",
    "0.30000000000000004", "3.4028234663852886e38", "3.4028235677973366e38", "1e39", "1e-50", "5e-324",
    "70.00000000000001", "1" + "0" * 30, "9007199254740993", "0.1234567890123456789012345",
    "01", "1.", ".5", "+1", "-", "1e", "NaN", "Infinity", "0x10", "1_000", '"12"', "true", "[1]",
]  # fmt: skip
LEVEL_TEXTS = ['"One year"', '"One\\u0020year"', '" One year"', '"one year"', '"Ten-year"', "2", "true", '""']
ID_TEXTS = ['"7590-VHVEG"', '"caf\u00e9-1"', '"a\\"b"', "null", "12", '"\\ud83d\\ude00"', "{}", '"x\u2028y"']


def _record_text(record: dict[str, object], rng: random.Random, pre: Preprocess) -> str:
    """A record as JSON text, with some of the ways a client may write it (or get it wrong)."""
    items = [(k, json.dumps(v)) for k, v in record.items()]
    numeric = {f.name for f in pre.numeric}
    for _ in range(rng.choice([0, 0, 1, 2])):
        i = rng.randrange(len(items))
        name = items[i][0]
        if name in numeric:
            items[i] = (name, rng.choice([*NUMBER_TEXTS, "null"]))
        elif name == "customerID":
            items[i] = (name, rng.choice(ID_TEXTS))
        else:
            items[i] = (name, rng.choice([*LEVEL_TEXTS, "null"]))
    roll = rng.random()
    if roll < 0.05:
        items.pop(rng.randrange(len(items)))  # a field absent
    elif roll < 0.08:
        items.append(rng.choice(items))  # a field twice
    elif roll < 0.11:
        items.append(("extra", "1"))  # a field that is not a feature
    elif roll < 0.14:
        items = [("Tenure" if k == "tenure" else k, v) for k, v in items]  # a near miss
    if rng.random() < 0.3:
        rng.shuffle(items)
    sep = rng.choice([",", ", ", " ,\n", ",\t"])
    colon = rng.choice([":", ": ", " : "])
    return "{" + sep.join(f"{json.dumps(k)}{colon}{v}" for k, v in items) + "}"


def _body(rng: random.Random, pre: Preprocess, records: list[dict[str, object]]) -> bytes:
    picked = rng.sample(records, rng.choice([1, 1, 2, 5, 20]))
    text = '{"records": [' + ",".join(_record_text(r, rng, pre) for r in picked) + "]}"
    if rng.random() < 0.05:
        text = " \n" + text + "\n "
    elif rng.random() < 0.03:
        text = text[:-1] + ', "note": 1}'
    return text.encode()


def test_random_bodies_are_decoded_exactly_or_handed_back(churn_bundle: bundle.BundleRef) -> None:
    pre = churn_bundle.preprocess
    records = telco_records(300, start=100)
    rng = random.Random(20261124)
    accepted = sum(_check(pre, _body(rng, pre, records)) for _ in range(3000))
    assert 300 < accepted < 2900  # NOTE: both sides exercised: plain bodies decoded, the rest handed back


def test_plain_bodies_are_decoded_and_match(churn_bundle: bundle.BundleRef) -> None:
    pre = churn_bundle.preprocess
    records = [r for r in telco_records(120, start=7) if r["TotalCharges"] is not None][:100]
    records[0]["TotalCharges"] = 1e6  # a range warning, as on every path
    records[1]["tenure"], records[1]["Contract"], records[1]["customerID"] = None, None, None
    del records[2]["customerID"]  # an id a record lacks
    for n in (1, 2, 100):
        assert _check(pre, orjson.dumps({"records": records[:n]}))
    fast = native.NativeCodec(pre, 1000).typed
    assert fast is not None
    got = fast.decode(orjson.dumps({"records": records}), 1000)
    assert got is not None and got.enc.num.shape == (100, 4) and got.ids[0][1][2] is ABSENT


def test_limits_and_every_prefix_and_flipped_byte_are_handed_back(churn_bundle: bundle.BundleRef) -> None:
    pre = churn_bundle.preprocess
    decoder = native.plain_decoder(pre)
    body = orjson.dumps({"records": telco_records(2, start=30)})
    assert decoder.decode(body, 2) is not None and decoder.decode(body, 1) is None
    assert decoder.decode(b'{"records": []}', 10) is None and decoder.decode(b'{"records": [{}]}', 10) is None
    assert decoder.decode(bytearray(body), 2) is not None  # any bytes-like body
    for cut in range(len(body)):
        assert decoder.decode(body[:cut], 10) is None
    rng = random.Random(7)
    for _ in range(3000):
        flipped = bytearray(body)
        flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        _check(pre, bytes(flipped))


def test_a_bundle_with_a_level_json_must_escape_gets_no_c_decoder(churn_bundle: bundle.BundleRef) -> None:
    doc = churn_bundle.preprocess.to_json()
    for feature in doc["features"]:
        if feature["kind"] == "categorical":
            feature["vocab"] = [*feature["vocab"], 'say "hi"']
            break
    pre = Preprocess.from_json(doc)
    assert native.plain_decoder(pre) is None and native.NativeCodec(pre, 1000).typed is not None


def test_fields_every_path_ignores_are_skipped_where_plain(churn_bundle: bundle.BundleRef) -> None:
    """A client's extra columns (the target, a note) no longer send the body to a slower path; what
    the C decoder cannot skip exactly (an object, an escape, bytes that are not UTF-8, a top-level key
    twice, `explain`) is handed back."""
    pre = churn_bundle.preprocess
    decoder = native.plain_decoder(pre)
    record = orjson.dumps(telco_records(1, start=5)[0])[1:-1]
    extras = b'"Churn": "No", "score": -1.5e3, "ok": true, "gone": null, "name": "Jos\xc3\xa9", "n": 0, "n": 1'
    for body in [
        b'{"records": [{' + extras + b", " + record + b"}]}",
        b'{"note": "x", "records": [{' + record + b'}], "count": 1}',
    ]:
        assert _check(pre, body), body
    for extra in [b'"e": {"a": 1}', b'"e": [1]', b'"e": "a\\"b"', b'"e": "\xff"', b'"\\u0065": 1', b'"e": 1e999']:
        assert decoder.decode(b'{"records": [{' + extra + b", " + record + b"}]}", 10) is None, extra
    for top in [b'"note": 1, "note": 2, ', b'"explain": 2, ', b'"records": [], ']:
        assert decoder.decode(b"{" + top + b'"records": [{' + record + b"}]}", 10) is None, top
    # a null feature beside a skipped field: is that field the feature, mistyped? The general path says
    nulled = (
        b'{"records": [{'
        + re.sub(rb'"Contract": ?"[^"]*"', b'"Contract": null', record)
        + b', "contract ": "One year"}]}'
    )
    assert decoder.decode(nulled, 10) is None
    warned = native.NativeCodec(pre, 1000).decode(nulled).enc.warnings
    assert "did you mean 'Contract'?" in warned[0][0]
