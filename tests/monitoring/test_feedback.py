"""Outcomes as sent, and the join across days: a CSV's ids and labels stay text; an outcome that
arrives days after its prediction still labels it in the export."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from monitoring.feedback import Feedback, records_of
from monitoring.log import LogLocation
from monitoring.report import LogReader
from service import bundle
from tests.conftest import GERMAN, quick_config


def test_csv_outcomes_stay_as_sent() -> None:
    body = b"customerID,Churn\n007,True\n1e3,No\n,Yes\n"
    assert records_of(body, "text/csv") == [
        {"customerID": "007", "Churn": "True"},
        {"customerID": "1e3", "Churn": "No"},
        {"customerID": "", "Churn": "Yes"},  # empty: refused as a missing id when checked
    ]


def test_an_outcome_days_later_labels_its_prediction(tmp_path: Path) -> None:
    def at(day: str) -> pa.Array:
        return pa.array([f"2024-01-{day}T10:00:00"]).cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))

    predicted = tmp_path / "churn" / "date=2024-01-01"
    predicted.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {"_at": at("01"), "customerID": ["a"], "tenure": pa.array([3.0], pa.float32()), "_probability": [0.7]}
        ),
        predicted / "p.parquet",
    )
    outcomes = tmp_path / "churn" / "feedback" / "date=2024-01-09"
    outcomes.mkdir(parents=True)
    pq.write_table(
        pa.table({"customerID": ["a"], "_outcome": ["Yes"], "_target": ["Churn"], "_at": at("09")}),
        outcomes / "f.parquet",
    )
    out = tmp_path / "train.parquet"
    assert LogReader(tmp_path, "churn").export(out, labelled=True) == 1
    assert pq.read_table(out).to_pylist() == [{"customerID": "a", "tenure": 3.0, "Churn": "Yes"}]
    # an audit: DuckDB took a thread per host core whatever the CPU budget (`--cpus`, affinity, quota)
    reader = LogReader(tmp_path, "churn", threads=1)
    assert reader.db.execute("SELECT current_setting('threads')").fetchall() == [(1,)]
    assert reader.export(out, labelled=True) == 1
    quoted = tmp_path / "it's.csv"  # the name went into DuckDB's SQL as written: a syntax error
    assert LogReader(tmp_path, "churn").export(quoted, labelled=True) == 1 and quoted.read_text().count("\n") == 2
    for wrong, said in [("out.json", "name a .parquet or .csv"), ("churn/again.parquet", "inside the log's churn/")]:
        with pytest.raises(ValueError, match=said):  # JSON was written as Parquet; a file in the log counted twice
            LogReader(tmp_path, "churn").export(tmp_path / wrong, labelled=False)


def test_a_restart_reads_the_newest_outcomes_and_no_older_day_than_it_needs(
    tmp_path: Path, churn_bundle: bundle.BundleRef
) -> None:
    """Found by a monitoring audit: a restart read every outcome ever stored into memory to keep the
    newest `window` of them (a year's feedback at start-up). Days are read newest first until enough."""
    from service.features import Preprocess

    def at(day: str, hour: int = 10) -> pa.Array:
        return pa.array([f"2024-01-{day}T{hour:02d}:00:00"]).cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))

    def write(folder: Path, name: str, table: pa.Table) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / name)

    for customer, p in [("a", 0.9), ("b", 0.2), ("c", 0.6)]:
        predicted = {"_at": at("01"), "_version": [1], "customerID": [customer], "_probability": [p]}
        write(tmp_path / "churn" / "date=2024-01-01", f"{customer}.parquet", pa.table(predicted))
    feedback = tmp_path / "churn" / "feedback"
    for day, hour, customer, outcome in [("02", 9, "b", "No"), ("02", 11, "a", "Yes"), ("03", 8, "c", "Yes"), ("03", 9, "a", "No")]:  # fmt: skip
        sent = {"customerID": [customer], "_outcome": [outcome], "_target": ["Churn"], "_at": at(day, hour)}
        write(feedback / f"date=2024-01-{day}", f"{customer}{hour}.parquet", pa.table(sent))
    reader = Feedback(LogLocation.of(tmp_path), "churn", Preprocess.load(churn_bundle.path / bundle.PREPROCESS_FILE))
    assert [(x.key, x.outcome) for x in reader.stored(3)] == [(("b",), "No"), (("c",), "Yes"), (("a",), "No")]
    (feedback / "date=2024-01-02" / "b9.parquet").write_bytes(b"not parquet")  # a day it need not open
    window = reader.stored(2)
    assert [(x.key, x.outcome, x.version) for x in window] == [(("c",), "Yes", 1), (("a",), "No", 1)]
    assert [float(x.outputs[1]) for x in window] == pytest.approx([0.6, 0.9])


def test_a_feedback_file_cut_short_is_set_aside_by_any_reader_and_read_by_nothing(
    tmp_path: Path, churn_bundle: bundle.BundleRef, caplog: pytest.LogCaptureFixture
) -> None:
    """The review: a cut-short file in a day's feedback folder made `stored()` raise (a restarted service's
    live window started empty) and the export fail until someone removed it; only a merge logged it. Each
    reader renames it `.<name>.unreadable` beside it, logs it, and reads the rest."""
    from service.features import Preprocess

    at = pa.array([time.time_ns() // 1000], pa.timestamp("us", tz="UTC"))
    predicted = tmp_path / "churn" / "date=2024-01-01"
    predicted.mkdir(parents=True)
    pq.write_table(
        pa.table({"_at": at, "_version": [1], "customerID": ["a"], "_probability": [0.9]}), predicted / "p.parquet"
    )
    day = tmp_path / "churn" / "feedback" / "date=2024-01-02"
    day.mkdir(parents=True)
    sent = pa.table(
        {
            "customerID": ["a"],
            "_outcome": ["Yes"],
            "_target": ["Churn"],
            "_at": pc.add(at, pa.scalar(1, pa.duration("us"))),
        }
    )
    pq.write_table(sent, day / "a.parquet")
    cut = day / "cut.parquet"
    half = (day / "a.parquet").read_bytes()[:100]  # a disk that filled mid-write
    cut.write_bytes(half)
    reader = Feedback(LogLocation.of(tmp_path), "churn", Preprocess.load(churn_bundle.path / bundle.PREPROCESS_FILE))
    with caplog.at_level(logging.ERROR, "tabserve.feedback"):
        assert [(x.key, x.outcome) for x in reader.stored(5)] == [(("a",), "Yes")]
    aside = day / ".cut.parquet.unreadable"
    assert not cut.exists() and aside.read_bytes() == half
    assert f"{cut} is not readable Parquet" in caplog.text and str(aside) in caplog.text
    cut.write_bytes(half)  # another, under the same name: the export sets it aside beside the first
    assert LogReader(tmp_path, "churn").export(tmp_path / "out.csv", labelled=True) == 1
    assert not cut.exists() and (day / ".cut.parquet.2.unreadable").read_bytes() == aside.read_bytes() == half


def test_a_feedback_file_of_other_columns_is_set_aside_and_the_day_merged(
    tmp_path: Path, churn_bundle: bundle.BundleRef, caplog: pytest.LogCaptureFixture
) -> None:
    """The review: a hand-written file with `customerID` as int64 read, but could not be merged ("Unable to
    merge … int64 vs string") on every call: no merge that day, its files kept growing. Checked against
    the columns feedback writes, it is set aside as a file cut short is, and the rest are merged."""
    from monitoring.feedback import COMPACT_FILES
    from service.features import Preprocess

    at = pa.array([time.time_ns() // 1000 - 10**6], pa.timestamp("us", tz="UTC"))
    predicted = tmp_path / "churn" / "date=2024-01-01"
    predicted.mkdir(parents=True)
    pq.write_table(
        pa.table({"_at": at, "_version": [1], "customerID": ["a"], "_probability": [0.9]}), predicted / "p.parquet"
    )
    day = tmp_path / "churn" / "feedback" / f"date={time.strftime('%Y-%m-%d', time.gmtime())}"
    day.mkdir(parents=True)
    one = {"customerID": ["z"], "_outcome": ["No"], "_target": ["Churn"], "_at": at}
    for i in range(COMPACT_FILES):
        pq.write_table(pa.table(one), day / f"old-{i:03d}.parquet")
    pq.write_table(pa.table({**one, "customerID": pa.array([7], pa.int64())}), day / "by-hand.parquet")
    reader = Feedback(LogLocation.of(tmp_path), "churn", Preprocess.load(churn_bundle.path / bundle.PREPROCESS_FILE))
    with caplog.at_level(logging.ERROR, "tabserve.feedback"):
        assert reader.submit([{"customerID": "a", "Churn": "Yes"}]).stored == 1
    assert len(list(day.glob("*.parquet"))) == 1 and (day / ".by-hand.parquet.unreadable").exists()
    assert f"{day / 'by-hand.parquet'} holds the id customerID as int64, not text" in caplog.text
    assert "failed" not in caplog.text  # the merge itself went through
    assert pq.read_table(next(day.glob("*.parquet")))["customerID"].to_pylist() == ["z"] * COMPACT_FILES + ["a"]


def test_a_file_is_submitted_in_chunks_all_checked_before_any_is_stored(
    tmp_path: Path, churn_bundle: bundle.BundleRef
) -> None:
    """The CLI read a file as one call and refused one of more than 100,000 outcomes; in chunks, a bad
    record in the last still stores nothing, and an id given two outcomes in two chunks is refused."""
    from service.errors import InputError
    from service.features import Preprocess

    predicted = tmp_path / "churn" / "date=2024-01-01"
    predicted.mkdir(parents=True)
    at = pa.array(["2024-01-01T10:00:00"] * 3).cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))
    logged = {"_at": at, "_version": [1] * 3, "customerID": ["a", "b", "c"], "_probability": [0.9, 0.2, 0.6]}
    pq.write_table(pa.table(logged), predicted / "p.parquet")
    sent = [("a", "Yes"), ("b", "No"), ("x", "Yes"), ("c", "Yes"), ("a", "No")]
    records = [{"customerID": customer, "Churn": outcome} for customer, outcome in sent]
    feedback = Feedback(LogLocation.of(tmp_path), "churn", Preprocess.load(churn_bundle.path / bundle.PREPROCESS_FILE))
    with pytest.raises(InputError) as refused:
        feedback.submit_file(records, chunk=2)
    assert [(d["record"], d["field"]) for d in refused.value.details] == [(2, "customerID"), (4, "customerID")]
    assert "has another outcome in record 0" in refused.value.details[1]["message"]
    assert not (tmp_path / "churn" / "feedback").exists()
    done = feedback.submit_file(records, partial=True, chunk=2)
    assert done.stored == 3 and [d["record"] for d in done.refused] == [2, 4]
    stored = pa.concat_tables(pq.read_table(f) for f in sorted((tmp_path / "churn" / "feedback").rglob("*.parquet")))
    assert sorted(zip(stored["customerID"].to_pylist(), stored["_outcome"].to_pylist(), strict=True)) == [
        ("a", "Yes"), ("b", "No"), ("c", "Yes")
    ]  # fmt: skip
    # a conflict within a later chunk named the other record by its place in the chunk (`record 0`), and
    # the CLI's file rows (`row 4`) sat beside record indices: each is named as the caller numbers them
    late = [{"customerID": c, "Churn": o} for c, o in [("b", "No"), ("c", "Yes"), ("a", "Yes"), ("a", "No")]]
    with pytest.raises(InputError) as refused:
        feedback.submit_file(late, chunk=2, place=lambda i: f"row {i + 1}")
    assert refused.value.details[0]["message"] == "id a has another outcome in row 3 of this submission"
    with pytest.raises(InputError) as refused:
        feedback.submit_file(records, chunk=2, place=lambda i: f"row {i + 1}")
    assert "has another outcome in row 1 of" in refused.value.details[1]["message"]
    again = [{"customerID": c, "Churn": o} for c, o in [("a", "Yes"), ("a", "yes"), ("b", "No"), ("a", "Yes")]]
    done = feedback.submit_file(again, chunk=2)  # a repeat within a chunk and across chunks: stored once
    assert (done.stored, done.duplicates, done.refused) == (2, [1, 3], [])


def _scored(tmp_path: Path, target: str, sep: str, amounts: str = "", **config: Any) -> tuple[bundle.BundleRef, Path]:
    """A real german model (an id column added; `amounts="comma"`: credit_amount in hundreds with a
    decimal comma, as a European export writes it; `config`: training options), trained, then its file
    scored into a log."""
    from training.pipeline import train

    with GERMAN.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        row["loan_id"] = f"L{i:04d}"
        if amounts == "comma":
            row["credit_amount"] = f"{int(row['credit_amount']) / 100:.2f}".replace(".", ",")
    data = tmp_path / "german.csv"
    with data.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["loan_id", *(k for k in rows[0] if k != "loan_id")], delimiter=sep)
        writer.writeheader()
        writer.writerows(rows)
    result = train(quick_config(data, target, tmp_path / "models", name="m", **config), say=lambda _: None)
    assert result.bundle is not None
    log = tmp_path / "log"
    score = ["score", "--model", "m", "--models", str(tmp_path / "models"), "--input", str(data)]
    done = subprocess.run(
        [sys.executable, "-m", "tabserve.cli", *score, "--output", str(tmp_path / "scored.csv"), "--log", str(log)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return result.bundle, log


def test_regression_outcomes_are_read_as_the_training_file_wrote_the_target(tmp_path: Path) -> None:
    ref, log = _scored(tmp_path, "credit_amount", ";", amounts="comma")
    assert ref.preprocess.task == "regression" and ref.preprocess.read.decimal == ","
    feedback = Feedback(LogLocation.of(log), "m", ref.preprocess)
    # `11,69` is 11.69 in the file the model learnt from (float() refused it as "not a number")
    body = "loan_id;credit_amount\nL0000;11,69\nL0001; 59,51 \nL0002;1.234,50\nL0003;\n"
    stored = feedback.submit(records_of(body.encode(), "text/csv"), partial=True)
    assert [float(item.outcome) for item in stored.labelled] == [11.69, 59.51, 1234.5]
    assert stored.refused == [
        {"record": 3, "field": "credit_amount", "message": "the outcome (credit_amount) is missing"}
    ]


def test_an_integer_class_written_as_a_float_is_that_class(tmp_path: Path) -> None:
    ref, log = _scored(tmp_path, "number_of_existing_credits_at_this_bank", ",")
    assert ref.preprocess.task == "multiclass" and 2 in ref.preprocess.labels
    feedback = Feedback(LogLocation.of(log), "m", ref.preprocess)
    # pandas writes an integer column with gaps as `2.0`; training merges it with `2` (it was refused)
    body = "loan_id,number_of_existing_credits_at_this_bank\nL0000,2.0\nL0001,1\nL0002,2.5\nL0003,NA\n"
    stored = feedback.submit(records_of(body.encode(), "text/csv"), partial=True)
    assert [item.outcome for item in stored.labelled] == ["2", "1"]
    # `NA` is a missing outcome, as training read its target (not "not a label")
    assert [(d["record"], d["message"]) for d in stored.refused] == [
        (2, "'2.5' is not a label of m (its labels: 1, 2, 3, 4)"),
        (3, "the outcome (number_of_existing_credits_at_this_bank) is missing"),
    ]


def test_one_outcome_per_call_is_merged_into_few_files_and_reads_the_same(tmp_path: Path) -> None:
    """Found by a monitoring audit: every call wrote a Parquet file (300 calls, 303 files; 86,000 a day
    at one a second) which every reader lists and opens. Past COMPACT_FILES a day's are merged."""
    from monitoring.feedback import COMPACT_FILES

    ref, log = _scored(tmp_path, "creditability", ",")
    feedback = Feedback(LogLocation.of(log), "m", ref.preprocess)
    sent = COMPACT_FILES * 2 + 5
    for i in range(sent):  # the last outcome for L0000 is "bad": a later one replaces an earlier
        outcome = "bad" if i == sent - 1 else "good"
        feedback.submit([{"loan_id": "L0000" if i in (0, sent - 1) else f"L{i:04d}", "creditability": outcome}])
    files = sorted((log / "m" / "feedback").rglob("*.parquet"))
    assert len(files) <= COMPACT_FILES + 2, len(files)
    rows = pa.concat_tables([pq.read_table(f) for f in files])
    assert rows.num_rows == sent  # every outcome kept, once
    exported = tmp_path / "labelled.csv"
    assert LogReader(log, "m").export(exported, labelled=True) == sent - 1
    labelled = {r["loan_id"]: r["creditability"] for r in csv.DictReader(exported.open())}
    assert labelled["L0000"] == "bad" and len(labelled) == sent - 1


def test_merged_files_are_merged_again_so_a_day_holds_few_files(tmp_path: Path) -> None:
    """Found by a feedback audit: merged files were never merged again (844 one-outcome calls left 31
    files; ~1,300 a day at one a second). Two writers at once, one outcome a call: the day's files stay
    bounded, and every outcome is on disk exactly once."""
    import threading

    from monitoring.feedback import COMPACT_FILES, MERGED_FILES

    ref, log = _scored(tmp_path, "creditability", ",")
    sent = (COMPACT_FILES + 1) * (MERGED_FILES + 2)

    def send(ids: range) -> None:
        feedback = Feedback(LogLocation.of(log), "m", ref.preprocess)
        for i in ids:
            feedback.submit([{"loan_id": f"L{i:04d}", "creditability": "good"}])

    writers = [threading.Thread(target=send, args=(range(k, sent, 2),)) for k in (0, 1)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    files = sorted((log / "m" / "feedback").rglob("*.parquet"))
    merged = [f for f in files if f.name.startswith("merged-")]
    assert len(merged) < MERGED_FILES and len(files) <= COMPACT_FILES + MERGED_FILES, [f.name for f in files]
    ids = pa.concat_tables([pq.read_table(f) for f in files])["loan_id"].to_pylist()
    assert sorted(ids) == [f"L{i:04d}" for i in range(sent)]  # none lost, none twice


def test_a_file_gets_the_same_answer_whatever_its_chunk_size(tmp_path: Path, churn_bundle: bundle.BundleRef) -> None:
    """Found by review: `[a Yes, b No, a No, a no]` in chunks of 2 refused record 2 (a conflict with record 0,
    an earlier chunk) but listed record 3, its repeat within its chunk, as a duplicate stored once; one call
    refused both. A repeat shares its first copy's fate however the file is cut."""
    from service.errors import InputError
    from service.features import Preprocess

    predicted = tmp_path / "churn" / "date=2024-01-01"
    predicted.mkdir(parents=True)
    at = pa.array(["2024-01-01T10:00:00"] * 2).cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))
    logged = {"_at": at, "_version": [1] * 2, "customerID": ["a", "b"], "_probability": [0.9, 0.2]}
    pq.write_table(pa.table(logged), predicted / "p.parquet")
    feedback = Feedback(LogLocation.of(tmp_path), "churn", Preprocess.load(churn_bundle.path / bundle.PREPROCESS_FILE))
    sent = [("a", "Yes"), ("b", "No"), ("a", "No"), ("a", "no"), ("x", "Yes"), ("x", "yes"), ("a", "Yes"), ("b", "No")]
    records = [{"customerID": customer, "Churn": outcome} for customer, outcome in sent]

    def answer(chunk: int | None) -> tuple[int, list[int], list[tuple[int, str]], list[tuple[int, str]]]:
        """What one call (None) or a file in chunks answers, with `partial` and without."""
        with pytest.raises(InputError) as whole:
            feedback.submit(records) if chunk is None else feedback.submit_file(records, chunk=chunk)
        if chunk is None:
            got = feedback.submit(records, partial=True)
        else:
            got = feedback.submit_file(records, partial=True, chunk=chunk)
        said = [(d["record"], d["message"]) for d in whole.value.details]
        return got.stored, got.duplicates, [(d["record"], d["message"]) for d in got.refused], said

    single = answer(None)
    assert single[:2] == (2, [6, 7]) and [record for record, _ in single[2]] == [2, 3, 4, 5]
    assert single[2][1][1] == "id a has another outcome in record 0 of this submission"
    assert single[2][2][1] == single[2][3][1]  # the repeat of a never-scored id: refused as its first was
    for chunk in (1, 2, 3, len(records)):
        assert answer(chunk) == single, chunk


def _utf8_feedback(tmp_path: Path, trained: str) -> tuple[list[str], list[str]]:
    """A model trained on a file in `trained`, and `tabserve feedback` on a UTF-8 file of its outcomes whose
    first 64 KiB are ASCII (choose_encoding keeps the training file's encoding), its last note `café`."""
    ref, log = _scored(tmp_path, "creditability", ",", encoding=trained)
    assert ref.preprocess.read.encoding == trained
    rows = [f"L{i:04d},good,{'x' * 80}" for i in range(999)] + ["L0999,good,caf\u00e9"]
    (tmp_path / "utf8.csv").write_text("loan_id,creditability,note\n" + "\n".join(rows) + "\n", encoding="utf-8")
    feedback = ["feedback", "--model", "m", "--models-dir", str(tmp_path / "models"), "--log", str(log)]
    return [sys.executable, "-m", "tabserve.cli", *feedback, "--input", str(tmp_path / "utf8.csv")], rows


def test_a_file_read_in_the_training_files_encoding_past_an_ascii_start_is_said(tmp_path: Path) -> None:
    """The review: a model trained on cp1252 given a UTF-8 file whose first 64 KiB are ASCII read it all as
    cp1252 without a word (`café` came out `cafÃ©`; a non-ASCII id refused as never scored). A file that is
    not ASCII, read without --encoding, is said with the encoding used, the words it reads, how to choose."""
    run, rows = _utf8_feedback(tmp_path, "cp1252")
    said = subprocess.run(run, capture_output=True, text=True, check=False)
    assert said.returncode == 0 and "1,000 outcome(s) stored" in said.stdout, said.stderr
    assert (
        "warning" not in said.stderr
        and "is valid UTF-8: read as UTF-8, not as cp1252 (pass --encoding cp1252 if that is wrong)" in said.stderr
    )
    (tmp_path / "cp.csv").write_bytes((tmp_path / "utf8.csv").read_text(encoding="utf-8").encode("cp1252"))
    said = subprocess.run([*run[:-1], str(tmp_path / "cp.csv")], capture_output=True, text=True, check=False)
    assert (
        said.returncode == 0 and "was read as cp1252, the training file's encoding, reading 'caf\u00e9'" in said.stderr
    )
    said = subprocess.run([*run, "--encoding", "utf-8"], capture_output=True, text=True, check=False)
    assert said.returncode == 0 and "warning" not in said.stderr, said.stderr
    # a review: the words were found by \w*[^ascii]\w*, quadratic on a long run of letters (100,000: ~50 s)
    long = [*rows[:-2], "L0998,good," + "a" * 100_000, "L0999,good," + "ab" * 30 + "\u00e9"]
    (tmp_path / "long.csv").write_bytes(("loan_id,creditability,note\n" + "\n".join(long) + "\n").encode("cp1252"))
    said = subprocess.run([*run[:-1], str(tmp_path / "long.csv")], capture_output=True, text=True, timeout=60)
    assert said.returncode == 0 and f"reading '{'ab' * 20}\u00e9'" in said.stderr, said.stderr  # 40 letters a side


def _logged(tmp_path: Path, customers: list[str]) -> pa.Array:
    """A prediction of each customer logged a second ago; its time."""
    at = pa.array([time.time_ns() // 1000 - 10**6], pa.timestamp("us", tz="UTC"))
    predicted = tmp_path / "churn" / "date=2024-01-01"
    predicted.mkdir(parents=True)
    for customer in customers:
        sent = {"_at": at, "_version": [1], "customerID": [customer], "_probability": [0.9]}
        pq.write_table(pa.table(sent), predicted / f"{customer}.parquet")
    return at


def test_feedback_files_written_by_pandas_or_with_other_string_and_time_types_are_read(
    tmp_path: Path, churn_bundle: bundle.BundleRef, caplog: pytest.LogCaptureFixture
) -> None:
    """The review: the check wanted string and timestamp[us, UTC] exactly, so a file pandas wrote (large_string,
    nanoseconds), as the docs advise rewriting one, was set aside where the log was writable, read where not.
    Text of any Arrow kind and a time with any zone and unit are read as feedback writes them."""
    import pandas as pd

    from service.features import Preprocess

    _logged(tmp_path, ["a", "b", "c"])
    day = tmp_path / "churn" / "feedback" / f"date={time.strftime('%Y-%m-%d', time.gmtime())}"
    day.mkdir(parents=True)
    now = pd.Timestamp.now(tz="UTC")
    frame = pd.DataFrame({"customerID": ["a"], "_outcome": ["Yes"], "_target": ["Churn"], "_at": [now]})
    frame.to_parquet(day / "pandas.parquet")
    assert pq.read_schema(day / "pandas.parquet").field("_outcome").type == pa.large_string()
    other = {
        "customerID": pa.array(["b"]).dictionary_encode(),
        "_outcome": pa.array(["No"], pa.string_view()),
        "_target": ["Churn"],
        "_at": pa.array([now.value + 7], pa.timestamp("ns", tz="Europe/Paris")),
    }
    pq.write_table(pa.table(other), day / "other.parquet")
    naive = {"customerID": ["c"], "_outcome": ["No"], "_target": ["Churn"], "_at": pa.array([0], pa.timestamp("us"))}
    pq.write_table(pa.table(naive), day / "naive.parquet")  # which instant it is is a guess: set aside
    reader = Feedback(LogLocation.of(tmp_path), "churn", Preprocess.load(churn_bundle.path / bundle.PREPROCESS_FILE))
    with caplog.at_level(logging.ERROR, "tabserve.feedback"):
        assert sorted((x.key, x.outcome) for x in reader.stored(5)) == [(("a",), "Yes"), (("b",), "No")]
        assert LogReader(tmp_path, "churn").export(tmp_path / "out.csv", labelled=True) == 2
    assert sorted(p.name for p in day.iterdir()) == [".naive.parquet.unreadable", "other.parquet", "pandas.parquet"]
    assert "holds _at as timestamp[us], not a time with a zone" in caplog.text


def test_a_failure_that_is_not_the_files_sets_nothing_aside(
    tmp_path: Path, churn_bundle: bundle.BundleRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review: any ArrowException set a file aside for good, so a valid file read under memory pressure
    (ArrowMemoryError) was renamed out of every reader. Only a file pyarrow finds invalid is."""
    from service.features import Preprocess

    at = _logged(tmp_path, ["a"])
    day = tmp_path / "churn" / "feedback" / "date=2024-01-02"
    day.mkdir(parents=True)
    sent = {"customerID": ["a"], "_outcome": ["Yes"], "_target": ["Churn"], "_at": at}
    pq.write_table(pa.table(sent), day / "a.parquet")

    def out_of_memory(*_: Any, **__: Any) -> None:
        raise pa.ArrowMemoryError("malloc of size 64 failed")

    reader = Feedback(LogLocation.of(tmp_path), "churn", Preprocess.load(churn_bundle.path / bundle.PREPROCESS_FILE))
    monkeypatch.setattr(pq, "read_table", out_of_memory)
    with pytest.raises(pa.ArrowMemoryError):
        reader.stored(5)
    monkeypatch.setattr(pq, "read_schema", out_of_memory)
    with pytest.raises(pa.ArrowMemoryError):
        LogReader(tmp_path, "churn")
    monkeypatch.undo()
    assert [p.name for p in day.iterdir()] == ["a.parquet"]
    assert [(x.key, x.outcome) for x in reader.stored(5)] == [(("a",), "Yes")]


def test_a_day_merged_by_another_worker_while_read_is_read_again(
    tmp_path: Path, churn_bundle: bundle.BundleRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review: a file gone between the listing and its reading was skipped, so a day another worker merged
    meanwhile read as no outcomes at all (70 files listed, merged: a restart's live window empty, nothing said).
    The day is listed again and read again."""
    from monitoring.feedback import COMPACT_FILES, compact
    from service.features import Preprocess

    customers = [f"c{i:02d}" for i in range(COMPACT_FILES + 6)]
    at = _logged(tmp_path, customers)
    day = tmp_path / "churn" / "feedback" / f"date={time.strftime('%Y-%m-%d', time.gmtime())}"
    day.mkdir(parents=True)
    for customer in customers:
        sent = {
            "customerID": [customer],
            "_outcome": ["Yes"],
            "_target": ["Churn"],
            "_at": pc.add(at, pa.scalar(1, pa.duration("us"))),
        }
        pq.write_table(pa.table(sent), day / f"{customer}.parquet")
    location = LogLocation.of(tmp_path)
    listing = LogLocation.files

    def listed_then_merged(self: LogLocation, model: str, kind: str = "") -> list[str]:
        files = listing(self, model, kind)
        compact(location, str(day))  # another worker, just after this one listed the day
        return files

    monkeypatch.setattr(LogLocation, "files", listed_then_merged)
    reader = Feedback(location, "churn", Preprocess.load(churn_bundle.path / bundle.PREPROCESS_FILE))
    assert len(list(day.glob("*.parquet"))) == COMPACT_FILES + 6
    assert sorted(x.key[0] for x in reader.stored(100)) == customers
    assert len(list(day.glob("*.parquet"))) == 1  # it was merged under the reader


def test_a_day_merged_faster_than_it_is_read_whole_is_read_from_what_is_new(
    tmp_path: Path, churn_bundle: bundle.BundleRef, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The review: every try read the whole day again, so merges coming faster than one reading of the day
    failed all READ_TRIES and the OSError emptied the whole live window. Files read are kept; only the files
    new to a listing are read; a day that never reads whole is skipped, named in the log."""
    from monitoring import feedback
    from service.features import Preprocess

    monkeypatch.setattr(feedback, "COMPACT_FILES", 0)  # every merge takes the small files, leaves merged ones
    customers = [f"c{i:03d}" for i in range(100)]
    at = pc.add(_logged(tmp_path, customers), pa.scalar(1, pa.duration("us")))
    day = tmp_path / "churn" / "feedback" / f"date={time.strftime('%Y-%m-%d', time.gmtime())}"
    day.mkdir(parents=True)
    waiting = iter(customers)

    def write(name: str, n: int) -> None:
        sent = [next(waiting) for _ in range(n)]
        table = {"customerID": sent, "_outcome": ["Yes"] * n, "_target": ["Churn"] * n, "_at": pa.repeat(at[0], n)}
        pq.write_table(pa.table(table), day / name)

    for name in ("merged-!a", "merged-!b", "merged-!c", "s-d", "s-e", "s-f"):  # listed before a new merged file
        write(f"{name}.parquet", 2)
    location, reading, merges = LogLocation.of(tmp_path), feedback.feedback_table, iter(range(100))

    def read_while_merged(location: LogLocation, path: str, missing_ok: bool = True) -> pa.Table | None:
        table = reading(location, path, missing_ok)
        if path.endswith("merged-!c.parquet"):  # another worker: an outcome and a merge in each reading of the day
            write(f"s-new{next(merges)}.parquet", 1)
            feedback.compact(location, str(day))
            write(f"s-next{next(merges)}.parquet", 1)  # a day of more than one file, as each merge leaves it
        return table

    monkeypatch.setattr(feedback, "feedback_table", read_while_merged)
    reader = Feedback(location, "churn", Preprocess.load(churn_bundle.path / bundle.PREPROCESS_FILE))
    found = [x.key[0] for x in reader.stored(100)]
    assert sorted(found) == customers[:14], found  # the 12 first, the 2 the merge left: each once

    def always_merged(location: LogLocation, path: str, missing_ok: bool = True) -> pa.Table | None:
        raise FileNotFoundError(path)

    monkeypatch.setattr(feedback, "feedback_table", always_merged)
    with caplog.at_level(logging.ERROR, "tabserve.feedback"):
        assert reader.stored(100) == []  # not an OSError: the other days would still be read
    assert f"the feedback files of {day} changed under each of 5 readings" in caplog.text


def test_a_model_trained_on_utf8_sig_reads_utf8_without_a_warning(tmp_path: Path) -> None:
    """The review: `utf-8-sig` (UTF-8 with a byte-order mark) was not UTF-8 to the warning: a UTF-8 file past an
    ASCII start was said to be read in the training file's encoding, and told to pass --encoding."""
    run, _ = _utf8_feedback(tmp_path, "utf-8-sig")
    said = subprocess.run(run, capture_output=True, text=True, check=False)
    assert said.returncode == 0 and "1,000 outcome(s) stored" in said.stdout, said.stderr
    assert said.stderr == "", said.stderr
