"""Schema inference, target handling and bad inputs, on the real data sets and small built CSVs."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import GERMAN, TELCO, quick_config, write_csv
from training import data as D


def _prepare(path: Path, target: str, tmp_path: Path, **kw: object):
    from training.pipeline import prepare_data

    return prepare_data(quick_config(path, target, tmp_path, **kw), say=lambda _: None)


def test_telco_schema_blank_numeric_and_identifier(tmp_path: Path) -> None:
    prep = _prepare(TELCO, "Churn", tmp_path)
    assert "TotalCharges" in prep.schema.numeric  # 11 blank strings, still numeric
    assert "customerID" in prep.schema.id_columns
    assert "customerID" not in prep.schema.features
    assert set(prep.schema.categorical) >= {"Contract", "PaymentMethod", "gender"}
    total = prep.schema.numeric.index("TotalCharges")
    assert np.isnan(prep.enc.num[:, total]).sum() == 11
    assert prep.target.labels == ["No", "Yes"] and prep.pre.positive == "Yes"


def test_german_positive_class_is_bad(tmp_path: Path) -> None:
    prep = _prepare(GERMAN, "creditability", tmp_path)
    assert prep.pre.task == "binary"
    assert prep.pre.labels == ["good", "bad"]
    assert prep.target.y.mean() == pytest.approx(0.3)


def test_german_credit_coded_1_good_2_bad_takes_the_rarer_2_as_positive(tmp_path: Path) -> None:
    """The UCI file codes creditability 1 = good, 2 = bad: `1` is a flag's positive only against `0`."""
    df = pd.read_csv(GERMAN)
    df["creditability"] = df["creditability"].map({"good": 1, "bad": 2})
    df.to_csv(tmp_path / "coded.csv", index=False)
    prep = _prepare(tmp_path / "coded.csv", "creditability", tmp_path)
    assert prep.pre.labels == [1, 2] and prep.pre.positive == 2 and prep.target.y.mean() == pytest.approx(0.3)
    df["creditability"] -= 1  # 0 = good, 1 = bad: a flag, 1 its positive
    df.to_csv(tmp_path / "flag.csv", index=False)
    assert _prepare(tmp_path / "flag.csv", "creditability", tmp_path).pre.positive == 1


def test_a_binary_target_with_a_few_stray_values_is_said(tmp_path: Path) -> None:
    df = pd.read_csv(TELCO).head(1500)
    df.loc[[3, 90, 400, 777, 1200], "Churn"] = "Unknown"
    df.to_csv(tmp_path / "stray.csv", index=False)
    prep = _prepare(tmp_path / "stray.csv", "Churn", tmp_path)
    assert prep.pre.task == "multiclass"
    (warning,) = prep.schema.warnings
    assert "target 'Churn': two classes and a few rows of 'Unknown' (5 rows)" in warning
    assert not _prepare(TELCO, "Contract", tmp_path).schema.warnings  # three real classes: nothing to say


def test_positive_override(tmp_path: Path) -> None:
    prep = _prepare(GERMAN, "creditability", tmp_path, positive="good")
    assert prep.pre.labels == ["bad", "good"]
    with pytest.raises(D.DataError, match="not a target class"):
        _prepare(GERMAN, "creditability", tmp_path, positive="excellent")


def test_task_auto_regression_and_multiclass(tmp_path: Path) -> None:
    reg = _prepare(GERMAN, "credit_amount", tmp_path)
    assert reg.pre.task == "regression" and reg.pre.target_std > 0
    multi = _prepare(GERMAN, "housing", tmp_path)
    assert multi.pre.task == "multiclass" and len(multi.pre.labels) == 3


def _messy_rows(n: int, seed: int = 0) -> list[list[object]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        plan = rng.choice(["basic", "premium", "gold"])
        padded = rng.choice([plan, f" {plan}", f"{plan}  "])  # stray whitespace in levels
        charge = "" if i % 10 == 0 else f"{rng.uniform(10, 100):.2f}"  # blanks in a numeric
        rows.append([f"C{i:05d}", i + 1, padded, charge, "same", rng.choice(["yes", "no"])])
    return rows


def test_whitespace_levels_blank_numbers_ids_constants(tmp_path: Path) -> None:
    header = ["customer", "RowNumber", "plan", "charges", "region", "churned"]
    path = write_csv(tmp_path / "messy.csv", header, _messy_rows(200))
    prep = _prepare(path, "churned", tmp_path)
    plan = next(f for f in prep.pre.categorical if f.name == "plan")
    assert plan.vocab_ == ("basic", "gold", "premium")
    assert prep.schema.numeric == ["charges"]
    assert prep.schema.id_columns == ["customer", "RowNumber"]
    assert prep.schema.dropped["region"] == "constant"
    assert prep.pre.positive == "yes"


@pytest.mark.parametrize("name", ["rownames", "rowid", "ROWNUM", "OBJECTID"])
def test_r_row_names_written_as_a_column_are_an_identifier(tmp_path: Path, name: str) -> None:
    """R data packages export row names as a `rownames` column (1..n), databases as `rowid`: in a file
    sorted by the target it alone predicts the target, and it is no feature anywhere (Mroz, sorted by `work`)."""
    rows = [[i + 1, round(random.Random(i).uniform(1, 9), 2), "yes" if i < 150 else "no"] for i in range(300)]
    prep = _prepare(write_csv(tmp_path / "sorted.csv", [name, "hours", "work"], rows), "work", tmp_path)
    assert prep.schema.id_columns == [name] and prep.schema.numeric == ["hours"]
    assert not prep.schema.warnings  # no leakage warning: it never reaches the model


def test_a_repeating_integer_id_is_a_category_not_an_amount(tmp_path: Path) -> None:
    """A household's purchases: household 17 is no more than 16, so each id is a level; a unique
    integer id is still an identifier; a repeating `…no` or `…nr` stays a number (`week_nr` is
    ordinal), and so does an id written `17.0` (scoring matches levels as text: 17 would not match)."""
    rng = random.Random(0)
    header = ["order_id", "household_id", "store_no", "week_nr", "visit_id", "price", "brand"]
    rows = [
        [i, 1 + i % 40, rng.randint(1, 5), i % 52, f"{i % 30}.0", round(rng.uniform(1, 3), 2), rng.choice("abc")]
        for i in range(400)
    ]
    for row in rows[::7]:
        row[1] = "NA"  # a missing spelling, not a digit: the rest are still digits
    path = write_csv(tmp_path / "panel.csv", header, rows)
    prep = _prepare(path, "brand", tmp_path)
    assert prep.schema.id_columns == ["order_id"]
    assert prep.schema.numeric == ["store_no", "week_nr", "visit_id", "price"]
    assert prep.schema.categorical == ["household_id"]
    row = next(r for r in prep.schema.table if r["column"] == "household_id")
    assert "an id's integers, repeating" in row["why"]
    # what scoring sends: a JSON number or text name the same level, and so does `17.0` (a float column
    # with gaps, as pandas writes it); an id never seen is the unseen level, with a warning
    import pyarrow as pa

    from service.scoring.columns import ArrowEncoder

    sent = [17, 17.0, "17", "17.0", 41]
    enc = prep.pre.encode_records(
        [{"household_id": v, "store_no": 1, "week_nr": 1, "visit_id": 1, "price": 2.0} for v in sent]
    )
    j = [f.name for f in prep.pre.categorical].index("household_id")
    assert len(set(enc.cat[:4, j])) == 1 and enc.cat[0, j] > 0 and enc.cat[4, j] == 0
    assert list(enc.warnings) == [4]
    columns = {"household_id": ["17", "17.0", "41"], "store_no": ["1"] * 3, "week_nr": ["1"] * 3}
    file = ArrowEncoder(prep.pre).encode(pa.table({**columns, "visit_id": ["1"] * 3, "price": ["2"] * 3}))
    assert file.cat[:, j].tolist() == [enc.cat[0, j], enc.cat[0, j], 0] and list(file.warnings) == [2]


def test_sas_dots_are_missing_numbers_and_an_empty_column_is_left_out(tmp_path: Path) -> None:
    """SAS and Stata write a missing number as `.` (medicaldata `opt`: 22 lab values were read as
    identifiers); a column never filled (tidyr `billboard`'s weeks 66-76) is left out as a constant is,
    with its reason, where it stopped the run."""
    rng = random.Random(0)
    rows = [
        [f"{rng.uniform(1, 9):.3f}" if i % 9 else ".", "", rng.choice("ab"), rng.choice(["yes", "no"])]
        for i in range(200)
    ]
    prep = _prepare(write_csv(tmp_path / "sas.csv", ["lab", "week_66", "site", "y"], rows), "y", tmp_path)
    assert prep.schema.numeric == ["lab"]
    assert prep.schema.dropped == {"week_66": "no values (all missing)"}
    assert {"column": "week_66", "type": "left out", "why": "no values (all missing)"} in prep.schema.table
    lab = [f.name for f in prep.pre.numeric].index("lab")
    enc = prep.pre.encode_records([{"lab": ".", "site": "a"}, {"lab": "2.5", "site": "a"}])
    assert np.isnan(enc.num[0, lab]) and enc.num[1, lab] == 2.5 and not enc.errors


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_columns_without_a_header_name_are_left_out(tmp_path: Path, suffix: str) -> None:
    """`df.to_csv()`'s index (a blank first header cell) and a spreadsheet's trailing empty columns
    (`,,` at each line's end): left out by name, where two blanks were refused as one name twice."""
    import pandas as pd

    rng = random.Random(0)
    rows = [[i, rng.randint(18, 80), rng.choice("abc"), rng.choice(["yes", "no"]), "", ""] for i in range(200)]
    path = tmp_path / f"export{suffix}"
    if suffix == ".csv":
        lines = [", age,plan,y, ,", *(",".join(map(str, row)) for row in rows)]  # " ": blank too
        path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    else:
        pd.DataFrame(rows, columns=["", "age", "plan", "y", " ", ""]).to_excel(path, index=False)
    prep = _prepare(path, "y", tmp_path)
    assert prep.schema.features == ["age", "plan"]
    # the sheet's last column, blank to the end, is outside its used area: never read
    assert sorted(prep.schema.dropped) == ["Unnamed: 0", "Unnamed: 4", "Unnamed: 5"][: 3 if suffix == ".csv" else 2]
    assert all(why.startswith("no name in the header") for why in prep.schema.dropped.values())
    # the written index has values (name it to use it); the empty columns have none
    assert prep.schema.dropped["Unnamed: 0"].endswith("name it to use it")
    assert "no values" in prep.schema.dropped["Unnamed: 4"]


_NOTE = '"' + "a note\n" * 1500 + '"'  # 10 kB over many lines: 20 such rows are past the scorer's first read


@pytest.mark.parametrize(
    ("text", "columns"),
    [
        ("a,b,y\n1,2,0,", ["a", "b", "y", ""]),  # one row, a trailing delimiter, no final line break
        ("a,b,y\r\n" + "".join(f"{i},1,{i % 2},\r\n" for i in range(30)), ["a", "b", "y", ""]),
        ("id,note,y\n" + "".join(f"{i},{_NOTE},{i % 2},\n" for i in range(40)), ["id", "note", "y", ""]),
        ("g,y\n" + "".join(f'"{i}","m",{i % 2}\n' for i in range(30)), ["", "g", "y"]),  # R's row names
        ("a,b,y\n" + "".join(f"{i},1,{i % 2}\n" for i in range(30)) + "\n\n", ["a", "b", "y"]),
        ("Sales report\nx,y\n" + "".join(f"{i},{i % 2}\n" for i in range(30)), ["Sales report"]),  # a title
        ("a,b,y,\n" + "".join(f"{i},1,{i % 2}\n" for i in range(30)), ["a", "b", "y"]),  # the header's own delimiter
    ],
)
def test_training_and_the_scorer_read_a_header_alike(tmp_path: Path, text: str, columns: list[str]) -> None:
    """Where a header is one field short of its rows, both readers name the rows' fields alike (the
    scorer leaves an unnamed one blank, training calls it `Unnamed: N`); a title above the header is
    refused by training, and the scorer finds none of the model's columns."""
    from service.scoring.files import open_source

    path = tmp_path / "export.csv"
    path.write_bytes(text.encode())
    source = open_source(path)
    scored = list(source.columns)
    source.close()
    assert scored == columns
    if columns == ["Sales report"]:
        with pytest.raises(D.DataError, match=r"line 1 has 1 field\(s\) but the lines below it have 2 \(from line 2\)"):
            D.read_csv(path)
        return
    frame = D.read_csv(path)
    assert list(frame.columns) == [name or f"Unnamed: {i}" for i, name in enumerate(columns)]
    if "y" in columns and "note" not in columns:  # the values under their names, not shifted by one
        assert frame["y"].tolist()[:3] == ["0", "1", "0"][: len(frame)]


def test_a_title_above_a_sheets_table_is_refused_by_training_and_the_scorer_alike(tmp_path: Path) -> None:
    """A report's title row (and a blank one) above the header: the header would be the title."""
    import pandas as pd

    from service.scoring.files import ScoringError, open_source

    path = tmp_path / "report.xlsx"
    with pd.ExcelWriter(path) as sheet:
        pd.DataFrame([["Churn report, November"]]).to_excel(sheet, index=False, header=False)
        pd.DataFrame([[i, i % 7, ["yes", "no"][i % 2]] for i in range(40)], columns=["id", "tenure", "y"]).to_excel(
            sheet, index=False, startrow=2
        )
    said = "first filled row has 1 filled cell(s) but the table below it has 3 (from 2 row(s) further down)"
    with pytest.raises(D.DataError, match=re.escape(said)):
        D.read_csv(path)
    with pytest.raises(ScoringError, match=re.escape(said)):
        open_source(path)


def test_json_lines_with_numbers_and_text_in_one_column_train_and_a_broken_line_is_named(tmp_path: Path) -> None:
    """Arrow refuses a JSON-lines column that holds numbers and text: its values are read as their text
    (a CSV's cells); a line that is no JSON object stops training by its number, as a broken CSV row does."""
    import json

    rows = [{"id": i, "tenure": i % 7, "plan": "abc"[i % 3], "y": ["yes", "no"][i % 2]} for i in range(60)]
    rows[5]["tenure"], rows[9]["tenure"], rows[12]["plan"] = " ", "3.0", 2  # blank, text, a number
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = D.read_csv(path)
    assert df.shape == (60, 4) and df.loc[5, "tenure"] == " " and df.loc[9, "tenure"] == "3.0"
    assert df.loc[12, "plan"] == "2" and df.loc[6, "tenure"] == "6"
    prep = _prepare(path, "y", tmp_path)
    assert "tenure" in prep.schema.numeric and np.isnan(prep.enc.num[5, prep.schema.numeric.index("tenure")])
    twice = path.read_text() + '{"id": 60, "tenure": 1, "tenure": 2, "plan": "a", "y": "no"}\n'
    path.write_text(twice)
    with pytest.raises(D.DataError, match=r"line 61: field 'tenure' is given twice"):
        D.read_csv(path)
    path.write_text(twice.rsplit("{", 1)[0] + '{"id": 60, "tenure": \n')
    with pytest.raises(D.DataError, match=r"line 61 is not a JSON object: .*\(1 such line\(s\)\)"):
        D.read_csv(path)


@pytest.mark.parametrize("suffix", [".xlsx", ".parquet"])
def test_a_name_given_twice_in_a_typed_file_is_refused_by_name(tmp_path: Path, suffix: str) -> None:
    """As in a CSV: which of two `tenure` columns a record means is a guess (pandas and Arrow keep both)."""
    import pandas as pd

    frame = pd.DataFrame(
        [[i, i % 7, i % 5, ["yes", "no"][i % 2]] for i in range(60)], columns=["id", "tenure", "tenure ", "y"]
    )
    path = tmp_path / f"twice{suffix}"
    frame.to_excel(path, index=False) if suffix == ".xlsx" else frame.to_parquet(path, index=False)
    with pytest.raises(D.DataError, match=re.escape(f"column(s) named more than once in the header of {path}: tenure")):
        _prepare(path, "y", tmp_path)


def test_rows_with_missing_target_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = _messy_rows(120)
    for row in rows[:7]:
        row[-1] = ""
    path = write_csv(tmp_path / "t.csv", ["customer", "RowNumber", "plan", "charges", "region", "y"], rows)
    prep = _prepare(path, "y", tmp_path)
    assert prep.target.dropped_missing == 7
    assert len(prep.target.y) == 113
    # a bad value is named by its row in the file, counted from 1 as `tabserve score` counts them,
    # not by its place among the rows kept
    rows[10][3] = "1e300"
    path = write_csv(tmp_path / "t.csv", ["customer", "RowNumber", "plan", "charges", "region", "y"], rows)
    with pytest.raises(D.DataError, match=r"^row 11, field 'charges': expected a finite number within float32"):
        _prepare(path, "y", tmp_path)


def test_a_target_written_1_and_1_0_is_one_class(tmp_path: Path) -> None:
    """Two tools exported the same 0/1 outcome (`1`, `1.0`): two classes, not four."""
    df = pd.read_csv(TELCO).head(600)
    df["Churn"] = [f"{int(v == 'Yes')}{'.0' if i % 3 == 0 else ''}" for i, v in enumerate(df["Churn"])]
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    prep = _prepare(path, "Churn", tmp_path)
    assert prep.target.task == "binary" and prep.target.labels == [0, 1]
    assert prep.target.merged == {"0.0": "0", "1.0": "1"}
    assert np.array_equal(prep.target.y, (pd.read_csv(TELCO).head(600)["Churn"] == "Yes").to_numpy(int))
    why = next(row["why"] for row in prep.schema.table if row["column"] == "Churn")
    assert "labels written two ways merged: '0.0'→'0', '1.0'→'1'" in why


def test_a_field_filled_in_only_after_the_outcome_is_called_a_leak(tmp_path: Path) -> None:
    """Blank unless the customer churned (days since cancelling): the blanks tell the target; and a
    number that alone tells a multiclass target apart is a leak too."""
    rng = np.random.default_rng(0)
    df = pd.read_csv(TELCO).head(1500)
    df["days_since_cancel"] = np.where(df["Churn"] == "Yes", rng.integers(1, 60, len(df)), np.nan)
    path = tmp_path / "leak.csv"
    df.to_csv(path, index=False)
    warnings = _prepare(path, "Churn", tmp_path).schema.warnings
    assert [w.split("'")[1] for w in warnings] == ["days_since_cancel"] and "AUC 1.000" in warnings[0]
    df = df.drop(columns="days_since_cancel")
    df["plan_fee"] = df["Contract"].map({"Month-to-month": 10, "One year": 20, "Two year": 30}) + rng.random(len(df))
    df.to_csv(path, index=False)
    warnings = _prepare(path, "Contract", tmp_path).schema.warnings
    assert [w.split("'")[1] for w in warnings] == ["plan_fee"] and "(purity 0.99" in warnings[0]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a value past float32 is refused, not warned about on the way
def test_a_regression_target_restated_is_called_a_leak(tmp_path: Path) -> None:
    """The target's logarithm (its order, not its line) and a total's parts (neither alone close to it)
    are leaks; telco's own columns are not, for any of its numeric targets."""
    df = pd.read_csv(TELCO).head(1500)
    total = pd.to_numeric(df["TotalCharges"], errors="coerce")
    logged = df.assign(log_total=np.log(total).round(6))
    path = tmp_path / "t.csv"
    logged.to_csv(path, index=False)
    warnings = _prepare(path, "TotalCharges", tmp_path).schema.warnings
    assert [w.split("'")[1] for w in warnings] == ["log_total"] and "|rank correlation| 1.000" in warnings[0]
    share = np.random.default_rng(0).uniform(0.3, 0.7, len(df))
    parts = df.assign(base_fee=(df["MonthlyCharges"] * share).round(2))
    parts["extras_fee"] = (parts["MonthlyCharges"] - parts["base_fee"]).round(2)
    assert abs(np.corrcoef(parts["base_fee"], parts["MonthlyCharges"])[0, 1]) < 0.9  # neither part alone
    parts.to_csv(path, index=False)
    prep = _prepare(path, "MonthlyCharges", tmp_path)
    assert len(prep.schema.warnings) == 1
    assert prep.schema.warnings[0].startswith("columns 'base_fee' + 'extras_fee' together restate MonthlyCharges")
    assert "--drop base_fee,extras_fee" in prep.schema.warnings[0]
    marked = {row["column"] for row in prep.schema.table if row.get("warning")}
    assert marked == {"base_fee", "extras_fee"}
    for target in ("MonthlyCharges", "TotalCharges", "tenure"):
        assert not _prepare(TELCO, target, tmp_path).schema.warnings, target
    # a placeholder near float64's limit overflows any sum: the leak checks pass it by (they crashed in
    # an SVD) and the row is refused by name, as any value past float32's range is
    df.assign(placeholder=np.where(np.arange(len(df)) % 2, 1e306, -1e306)).to_csv(path, index=False)
    with pytest.raises(D.DataError, match="row 1, field 'placeholder': expected a finite number within float32"):
        _prepare(path, "MonthlyCharges", tmp_path)


def test_a_group_column_keeps_each_group_on_one_side_of_every_split(tmp_path: Path) -> None:
    """A customer's three rows (one outcome, as repeated records have): never split between training
    and test, nor between a fold's training and validation rows; too few groups is refused by name."""
    df = pd.read_csv(TELCO).head(900)
    df["account_id"] = [f"A{i // 3}" for i in range(len(df))]
    df["Churn"] = df.groupby("account_id")["Churn"].transform("first")
    path = tmp_path / "accounts.csv"
    df.to_csv(path, index=False)
    ids = ["account_id"]  # an identifier: as a feature, each account's one outcome would read as a leak
    prep = _prepare(path, "Churn", tmp_path, group_column="account_id", ensemble=3, id_columns=ids)
    groups = df["account_id"].to_numpy()
    split = prep.split
    assert not set(groups[split.dev]) & set(groups[split.test]) and 0.15 < len(split.test) / len(df) < 0.25
    assert sorted(np.concatenate([va for _, va in split.folds]).tolist()) == split.dev.tolist()
    for tr, va in split.folds:
        assert not set(groups[tr]) & set(groups[va])
    assert set(prep.target.y[split.test]) == {0, 1}  # stratified: both classes held
    assert not prep.schema.warnings
    plain = _prepare(path, "Churn", tmp_path, ensemble=3, id_columns=ids)  # rows split freely, and it says so
    assert set(groups[plain.split.dev]) & set(groups[plain.split.test])
    assert [w.split("'")[1] for w in plain.schema.warnings] == ["account_id"]
    assert "(300 values shared by 900 rows, 100% of them with one outcome each)" in plain.schema.warnings[0]
    assert "--group-column account_id keeps each value's rows on one side" in plain.schema.warnings[0]
    df["Churn"] = np.where(df["account_id"].isin(["A0", "A1"]), "Yes", "No")  # churners: two accounts
    df.to_csv(path, index=False)
    with pytest.raises(D.DataError, match="no split of whole groups holds every class of Churn on both sides"):
        _prepare(path, "Churn", tmp_path, group_column="account_id", id_columns=ids)
    df["account_id"] = [f"A{i % 2}" for i in range(len(df))]
    df.to_csv(path, index=False)
    with pytest.raises(D.DataError, match="--group-column account_id: 2 group"):
        _prepare(path, "Churn", tmp_path, group_column="account_id")
    uneven = pd.read_csv(TELCO).head(900)  # one branch of 600 rows: whole groups cannot hold a fifth
    uneven["branch"] = ["big" if i < 600 else f"B{i // 60}" for i in range(len(uneven))]
    uneven.to_csv(path, index=False)
    with pytest.raises(D.DataError, match=r"whole groups cannot hold about 20% of 900 rows .*largest groups have 600"):
        _prepare(path, "Churn", tmp_path, group_column="branch")


def test_a_grouped_retrain_does_not_take_the_champions_row_split(tmp_path: Path) -> None:
    """The champion was split by row: a retrain by account must not reuse its test rows (accounts on
    both sides), which it did to compare the two on the same rows."""
    from training.pipeline import train

    df = pd.read_csv(TELCO).head(900)
    df["account_id"] = [f"A{i // 3}" for i in range(len(df))]
    df["Churn"] = df.groupby("account_id")["Churn"].transform("first")
    path = tmp_path / "accounts.csv"
    df.to_csv(path, index=False)
    ids = ["account_id"]
    assert train(quick_config(path, "Churn", tmp_path, id_columns=ids), say=lambda _: None).bundle is not None
    prep = _prepare(path, "Churn", tmp_path, group_column="account_id", id_columns=ids)
    groups = df["account_id"].to_numpy()
    assert not set(groups[prep.split.dev]) & set(groups[prep.split.test])


def test_id_column_flag_passes_through(tmp_path: Path) -> None:
    prep = _prepare(TELCO, "Churn", tmp_path, id_columns=["customerID"])
    assert prep.pre.id_columns == ["customerID"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nope.csv", "not found"),
        (lambda p: _write(p / "empty.csv", b""), "empty"),
        (lambda p: _write(p / "bin.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00"), "not a CSV"),
        (lambda p: _write(p / "head.csv", b"a,b,y\n"), "no data rows"),
        (
            lambda p: write_csv(p / "nt.csv", ["a", "b"], [[1, 2]] * 30),
            "target column 'y' is not in the data (columns: a, b)",
        ),
        (lambda p: write_csv(p / "one.csv", ["a", "y"], [[i, "yes"] for i in range(30)]), "one class"),
        (
            lambda p: write_csv(p / "rare.csv", ["a", "y"], [[i, 9 if i == 7 else i % 3] for i in range(30)]),
            "target 'y': too few rows in class '9' (1 row) to split into training, validation and test rows "
            "(each class needs 3); merge it into another class or drop its rows; if it is a count, --task regression",
        ),
        (
            lambda p: write_csv(p / "dup.csv", ["a", "b", "a", "y"], [[i, 1, 2, i % 2] for i in range(30)]),
            "column(s) named more than once in the header",
        ),
        (
            lambda p: _write(
                p / "titled.csv",
                b"Loans report, November\n\na,b,y\n" + b"".join(b"%d,1,%d\n" % (i, i % 2) for i in range(30)),
            ),
            "line 1 has 2 field(s) but the lines below it have 3 (from line 3): is there a title above the header?",
        ),
    ],
)
def test_bad_inputs_raise_one_clear_error(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(D.DataError, match=re.escape(message)) as info:
        _prepare(make(tmp_path), "y", tmp_path)
    assert "\n" not in str(info.value)


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_a_parquet_file_trains_as_its_csv_does(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from training.pipeline import prepare_data

    table = pcsv.read_csv(TELCO)  # typed columns: int64 tenure, double MonthlyCharges, text the rest
    assert pa.types.is_integer(table.schema.field("tenure").type)
    pq.write_table(table, tmp_path / "telco.parquet")
    from_csv = prepare_data(quick_config(TELCO, "Churn", tmp_path / "a"), say=lambda _: None)
    from_parquet = prepare_data(quick_config(tmp_path / "telco.parquet", "Churn", tmp_path / "b"), say=lambda _: None)
    parquet_doc, csv_doc = from_parquet.pre.to_json(), from_csv.pre.to_json()
    assert parquet_doc.pop("read")["format"] == "parquet" and csv_doc.pop("read")["format"] == "csv"
    assert parquet_doc == csv_doc
    # what training prints: a typed file has no delimiter nor encoding to guess (it said "delimiter ','")
    assert D.column_lines(from_parquet.schema)[0] == "read as parquet: decimal mark '.' (numbers written as text)"
    assert D.column_lines(from_csv.schema)[0] == "read as csv: delimiter ',', decimal mark '.', encoding utf-8"
    np.testing.assert_array_equal(from_parquet.enc.num, from_csv.enc.num)  # NaN (missing) compares equal
    np.testing.assert_array_equal(from_parquet.enc.cat, from_csv.enc.cat)
    nested = pa.table({"x": pa.array([[1], [2]]), "y": pa.array(["a", "b"])})
    pq.write_table(nested, tmp_path / "nested.parquet")
    with pytest.raises(D.DataError, match="column 'x'"):
        D.read_csv(tmp_path / "nested.parquet")


def test_overrides_for_every_guess_from_flags_and_the_config_file(tmp_path: Path) -> None:
    from tests.fixtures.make_business_files import telco

    df = telco().head(300)
    df["signup"] = [f"{2020 + i % 4}{(i % 12) + 1:02d}01" for i in range(len(df))]  # dates written as numbers
    path = tmp_path / "t.csv"
    df.to_csv(path, sep="|", index=False)
    prep = _prepare(path, "Churn", tmp_path, categorical=["SeniorCitizen"], date_columns=["signup"])
    assert "SeniorCitizen" in prep.schema.categorical and prep.schema.dates == {"signup": "iso"}
    row = next(r for r in prep.schema.table if r["column"] == "SeniorCitizen")
    assert row["why"] == "as told (--categorical); each value a level"  # digits, not "text values"
    assert prep.pre.read.sep == "|"
    config = tmp_path / "read.toml"
    config.write_text('sep = ";"\nnumeric = ["tenure"]\ndate_columns = ["signup"]\n')
    from training.config import build_config

    cfg = build_config(config, data=str(path), target="Churn", models_dir=str(tmp_path))
    assert (cfg.sep, cfg.numeric, cfg.date_columns) == (";", ["tenure"], ["signup"])
    with pytest.raises(D.DataError, match=r"--numeric 'Contract': row 1: expected a number"):
        _prepare(path, "Churn", tmp_path, numeric=["Contract"])
    with pytest.raises(D.DataError, match="--date-columns 'gender': 'Female' is not a date"):
        _prepare(path, "Churn", tmp_path, date_columns=["gender"])


def test_a_column_that_restates_another_is_named_and_explained_with_it(tmp_path: Path) -> None:
    from service import bundle
    from service.runtime import CPU, create_session
    from tests.fixtures.make_business_files import telco
    from training.pipeline import train

    df = telco().head(1500)
    df["MonthlyCharges_eur"] = (df["MonthlyCharges"].astype(float) * 0.92).round(2)  # the same charge in euros
    days = np.arange(len(df))
    df["signup"] = [str(np.datetime64("2020-01-01") + d) for d in days]  # a distinct date per row: still a date
    df["signup_year"] = (2020 + days / 365.25).round(4)  # the same date as a decimal year
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    cfg = quick_config(path, "Churn", tmp_path)
    prep = _prepare(path, "Churn", tmp_path)
    table = {row["column"]: row for row in prep.schema.table}
    for col, first in [("MonthlyCharges_eur", "MonthlyCharges"), ("signup_year", "signup")]:
        assert table[col]["restates"] == first and f"restates '{first}'" in table[col]["why"]
    # correlated, not restated: a customer's total is tenure times the monthly charge, give or take
    assert not {"tenure", "TotalCharges"} & {row.get("restates") for row in table.values()}
    assert table["signup"]["type"] == "date"
    # a chain: c restates b, b restates a (a and c a little less alike) → both explained under a
    rng = np.random.default_rng(0)
    a = rng.normal(size=4000)
    b = a + rng.normal(scale=0.011, size=len(a))
    chain = write_csv(
        tmp_path / "chain.csv",
        ["a", "b", "c", "y"],
        [[*v, int(v[0] + rng.normal() > 0)] for v in zip(a, b, b + rng.normal(scale=0.011, size=len(a)), strict=True)],
    )
    chained = _prepare(chain, "y", tmp_path).schema.table
    assert D.restated_roots(chained) == {"b": "a", "c": "a"}
    assert [row.get("restates") for row in chained[1:]] == [None, "a", "b"]
    # the network reads both; explain.onnx gives the two one effect, under the first
    result = train(cfg, say=lambda _: None)
    assert result.bundle is not None
    names = [f.name for f in result.pre.features]
    assert {"MonthlyCharges_eur", "signup_year"} <= set(names)
    session = create_session(result.bundle.path / bundle.EXPLAIN_FILE, CPU)
    effects, score, baseline, _ = session.run(None, {"num": prep.enc.num[:500], "cat": prep.enc.cat[:500]})
    for col, first in [("MonthlyCharges_eur", "MonthlyCharges"), ("signup_year", "signup")]:
        assert np.all(effects[:, names.index(col)] == 0) and np.abs(effects[:, names.index(first)]).max() > 1e-3
    assert np.abs(effects.sum(axis=1) - (score - baseline)).max() < 1e-4


@pytest.mark.parametrize(
    ("text", "sep"),
    [("a,b,c\n1,2,3\n", ","), ("a;b;c\n1,5;2;3\n", ";"), ("a\tb\n1\t2\n", "\t"), ('a;"b,c"\n1;"2,5"\n', ";")],
)
def test_the_delimiter_is_the_one_that_splits_every_line_alike(text: str, sep: str) -> None:
    assert D.sniff_sep(text) == sep


def test_levels_merge_to_their_most_frequent_spelling() -> None:
    assert D.merged_levels(["Yes", "Yes", "YES", "yes", "No", "no"]) == {"YES": "Yes", "yes": "Yes", "no": "No"}


@pytest.mark.parametrize("sep", ["/", "-"])
def test_dates_that_read_either_way_are_read_day_first_with_a_warning_or_month_first_as_told(
    tmp_path: Path, sep: str
) -> None:
    """A week of a US export (12/01 to 12/07/2024): day first it is seven months of 2024, which nothing
    in the values contradicts; training says so and `--month-first` reads the week."""
    rows = [[f"12{sep}{i % 7 + 1:02d}{sep}2024", i % 5, ["yes", "no"][i % 2]] for i in range(40)]
    path = write_csv(tmp_path / "week.csv", ["signed", "visits", "churn"], rows)
    as_is = _prepare(path, "churn", tmp_path)
    (warning,) = as_is.schema.warnings
    assert as_is.schema.dates["signed"] == f"%d{sep}%m{sep}%Y"
    assert "'signed'" in warning and f"MM{sep}DD{sep}YYYY" in warning and "--month-first" in warning
    told = _prepare(path, "churn", tmp_path, month_first=True)
    assert told.schema.dates["signed"] == f"%m{sep}%d{sep}%Y" and not told.schema.warnings
    ages = {
        name: prep.enc.num[:, prep.schema.numeric.index("signed")] for name, prep in (("as is", as_is), ("told", told))
    }
    assert np.ptp(ages["told"]) == 6 and np.ptp(ages["as is"]) > 150  # a week, or seven months
    # one day above 12 settles it: no warning either way
    rows[0][0] = f"12{sep}31{sep}2024"
    settled = _prepare(write_csv(tmp_path / "month.csv", ["signed", "visits", "churn"], rows), "churn", tmp_path)
    assert settled.schema.dates["signed"] == f"%m{sep}%d{sep}%Y" and not settled.schema.warnings
    # ISO text stays ISO under --month-first, told to be a date or not
    rows = [[f"2024-12-{i % 28 + 1:02d}", i % 5, ["yes", "no"][i % 2]] for i in range(40)]
    iso = write_csv(tmp_path / "iso.csv", ["signed", "visits", "churn"], rows)
    for told_date in ([], ["signed"]):
        prep = _prepare(iso, "churn", tmp_path, month_first=True, date_columns=told_date)
        assert prep.schema.dates["signed"] == "iso" and not prep.schema.warnings


def test_two_digit_years_are_dates_unless_they_would_land_in_a_later_century(tmp_path: Path) -> None:
    """Excel's 1/25/24 and Oracle's 25-JAN-24 are dates (69-99 as 19xx, said in the table); birth
    dates of the 1950s would read as the 2050s: text with a warning, or dates with one when told;
    versions (1.2.10) are no dates."""
    days = [f"{i % 12 + 1}/{i % 28 + 1}/{i % 20 + 5:02d}" for i in range(40)]  # 2005-2024
    oracle = [f"{i % 28 + 1:02d}-{['JAN', 'FEB', 'MAR', 'APR'][i % 4]}-{i % 30 + 70}" for i in range(40)]  # 1970-99
    born = [f"{i % 28 + 1:02d}/{i % 12 + 1:02d}/{i % 19 + 50}" for i in range(40)]  # 1950-1968
    version = [f"1.{i % 3 + 1}.{i % 3 + 10}" for i in range(40)]
    header = ["signed", "opened", "born", "version", "visits", "churn"]
    rows = [
        [*values, i % 5, ["yes", "no"][i % 2]] for i, values in enumerate(zip(days, oracle, born, version, strict=True))
    ]
    path = write_csv(tmp_path / "short.csv", header, rows)
    prep = _prepare(path, "churn", tmp_path)
    assert prep.schema.dates == {"signed": "%m/%d/%y", "opened": "%d-%b-%y"}
    assert "version" in prep.schema.categorical
    opened = next(f for f in prep.pre.numeric if f.name == "opened")
    assert opened.date is not None and opened.date.reference.startswith("1999-")  # not 2099
    why = next(row["why"] for row in prep.schema.table if row["column"] == "opened")
    assert "two-digit years 69-99 as 19xx" in why
    (warning,) = prep.schema.warnings
    assert "'born'" in warning and "'01/01/50'" in warning and "2050" in warning and "not read as dates" in warning
    assert "born" not in prep.schema.numeric
    told = _prepare(path, "churn", tmp_path, date_columns=["born"])
    assert told.schema.dates["born"] == "%d/%m/%y" and "if an earlier century is meant" in told.schema.warnings[0]


def test_a_date_column_with_missing_markers_is_a_date_and_full_years_are_not_flagged(tmp_path: Path) -> None:
    """NA, n/a and - are missing in a date column as in a numeric one; a four-digit 2050 beside
    two-digit years is meant as written (a maturity), not an earlier century."""
    signed = [["NA", "n/a", "-", ""][i % 4] if i % 5 == 0 else f"{i % 28 + 1:02d}/04/2023" for i in range(40)]
    matures = [f"1/{i % 28 + 1}/24" if i % 2 else f"1/{i % 28 + 1}/2050" for i in range(40)]
    rows = [[a, b, i % 5, ["yes", "no"][i % 2]] for i, (a, b) in enumerate(zip(signed, matures, strict=True))]
    prep = _prepare(write_csv(tmp_path / "na.csv", ["signed", "matures", "visits", "churn"], rows), "churn", tmp_path)
    assert prep.schema.dates == {"signed": "%d/%m/%Y", "matures": "%m/%d/%y"} and not prep.schema.warnings
    ages = prep.enc.num[:, prep.schema.numeric.index("signed")]
    assert np.isnan(ages[::5]).all() and not np.isnan(np.delete(ages, np.s_[::5])).any()
    years = prep.enc.num[:, prep.schema.numeric.index("matures")]
    assert np.ptp(years) > 365 * 25  # 2024 and 2050, both as written


def test_a_column_told_to_be_a_date_names_a_value_no_format_reads(tmp_path: Path) -> None:
    header = ["signed", "visits", "churn"]
    for values, message in (
        (["12/25/24", "soon"], "'soon' is not a date in any known format"),
        (["12/25/2024", "25.12.2024"], "dates in more than one format ('12/25/2024', '25.12.2024')"),
    ):
        rows = [[values[i % 2], i % 5, ["yes", "no"][i % 2]] for i in range(40)]
        path = write_csv(tmp_path / "told.csv", header, rows)
        with pytest.raises(D.DataError, match=re.escape(f"--date-columns 'signed': {message}")):
            _prepare(path, "churn", tmp_path, date_columns=["signed"])


def test_codes_with_underscores_are_levels_not_numbers(tmp_path: Path) -> None:
    """`2021_03` read as the number 202103 by Python's float(): a period code made a numeric feature."""
    df = pd.read_csv(GERMAN).head(300)
    df["period"] = [f"20{20 + i % 5}_{1 + i % 12:02d}" for i in range(len(df))]
    df.to_csv(tmp_path / "periods.csv", index=False)
    prep = _prepare(tmp_path / "periods.csv", "creditability", tmp_path)
    assert "period" in prep.schema.categorical and "period" not in prep.schema.numeric


@pytest.mark.parametrize(("target", "task"), [("MonthlyCharges", "regression"), ("Contract", "multiclass")])
@pytest.mark.parametrize(("option", "value"), [("threshold_rule", "0.4"), ("positive", "Month-to-month")])
def test_a_threshold_rule_or_positive_class_for_a_target_without_one_is_refused(
    tmp_path: Path, target: str, task: str, option: str, value: str
) -> None:
    """It was saved in the config and ignored: the run did not do what it was told."""
    flag = "--" + option.replace("_", "-")
    with pytest.raises(D.DataError, match=f"^{flag} is for a two-class target; '{target}' is read as {task}$"):
        _prepare(TELCO, target, tmp_path, **{option: value})


def _typed_file(frame: pd.DataFrame, path: Path) -> Path:
    """`frame` written as the JSON-lines, Parquet or Excel file `path` names."""
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_excel(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".xlsx"])
@pytest.mark.parametrize("given", [None, ","])
def test_typed_fractions_keep_their_value_where_a_comma_marks_decimals(
    tmp_path: Path, suffix: str, given: str | None
) -> None:
    """A typed file whose text cells use a decimal comma (`"12,50"`, given or detected): its typed
    numbers are read as the numbers they are. Written as text with a point, 1.234 was read as 1234
    and 1.5e-7 refused."""
    import pandas as pd

    rate = [1.234, 0.5, 1.5e-7, 2.25] * 15
    frame = pd.DataFrame(
        {
            "rate": rate,
            "cost": [0.25, 1.75, 12.5] * 20,  # more typed fractions than text cells: still no evidence
            "fee": [f"{i % 9},{(i * 7) % 90 + 10}" for i in range(60)],  # a European export's amounts, as text
            "plan": ["abc"[i % 3] for i in range(60)],
            "y": [["yes", "no"][i % 2] for i in range(60)],
        }
    )
    path = _typed_file(frame, tmp_path / f"comma{suffix}")
    prep = _prepare(path, "y", tmp_path, decimal=given)
    assert prep.pre.read.decimal == ","
    num = prep.enc.num  # every row, in the file's order
    np.testing.assert_allclose(num[:, prep.schema.numeric.index("rate")], rate, rtol=1e-6)
    np.testing.assert_allclose(
        num[:8, prep.schema.numeric.index("fee")], [0.1, 1.17, 2.24, 3.31, 4.38, 5.45, 6.52, 7.59], rtol=1e-6
    )


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])  # Excel cells are text to both already
def test_a_typed_number_taken_as_categorical_is_keyed_as_scoring_reads_it(tmp_path: Path, suffix: str) -> None:
    """Found by a diff review: `--categorical cost` on a Parquet file with a decimal comma trained levels
    `0,25` while scoring that very file keyed the number 0.25 as `0.25`: every row an unseen level."""
    import pandas as pd

    from service.features import Encoded, encode_categorical
    from service.scoring import files

    frame = pd.DataFrame(
        {
            "cost": [0.25, 1.75, 12.5] * 20,
            "fee": [f"{i % 9},{(i * 7) % 90 + 10}" for i in range(60)],
            "y": [["yes", "no"][i % 2] for i in range(60)],
        }
    )
    path = _typed_file(frame, tmp_path / f"comma{suffix}")
    prep = _prepare(path, "y", tmp_path, categorical=["cost"])
    assert prep.pre.read.decimal == ","
    (feat,) = [f for f in prep.pre.features if f.name == "cost"]
    source = files.open_source(path, reading=prep.pre.read)
    cells = [v for batch in source.batches(["cost"]) for v in batch.column("cost").to_pylist()]
    enc = Encoded(num=np.zeros((60, 0), np.float32), cat=np.zeros((60, 1), np.int64))
    codes = encode_categorical(feat, cells, len(cells), enc)
    assert len(cells) == 60 and not enc.warnings and (codes > 0).all()


def test_a_column_named_as_the_logs_own_is_left_out_and_an_id_so_named_refused(tmp_path: Path) -> None:
    """Found by a monitoring audit: a feature `_version` was a second `_version` column in the prediction
    log (unreadable by pyarrow; `tabserve monitor` reported a PSI of 8.46 for it). MongoDB's `_id` is fine."""
    import pandas as pd

    frame = pd.read_csv(TELCO, dtype=str, keep_default_na=False).head(300)
    frame = frame.rename(columns={"tenure": "_version", "customerID": "_id"})
    path = tmp_path / "own.csv"
    frame.to_csv(path, index=False)
    prep = _prepare(path, "Churn", tmp_path, id_columns=["_id"])
    assert "_version" not in prep.schema.features and "_id" in prep.schema.id_columns
    assert "prediction log writes itself" in prep.schema.dropped["_version"]
    with pytest.raises(D.DataError, match="--id-column '_version' is named as a column the prediction log writes"):
        _prepare(path, "Churn", tmp_path, id_columns=["_version"])


def test_rows_repeating_the_header_are_left_out_and_rows_keep_their_numbers(tmp_path: Path) -> None:
    """A business-files audit: monthly exports stacked into one file repeat the header line; its
    `Churn` cell made a third class and its text made tenure and MonthlyCharges categorical."""
    lines = TELCO.read_text().splitlines(keepends=True)[:601]
    stacked = [*lines[:201], lines[0], *lines[201:401], " " + lines[0], *lines[401:]]
    fields = stacked[450].split(",")
    fields[5] = "lots"  # tenure of the file's row 450, counting the header copy before it as tabserve score does
    stacked[450] = ",".join(fields)
    path = tmp_path / "stacked.csv"
    path.write_text("".join(stacked))
    with pytest.raises(D.DataError, match=r"--numeric 'tenure': row 450: "):  # it said 448
        _prepare(path, "Churn", tmp_path, numeric=["tenure"])
    stacked[450] = lines[448]
    path.write_text("".join(stacked))
    prep = _prepare(path, "Churn", tmp_path)
    assert prep.target.header_rows == [201, 402] and prep.target.labels == ["No", "Yes"]
    assert {"tenure", "MonthlyCharges"} <= set(prep.schema.numeric) and len(prep.target.y) == 600
    # each copy an Excel "CSV UTF-8" export with its BOM, lines ending in a delimiter (a diff review)
    bom = [line.rstrip("\r\n") + ",\n" for line in [*lines[:201], "\ufeff" + lines[0], *lines[201:]]]
    path.write_text("".join(bom))
    prep = _prepare(path, "Churn", tmp_path)
    assert prep.target.header_rows == [201] and prep.target.labels == ["No", "Yes"]


def test_codes_with_leading_zeros_are_levels_and_numeric_reads_a_padded_amount(tmp_path: Path) -> None:
    """NACE's `01.11` and `0421` keep their zeros as levels (a diff review: reading `00029.85` as a
    number made `01.11` the number 1.11); a padded amount looks the same, and `--numeric` reads it."""
    frame = pd.read_csv(TELCO, dtype=str, keep_default_na=False).head(400)
    frame["MonthlyCharges"] = [f"{float(v):08.2f}" for v in frame["MonthlyCharges"]]
    frame["branch"] = [f"{i % 37:04d}" for i in range(len(frame))]
    frame["nace"] = [["01.11", "01.13", "45.20", "62.01"][i % 4] for i in range(len(frame))]
    path = tmp_path / "padded.csv"
    frame.to_csv(path, index=False)
    prep = _prepare(path, "Churn", tmp_path)
    assert {"branch", "nace"} <= set(prep.schema.categorical) and "MonthlyCharges" not in prep.schema.numeric
    told = _prepare(path, "Churn", tmp_path, numeric=["MonthlyCharges"])
    column = told.enc.num[:, told.schema.numeric.index("MonthlyCharges")]
    np.testing.assert_allclose(column[:3], [29.85, 56.95, 53.85], rtol=1e-6)


def test_a_few_cells_that_keep_a_column_from_numbers_or_dates_are_said_and_error_cells_are_missing(
    tmp_path: Path,
) -> None:
    """A business-files audit: one `unknown` made tenure 74 levels, one `31.02.2024` a date column 1,480
    levels, one Excel `#DIV/0!` MonthlyCharges 1,199 levels, all without a word; SAP's `00.00.0000`
    (no date) did the same to a date column."""
    frame = pd.read_csv(TELCO, dtype=str, keep_default_na=False).head(600)
    frame["signup"] = [f"{1 + i % 28:02d}.{1 + i % 12:02d}.20{20 + i % 4}" for i in range(len(frame))]
    frame.loc[7, "tenure"] = "unknown"
    frame.loc[8, "MonthlyCharges"] = "#DIV/0!"
    frame.loc[9, "signup"] = "31.02.2024"
    frame.loc[10:12, "TotalCharges"] = "#VALUE!"
    path = tmp_path / "slips.csv"
    frame.to_csv(path, index=False)
    prep = _prepare(path, "Churn", tmp_path)
    assert {"MonthlyCharges", "TotalCharges"} <= set(prep.schema.numeric)  # error cells are missing values
    assert np.isnan(prep.enc.num[8, prep.schema.numeric.index("MonthlyCharges")])
    said = " ".join(prep.schema.warnings)
    assert "'tenure' is read as categorical though all but 1 of its 600 values are numbers ('unknown')" in said
    assert (
        "'signup' is read as categorical though all but 1 of its 600 values are dates (DD.MM.YYYY) ('31.02.2024')"
        in said
    )
    frame.loc[9, "signup"] = "00.00.0000"  # SAP's empty date: a missing one
    frame.to_csv(path, index=False)
    assert "signup" in _prepare(path, "Churn", tmp_path).schema.dates
    # a free-text column blank but in 3 % of rows: its blanks are no numbers (a diff review: "all but 60
    # of its 2,000 values are numbers")
    notes = pd.read_csv(TELCO, dtype=str, keep_default_na=False).head(2000)
    notes["note"] = ["" if i % 33 else f"call back on day {i}" for i in range(len(notes))]
    notes.to_csv(path, index=False)
    assert not any("'note'" in w for w in _prepare(path, "Churn", tmp_path).schema.warnings)


def test_amounts_whose_points_could_group_thousands_are_said(tmp_path: Path) -> None:
    """A business-files audit: german credit written as a German export (`1.169`, `5.951`, `250`) was
    read as fractions, silently; nothing in the file tells, so it is said, with the flag that reads them."""
    frame = pd.read_csv(GERMAN, dtype=str, keep_default_na=False)
    amounts = [f"{int(v):,}".replace(",", ".") for v in frame["credit_amount"]]
    frame["credit_amount"] = amounts
    path = tmp_path / "german_eu.csv"
    frame.to_csv(path, sep=";", index=False)
    said = " ".join(_prepare(path, "creditability", tmp_path).schema.warnings)
    assert f"'credit_amount': every value with a point has three digits after it ('{amounts[0]}')" in said
    assert "pass --decimal ','" in said
    told = _prepare(path, "creditability", tmp_path, decimal=",")
    assert not any("three digits" in w for w in told.schema.warnings)
    amount = told.enc.num[:, told.schema.numeric.index("credit_amount")]
    assert amount.max() > 10_000  # thousands, as the flag says


def test_a_regression_target_written_as_missing_is_dropped_and_counted(tmp_path: Path) -> None:
    """A diff review: `n/a` or `#DIV/0!` as a regression target reached scikit-learn as NaN ("Input y
    contains NaN") where a blank one is dropped and counted; rows keep their file numbers."""
    frame = pd.read_csv(TELCO, dtype=str, keep_default_na=False).head(400)
    frame.loc[3, "MonthlyCharges"], frame.loc[5, "MonthlyCharges"], frame.loc[6, "MonthlyCharges"] = (
        "n/a",
        "#DIV/0!",
        "",
    )
    frame.loc[9, "tenure"] = "lots"
    path = tmp_path / "charges.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(D.DataError, match=r"--numeric 'tenure': row 10: "):  # the file's row, three dropped before
        _prepare(path, "MonthlyCharges", tmp_path, numeric=["tenure"])
    frame.loc[9, "tenure"] = "7"
    frame.to_csv(path, index=False)
    prep = _prepare(path, "MonthlyCharges", tmp_path)
    assert prep.target.task == "regression" and prep.target.dropped_missing == 3 and len(prep.target.y) == 397
    assert not np.isnan(prep.target.y).any()


def _german_with_target(tmp_path: Path, values: list[str], token: str, n: int = 300) -> Path:
    """German credit's first `n` rows with `values` (cycled) as the target and `token` in every 20th row."""
    df = pd.read_csv(GERMAN, dtype=str, keep_default_na=False).head(n)
    df["creditability"] = [token if i % 20 == 7 else values[i % len(values)] for i in range(n)]
    path = tmp_path / "target.csv"
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("token", ["NA", "?", "n/a", "NULL", "#VALUE!", "--"])
@pytest.mark.parametrize(
    ("values", "task", "labels"),
    [
        (["0", "1", "0"], "binary", [0, 1]),
        ([str(k) for k in range(10)], "multiclass", list(range(10))),
        (["good", "bad", "good"], "binary", ["good", "bad"]),
    ],
)
def test_a_target_written_as_missing_is_dropped_and_counted_for_every_kind(
    tmp_path: Path, token: str, values: list[str], task: str, labels: list[object]
) -> None:
    """`NA` in a 0/1 target trained a regression (parsed as NaN, it was "not integral"); in a text
    target it was a class of its own."""
    target = _prepare(_german_with_target(tmp_path, values, token), "creditability", tmp_path).target
    assert (target.task, target.labels, target.dropped_missing, len(target.y)) == (task, labels, 15, 285)
    assert target.missing_as == [token]  # named in the summary: a class really called `NA` is seen


def test_punctuation_is_a_class_beside_text_and_missing_beside_numbers(tmp_path: Path) -> None:
    """A review: `-` was dropped as missing from UCI crx's `+`/`-` target (one class left); and a
    regression target's `-nan` (glibc's printf), parsed as NaN, reached scikit-learn."""
    signs = _prepare(_german_with_target(tmp_path, ["+", "-"], "-"), "creditability", tmp_path).target
    assert (signs.task, sorted(signs.labels), signs.dropped_missing) == ("binary", ["+", "-"], 0)
    amounts = [f"{k * 1.37:.2f}" for k in range(40)]
    values = _prepare(_german_with_target(tmp_path, amounts, "-nan"), "creditability", tmp_path).target
    assert (values.task, values.dropped_missing, values.missing_as) == ("regression", 15, ["-nan"])
    assert np.isfinite(values.y).all()


def test_none_is_a_class_of_a_text_target_and_missing_beside_numbers(tmp_path: Path) -> None:
    text = _prepare(_german_with_target(tmp_path, ["mild", "severe"], "None"), "creditability", tmp_path).target
    assert text.labels == ["None", "mild", "severe"] and text.dropped_missing == 0
    coded = _prepare(_german_with_target(tmp_path, ["0", "1"], "None"), "creditability", tmp_path).target
    assert (coded.task, coded.labels, coded.dropped_missing) == ("binary", [0, 1], 15)


def test_ensemble_beyond_what_the_rows_allow_is_one_line_naming_it(tmp_path: Path) -> None:
    """It was scikit-learn's "Cannot have number of splits n_splits=1000 greater than the number of samples"."""
    path = _german_with_target(tmp_path, [str(k) for k in range(30)], "7.5", n=100)  # a number, 30 values
    with pytest.raises(
        D.DataError,
        match=r"^--ensemble 1000 is more folds than the data allow: at most 80 here \(80 development rows\)$",
    ):
        _prepare(path, "creditability", tmp_path, task="regression", ensemble=1000)
    path = _german_with_target(tmp_path, ["good", "bad", "good"], "good", n=100)
    with pytest.raises(
        D.DataError, match=r"^--ensemble 60 .* at most (\d\d) here \(80 development rows, \1 of the largest"
    ):
        _prepare(path, "creditability", tmp_path, ensemble=60)


def test_many_rare_classes_are_cut_in_the_message(tmp_path: Path) -> None:
    """`--task multiclass` on a continuous target listed each of 2,000 values: a 59 KB line."""
    df = pd.read_csv(TELCO, dtype=str, keep_default_na=False).head(400)
    df.to_csv(tmp_path / "charges.csv", index=False)
    with pytest.raises(D.DataError) as info:
        _prepare(tmp_path / "charges.csv", "MonthlyCharges", tmp_path, task="multiclass")
    assert re.search(r"too few rows in class ('[\d.]+' \(\d rows?\), ){5}and \d+ more to split", str(info.value))
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("option", ["drop", "categorical", "id_columns"])
def test_a_column_option_naming_no_column_names_its_flag(tmp_path: Path, option: str) -> None:
    flag = {"drop": "--drop", "categorical": "--categorical", "id_columns": "--id-column"}[option]
    with pytest.raises(D.DataError, match=rf"^{flag} 'contrat' is not in the data; did you mean 'Contract'\?"):
        _prepare(TELCO, "Churn", tmp_path, **{option: ["contrat"]})


def test_a_file_of_another_delimiter_reads_with_sep(tmp_path: Path) -> None:
    df = pd.read_csv(GERMAN, dtype=str, keep_default_na=False).head(200)
    df.to_csv(tmp_path / "colons.csv", index=False, sep=":")
    prep = _prepare(tmp_path / "colons.csv", "creditability", tmp_path, sep=":")
    assert "duration_in_month" in prep.schema.numeric and prep.target.labels == ["good", "bad"]
