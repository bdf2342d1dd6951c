"""Reason codes in batch scoring (`tabserve score --explain`, `?explain=` on uploads, Ray): the same
effects and sentences as `/predict` with `"explain"`, effects that add up, bad values refused."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service import bundle, release
from service.explain import Effects
from service.scoring.columns import ArrowEncoder
from service.scoring.files import ROW, numbered, open_source
from service.scoring.local import ReasonColumns, Scorer, ScoringError, score_file
from tests.conftest import GERMAN, TELCO
from tests.service.conftest import Server, copy_store, running_server, telco_records
from tests.service.test_scoring import _read

START, ROWS = 470, 60  # real telco rows, one of them (488) with TotalCharges blank
TOL = 0.0  # effects: absolute tolerance against /predict (ONNX Runtime may sum a batch's rows in another order)


def _telco_rows(path: Path, n: int = ROWS, start: int = START) -> Path:
    """Rows start..start+n of the real telco file, header first (the rows `telco_records` sends)."""
    with TELCO.open(newline="") as fh:
        lines = fh.readlines()
    path.write_text("".join([lines[0], *lines[1 + start : 1 + start + n]]))
    return path


def _cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TABSERVE_MODELS_DIR": str(store), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "tabserve.cli", "score", *args], capture_output=True, text=True, env=env, timeout=300
    )


def _reason_cells(row: dict[str, str]) -> list[tuple[str, float]]:
    """A scored row's (sentence, effect) pairs, checking that the empty cells come last."""
    k = sum(1 for name in row if name.startswith("reason_"))
    cells = [(row[f"reason_{i}"], row[f"effect_{i}"]) for i in range(1, k + 1)]
    filled = [(text, float(effect)) for text, effect in cells if text]
    assert all(text == effect == "" for text, effect in cells[len(filled) :])
    assert all(effect for _, effect in cells[: len(filled)])
    return filled


@pytest.fixture(scope="module")
def explain_server(churn_bundle: bundle.BundleRef, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A service over the churn bundle and `old`, a copy of it from before explain.onnx."""
    store = copy_store(churn_bundle, tmp_path_factory.mktemp("explain") / "models")
    old = store / "old" / "1"
    shutil.copytree(churn_bundle.path, old)
    (old / bundle.EXPLAIN_FILE).unlink()
    (old / bundle.EXPLAIN_STATS_FILE).unlink()
    with running_server(store) as server:
        yield server


def test_cli_reasons_equal_predict(explain_server: Server, churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    source = _telco_rows(tmp_path / "in.csv")
    records = telco_records(ROWS, START)
    for explain in ("4", "all"):
        out = tmp_path / f"scored_{explain}.csv"
        run = _cli(
            explain_server.store, "--model", "churn", "--input", str(source), "--output", str(out), "--explain", explain
        )
        assert run.returncode == 0, run.stderr
        body = {"records": records, "explain": int(explain) if explain.isdigit() else explain}
        served = httpx.post(explain_server.url + "/predict", json=body, timeout=60).json()["predictions"]
        scored = _read(out)
        assert len(scored) == len(served) == ROWS
        if explain == "all":
            added = [f"effect_{f.name}" for f in churn_bundle.preprocess.features]
            added += ["explanation_score", "explanation_reference"]
        else:
            added = [f"{kind}_{i}" for i in range(1, 5) for kind in ("reason", "effect")]
        assert list(scored[0]) == ["customerID", "label", "probability", *added, "warning", "error"]
        for row, answer in zip(scored, served, strict=True):
            assert row["customerID"] == answer["customerID"] and row["error"] == ""
            if explain == "all":  # every feature's effect, no sentences
                for reason in answer["reasons"]:
                    assert abs(float(row[f"effect_{reason['field']}"]) - reason["effect"]) <= TOL
                assert float(row["explanation_score"]) == pytest.approx(answer["explanation"]["score"], abs=1e-6)
                assert float(row["explanation_reference"]) == answer["explanation"]["reference"]
                continue
            cells = _reason_cells(row)
            assert [text for text, _ in cells] == [r["text"] for r in answer["reasons"]]
            assert all(abs(e - r["effect"]) <= TOL for (_, e), r in zip(cells, answer["reasons"], strict=True))


def test_upload_route_gives_the_cli_file(explain_server: Server, tmp_path: Path) -> None:
    source = _telco_rows(tmp_path / "in.csv")
    lines = source.read_bytes().splitlines(keepends=True)
    lines[7] = b"too,few\n"  # a row that cannot be scored: empty reason cells, the error
    source.write_bytes(b"".join(lines))
    url = explain_server.url + "/models/churn/score"
    for explain in ("3", "all"):
        out = tmp_path / f"cli_{explain}.csv"
        run = _cli(
            explain_server.store, "--model", "churn", "--input", str(source), "--output", str(out), "--explain", explain
        )
        assert run.returncode == 0, run.stderr
        answer = httpx.post(
            url,
            params={"explain": explain},
            content=source.read_bytes(),
            headers={"content-type": "text/csv"},
            timeout=60,
        )
        assert answer.status_code == 200 and answer.content == out.read_bytes()
        failed = _read(out)[6]
        assert failed["error"].startswith("row 7: expected 21 fields")
        assert all(value == "" for name, value in failed.items() if name.startswith(("reason_", "effect_")))
    for bad in ("101", "many", "-1", "2.5"):
        refused = httpx.post(
            url, params={"explain": bad}, content=source.read_bytes(), headers={"content-type": "text/csv"}
        )
        assert refused.status_code == 422 and "explain" in refused.json()["error"], refused.text
    old = httpx.post(
        explain_server.url + "/models/old/score?explain=4",
        content=source.read_bytes(),
        headers={"content-type": "text/csv"},
    )
    assert old.status_code == 422 and "explain.onnx" in old.json()["error"]
    plain = httpx.post(
        explain_server.url + "/models/old/score", content=source.read_bytes(), headers={"content-type": "text/csv"}
    )
    assert plain.status_code == 200  # the old bundle still scores without reasons


def test_bad_explain_values_and_old_bundles_fail_before_any_work(explain_server: Server, tmp_path: Path) -> None:
    source = _telco_rows(tmp_path / "in.csv", 5)
    out = tmp_path / "out.csv"
    for bad in ("101", "many", "-2", "ALL"):
        run = _cli(
            explain_server.store, "--model", "churn", "--input", str(source), "--output", str(out), "--explain", bad
        )
        assert run.returncode == 2 and "--explain" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    run = _cli(explain_server.store, "--model", "old", "--input", str(source), "--output", str(out), "--explain", "4")
    assert run.returncode == 2 and "no explain.onnx" in run.stderr and not out.exists()
    with pytest.raises(ScoringError, match=r"explain\.onnx"):
        Scorer(release.resolve(explain_server.store, "old"), "cpu", explain=4)


def test_a_cell_reads_as_the_json_value_of_the_same_record(churn_bundle: bundle.BundleRef) -> None:
    columns = Scorer(churn_bundle, "cpu", explain=4).reasons
    assert columns is not None
    sentence = columns._sentence
    at = {name: j for j, name in enumerate(columns.explainer.names)}
    text = columns.explainer.text
    for name, cell, sent in [
        ("tenure", "1", 1),
        ("tenure", "1.0", 1.0),
        ("MonthlyCharges", " 29.85", 29.85),
        ("TotalCharges", " ", None),
        ("TotalCharges", "", None),
        ("Contract", "Month-to-month", "Month-to-month"),
        ("Contract", "Ten-year", "Ten-year"),
        ("gender", "", None),
    ]:
        for outcome, effect in ((0, 0.5), (1, -0.5)):
            assert sentence(at[name], cell, outcome) == text(name, sent, effect, None)
    assert sentence(at["tenure"], "1", 0).startswith("tenure is 1 — ")
    assert sentence(at["TotalCharges"], " ", 0).startswith(
        "TotalCharges was missing — as in under 1 % of training records"
    )


def test_effects_add_up_and_reasons_stop_where_effects_turn(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    source = _telco_rows(tmp_path / "in.csv", 300, 0)
    scorer = Scorer(churn_bundle, "cpu", explain="all")
    score_file(scorer, source, tmp_path / "all.csv", chunk_rows=64)  # NOTE: many blocks
    score_file(Scorer(churn_bundle, "cpu", explain=19), source, tmp_path / "19.csv", chunk_rows=64)
    assert scorer.reasons is not None
    names, least = scorer.reasons.explainer.names, scorer.reasons.explainer.tolerance
    batch = next(numbered(open_source(source), names))
    enc = ArrowEncoder(churn_bundle.preprocess).encode(batch)
    found: Effects = scorer.reasons.explainer.run(enc.num, enc.cat)
    rows = _read(tmp_path / "all.csv")
    effects = np.array([[float(row[f"effect_{name}"]) for name in names] for row in rows])
    np.testing.assert_allclose(effects.sum(axis=1), found.score - found.baseline, atol=1e-4)
    # the score and reference they add up to are written beside them (docs/scoring.md said so; they were not)
    gap = [float(row["explanation_score"]) - float(row["explanation_reference"]) for row in rows]
    np.testing.assert_allclose(effects.sum(axis=1), gap, atol=1e-4)
    assert "explanation_class" not in rows[0]  # binary: the positive class, always
    for row, these in zip(_read(tmp_path / "19.csv"), effects, strict=True):
        cells = _reason_cells(row)  # the features that raise the risk, largest first; then empty cells
        assert [e for _, e in cells] == sorted((e for e in these if e > least), reverse=True)


def test_fast_order_equals_the_explainer_with_ties(churn_bundle: bundle.BundleRef) -> None:
    columns = ReasonColumns(Scorer(churn_bundle, "cpu", explain=4).reasons.explainer, 4)  # type: ignore[union-attr]
    rng = np.random.default_rng(0)
    effects = rng.normal(size=(500, len(columns.explainer.names))).astype(np.float32).round(1)  # NOTE: many ties
    effects[:5] = 0.0
    found = Effects(effects, np.zeros(500, np.float32), np.zeros(500, np.float32), np.zeros(500, np.int64))
    toward = effects * columns.explainer.direction(found)[:, None]  # the rule: a stable sort, ties first-feature-first
    want = np.argsort(-toward, axis=1, kind="stable")[:, :4]
    for got, expected in zip(
        columns.explainer.order(found, 4), (want, np.take_along_axis(toward, want, axis=1) > 0), strict=True
    ):
        np.testing.assert_array_equal(got, expected)


def test_an_effect_within_the_effects_accuracy_is_no_reason(churn_bundle: bundle.BundleRef) -> None:
    # telco had 2 of 27,505 reasons of 6e-5 log-odds: zero to the 1e-4 the effects are checked to
    explainer = Scorer(churn_bundle, "cpu", explain=4).reasons.explainer  # type: ignore[union-attr]
    n = len(explainer.names)
    for rows in (3, 40):  # a request's few rows (plain Python) and a file's block (numpy) take two paths
        effects = np.zeros((rows, n), np.float32)
        effects[:, 0], effects[:, 1], effects[:, 2] = 0.3, 6e-5, 2e-4
        found = Effects(effects, effects.sum(axis=1), np.zeros(rows, np.float32), np.zeros(rows, np.int64))
        reasons = explainer.reasons(found, 4, [], [None] * rows)
        assert [[r["field"] for r in these] for these in reasons] == [[explainer.names[0], explainer.names[2]]] * rows


@pytest.mark.parametrize(("target", "task"), [("housing", "multiclass"), ("credit_amount", "regression")])
def test_multiclass_and_regression_reasons(tmp_path: Path, target: str, task: str) -> None:
    from tests.conftest import quick_config
    from training.pipeline import train

    result = train(quick_config(GERMAN, target, tmp_path / "models", name=task), say=lambda _: None)
    assert result.bundle is not None
    scorer = Scorer(result.bundle, "cpu", explain=3)
    score_file(scorer, GERMAN, tmp_path / "scored.csv", chunk_rows=300)
    assert scorer.reasons is not None
    explainer = scorer.reasons.explainer
    with GERMAN.open(newline="") as fh:
        records = list(csv.DictReader(fh))  # values as the CSV holds them: text
    expected = []
    for batch in numbered(open_source(GERMAN, 300), explainer.names):  # the blocks score_file ran, as ORT saw them
        enc = scorer.encoder.encode(batch)
        values, records = records[: batch.num_rows], records[batch.num_rows :]
        labels = (
            result.pre.labels_for(scorer.predict(enc.num, enc.cat)) if task == "multiclass" else [None] * len(values)
        )
        first = batch.column(ROW)[0].as_py() - 1
        expected += explainer.reasons(scorer.reasons.effects(enc.num, enc.cat, first), 3, values, labels)
    scored = _read(tmp_path / "scored.csv")
    for row, reasons in zip(scored, expected, strict=True):
        cells = _reason_cells(row)
        assert [text for text, _ in cells] == [r["text"] for r in reasons]
        assert [e for _, e in cells] == [r["effect"] for r in reasons]  # exact: the same ORT calls
    assert any("lowers" in row["reason_1"] for row in scored) == (task == "regression")
    if task == "multiclass":  # the class the reasons are about: the label, but on a near-tie
        assert sum(row["explanation_class"] == row["label"] for row in scored) >= len(scored) - 1
        assert all(row["explanation_class"] in row["reason_1"] for row in scored if row["reason_1"])
    assert "explanation_score" not in scored[0]  # with "all" only


def test_ray_reasons_equal_local(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    pytest.importorskip("ray.data", reason="the Ray extra is not installed")
    import ray

    from service.scoring.ray_engine import output_files, score_with_ray

    source = _telco_rows(tmp_path / "in.csv", 200, 400)
    lines = source.read_bytes().splitlines(keepends=True)
    lines[10] = b"too,few\n"
    source.write_bytes(b"".join(lines))
    for explain in (4, "all"):
        score_file(
            Scorer(churn_bundle, "cpu", explain=explain), source, tmp_path / f"local_{explain}.csv", chunk_rows=64
        )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for explain in (4, "all"):
            folder = tmp_path / f"ray_{explain}.csv"
            summary = score_with_ray(churn_bundle, str(source), folder, chunk_rows=64, explain=explain)
            assert (summary.rows_in, summary.rows_failed) == (200, 1)
            distributed = [row for part in output_files(folder) for row in _read(part)]
            assert distributed == _read(tmp_path / f"local_{explain}.csv")
    finally:
        ray.shutdown()
