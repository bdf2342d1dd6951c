"""The encoding contract: raw values → num/cat, missing and unseen handling, errors name the field."""

from __future__ import annotations

import datetime as dt
import math
import re

import numpy as np
import pytest

from service.features import (
    DATE_FORMATS,
    CategoricalFeature,
    Encoded,
    NumericFeature,
    Preprocess,
    encode_categorical,
    near_miss,
    parse_date,
    parse_number,
    shown_format,
)


def make_preprocess() -> Preprocess:
    """A two-feature binary contract built in code."""
    return Preprocess(
        task="binary",
        target="y",
        labels=["no", "yes"],
        positive="yes",
        threshold=0.5,
        features=[
            NumericFeature("charges", 50.0, 10.0, 45.0, 0.0, 100.0),
            CategoricalFeature("plan", ("basic", "gold")),
        ],
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (3, 3.0),
        ("3.5", 3.5),
        (" 7 ", 7.0),
        ("1,234.5", 1234.5),
        ("", math.nan),
        (None, math.nan),
        ("NA", math.nan),
        ("?", math.nan),
        (".", math.nan),  # SAS's and Stata's missing number
        (2.0, 2.0),
        ("$1,234.50", 1234.5),
        ("12.5%", 12.5),
        ("(1,200)", -1200.0),
        ("-€5", -5.0),
        ("1,5", 1.5),  # one comma, not three digits after it: a decimal comma
        ("1.234,5", 1234.5),
        ("1 234,50", 1234.5),
    ],
)
def test_parse_number(raw: object, expected: float) -> None:
    got = parse_number(raw)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


# "2023_01": Python's float() reads 202301 (a period code, not a number)
@pytest.mark.parametrize("raw", ["abc", True, "inf", [1], "1,23,456", "1.2.3,4", "$", "2023_01", "1_000"])
def test_parse_number_rejects(raw: object) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_number(raw)


@pytest.mark.parametrize(
    ("raw", "point", "comma"), [("1,234", 1234.0, 1.234), ("1.234", 1.234, 1234.0), ("0,123", 0.123, 0.123)]
)
def test_the_decimal_mark_decides_only_the_ambiguous_case(raw: str, point: float, comma: float) -> None:
    assert parse_number(raw) == point
    assert parse_number(raw, decimal=",") == comma


def test_case_folded_levels_and_dates_follow_the_bundle() -> None:
    pre = Preprocess.from_json(
        {
            **make_preprocess().to_json(),
            "features": [
                {
                    "name": "start",
                    "kind": "numeric",
                    "mean": 0,
                    "std": 1,
                    "median": 0,
                    "min": 0,
                    "max": 9,
                    "date": {"reference": "2024-01-10T00:00:00", "format": "iso"},
                },
                {"name": "plan", "kind": "categorical", "vocab": ["basic", "Gold"], "match": "casefold"},
            ],
        }
    )
    enc = pre.encode_records([{"start": "2024-01-01", "plan": " GOLD "}, {"start": 3, "plan": "gold"}])
    assert enc.num[0, 0] == 9.0 and enc.cat[:, 0].tolist() == [2, 2]
    assert "expected a date" in str(enc.errors[1])  # a number is not a date: never read as an age


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("2016/01/31 00:47:36", "%Y/%m/%d %H:%M:%S"),  # a database export
        ("1/31/2016 12:47 AM", "%m/%d/%Y %I:%M %p"),  # a US spreadsheet
        ("31.01.2016 00:47:36", "%d.%m.%Y %H:%M:%S"),
        ("31/01/2016 00:47", "%d/%m/%Y %H:%M"),
        ("31-JAN-2016 00:47:36", "%d-%b-%Y %H:%M:%S"),  # Oracle's months
        ("31-1-2016 00:47", "%d-%m-%Y %H:%M"),  # no leading zero: not ISO for its dash at [4]
        ("1-31-2016 00:47", "%m-%d-%Y %H:%M"),  # US order with dashes
        ("31-JAN-16 00:47", "%d-%b-%y %H:%M"),  # Oracle's default, two-digit years
        ("1/31/16 12:47 AM", "%m/%d/%y %I:%M %p"),  # Excel's short US date
    ],
)
def test_a_date_with_a_time_of_day_is_read_in_its_format(text: str, fmt: str) -> None:
    assert fmt in DATE_FORMATS
    assert parse_date(text, fmt) == dt.datetime(2016, 1, 31, 0, 47, 36 if text.count(":") == 2 else 0)
    with pytest.raises(ValueError, match=re.escape("expected a date (") + ".*hh:mm.*got '2016-31-01'"):
        parse_date("2016-31-01", fmt)  # the error names the format as a person reads it


def test_a_four_digit_year_is_read_where_training_saw_two() -> None:
    assert parse_date("12/25/2024", "%m/%d/%y") == parse_date("12/25/24", "%m/%d/%y") == dt.datetime(2024, 12, 25)
    with pytest.raises(ValueError, match="MM/DD/YYYY"):
        parse_date("12/25/24", "%m/%d/%Y")  # the other way the century would be a guess


def test_a_date_format_is_shown_as_a_person_reads_it() -> None:
    assert shown_format("%m/%d/%Y %I:%M %p") == "MM/DD/YYYY hh:mm AM/PM"
    assert shown_format("%d-%b-%Y %H:%M:%S") == "DD-Mon-YYYY hh:mm:ss"
    assert shown_format("iso") == "YYYY-MM-DD"


def test_missing_and_unseen_categories_go_to_index_zero_with_a_warning() -> None:
    pre = make_preprocess()
    enc = pre.encode_records(
        [
            {"charges": 1, "plan": "gold"},
            {"charges": 5, "plan": None},
            {"charges": "2", "plan": "platinum"},
            {"charges": None, "plan": "  basic "},
        ]
    )
    assert enc.cat[:, 0].tolist() == [2, 0, 0, 1]
    assert enc.num[1, 0] == 5 and np.isnan(enc.num[3, 0])
    assert enc.num[2, 0] == 2.0
    assert list(enc.warnings) == [2]
    assert "plan" in enc.warnings[2][0] and "platinum" in enc.warnings[2][0]
    assert not enc.errors


def test_wrong_types_name_record_and_field() -> None:
    pre = make_preprocess()
    enc = pre.encode_records(
        [
            {"charges": 1, "plan": "gold"},
            {"charges": "lots", "plan": "gold"},
            {"charges": 3, "plan": {"a": 1}},
        ]
    )
    assert set(enc.errors) == {1, 2}
    assert (enc.errors[1].row, enc.errors[1].field) == (1, "charges")
    assert str(enc.errors[2]).startswith("record 2, field 'plan':")


def test_numbers_beyond_float32_are_errors_not_infinities() -> None:
    pre = make_preprocess()
    for enc in (
        pre.encode_records([{"charges": 1e39}, {"charges": 10**400}, {"charges": 5}]),
        pre.encode_columns({"charges": [1e39, 10**400, 5]}, 3),
    ):
        assert set(enc.errors) == {0, 1} and enc.errors[0].field == "charges"
        assert "finite" in enc.errors[0].reason and enc.num[2, 0] == 5.0


def test_preprocess_json_round_trip(tmp_path) -> None:
    pre = make_preprocess()
    pre.save(tmp_path / "p.json")
    again = Preprocess.load(tmp_path / "p.json")
    assert again.to_json() == pre.to_json()
    assert again.categorical[0].index_ == {"basic": 1, "gold": 2}


def test_absent_features_that_look_like_a_client_mistake_are_reported() -> None:
    """Absent features are imputed (as null), but never silently when the record shows a typo."""
    pre = make_preprocess()
    enc = pre.encode_records(
        [
            {"charges": 1, "plan": "gold"},
            {"Charges": 1, "plan": "gold"},  # wrong case: charges is absent, and a warning says why
            {"plan": "gold", "note": "x"},  # absent, nothing like it sent: imputed quietly
            {"Charges": 2, "PLAN": "gold"},  # none of the features: nothing to score
            {},
        ]
    )
    assert list(enc.warnings) == [1]
    assert "'Charges' is not a feature" in enc.warnings[1][0] and "did you mean 'charges'" in enc.warnings[1][0]
    assert sorted(enc.errors) == [3, 4]
    assert enc.errors[3].field is None and "none of the model's 2 features" in str(enc.errors[3])
    assert "'Charges'" in str(enc.errors[3]) and str(enc.errors[4]).startswith("record 4:")
    assert np.isnan(enc.num[1, 0]) and np.isnan(enc.num[2, 0])


def test_near_miss_names() -> None:
    names = ["tenure", "MonthlyCharges", "PaymentMethod"]
    assert near_miss("monthly_charges", names) == "MonthlyCharges"
    assert near_miss("Tenure ", names) == "tenure"
    assert near_miss("tenur", names) == "tenure"
    assert near_miss("gender", names) is None


def test_values_outside_the_training_range_are_scored_with_a_warning() -> None:
    pre = make_preprocess()  # charges seen in training: 0 to 100
    records = [{"charges": 100, "plan": "gold"}, {"charges": 100.5}, {"charges": -1}, {"charges": None, "plan": "gold"}]
    enc = pre.encode_records(records)
    assert enc.warnings == {
        1: ["field 'charges': above the largest value seen in training (100)"],
        2: ["field 'charges': below the smallest value seen in training (0)"],
    }
    assert enc.num[1, 0] == 100.5 and not enc.errors
    # one record (its own code path) and the column path say the same
    assert pre.encode_records([records[1]]).warnings == {0: enc.warnings[1]}
    columns = {"charges": [r.get("charges") for r in records], "plan": [r.get("plan") for r in records]}
    assert pre.encode_columns(columns, len(records)).warnings == enc.warnings


def test_a_date_outside_the_training_range_is_named_as_a_date() -> None:
    """A date feature's value is its age in days at the reference: a date after training's latest
    is a small age, and was warned of as 'below the smallest value seen in training (0)', one
    before the earliest as 'above the largest value (2183)' — the direction inverted, in days the
    client never sent. The warning names the dates."""
    import dataclasses

    from service.features import DateParse

    pre = make_preprocess()
    dated = dataclasses.replace(pre.features[0], date=DateParse("2024-06-30T00:00:00"))
    pre = dataclasses.replace(pre, features=[dated, pre.features[1]])  # ages 0 to 100 days
    records = [
        {"charges": "2024-06-01"},
        {"charges": "2025-01-01"},
        {"charges": "2023-01-01"},
        {"charges": "0001-01-01"},
    ]
    enc = pre.encode_records(records)
    late = ["field 'charges': after the latest date seen in training (2024-06-30)"]
    early = ["field 'charges': before the earliest date seen in training (2024-03-22)"]
    assert enc.warnings == {1: late, 2: early, 3: early}
    assert pre.encode_records([records[1]]).warnings == {0: late}  # one record: its own code path
    columns = {"charges": [r["charges"] for r in records], "plan": [None] * len(records)}
    assert pre.encode_columns(columns, len(records)).warnings == enc.warnings
    assert DateParse("2024-06-30T00:00:00").at(0.25) == "2024-06-29 18:00:00"


@pytest.mark.parametrize(
    "record",
    [
        {"charges": 12.5, "plan": "gold"},  # the plain record: its own fast path
        {"charges": 7, "plan": "basic", "extra": [1]},
        {"charges": "12.5", "plan": "gold"},
        {"charges": None, "plan": None},
        {"charges": 3.0, "plan": " gold "},
        {"charges": 3.0, "plan": "platinum"},
        {"charges": 150, "plan": "gold"},
        {"charges": 100.000001, "plan": "gold"},  # above 100, but 100 in float32: no warning
        {"charges": -1e-46, "plan": "gold"},  # below 0, but -0.0 in float32: no warning
        {"charges": 100.01, "plan": "gold"},  # above 100 in float32 too
        {"charges": 1e39, "plan": "gold"},
        {"charges": True, "plan": "gold"},
        {"charges": 2, "plan": ["gold"]},
        {"plan": "gold"},
    ],
)
def test_a_record_alone_encodes_as_it_does_in_a_batch(record: dict[str, object]) -> None:
    pre = make_preprocess()
    batch = pre.encode_records([{"charges": 1, "plan": "basic"}, record])
    alone = pre.encode_records([record])
    np.testing.assert_array_equal(alone.num[0], batch.num[1])
    np.testing.assert_array_equal(alone.cat[0], batch.cat[1])
    assert alone.warnings.get(0) == batch.warnings.get(1)
    if record.get("charges") in (100.000001, -1e-46):
        assert not alone.warnings
    assert str(alone.errors.get(0)).replace("record 0", "record 1") == str(batch.errors.get(1))


def test_a_code_of_digits_matches_without_or_with_leading_zeros_where_no_other_level_clashes() -> None:
    """A business-files audit: `branch_code` trained as `0013` from a CSV was an unseen level on every
    row of the same data from Excel, Parquet or JSON lines, where it is the number 13."""
    feat = CategoricalFeature("branch", ("0013", "0420", "7", "07", "x1"))
    found = {key: feat.code_of(key) for key in ("0013", "13", "13.0", "013", "420", "7", "07", "007", "1", "x01")}
    assert found == {
        "0013": 1, "13": 1, "13.0": 1, "013": 1, "420": 2,
        "7": 3, "07": 4,  # verbatim first
        "007": 0,  # both 7 and 07 are the number 7: which one is meant is a guess
        "1": 0, "x01": 0,
    }  # fmt: skip
    enc = Encoded(num=np.zeros((3, 0), np.float32), cat=np.zeros((3, 1), np.int64))
    assert encode_categorical(feat, [13, 13.0, 420], 3, enc).tolist() == [1, 1, 2] and not enc.warnings
    assert feat.code_of("1" * 5000 + ".0") == 0  # no int() of 5,000 digits (a review: a 500 on /predict)
