"""Batch scoring of CSV files: same answers as /predict, order kept, nothing lost, atomic output."""

from __future__ import annotations

import csv
import gzip
import os
import subprocess
import sys
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
    source.write_text("customerID,tenure\nx,1\n")
    out = tmp_path / "out.csv"
    with pytest.raises(ScoringError, match="missing 18 column") as info:
        score_file(Scorer(churn_bundle, "cpu"), source, out)
    assert "Contract" in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == [source]


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
    source = _telco_head(tmp_path / "in.csv", 30)
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


def test_interrupted_run_leaves_no_truncated_output(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    source = _telco_head(tmp_path / "in.csv", 40)
    out = tmp_path / "out.csv"

    def interrupt(rows: int, _: int) -> None:
        if rows >= 10:
            raise KeyboardInterrupt  # what Ctrl-C does half-way through a file

    with pytest.raises(KeyboardInterrupt):
        score_file(Scorer(churn_bundle, "cpu"), source, out, chunk_rows=10, progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
