"""Live metrics against scikit-learn's on the same numbers (ties, calibration, multiclass)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from monitoring.accuracy import auc, calibration, classification_metrics, ece, ece_floor


def test_auc_equals_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(5000) < 0.3
    score = np.round(rng.random(5000) * 0.5 + truth * 0.2, 2)  # rounded: many tied scores
    assert abs(auc(truth, score) - roc_auc_score(truth, score)) < 1e-12  # type: ignore[operator]
    assert auc(np.ones(3, bool), np.arange(3.0)) is None  # one class: undefined, not a number


def test_binary_metrics_equal_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(2000)
    truth = (rng.random(2000) < p).astype(np.int64)
    probabilities = np.stack([1 - p, p], axis=1)
    doc = classification_metrics("binary", probabilities, truth, ["No", "Yes"], (p >= 0.5).astype(np.intp))
    assert abs(doc["log_loss"] - log_loss(truth, p)) < 1e-9
    assert abs(doc["brier"] - brier_score_loss(truth, p)) < 1e-12
    assert doc["ece"] < 0.05  # outcomes drawn at the predicted rate: well calibrated
    assert ece(truth.astype(bool), np.clip(p + 0.3, 0, 1)) > 0.2  # shifted: badly calibrated
    # the same two classes as `--task multiclass`: top-label ECE, as training reports it, and no AUC
    two = classification_metrics("multiclass", probabilities, truth, ["No", "Yes"], probabilities.argmax(axis=1))
    assert two["ece"] == ece(probabilities.argmax(axis=1) == truth, probabilities.max(axis=1)) != doc["ece"]
    assert "auc" not in two and two["log_loss"] == doc["log_loss"]


def test_the_ece_floor_is_what_a_calibrated_model_shows_on_so_many_rows() -> None:
    """ECE as defined (each bin's |observed − predicted| weighted by its share), and its floor: the
    mean ECE of outcomes drawn from the probabilities themselves, which falls as rows grow (~1/√n)."""
    rng = np.random.default_rng(1)
    p = rng.beta(1, 6, 476)  # hmda-like: few positives, 476 test rows
    y = (rng.random(len(p)) < p).astype(float)
    which = np.minimum((p * 10).astype(int), 9)
    by_hand = sum((which == b).mean() * abs(y[which == b].mean() - p[which == b].mean()) for b in set(which))
    assert ece(y, p) == pytest.approx(by_hand, rel=1e-9)
    fresh = [ece((rng.random(len(p)) < p).astype(float), p) for _ in range(2000)]
    assert ece_floor(p) == pytest.approx(np.mean(fresh), rel=0.05)
    assert ece_floor(np.tile(p, 25)) < ece_floor(p) / 3  # 25× the rows: about a fifth
    assert ece(y, np.clip(p * 2, 0, 1)) > 2 * ece_floor(np.clip(p * 2, 0, 1))  # too sure
    bins = calibration(y, p)  # the reliability diagram the model card and `tabserve monitor` draw: ECE's bins
    assert sum(b["rows"] for b in bins) == len(p) and all(b["low"] <= b["predicted"] < b["high"] for b in bins)
    assert sum(b["rows"] * abs(b["observed"] - b["predicted"]) for b in bins) / len(p) == pytest.approx(ece(y, p))
