"""The request-speed encoder (service/encoders.py) gives exactly what the contract gives
(`Preprocess.encode_records`): arrays, errors, warnings and their tallies. The real churn bundle."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import bundle
from service.encoders import RecordEncoder
from service.features import NOTHING_KNOWN, Encoded, Preprocess
from tests.service.conftest import telco_records

RECORDS = telco_records(40, start=200)
SAME = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", " 12 ", "1,234.5", "n/a", "One year", " Month-to-month", "Fortnightly", "1e39", "x"]),
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _same(a: Encoded, b: Encoded) -> None:
    np.testing.assert_array_equal(a.num, b.num)
    np.testing.assert_array_equal(a.cat, b.cat)
    assert a.num.dtype == b.num.dtype == np.float32 and a.cat.dtype == b.cat.dtype == np.int64
    assert a.num.shape == b.num.shape and a.cat.shape == b.cat.shape
    assert {r: str(e) for r, e in a.errors.items()} == {r: str(e) for r, e in b.errors.items()}
    assert a.warnings == b.warnings and (a.tally or {}) == (b.tally or {})


@pytest.mark.parametrize("n", [1, 2, 40])
def test_real_records_encode_alike(churn_bundle: bundle.BundleRef, n: int) -> None:
    pre = churn_bundle.preprocess
    records = [dict(r) for r in RECORDS[:n]]
    _same(RecordEncoder(pre).encode(records), pre.encode_records(records))


@st.composite
def mutated(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Real records with fields replaced by odd values, dropped, or misspelt."""
    records = [dict(r) for r in draw(st.lists(st.sampled_from(RECORDS), min_size=1, max_size=4))]
    for record in records:
        for name in draw(st.lists(st.sampled_from(list(RECORDS[0])), max_size=3)):
            action = draw(st.sampled_from(["value", "drop", "misspell"]))
            if action == "value":
                record[name] = draw(odd_values)
            elif action == "drop":
                record.pop(name, None)
            elif name in record:
                record[name.upper()] = record.pop(name)
    return records


@SAME
@given(records=mutated())
def test_odd_records_encode_alike(churn_bundle: bundle.BundleRef, records: list[dict[str, Any]]) -> None:
    pre = churn_bundle.preprocess
    _same(RecordEncoder(pre).encode(records), pre.encode_records(records))


@pytest.mark.parametrize(
    "changes",
    [
        {"tenure": 1e39, "MonthlyCharges": "x"},  # a range error and a parse error: the same one is kept
        {"tenure": float("inf"), "MonthlyCharges": "12"},  # text elsewhere in the record
        {"tenure": 10**400, "Contract": [1]},
        {"TotalCharges": True, "tenure": -1e39},
    ],
)
def test_a_record_keeps_the_same_first_error(churn_bundle: bundle.BundleRef, changes: dict[str, Any]) -> None:
    pre = churn_bundle.preprocess
    records = [dict(RECORDS[0]), {**RECORDS[1], **changes}]
    _same(RecordEncoder(pre).encode(records), pre.encode_records(records))


def business_bundle(pre: Preprocess) -> Preprocess:
    """The churn contract as a business file would have trained it: decimal commas, `tenure` a date
    (an age in days), levels matched ignoring case."""
    doc = pre.to_json()
    doc["read"] = {**doc["read"], "decimal": ","}
    for feature in doc["features"]:
        if feature["name"] == "tenure":
            feature["date"] = {"reference": "2024-06-30T00:00:00", "format": "%d.%m.%Y"}
        if feature["kind"] == "categorical":
            feature["match"] = "casefold"
    return Preprocess.from_json(doc)


business_values = st.one_of(
    odd_values,
    st.sampled_from(["2024-01-31", "31.01.2024", "2024-13-01", "$1,234.50", "1.234", "29,85", "(1,200)", "12%"]),
    st.sampled_from(["YES", " no ", "month-TO-month", "ONE YEAR"]),
)


@SAME
@given(records=mutated(), values=st.lists(business_values, min_size=3, max_size=3))
def test_business_records_encode_alike(
    churn_bundle: bundle.BundleRef, records: list[dict[str, Any]], values: list[Any]
) -> None:
    pre = business_bundle(churn_bundle.preprocess)
    for record, name in zip(records * 3, ["tenure", "MonthlyCharges", "Partner"], strict=False):
        record[name] = values.pop()
    _same(RecordEncoder(pre).encode(records), pre.encode_records(records))


@pytest.mark.parametrize("n", [1, 3])
def test_a_record_of_blanks_and_nulls_is_refused_on_every_path(churn_bundle: bundle.BundleRef, n: int) -> None:
    """Every feature null, blank or "n/a": the all-median record's score, whoever it is, was answered
    with no word (only `{}` was refused). Now the record is named; one unseen level is scored with its
    warning, and `{}` keeps its own message."""
    pre = churn_bundle.preprocess
    names = [f.name for f in pre.features]
    numeric = {f.name for f in pre.numeric}  # "n/a" is missing there; a level elsewhere
    blanks = {name: [None, "", " n/a " if name in numeric else " "][i % 3] for i, name in enumerate(names)}
    unseen = {**dict.fromkeys(names), "Contract": "Fortnightly"}
    records = [{**dict(r), **blanks} for r in RECORDS[:n]]  # ids kept: only the features are empty
    for encoded in (RecordEncoder(pre).encode(records), pre.encode_records(records)):
        assert {r: e.reason for r, e in encoded.errors.items()} == dict.fromkeys(range(n), NOTHING_KNOWN)
    for encoded in (RecordEncoder(pre).encode([unseen] * n), pre.encode_records([unseen] * n)):
        assert not encoded.errors and "unseen level 'Fortnightly'" in encoded.warnings[0][0]
    assert "none of the model's 19 features is present" in str(RecordEncoder(pre).encode([{}] * n).errors[0])
    column = {name: [blanks[name]] * n for name in names}
    assert {r: e.reason for r, e in pre.encode_columns(column, n).errors.items()} == dict.fromkeys(
        range(n), NOTHING_KNOWN
    )
