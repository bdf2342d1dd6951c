"""ONNX export: parity with PyTorch, dynamic batch, no train/serve skew, reproducibility, atomic publish."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service import bundle
from service.features import Preprocess
from tests.conftest import GERMAN, TELCO, quick_config, write_csv
from training import export, fuse
from training.pipeline import fit_ensemble, prepare_data, train


def _telco_prepared(tmp_path: Path):
    return prepare_data(quick_config(TELCO, "Churn", tmp_path), say=lambda _: None)


def test_bundle_layout_and_checker(churn_bundle: bundle.BundleRef) -> None:
    for name in (*bundle.REQUIRED_FILES, bundle.CARD_FILE):
        assert (churn_bundle.path / name).is_file()
    model = onnx.load(churn_bundle.path / bundle.MODEL_FILE)
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: i for i in model.graph.input}
    assert set(inputs) == {"num", "cat"}
    assert inputs["num"].type.tensor_type.shape.dim[0].dim_param == "batch"
    metrics = churn_bundle.metrics
    assert metrics["onnx_parity_max_abs_diff"] <= export.PARITY_TOL
    assert set(metrics["test"]) >= {"roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "f1", "ece"}
    assert 0 < churn_bundle.preprocess.threshold < 1


@pytest.mark.parametrize("batch", [1, 7, 4096])
@pytest.mark.parametrize("onehot_max", [fuse.ONEHOT_MAX_LEVELS, 0], ids=["multi-hot", "gather"])
def test_onnx_matches_pytorch_at_batch(
    tmp_path: Path, batch: int, onehot_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fuse, "ONEHOT_MAX_LEVELS", onehot_max)  # NOTE: both ways of reading levels
    prep = _telco_prepared(tmp_path)
    scorer = fit_ensemble(prep, quick_config(TELCO, "Churn", tmp_path))[0][0].scorer(prep.pre)
    path = tmp_path / "m.onnx"
    export.export_onnx(scorer, prep.pre, path)
    rows = np.arange(batch) % len(prep.df)
    num, cat = prep.enc.num[rows], prep.enc.cat[rows]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"num": num, "cat": cat})[0]
    with torch.no_grad():
        want = scorer(torch.from_numpy(num), torch.from_numpy(cat)).numpy()
    assert got.shape == (batch, 2)
    assert np.max(np.abs(got - want)) <= 1e-5
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)


def _records_from_csv(path: Path, limit: int) -> list[dict[str, object]]:
    """Rows as a JSON client would send them: numbers as numbers, the rest as text."""
    with path.open(newline="") as fh:
        rows = [row for _, row in zip(range(limit), csv.DictReader(fh), strict=False)]
    return [{k: _jsonish(v) for k, v in row.items()} for row in rows]


def _jsonish(value: str) -> object:
    try:
        return float(value) if "." in value else int(value)
    except ValueError:
        return value


def test_no_skew_between_training_and_service_encoding(tmp_path: Path) -> None:
    prep = _telco_prepared(tmp_path)  # training path: pandas, every cell read as text
    records = _records_from_csv(TELCO, len(prep.df))  # service path: JSON-typed records
    saved = Preprocess.from_json(json.loads(json.dumps(prep.pre.to_json())))
    served = saved.encode_records(records)
    np.testing.assert_array_equal(served.num, prep.enc.num)  # NaN == NaN here
    np.testing.assert_array_equal(served.cat, prep.enc.cat)
    assert not served.errors and served.warnings == prep.enc.warnings  # a value or two outside the training range
    assert all("seen in training" in w for ws in served.warnings.values() for w in ws)


def test_same_seed_same_metrics_and_model(tmp_path: Path) -> None:
    # an L1 start: liblinear visits rows in a random order, which must be seeded too
    cfg = dict(models_dir=tmp_path, ensemble=2, epochs=3, linear_penalty="l1:0.1")
    a = train(quick_config(GERMAN, "creditability", **cfg), publish=False, say=lambda _: None)
    b = train(quick_config(GERMAN, "creditability", **cfg), publish=False, say=lambda _: None)
    assert a.metrics["test"] == b.metrics["test"]
    assert a.pre.threshold == b.pre.threshold
    c = train(quick_config(GERMAN, "creditability", seed=1, **cfg), publish=False, say=lambda _: None)
    assert c.metrics["test"] != a.metrics["test"]


def test_failed_export_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "PARITY_TOL", -1.0)  # NOTE: no real graph can meet this
    monkeypatch.setattr(export, "FLOAT32_SLACK", -1.0)
    with pytest.raises(export.ExportError, match="differs from PyTorch"):
        train(quick_config(GERMAN, "creditability", tmp_path, name="credit"), say=lambda _: None)
    assert bundle.versions(tmp_path, "credit") == []
    assert list((tmp_path / "credit").iterdir()) == []  # no staging directory left behind


def test_retraining_publishes_the_next_version(tmp_path: Path) -> None:
    for _ in range(2):
        train(quick_config(GERMAN, "creditability", tmp_path, name="credit", ensemble=1), say=lambda _: None)
    assert bundle.versions(tmp_path, "credit") == [1, 2]
    doc = json.loads((tmp_path / "credit" / "2" / bundle.METRICS_FILE).read_text())
    assert doc["data"]["sha256"] and doc["config"]["ensemble"] == 1


@pytest.mark.parametrize(
    ("target", "task", "width"), [("credit_amount", "regression", 1), ("housing", "multiclass", 3)]
)
def test_other_tasks_export_and_match(tmp_path: Path, target: str, task: str, width: int) -> None:
    result = train(quick_config(GERMAN, target, tmp_path, name=task), say=lambda _: None)
    assert result.pre.task == task and result.bundle is not None
    session = ort.InferenceSession(str(result.bundle.path / bundle.MODEL_FILE), providers=["CPUExecutionProvider"])
    prep = prepare_data(quick_config(GERMAN, target, tmp_path), say=lambda _: None)
    out = session.run(None, {"num": prep.enc.num[:5], "cat": prep.enc.cat[:5]})[0]
    assert out.shape == (5, width)
    key = "rmse" if task == "regression" else "log_loss"
    assert result.metrics["test"][key] > 0 and key in result.metrics["baseline_test"]
    assert set(result.metrics["gbm_test"]) == set(result.metrics["test"])  # gradient boosting beside it, every task


def test_gradient_boosting_is_scored_on_the_same_test_rows(churn_bundle: bundle.BundleRef) -> None:
    """The LightGBM reference in metrics.json is LightGBM's own result on the run's test rows."""
    import lightgbm
    from sklearn.metrics import roc_auc_score

    doc = json.loads((churn_bundle.path / bundle.METRICS_FILE).read_text())
    cfg = quick_config(TELCO, "Churn", churn_bundle.path.parent.parent, name="churn")
    prep = prepare_data(cfg, say=lambda _: None)
    dev, test = prep.split.dev, prep.split.test
    x = np.hstack([prep.enc.num, prep.enc.cat]).astype(np.float64)
    cats = list(range(prep.enc.num.shape[1], x.shape[1]))
    model = lightgbm.LGBMClassifier(n_jobs=1, verbose=-1, random_state=0)  # the run's --threads (1)
    model.fit(x[dev], prep.target.y[dev], categorical_feature=cats)
    expected = roc_auc_score(prep.target.y[test], model.predict_proba(x[test])[:, 1])
    assert doc["gbm"] == "LightGBM (defaults)"
    assert doc["gbm_test"]["roc_auc"] == pytest.approx(expected, abs=1e-9)
    assert 0.75 < expected < 0.95


def _one_kind_csv(path: Path, kind: str) -> Path:
    rng = random.Random(0)
    rows = []
    for _ in range(300):
        a, b = (rng.random(), rng.random()) if kind == "numeric" else (rng.choice("xyz"), rng.choice("pq"))
        signal = a > 0.6 if kind == "numeric" else a == "x"
        rows.append([a, b, "yes" if signal or rng.random() < 0.2 else "no"])
    return write_csv(path, ["a", "b", "y"], rows)


@pytest.mark.parametrize("kind", ["numeric", "categorical"])
def test_only_numeric_or_only_categorical_features_export(tmp_path: Path, kind: str) -> None:
    data = _one_kind_csv(tmp_path / f"{kind}.csv", kind)
    result = train(quick_config(data, "y", tmp_path, name=kind), say=lambda _: None)
    assert result.bundle is not None and result.metrics["onnx_parity_max_abs_diff"] <= export.PARITY_TOL
    assert len(result.pre.numeric if kind == "numeric" else result.pre.categorical) == 2


@pytest.mark.parametrize("hidden", [[8], [16, 8, 4]], ids=["one-hidden", "three-hidden"])  # none is refused
@pytest.mark.parametrize("linear_skip", [True, False], ids=["wide", "deep-only"])
def test_every_architecture_fuses_exactly(tmp_path: Path, hidden: list[int], linear_skip: bool) -> None:
    """The fused graph's shortcuts (per-member layers, the implied level-0 column, biases moved
    between layers) hold for any depth, with and without the linear path."""
    prep = prepare_data(quick_config(GERMAN, "creditability", tmp_path), say=lambda _: None)
    cfg = quick_config(GERMAN, "creditability", tmp_path, hidden=hidden, linear_skip=linear_skip, linear_init=False)
    scorer = fit_ensemble(prep, cfg)[0][0].scorer(prep.pre)  # the network candidate
    path = tmp_path / "m.onnx"
    export.export_onnx(scorer, prep.pre, path)
    missing = prep.enc.cat.copy()
    missing[::3] = 0  # NOTE: the level-0 column the fused graph leaves implied
    num, cat = np.concatenate([prep.enc.num, prep.enc.num]), np.concatenate([prep.enc.cat, missing])
    assert export.check_parity(scorer, path, num, cat, 1e-5) <= 1e-5
    # an index outside the vocabulary (only an outside ONNX consumer could send one) scores as 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outside, zero = prep.enc.cat[:50].copy(), prep.enc.cat[:50].copy()
    outside[:, 0], zero[:, 0] = prep.pre.categorical[0].cardinality, 0
    got, want = (session.run(None, {"num": prep.enc.num[:50], "cat": c})[0] for c in (outside, zero))
    np.testing.assert_array_equal(got, want)


def test_parity_bound_follows_float32_where_the_numbers_are_coarse(tmp_path: Path) -> None:
    """Inputs a thousand times their size (as a file of sums in the billions): float32 itself rounds
    the model's value by more than 5e-5 of the target's spread, in PyTorch as in ONNX Runtime. The
    graph is still right and passes; a fixed bound alone refused it."""
    cfg = quick_config(GERMAN, "credit_amount", tmp_path)
    prep = prepare_data(cfg, say=lambda _: None)
    scorer = fit_ensemble(prep, cfg)[0][0].scorer(prep.pre)
    path = tmp_path / "m.onnx"
    export.export_onnx(scorer, prep.pre, path)
    test = prep.split.test
    num, cat = (prep.enc.num[test] * 1000).astype(np.float32), prep.enc.cat[test]
    tol = export.PARITY_TOL * prep.pre.target_std
    assert export.check_parity(scorer, path, num, cat, tol) > tol
