"""The typed decoder of /predict bodies (msgspec) gives exactly what the general path gives, and
hands everything unusual to the general path (no HTTP; the real churn bundle)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service import bundle
from service.errors import InputError
from service.features import Preprocess
from service.protocols.base import ABSENT, InferenceRequest
from service.protocols.native import NativeCodec, TypedRecords, records_of
from tests.service.conftest import telco_records


def _general(pre: Preprocess, body: bytes) -> InferenceRequest:
    return NativeCodec(pre, 1000).from_records(records_of(orjson.loads(body), 1000))


def typed_records(pre: Preprocess) -> TypedRecords | None:
    return NativeCodec(pre, 1000).typed


def _same(a: InferenceRequest, b: InferenceRequest) -> None:
    np.testing.assert_array_equal(a.enc.num, b.enc.num)
    np.testing.assert_array_equal(a.enc.cat, b.enc.cat)
    assert a.enc.num.dtype == b.enc.num.dtype and a.enc.cat.dtype == b.enc.cat.dtype
    assert a.enc.warnings == b.enc.warnings and a.enc.tally == b.enc.tally
    assert [(c, [v is ABSENT or v for v in vs]) for c, vs in a.ids] == [
        (c, [v is ABSENT or v for v in vs]) for c, vs in b.ids
    ]


@pytest.mark.parametrize("n", [1, 7, 100])
def test_plain_bodies_take_the_typed_path_and_match_the_general_one(churn_bundle: bundle.BundleRef, n: int) -> None:
    pre = churn_bundle.preprocess
    records = [r for r in telco_records(n + 20, start=40) if r["TotalCharges"] is not None][:n]
    records[0]["TotalCharges"] = 1e6  # NOTE: outside the training range: a warning on both paths
    if n > 1:
        records[1]["tenure"], records[1]["Contract"] = None, None  # nulls are missing on both paths
        del records[-1]["customerID"]  # an id a record lacks
    body = orjson.dumps({"records": records, "note": "top-level extras are ignored"})
    fast = typed_records(pre)
    assert fast is not None
    got = fast.decode(body, 1000)
    assert got is not None, "a plain body must take the typed path"
    _same(got, _general(pre, body))
    assert got.enc.warnings[0] and "TotalCharges" in got.enc.warnings[0][0]


def _variant(change: dict[str, object] | None = None, drop: str | None = None) -> bytes:
    record = dict(telco_records(1, start=3)[0])
    record.update(change or {})
    if drop:
        del record[drop]
    return orjson.dumps({"records": [record]})


@pytest.mark.parametrize(
    "body",
    [
        _variant(drop="tenure"),  # absent: imputed, and maybe a "did you mean" warning
        _variant({"tenure": "12"}),  # a numeric string
        _variant({"tenure": True}),  # a wrong type (an error on the general path)
        _variant({"Contract": " One year"}),  # padded
        _variant({"Contract": "Fortnightly"}),  # unseen: warned
        _variant({"Contract": 2}),  # a number for a category
        _variant({"tenure": "BIG"}).replace(b'"BIG"', b"1" + b"0" * 400),  # beyond any float
        b'{"records": []}',
        b'{"records": [1]}',
        b'{"records": {"a": 1}}',
        b'{"records": [{"tenure": NaN}]}',
        b"[]",
        b"{",
    ],
)
def test_everything_unusual_goes_to_the_general_path(churn_bundle: bundle.BundleRef, body: bytes) -> None:
    fast = typed_records(churn_bundle.preprocess)
    assert fast is not None and fast.decode(body, 1000) is None


def test_too_many_records_go_to_the_general_path(churn_bundle: bundle.BundleRef) -> None:
    fast = typed_records(churn_bundle.preprocess)
    body = orjson.dumps({"records": telco_records(3, start=10)})
    assert fast is not None and fast.decode(body, 2) is None and fast.decode(body, 3) is not None


def test_a_value_beyond_float32_is_the_same_422_on_both_paths(churn_bundle: bundle.BundleRef) -> None:
    pre = churn_bundle.preprocess
    body = _variant({"MonthlyCharges": 1e39})
    fast = typed_records(pre)
    assert fast is not None
    with pytest.raises(InputError) as typed_error:
        fast.decode(body, 1000)
    with pytest.raises(InputError) as general_error:
        _general(pre, body)
    assert typed_error.value.to_json() == general_error.value.to_json()
    assert typed_error.value.details[0]["field"] == "MonthlyCharges"
