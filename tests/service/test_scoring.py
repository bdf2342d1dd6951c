"""Batch scoring of CSV files: same answers as /predict, order kept, nothing lost, atomic output."""

from __future__ import annotations

import csv
import gzip
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service import bundle
from service.scoring.local import Scorer, ScoringError, score_file
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
    source = _telco_head(tmp_path / "in.csv", 50)
    out = tmp_path / "out.csv"
    summary = score_file(Scorer(churn_bundle, "cpu"), source, out, chunk_rows=7)  # NOTE: many chunk boundaries
    assert (summary.rows_in, summary.rows_scored, summary.rows_failed) == (50, 50, 0)
    scored = _read(out)
    assert list(scored[0]) == ["customerID", "label", "probability", "error"]
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store) as server:
        served = httpx.post(server.url + "/predict", json={"records": telco_records(50)}).json()["predictions"]
    assert [r["customerID"] for r in scored] == [p["customerID"] for p in served]
    for row, answer in zip(scored, served, strict=True):
        assert row["label"] == answer["label"] and abs(float(row["probability"]) - answer["probability"]) < 1e-6
        assert row["error"] == ""


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
    source = tmp_path / "bad.csv"
    source.write_bytes(b"".join(lines))
    out = tmp_path / "out.csv"
    summary = score_file(Scorer(churn_bundle, "cpu"), source, out, chunk_rows=4)
    scored = _read(out)
    assert len(scored) == summary.rows_in == 12 and summary.rows_failed == 3
    errors = {i: r["error"] for i, r in enumerate(scored) if r["error"]}
    assert sorted(errors) == [2, 4, 6]
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


def test_gzip_in_and_out_and_keep_all(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    plain = _telco_head(tmp_path / "in.csv", 20)
    source = tmp_path / "in.csv.gz"
    source.write_bytes(gzip.compress(plain.read_bytes()))
    out = tmp_path / "out.csv.gz"
    summary = score_file(Scorer(churn_bundle, "cpu"), source, out, keep_all=True)
    scored = _read(out)
    assert summary.rows_in == 20 and len(scored) == 20
    assert list(scored[0])[:2] == ["customerID", "gender"] and "Churn" in scored[0] and "probability" in scored[0]


def test_cli_scores_and_reports(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    rows = _read(_telco_head(tmp_path / "head.csv", 30))
    rows[3]["tenure"], rows[4]["Contract"], rows[5]["Contract"] = "500", "Ten-year", "Ten-year"
    source = _write(tmp_path / "in.csv", rows)
    out, errs = tmp_path / "scored.csv", tmp_path / "errors.csv"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tabserve.cli",
            "score",
            "--model",
            "churn@1",
            "--input",
            str(source),
            "--output",
            str(out),
            "--errors",
            str(errs),
            "--keep",
            "gender",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TABSERVE_MODELS_DIR": str(store)},
    )
    assert run.returncode == 0, run.stderr
    assert "30 rows in, 30 scored, 0 with errors" in run.stdout
    # values the model never saw in training are scored, and the summary says how often
    assert "warnings on scored rows (3; the rows are scored):" in run.stdout
    assert "2 × field 'Contract': unseen level 'Ten-year' scored as missing" in run.stdout
    assert "1 × field 'tenure': above the largest value seen in training (72)" in run.stdout
    assert list(_read(out)[0]) == ["gender", "label", "probability", "error"]
    assert _read(errs) == []
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "tabserve.cli",
            "score",
            "--model",
            "nope",
            "--input",
            str(source),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TABSERVE_MODELS_DIR": str(store)},
    )
    assert missing.returncode == 2 and "no model named 'nope'" in missing.stderr


def test_cli_pipes_stdin_to_stdout(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    source = _telco_head(tmp_path / "in.csv", 40)
    score_file(Scorer(churn_bundle, "cpu"), source, tmp_path / "file.csv")
    command = [sys.executable, "-m", "tabserve.cli", "score", "--model", "churn", "--input", "-", "--output", "-"]
    env = {**os.environ, "TABSERVE_MODELS_DIR": str(store)}
    for data in (source.read_bytes(), gzip.compress(source.read_bytes())):  # plain or gzip, told by its bytes
        run = subprocess.run(command, input=data, capture_output=True, timeout=120, env=env)
        assert run.returncode == 0, run.stderr
        assert run.stdout == (tmp_path / "file.csv").read_bytes()  # nothing but the scores on stdout
        assert b"40 rows in, 40 scored, 0 with errors" in run.stderr


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
    assert table.column_names == ["customerID", "label", "probability", "error"]
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
    assert back[0]["tenure"] == str(frame["tenure"][0]) and list(back[0])[-4:] == [
        "Churn",
        "label",
        "probability",
        "error",
    ]


def test_http_score_streams_and_matches_the_cli(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    small = _telco_head(tmp_path / "small.csv", 300)
    lines = small.read_bytes().splitlines(keepends=True)
    lines[5] = b"bad,row\n"
    small.write_bytes(b"".join(lines))
    score_file(Scorer(churn_bundle, "cpu"), small, tmp_path / "cli.csv", keep=["customerID", "gender"])
    body = TELCO.read_bytes()
    header, rows = body.split(b"\n", 1)
    with running_server(store) as server:
        url = server.url + "/models/churn/score?keep=customerID&keep=gender"
        answer = httpx.post(url, content=small.read_bytes(), headers={"content-type": "text/csv"}, timeout=60)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
        assert answer.content == (tmp_path / "cli.csv").read_bytes()

        # a gzip upload (two members, as `cat a.gz b.gz` makes) scores to the same answer
        raw = small.read_bytes()
        packed = gzip.compress(raw[:5000]) + gzip.compress(raw[5000:])
        zipped = httpx.post(url, content=packed, headers={"content-type": "text/csv", "content-encoding": "gzip"})
        assert zipped.status_code == 200 and zipped.content == answer.content
        for bad, status, needle in [(raw, 422, "not valid gzip"), (packed[:-20], 422, "truncated")]:
            refused = httpx.post(url, content=bad, headers={"content-type": "text/csv", "content-encoding": "gzip"})
            assert refused.status_code == status and needle in refused.json()["error"]
        brotli = httpx.post(url, content=raw, headers={"content-type": "text/csv", "content-encoding": "br"})
        assert brotli.status_code == 415 and "'br' is not supported" in brotli.json()["error"]

        wrong = httpx.post(url, content=b"a,b\n1,2\n", headers={"content-type": "text/csv"})
        assert wrong.status_code == 422 and "missing 19 column" in wrong.json()["error"]
        assert httpx.post(url, content=b"x", headers={"content-type": "application/json"}).status_code == 415

        # NOTE: bodies streamed up in chunks (never whole in memory here either), answers read as
        # they come. The first uploads settle the scorer's working set (near +170 MB with 16k-row
        # blocks, creeping up by a few tens of MB over the next uploads as the allocators settle);
        # doubling the body after that must move the peak by far less than the 280 MB a server
        # holding the body, or the answer, would add.
        def upload(megabytes: int) -> Iterator[bytes]:
            yield header + b"\n"
            for _ in range(megabytes * 1_000_000 // len(rows)):
                yield rows

        def lines_back(megabytes: int) -> int:
            count = 0
            with httpx.stream("POST", url, content=upload(megabytes), headers={"content-type": "text/csv"}) as r:
                assert r.status_code == 200
                for chunk in r.iter_bytes():
                    count += chunk.count(b"\n")
            return count

        assert lines_back(20) == 20_000_000 // len(rows) * rows.count(b"\n") + 1
        assert lines_back(140) == 140_000_000 // len(rows) * rows.count(b"\n") + 1
        warm = _hwm_mb(server.proc.pid)
        assert lines_back(280) == 280_000_000 // len(rows) * rows.count(b"\n") + 1
        grown = _hwm_mb(server.proc.pid) - warm
    assert grown < 100, f"the server's peak memory grew {grown:.0f} MB with a 280 MB body"


def _hwm_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM")


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def _score_to_rows(ref: bundle.BundleRef, source: Path, work: Path) -> list[dict[str, str]]:
    out = work.with_suffix(".csv")
    score_file(Scorer(ref, "cpu"), source, out)
    return _read(out)


def test_ray_engine_equals_the_local_engine(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    pytest.importorskip("ray.data", reason="the Ray extra is not installed")
    import ray

    from service.scoring.ray_engine import output_files, score_with_ray

    lines = _telco_head(tmp_path / "in.csv", 200).read_bytes().splitlines(keepends=True)
    lines[10] = b"too,few\n"
    fields = lines[20].decode().split(",")
    fields[5] = "lots"
    lines[20] = ",".join(fields).encode()
    fields = lines[30].decode().split(",")
    fields[15] = "Decade-long"  # NOTE: an unseen Contract level: scored, with a warning
    lines[30] = ",".join(fields).encode()
    source = tmp_path / "in.csv"
    source.write_bytes(b"".join(lines))
    halves = tmp_path / "halves"  # NOTE: two CSV files; one more malformed row, in the second
    halves.mkdir()
    (halves / "a.csv").write_bytes(b"".join(lines[:101]))
    (halves / "b.csv").write_bytes(b"".join([lines[0], *lines[101:151], b"too,few\n", *lines[152:]]))
    local = score_file(Scorer(churn_bundle, "cpu"), source, tmp_path / "local.csv", keep_all=True, chunk_rows=32)
    import pandas as pd

    folder = tmp_path / "parts"  # NOTE: a folder of Parquet files (typed columns) → one .csv.gz folder
    folder.mkdir()
    frame = pd.read_csv(_telco_head(tmp_path / "clean.csv", 90))
    frame.iloc[:50].to_parquet(folder / "a.parquet")
    frame.iloc[50:].to_parquet(folder / "b.parquet")
    expected = [
        row for name in ("a", "b") for row in _score_to_rows(churn_bundle, folder / f"{name}.parquet", tmp_path / name)
    ]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = score_with_ray(churn_bundle, str(source), tmp_path / "ray.csv", keep_all=True, chunk_rows=32)
        parquet = score_with_ray(churn_bundle, str(folder), tmp_path / "ray_pq.csv.gz")
        gz = tmp_path / "in.csv.gz"  # NOTE: the input's format decides how it is opened, not the output's
        gz.write_bytes(gzip.compress(source.read_bytes()))
        zipped = score_with_ray(churn_bundle, str(gz), tmp_path / "ray_gz.parquet")
        failures: list[tuple[int, str]] = []
        split = score_with_ray(
            churn_bundle, str(halves), tmp_path / "halves.csv", on_error=lambda *failure: failures.append(failure)
        )
    finally:
        ray.shutdown()
    # several files: row numbers count within each file, and the message names the file
    assert (split.rows_in, split.rows_failed) == (200, 3)
    assert [(row, message.split(":")[0]) for row, message in failures] == [(10, "a.csv"), (20, "a.csv"), (51, "b.csv")]
    assert all(message.startswith(f"{message.split(':')[0]}: row {row}") for row, message in failures)
    assert split.errors == failures
    # warnings on scored rows reach the summary, as with the local engine
    assert summary.warnings == local.warnings and sum(local.warnings.values()) == 1
    assert parquet.rows_in == 90 and parquet.rows_failed == 0
    assert (zipped.rows_in, zipped.rows_failed) == (200, 2)
    assert [row for part in output_files(tmp_path / "ray_pq.csv.gz") for row in _read(part)] == expected
    parts = output_files(tmp_path / "ray.csv")
    distributed = [row for part in parts for row in _read(part)]
    assert (summary.rows_in, summary.rows_failed) == (local.rows_in, local.rows_failed) == (200, 2)
    assert distributed == _read(tmp_path / "local.csv")


def test_http_score_body_limit(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    header, rows = TELCO.read_bytes().split(b"\n", 1)
    big = header + b"\n" + rows * 2  # ≈ 2 MB
    with running_server(store, "--max-score-bytes", "1000000") as server:
        url = server.url + "/models/churn/score"
        declared = httpx.post(url, content=big, headers={"content-type": "text/csv"})
        assert declared.status_code == 413 and "1000000-byte limit" in declared.json()["error"]

        def chunks() -> Iterator[bytes]:  # NOTE: no Content-Length: the limit is found mid-way
            yield header + b"\n"
            yield rows
            yield rows

        # NOTE: the answer is cut short, never a complete-looking CSV
        with (
            pytest.raises(httpx.HTTPError),
            httpx.stream("POST", url, content=chunks(), headers={"content-type": "text/csv"}) as r,
        ):
            assert r.status_code == 200
            for _ in r.iter_bytes():
                pass
        assert httpx.get(server.url + "/models/nope").json()["error"].startswith("no model named 'nope'")
        assert "upload scoring stopped: body is over the 1000000-byte limit" in server.output()


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
        assert table.column_names == ["value", "error"]
        np.testing.assert_array_equal(table.column("value").to_numpy(), expected[:, 0].astype(np.float64))
    else:
        assert table.column_names == ["label", *(f"probability_{label}" for label in pre.labels), "error"]
        assert table.column("label").to_pylist() == pre.labels_for(expected)
        for k, label in enumerate(pre.labels):
            np.testing.assert_array_equal(table.column(f"probability_{label}").to_numpy(), expected[:, k])
