"""Batch scoring of CSV files: same answers as /predict, order kept, nothing lost, atomic output."""

from __future__ import annotations

import codecs
import csv
import functools
import gzip
import io
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from service import bundle
from service.features import Reading
from service.scoring.files import HEADER_PROBE, _Transcoded, open_source
from service.scoring.local import KEPT_ERRORS, Scorer, ScoringError, score_file
from tests.conftest import TELCO
from tests.service.conftest import copy_store, running_server, telco_records


def _read(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as fh:  # type: ignore[operator]
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _telco_head(path: Path, n: int) -> Path:
    with TELCO.open(newline="") as fh:
        lines = [line for _, line in zip(range(n + 1), fh, strict=False)]
    path.write_text("".join(lines))
    return path


def test_output_equals_predict_and_keeps_order_across_chunks(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """Scores, labels and each row's warnings (an unseen level, a value past training's range) as
    `/predict` answers the same records."""
    records = telco_records(50)
    records[3]["Contract"], records[10]["tenure"] = "Weekly", 900.0
    records[10]["PaymentMethod"] = "Bitcoin"
    rows = _read(_telco_head(tmp_path / "head.csv", 50))
    rows[3]["Contract"], rows[10]["tenure"], rows[10]["PaymentMethod"] = "Weekly", "900", "Bitcoin"
    source, out = _write(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    summary = score_file(Scorer(churn_bundle, "cpu"), source, out, chunk_rows=7)  # NOTE: many chunk boundaries
    assert (summary.rows_in, summary.rows_scored, summary.rows_failed) == (50, 50, 0)
    assert sum(summary.warnings.values()) == 3
    scored = _read(out)
    assert list(scored[0]) == ["customerID", "label", "probability", "warning", "error"]
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store) as server:
        served = httpx.post(server.url + "/predict", json={"records": records}).json()["predictions"]
    assert [r["customerID"] for r in scored] == [p["customerID"] for p in served]
    for row, answer in zip(scored, served, strict=True):
        assert row["label"] == answer["label"] and abs(float(row["probability"]) - answer["probability"]) < 1e-6
        assert row["warning"] == "; ".join(answer.get("warnings", [])) and row["error"] == ""
    assert "unseen level 'Weekly'" in scored[3]["warning"] and scored[10]["warning"].count("; ") == 1


def test_json_lines_as_they_come_score_as_predict_answers_each_record(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """Arrow's reader refuses a whole file for a column of numbers and text, or one broken line, and
    keeps one value of a key given twice: each record is scored as `/predict` answers it (warnings
    too); a broken line, or a feature given twice, is its row's error, as `/predict` refuses it."""
    records: list[dict[str, object]] = [dict(r) for r in telco_records(9)]
    records[1]["tenure"] = " "  # a blank in a numeric column
    records[2]["MonthlyCharges"] = "29.5"  # a number as text
    records[3]["Tenure"] = records[3].pop("tenure")  # a look-alike field: `/predict` warns
    records[4]["Contract"], records[5]["tenure"] = 2, 2**70  # a number for a level; one no Arrow type holds
    records[7].update(tenure=None, Tenure=None, tenur=5)  # of two look-alikes, the one with a value
    lines = [json.dumps(r) for r in records]
    lines[6] = lines[6].replace('"tenure":', '"note": 1, "note": 2, "tenure":')  # an ignored field, twice
    lines[5:5] = ['{"customerID": "broken", ', "", "[1, 2]"]  # a broken line, a blank one, a list
    lines.append(lines[0].replace('"tenure":', '"tenure": 5, "tenure":'))  # a feature twice: refused
    lines.append(lines[0].replace('"customerID": "', '"customerID": {"a": 1, "a": 2}, "x": "'))  # twice inside
    source, out = tmp_path / "in.jsonl", tmp_path / "out.csv"
    source.write_text("\ufeff" + "\n".join(lines) + "\n")  # with the byte-order mark Windows tools write
    summary = score_file(Scorer(churn_bundle, "cpu"), source, out, chunk_rows=3)
    assert (summary.rows_in, summary.rows_scored, summary.rows_failed) == (13, 9, 4)
    scored = _read(out)
    assert scored[5]["error"].startswith("row 6: line 6 is not a JSON object") and scored[5]["label"] == ""
    assert scored[6]["error"] == "row 7: line 8 is not a JSON object: a JSON list"
    assert scored[11]["error"] == "row 12: line 13: field 'tenure' is given twice: which value is meant is a guess"
    assert scored[12]["error"].startswith("row 13: line 14: field 'customerID' holds a key given twice")
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store) as server:
        served = httpx.post(server.url + "/predict", json={"records": records}).json()["predictions"]
    good = scored[:5] + scored[7:11]
    for row, answer in zip(good, served, strict=True):
        assert row["customerID"] == answer["customerID"] and row["label"] == answer["label"]
        assert abs(float(row["probability"]) - answer["probability"]) < 1e-6
        assert row["warning"] == "; ".join(answer.get("warnings", [])) and row["error"] == ""
    assert "did you mean 'tenure'?" in good[3]["warning"] and "unseen level '2'" in good[4]["warning"]
    assert "above the largest value" in good[5]["warning"] and "field 'tenur' is not a feature" in good[7]["warning"]

    booleans = tmp_path / "booleans.jsonl"  # true beside numbers: refused as /predict refuses it, not read as 1
    booleans.write_text("".join(json.dumps({**records[0], "SeniorCitizen": v}) + "\n" for v in (0.0, True)))
    score_file(Scorer(churn_bundle, "cpu"), booleans, out)
    assert [row["error"].startswith("row 2, field 'SeniorCitizen'") for row in _read(out)] == [False, True]

    (tmp_path / "array.jsonl").write_text(json.dumps(records, indent=1))  # a JSON array, not JSON lines
    with pytest.raises(
        ScoringError, match=r"not readable JSON lines \(one object per line\): line 1: Input data was truncated"
    ):
        score_file(Scorer(churn_bundle, "cpu"), tmp_path / "array.jsonl", out)


@pytest.mark.parametrize("suffix", [".jsonl", ".xlsx"])
def test_typed_numbers_keep_their_value_under_a_decimal_comma(
    churn_bundle: bundle.BundleRef, tmp_path: Path, suffix: str
) -> None:
    """A column of numbers and text (JSON lines) or number cells (Excel), read for a model trained on
    decimal commas: the number 1.234 is that number (it was re-read as text, `1.234` → 1234), the
    text `56,95` is 56.95."""
    import pandas as pd

    records: list[dict[str, object]] = [dict(r) for r in telco_records(2)]
    records[0]["TotalCharges"], records[1]["TotalCharges"] = 1.234, "56,95"
    source, out = tmp_path / f"in{suffix}", tmp_path / "out.csv"
    if suffix == ".jsonl":
        source.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        pd.DataFrame(records).to_excel(source, index=False)
    comma = churn_bundle.preprocess.read.but(None, None, ",")
    score_file(Scorer(churn_bundle, "cpu", reading=comma), open_source(source, reading=comma), out)
    plain = [{**records[0]}, {**records[1], "TotalCharges": 56.95}]
    points = tmp_path / "points.jsonl"
    points.write_text("".join(json.dumps(r) + "\n" for r in plain))
    score_file(Scorer(churn_bundle, "cpu"), points, tmp_path / "points.csv")
    assert out.read_text() == (tmp_path / "points.csv").read_text()


def test_blank_rows_between_a_sheets_data_are_no_records(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """As a CSV's blank lines: a spreadsheet's empty rows were error rows ("every feature is blank")."""
    import pandas as pd

    head = pd.read_csv(_telco_head(tmp_path / "head.csv", 10), dtype=str)
    blank = pd.DataFrame([[None] * head.shape[1]] * 2, columns=head.columns)
    pd.concat([head[:4], blank, head[4:]]).to_excel(tmp_path / "in.xlsx", index=False)
    out_sheet, out_csv = tmp_path / "sheet.csv", tmp_path / "csv.csv"
    summary = score_file(Scorer(churn_bundle, "cpu"), tmp_path / "in.xlsx", out_sheet)
    assert (summary.rows_in, summary.rows_scored, summary.rows_failed) == (10, 10, 0)
    score_file(Scorer(churn_bundle, "cpu"), tmp_path / "head.csv", out_csv)
    assert out_sheet.read_text() == out_csv.read_text()


def test_every_malformed_row_is_still_written_with_its_reason(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    lines = _telco_head(tmp_path / "head.csv", 12).read_bytes().splitlines(keepends=True)
    lines[3] = b"too,few,fields\n"  # wrong number of fields
    lines[5] = (
        lines[5].replace(b",Female,", b",Fem\xe9ale,")
        if b",Female," in lines[5]
        else lines[5].replace(b",Male,", b",M\xe9le,")
    )
    fields = lines[7].decode().split(",")
    fields[5] = "lots"  # tenure: not a number
    lines[7] = ",".join(fields).encode()
    lines[9] = lines[9].split(b",")[0] + b"," * 20 + b"\n"  # an id and nothing else: blanks to score
    source = tmp_path / "bad.csv"
    source.write_bytes(b"".join(lines))
    out = tmp_path / "out.csv"
    summary = score_file(Scorer(churn_bundle, "cpu"), source, out, chunk_rows=4)
    scored = _read(out)
    assert len(scored) == summary.rows_in == 12 and summary.rows_failed == 4
    errors = {i: r["error"] for i, r in enumerate(scored) if r["error"]}
    assert sorted(errors) == [2, 4, 6, 8]
    assert errors[8] == "row 9: every feature is blank or null: it would be scored as the all-median record"
    assert "expected 21 fields, got 3" in errors[2]
    assert "UTF-8" in errors[4]
    assert "field 'tenure'" in errors[6] and "lots" in errors[6]
    assert all(scored[i]["label"] == "" for i in errors)
    assert all(r["label"] in ("Yes", "No") for i, r in enumerate(scored) if i not in errors)


def test_missing_columns_fail_before_any_output(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    source = tmp_path / "thin.csv"
    source.write_text("customerID,tenure,monthly_charges,PAYMENT METHOD\nx,1,2,Bank\n")
    out = tmp_path / "out.csv"
    with pytest.raises(ScoringError, match="missing 18 column") as info:
        score_file(Scorer(churn_bundle, "cpu"), source, out)
    assert "Contract" in str(info.value)
    # near-miss headers are named, so a renamed export is fixed in one go
    assert "is 'monthly_charges' meant to be 'MonthlyCharges'?" in str(info.value)
    assert "is 'PAYMENT METHOD' meant to be 'PaymentMethod'?" in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == [source]
    lines = _telco_head(tmp_path / "dup.csv", 3).read_text().splitlines()
    twice = tmp_path / "twice.csv"  # two `tenure` columns: which one is meant is a guess
    twice.write_text("\n".join([lines[0] + ",tenure", *(line + ",999" for line in lines[1:])]) + "\n")
    with pytest.raises(ScoringError, match="named more than once in the input's header: tenure"):
        score_file(Scorer(churn_bundle, "cpu"), twice, out)
    assert not out.exists()
    titled = tmp_path / "titled.csv"  # a report's title above the header: the header is not line 1
    titled.write_text("\n".join(["Churn report, November", "", *lines]) + "\n")
    with pytest.raises(ScoringError, match="its header reads 'Churn report, November': is the header the first line"):
        score_file(Scorer(churn_bundle, "cpu"), titled, out)


def test_gzip_in_and_out_and_keep_all(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    plain = _telco_head(tmp_path / "in.csv", 20)
    source = tmp_path / "in.csv.gz"
    source.write_bytes(gzip.compress(plain.read_bytes()))
    out = tmp_path / "out.csv.gz"
    summary = score_file(Scorer(churn_bundle, "cpu"), source, out, keep_all=True)
    scored = _read(out)
    assert summary.rows_in == 20 and len(scored) == 20
    assert list(scored[0])[:2] == ["customerID", "gender"] and "Churn" in scored[0] and "probability" in scored[0]
    again = Scorer(churn_bundle, "cpu")  # a scored file scored again: its label, probability… are not kept twice
    with pytest.raises(ScoringError, match=r"label, probability, warning, error would be written twice.*--keep"):
        score_file(again, out, tmp_path / "again.csv", keep_all=True)
    with pytest.raises(ScoringError, match=r"input column\(s\) error would be written twice"):
        score_file(again, out, tmp_path / "again.csv", keep=["customerID", "error"])
    assert score_file(again, out, tmp_path / "again.csv", keep=["customerID", "Churn"]).rows_scored == 20
    # every line ending in two delimiters (two columns with no name): kept out, never "named twice" (an audit)
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("".join(line.rstrip("\r\n") + ",,\n" for line in plain.read_text().splitlines()))
    assert score_file(again, trailing, tmp_path / "trailing_out.csv", keep_all=True).rows_scored == 20
    assert list(_read(tmp_path / "trailing_out.csv")[0]) == list(scored[0])
    indexed = tmp_path / "indexed.csv"  # pandas' to_csv: one column with no name, the index, is kept
    indexed.write_text(
        "".join(f"{'' if i == 0 else i}," + line for i, line in enumerate(plain.read_text().splitlines(True)))
    )
    score_file(again, indexed, tmp_path / "indexed_out.csv", keep_all=True)
    assert list(_read(tmp_path / "indexed_out.csv")[0])[:2] == ["", "customerID"]


def test_interrupted_run_leaves_no_truncated_output(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    source = _telco_head(tmp_path / "in.csv", 400)  # NOTE: more blocks than the reader may read ahead
    out = tmp_path / "out.csv"

    def interrupt(rows: int, _: int) -> None:
        if rows >= 10:
            raise KeyboardInterrupt  # what Ctrl-C does half-way through a file

    with pytest.raises(KeyboardInterrupt):
        score_file(Scorer(churn_bundle, "cpu"), source, out, chunk_rows=10, progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    _assert_reader_stops()


def test_a_read_error_mid_file_reaches_the_caller(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """The reading thread's failure (here a gzip file cut in half) stops the run with that error
    and leaves no output file and no thread behind."""
    packed = gzip.compress(TELCO.read_bytes())
    source = tmp_path / "in.csv.gz"
    source.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(OSError, match=r"(?i)truncated"):
        score_file(Scorer(churn_bundle, "cpu"), source, tmp_path / "out.csv", chunk_rows=200)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv.gz"]
    _assert_reader_stops()


def _assert_reader_stops() -> None:
    """The read-ahead thread ends once its consumer has stopped."""
    deadline = time.monotonic() + 10
    while any(t.name == "tabserve-read" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "tabserve-read" for t in threading.enumerate())


def test_malformed_rows_keep_their_place_at_any_block_size(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    lines = _telco_head(tmp_path / "head.csv", 40).read_bytes().splitlines(keepends=True)
    lines[1] = b"first,row,broken\n"  # before any good row
    lines[17] = b'x,"quoted\nnewline",3\n'  # a multi-line record with too few fields
    lines.append(b"last,row\n")  # after the last good row
    source = tmp_path / "bad.csv"
    source.write_bytes(b"".join(lines))
    expected_ids = [line.split(b",")[0].decode() for line in lines[1:]]
    outputs = []
    for chunk in (1, 3, 50):
        out = tmp_path / f"out{chunk}.csv"
        summary = score_file(Scorer(churn_bundle, "cpu"), source, out, chunk_rows=chunk, keep=["customerID"])
        scored = _read(out)
        assert summary.rows_in == len(scored) == 41 and summary.rows_failed == 3
        assert [r["customerID"] for r in scored] == expected_ids
        assert [i for i, r in enumerate(scored) if r["error"]] == [0, 16, 40]
        assert scored[0]["error"] == "row 1: expected 21 fields, got 3"
        assert scored[40]["error"] == "row 41: expected 21 fields, got 2"
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_parquet_in_and_out_equals_csv(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    import pandas as pd
    import pyarrow.parquet as pq

    csv_in = _telco_head(tmp_path / "in.csv", 60)
    frame = pd.read_csv(csv_in)  # NOTE: typed columns (ints, floats, strings; TotalCharges stays text)
    frame["tenure"] = frame["tenure"].astype("int64")
    frame.to_parquet(tmp_path / "in.parquet")
    scorer = Scorer(churn_bundle, "cpu")
    score_file(scorer, csv_in, tmp_path / "from_csv.csv")
    summary = score_file(scorer, tmp_path / "in.parquet", tmp_path / "out.parquet", chunk_rows=16)
    assert summary.rows_in == 60 and summary.rows_failed == 0
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["customerID", "label", "probability", "warning", "error"]
    assert table.schema.field("probability").type == "double"
    provenance = table.schema.metadata  # which model scored the file travels with it
    assert (
        provenance[b"tabserve.model"] == b"churn"
        and provenance[b"tabserve.version"] == str(churn_bundle.version).encode()
    )
    assert float(provenance[b"tabserve.threshold"]) == churn_bundle.preprocess.threshold
    expected = _read(tmp_path / "from_csv.csv")
    assert table.column("customerID").to_pylist() == [r["customerID"] for r in expected]
    assert table.column("label").to_pylist() == [r["label"] for r in expected]
    assert table.column("probability").to_pylist() == [float(r["probability"]) for r in expected]
    score_file(scorer, tmp_path / "in.parquet", tmp_path / "back.csv.gz", keep_all=True)  # Parquet → CSV.gz
    back = _read(tmp_path / "back.csv.gz")
    assert [r["probability"] for r in back] == [r["probability"] for r in expected]
    assert back[0]["tenure"] == str(frame["tenure"][0])
    assert list(back[0])[-5:] == ["Churn", "label", "probability", "warning", "error"]


def test_parquet_typed_as_a_database_writes_it_scores_as_its_text(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """Amounts as DECIMAL(10, 2) (blanks null), small integers, dictionary-encoded text: the same
    answers as the CSV of the same rows."""
    import decimal

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_in = _telco_head(tmp_path / "in.csv", 60)
    frame = pd.read_csv(csv_in, dtype=str, keep_default_na=False)
    columns = {}
    for name in frame.columns:
        values = frame[name].tolist()
        if name in ("MonthlyCharges", "TotalCharges"):
            amounts = [decimal.Decimal(v) if v.strip() else None for v in values]
            columns[name] = pa.array(amounts, pa.decimal128(10, 2))
        elif name in ("tenure", "SeniorCitizen"):
            columns[name] = pa.array([int(v) for v in values], pa.int8() if name == "SeniorCitizen" else pa.int32())
        else:
            columns[name] = pa.array(values).dictionary_encode()
    pq.write_table(pa.table(columns), tmp_path / "typed.parquet")
    scorer = Scorer(churn_bundle, "cpu")
    score_file(scorer, csv_in, tmp_path / "from_csv.csv")
    summary = score_file(scorer, tmp_path / "typed.parquet", tmp_path / "typed.csv", chunk_rows=16)
    assert (summary.rows_in, summary.rows_failed) == (60, 0)
    expected, got = _read(tmp_path / "from_csv.csv"), _read(tmp_path / "typed.csv")
    assert [r["probability"] for r in got] == [r["probability"] for r in expected]


@pytest.mark.parametrize(("target", "task"), [("housing", "multiclass"), ("credit_amount", "regression")])
def test_multiclass_and_regression_files(tmp_path: Path, target: str, task: str) -> None:
    import numpy as np
    import onnxruntime as ort

    from tests.conftest import GERMAN, quick_config
    from training.pipeline import train

    result = train(quick_config(GERMAN, target, tmp_path / "models", name=task), say=lambda _: None)
    assert result.bundle is not None and result.pre.task == task
    out = tmp_path / "scored.parquet"
    summary = score_file(Scorer(result.bundle, "cpu"), GERMAN, out, chunk_rows=64)
    assert summary.rows_in == summary.rows_scored == 1000
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    with GERMAN.open(newline="") as fh:
        records = list(csv.DictReader(fh))
    pre = result.pre
    enc = pre.encode_records(records)
    session = ort.InferenceSession(str(result.bundle.path / bundle.MODEL_FILE), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"num": enc.num, "cat": enc.cat})[0]
    if task == "regression":
        assert table.column_names == ["value", "warning", "error"]
        np.testing.assert_array_equal(table.column("value").to_numpy(), expected[:, 0].astype(np.float64))
    else:
        assert table.column_names == ["label", *(f"probability_{label}" for label in pre.labels), "warning", "error"]
        assert table.column("label").to_pylist() == pre.labels_for(expected)
        for k, label in enumerate(pre.labels):
            np.testing.assert_array_equal(table.column(f"probability_{label}").to_numpy(), expected[:, k])


@pytest.mark.parametrize(
    "names",
    [
        {"Month-to-month": "none", "One year": "mild", "Two year": "severe"},
        {"Month-to-month": "1", "One year": "2", "Two year": "other"},
    ],
    ids=["a class named none", "numbers and text"],
)
def test_classes_named_like_missing_or_numbers_score_as_their_names(tmp_path: Path, names: dict[str, str]) -> None:
    """A class `none` (a missing number's spelling) or classes of digits beside one of text: one
    label type, each class its own name (before: `none` became NaN and scoring failed on the file)."""
    from tests.conftest import quick_config
    from training.pipeline import train

    rows = _read(_telco_head(tmp_path / "head.csv", 600))
    for row in rows:
        row["Contract"] = names[row["Contract"]]
    source = _write(tmp_path / "renamed.csv", rows)
    result = train(quick_config(source, "Contract", tmp_path / "models", name="contract"), say=lambda _: None)
    assert result.bundle is not None and result.pre.labels == sorted(names.values())
    out = tmp_path / "out.csv"
    summary = score_file(Scorer(result.bundle, "cpu"), source, out)
    assert summary.rows_in == summary.rows_scored == len(rows)
    assert {row["label"] for row in _read(out)} <= set(names.values())


def _cp1252_telco(path: Path, every: int = 20, byte: bytes = "ü".encode("cp1252")) -> tuple[Path, int]:
    """The telco file as a Windows export where every `every`-th row's customerID holds `byte` (not
    UTF-8): too few such lines at the top for the file to be read as cp1252. The file and those rows."""
    header, *rows = TELCO.read_bytes().splitlines(keepends=True)
    changed = [i for i in range(len(rows)) if i % every == every // 2 and rows[i].strip()]
    for i in changed:
        rows[i] = rows[i].replace(b"-", byte, 1)
    path.write_bytes(header + b"".join(rows))
    return path, len(changed)


def test_score_file_refuses_an_output_format_it_does_not_write(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    source = _telco_head(tmp_path / "in.csv", 20)
    for name in ["out.xlsx", "out.jsonl", "out.json", "out.tsv", "out.parquet.gz"]:
        with pytest.raises(ScoringError, match=r"not an output format; tabserve writes .*\.csv\.gz, \.parquet"):
            score_file(Scorer(churn_bundle, "cpu"), source, tmp_path / name)
        assert not list(tmp_path.glob("*out*")), name  # nothing under the name or a temporary one
    # the formats it does write keep working, gzip told by the name
    score_file(Scorer(churn_bundle, "cpu"), source, tmp_path / "out.txt.gz")
    assert len(_read(tmp_path / "out.txt.gz")) == 20


def test_rows_not_utf8_are_counted_with_the_encoding_that_reads_them(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    source, bad = _cp1252_telco(tmp_path / "cp1252.csv")
    summary = score_file(Scorer(churn_bundle, "cpu"), source, tmp_path / "out.csv")
    assert summary.rows_failed == summary.rows_not_utf8 == bad > KEPT_ERRORS  # all counted, not the kept errors
    assert summary.encoding_hint() == f"{bad:,} rows are not valid UTF-8: --encoding cp1252 reads them"
    # 0x81 is no character in cp1252: the hint points at --encoding without naming one
    source, bad = _cp1252_telco(tmp_path / "other.csv", byte=b"\x81")
    summary = score_file(Scorer(churn_bundle, "cpu"), source, tmp_path / "out.csv")
    assert summary.encoding_hint() == (
        f"{bad:,} rows are not valid UTF-8: pass --encoding with the file's encoding, or save it as UTF-8"
    )
    clean = score_file(Scorer(churn_bundle, "cpu"), _telco_head(tmp_path / "in.csv", 20), tmp_path / "out.csv")
    assert clean.encoding_hint() is None


def test_a_feature_with_no_value_in_any_row_is_said_once_for_the_file(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """A business-files audit: next month's export with tenure (or Contract) left empty scored every row
    as if tenure were missing, exit 0 and not a word, where a missing column is refused."""
    with TELCO.open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:300]
    for row in rows:
        row["tenure"], row["Contract"] = "", "n/a" if int(row["SeniorCitizen"]) else "Two-year-ish"
    source = tmp_path / "empty.csv"
    with source.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    scorer = Scorer(churn_bundle, "cpu")
    summary = score_file(scorer, source, tmp_path / "out.csv", chunk_rows=64)  # several blocks
    assert summary.rows_scored == 300 and summary.unvalued == ["tenure", "Contract"]
    assert score_file(scorer, TELCO, tmp_path / "whole.csv").unvalued == []
    # a newcomer's run: a column of text in every row fails every row; no row was scored as missing
    for row in rows:
        row["tenure"], row["MonthlyCharges"] = "12", "abc"
    with source.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    failed = score_file(scorer, source, tmp_path / "out.csv")
    assert (failed.rows_failed, failed.unvalued) == (300, [])


def test_a_utf16_file_is_read_by_its_byte_order_mark(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """A business-files audit: Excel's "Unicode Text" export (UTF-16 with a BOM) failed as "missing 19
    columns … is '\\x00S\\x00e\\x00n…' meant to be 'SeniorCitizen'?"; training refused it as no CSV file."""
    from training.reading import read_csv

    text = "".join(TELCO.read_text().splitlines(keepends=True)[:200])
    wide = tmp_path / "unicode.csv"
    wide.write_bytes(text.encode("utf-16"))  # with its BOM, little-endian here
    plain = tmp_path / "plain.csv"
    plain.write_text(text)
    scorer = Scorer(churn_bundle, "cpu")
    score_file(scorer, wide, tmp_path / "wide_out.csv")
    score_file(scorer, plain, tmp_path / "plain_out.csv")
    assert _read(tmp_path / "wide_out.csv") == _read(tmp_path / "plain_out.csv")
    frame = read_csv(wide)
    assert frame.attrs["read"].encoding == "utf-16" and list(frame.columns)[:2] == ["customerID", "gender"]


def test_a_file_kept_in_the_training_files_encoding_turns_utf8_at_its_first_bytes_beyond_ascii(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """A review: a model trained on a cp1252 file read a UTF-8 file whose first 64 KiB are ASCII all as
    cp1252 (`ü` came out `Ã¼`: ids rewritten, levels unseen and scored as missing). The first bytes beyond
    ASCII decide, as they do in the first 64 KiB; an encoding named for the file is read as named."""
    header, *rows = TELCO.read_text().splitlines(keepends=True)
    rows = [row.replace("-", "\u00fc", 1) if i >= 1000 else row for i, row in enumerate(rows)]
    ids = [row.split(",", 1)[0] for row in rows]
    source, out = tmp_path / "utf8.csv", tmp_path / "out.csv"
    source.write_text(header + "".join(rows), encoding="utf-8")
    assert source.read_bytes()[:HEADER_PROBE].isascii()
    scorer, trained = Scorer(churn_bundle, "cpu"), Reading(encoding="cp1252")

    def scored(reading: Reading) -> tuple[dict[str, str], list[str]]:
        summary = score_file(scorer, open_source(source, reading=reading), out)
        assert summary.rows_scored == len(rows)
        return summary.read_as_utf8, [row["customerID"] for row in _read(out)]

    assert scored(trained) == ({"": "cp1252"}, ids)
    named = scored(trained.but(None, "cp1252", None))
    assert named[0] == {} and sum("\u00c3\u00bc" in i for i in named[1]) == len(rows) - 1000
    source.write_bytes(source.read_text(encoding="utf-8").encode("cp1252"))  # a cp1252 file stays cp1252
    assert scored(trained) == ({}, ids)
    # a UTF-8 start chose UTF-8 even where cp1252 was named for the file
    source.write_text(header + "".join(r.replace("-", "\u00fc", 1) for r in rows[:1000]) + "".join(rows[1000:]))
    assert not source.read_bytes()[:HEADER_PROBE].isascii()
    assert sum("\u00c3\u00bc" in i for i in scored(trained.but(None, "cp1252", None))[1]) == len(rows)


@pytest.mark.parametrize("cut", range(1, 8))
def test_the_first_character_beyond_ascii_decides_wherever_a_read_cuts_it(cut: int) -> None:
    """A UTF-8 character cut by a read is completed before it decides; a cp1252 byte at a read's end is no
    UTF-8 lead, whatever follows it."""
    for text, encoding, utf8 in [
        ("abcd\u00fc\u00e9,x\n", "utf-8", True),
        ("abcd\u00e9,\u00e9t\u00e9\n", "cp1252", False),
    ]:
        data = text.encode(encoding)
        stream = _Transcoded(b"", io.BytesIO(data), "cp1252", "x", tentative=True)
        read = b"".join(iter(functools.partial(stream.read, cut), b""))
        assert (read.decode("utf-8"), stream.switched) == (text, utf8), (cut, encoding)


def test_what_decides_the_switch_to_utf8_is_the_first_bytes_beyond_ascii_of_a_single_byte_code_page(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """A review: GB18030 text can be valid UTF-8 (`职员`), and was switched; one stray cp1252 byte anywhere in a
    64 MiB block kept a UTF-8 file in cp1252; a flag named over a byte-order mark read the mark as text."""
    header, *rows = TELCO.read_text().splitlines(keepends=True)
    ids = [row.split(",", 1)[0] for row in rows]
    source, out = tmp_path / "in.csv", tmp_path / "out.csv"
    scorer = Scorer(churn_bundle, "cpu")

    def scored(reading: Reading) -> tuple[dict[str, str], list[str]]:
        summary = score_file(scorer, open_source(source, reading=reading), out)
        return summary.read_as_utf8, [row["customerID"] for row in _read(out)]

    late = [row.replace("-", "\u804c\u5458", 1) if i >= 1000 else row for i, row in enumerate(rows)]
    source.write_bytes((header + "".join(late)).encode("gb18030"))
    assert "\u804c\u5458".encode("gb18030").decode("utf-8") != "\u804c\u5458"  # valid UTF-8, other text
    assert scored(Reading(encoding="gb18030")) == ({}, [row.split(",", 1)[0] for row in late])
    # UTF-8 from the first bytes beyond ASCII; a cp1252 byte 500 rows on is that row's error, not the file's
    late = [row.replace("-", "\u00fc", 1) if i >= 1000 else row for i, row in enumerate(rows)]
    data = (header + "".join(late)).encode()
    stray = data.index(late[1500].encode())
    source.write_bytes(data[:stray] + data[stray:].replace("\u00fc".encode(), b"\xfc", 1))
    summary = score_file(scorer, open_source(source, reading=Reading(encoding="cp1252")), out)
    assert summary.read_as_utf8 == {"": "cp1252"} and summary.rows_not_utf8 == 1
    # a byte-order mark wins over a flag: the header is not read as `ï»¿customerID`
    source.write_bytes(codecs.BOM_UTF8 + (header + "".join(rows)).encode())
    assert scored(Reading().but(None, "cp1252", None))[1] == ids
    # the mark wins over the bundle's code page too, a stray byte in the first lines or not (that row's error)
    source.write_bytes(
        codecs.BOM_UTF8 + (header + rows[0].replace("-", "\u00fc", 1)).encode("cp1252") + "".join(rows[1:]).encode()
    )
    summary = score_file(scorer, open_source(source, reading=Reading(encoding="cp1252")), out)
    assert (summary.rows_in, summary.rows_failed, summary.rows_not_utf8) == (len(rows), 1, 1)
    source.write_bytes((header + "".join(rows)).encode("utf-16"))
    assert scored(Reading().but(None, "utf-8", None))[1] == ids
