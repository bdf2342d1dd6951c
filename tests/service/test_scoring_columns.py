"""Arrow columns → model inputs (service/scoring/columns.py): equal to the record path, value for value."""

from __future__ import annotations

from service import bundle
from tests.service.conftest import telco_records


def test_arrow_path_equals_the_record_path_value_for_value(churn_bundle: bundle.BundleRef) -> None:
    """The vectorized encoder must give the record path's arrays, errors and warnings exactly."""
    import numpy as np
    import pyarrow as pa

    from service.scoring.columns import ArrowEncoder

    pre = churn_bundle.preprocess
    base = {k: str(v) for k, v in telco_records(1)[0].items()}
    odd_numbers = [
        " 12 ",
        "1,234.5",
        "1_000",
        "NaN",
        "n/a",
        "",
        "  ",
        "inf",
        "-",
        "1e3",
        "+4",
        ".5",
        ".",
        "٣",
        "lots",
        "1e400",
    ]
    odd_levels = [" Yes", "Yes ", "yes", "", "  ", "Maybe", "None", "Month-to-month", "Yés"]
    records = []
    for i in range(max(len(odd_numbers), len(odd_levels))):
        record = dict(base)
        record["TotalCharges"] = odd_numbers[i % len(odd_numbers)]
        record["tenure"] = odd_numbers[(i + 3) % len(odd_numbers)]
        record["Partner"] = odd_levels[i % len(odd_levels)]
        record["Contract"] = odd_levels[(i + 2) % len(odd_levels)]
        records.append(record)
    table = pa.table({name: pa.array([r[name] for r in records], pa.string()) for name in records[0]})
    fast, exact = ArrowEncoder(pre).encode(table), pre.encode_records(records)
    np.testing.assert_array_equal(fast.num, exact.num)
    np.testing.assert_array_equal(fast.cat, exact.cat)
    assert {r: str(e) for r, e in fast.errors.items()} == {r: str(e) for r, e in exact.errors.items()}
    assert fast.errors and fast.warnings == exact.warnings and fast.warnings


def test_arrow_path_reads_business_values_as_the_record_path(churn_bundle: bundle.BundleRef) -> None:
    """Decimal commas (a column with points takes the exact path), money, dates and case as features.py."""
    import numpy as np
    import pyarrow as pa

    from service.scoring.columns import ArrowEncoder
    from tests.service.test_encoders import business_bundle

    pre = business_bundle(churn_bundle.preprocess)
    base = {k: str(v) for k, v in telco_records(1)[0].items()}
    money = ["29,85", "1.234", "$1,234.50", "(1,200)", "12%", "", "lots", "1.234,5", "7"]
    dates = ["31.01.2024", "2024-01-31", "", "2024-02-30", "12", "01.06.2024 ", "n/a", "30.06.2024", "x"]
    levels = ["YES", " no ", "Yes", "maybe", "", "yes", "NO", "Yés", "No"]
    records = [
        {**base, "MonthlyCharges": m, "TotalCharges": m.replace(".", ""), "tenure": d, "Partner": lv}
        for m, d, lv in zip(money, dates, levels, strict=True)
    ]
    table = pa.table({name: pa.array([r[name] for r in records], pa.string()) for name in records[0]})
    fast, exact = ArrowEncoder(pre).encode(table), pre.encode_records(records)
    np.testing.assert_array_equal(fast.num, exact.num)
    np.testing.assert_array_equal(fast.cat, exact.cat)
    assert {r: str(e) for r, e in fast.errors.items()} == {r: str(e) for r, e in exact.errors.items()}
    assert fast.warnings == exact.warnings
    monthly = [f.name for f in pre.numeric].index("MonthlyCharges")
    # under this bundle's decimal comma `1.234` is a thousands-grouped 1234 and `(1,200)` is -1.2
    assert exact.num[:5, monthly].tolist() == np.array([29.85, 1234, 1234.5, -1.2, 12], np.float32).tolist()
