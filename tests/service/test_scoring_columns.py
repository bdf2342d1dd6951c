"""Arrow columns → model inputs (service/scoring/columns.py): equal to the record path, value for value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def _telco_text(n: int) -> dict[str, list[str]]:
    """The first n telco rows as the CSV's text cells, column by column."""
    import csv

    from tests.conftest import TELCO

    with TELCO.open(newline="") as fh:
        rows = [row for _, row in zip(range(n), csv.DictReader(fh), strict=False)]
    return {name: [row[name] for row in rows] for name in rows[0]}


def _scored(scorer: Any, table: Any, path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    from service.scoring.local import score_file

    pq.write_table(table, path.with_suffix(".in.parquet"))
    score_file(scorer, path.with_suffix(".in.parquet"), path)
    return pq.read_table(path).to_pylist()


def test_parquet_binary_text_durations_and_decimals_score_and_explain_as_their_text(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """Text as BYTE_ARRAY without a UTF-8 annotation (older writers), a count as a duration, amounts
    as DECIMAL: training reads a Parquet's cells as Arrow writes them as text, so scoring (predictions
    and reason codes) must too; before, binary levels were silently unseen and durations failed."""
    import decimal

    import pyarrow as pa

    from service.scoring.local import Scorer

    text = _telco_text(40)
    typed = {name: pa.array(values) for name, values in text.items()}
    typed["Partner"] = pa.array([v.encode() for v in text["Partner"]], pa.binary())
    typed["Contract"] = pa.array([v.encode() for v in text["Contract"]], pa.large_binary())
    typed["PaymentMethod"] = typed["PaymentMethod"].cast(pa.binary()).dictionary_encode()
    typed["tenure"] = pa.array([int(v) for v in text["tenure"]], pa.int64()).cast(pa.duration("s"))
    typed["MonthlyCharges"] = pa.array([decimal.Decimal(v) for v in text["MonthlyCharges"]], pa.decimal128(10, 2))
    typed["gender"] = pa.array([b"\xff" if i == 3 else v.encode() for i, v in enumerate(text["gender"])], pa.binary())
    scorer = Scorer(churn_bundle, "cpu", explain=19)
    got = _scored(scorer, pa.table(typed), tmp_path / "typed.parquet")
    expected = _scored(scorer, pa.table({k: pa.array(v) for k, v in text.items()}), tmp_path / "text.parquet")
    assert got[3]["error"] == "row 4, field 'gender': not valid UTF-8"  # a row's error, never a crash
    del got[3], expected[3]
    assert [r["error"] for r in got] == [None] * 39
    assert got == expected  # probabilities and every reason's sentence and effect


def test_a_list_feature_column_is_refused_before_any_work(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """A list has no one value per row: the file is refused naming the column, as training refuses it
    (before, every row failed with 'expected a number, got list')."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from service.scoring.local import Scorer, ScoringError, score_file

    text = _telco_text(5)
    table = pa.table(
        {**{k: pa.array(v) for k, v in text.items()}, "tenure": pa.array([[int(v)] for v in text["tenure"]])}
    )
    pq.write_table(table, tmp_path / "in.parquet")
    with pytest.raises(ScoringError, match=r"lists or structs, not values: tenure \(list<"):
        score_file(Scorer(churn_bundle, "cpu"), tmp_path / "in.parquet", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
    # kept, not read: Parquet holds it as it came; CSV cannot, and says which column before any work
    tagged = pa.table({**{k: pa.array(v) for k, v in text.items()}, "tags": pa.array([["a", "b"]] * 5)})
    pq.write_table(tagged, tmp_path / "tagged.parquet")
    summary = score_file(
        Scorer(churn_bundle, "cpu"), tmp_path / "tagged.parquet", tmp_path / "out.parquet", keep_all=True
    )
    assert summary.rows_scored == 5 and pq.read_table(tmp_path / "out.parquet").column("tags").to_pylist()[0] == [
        "a",
        "b",
    ]
    with pytest.raises(ScoringError, match=r"lists or structs, which CSV cannot write: tags \(list<"):
        score_file(Scorer(churn_bundle, "cpu"), tmp_path / "tagged.parquet", tmp_path / "out.csv", keep_all=True)
    assert not (tmp_path / "out.csv").exists()


_WITHOUT_PANDAS = """
import json, sys
from pathlib import Path
class NoPandas:  # a serving install: pandas comes only with the train extra
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoPandas())
import pyarrow as pa
from service.features import Preprocess
from service.scoring.columns import ArrowEncoder
pre = Preprocess.load(Path(sys.argv[1]))
stamps = pa.array([1704462310123456789, 0], pa.int64()).cast(pa.timestamp("ns", "UTC"))
table = pa.table({f.name: pa.array(["1", "1"]) for f in pre.features}).set_column(
    [f.name for f in pre.features].index("tenure"), "tenure", stamps)
enc = ArrowEncoder(pre).encode(table)
print(json.dumps([enc.num[:, [f.name for f in pre.numeric].index("tenure")].tolist(), len(enc.errors)]))
"""


def test_nanosecond_timestamps_read_as_dates_without_pandas(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """A date feature from a timestamp[ns] column (pandas writes them) in a serving install, which has no
    pandas: Arrow's to_pylist refuses sub-microsecond values there, which stopped the whole file."""
    import json
    import subprocess
    import sys

    import pyarrow as pa

    from service.scoring.columns import ArrowEncoder
    from tests.conftest import ROOT
    from tests.service.test_encoders import business_bundle

    pre = business_bundle(churn_bundle.preprocess)  # `tenure` a date
    pre.save(tmp_path / "preprocess.json")
    run = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PANDAS, str(tmp_path / "preprocess.json")],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    table = pa.table({f.name: pa.array(["1", "1"]) for f in pre.features})
    table = table.set_column(
        table.column_names.index("tenure"), "tenure", pa.array(["2024-01-05 13:45:10.123456789", "1970-01-01"])
    )
    text = ArrowEncoder(pre).encode(table)
    tenure = [f.name for f in pre.numeric].index("tenure")
    assert json.loads(run.stdout) == [text.num[:, tenure].tolist(), len(text.errors)]
