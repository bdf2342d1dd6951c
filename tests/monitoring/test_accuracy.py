"""Live metrics against scikit-learn's on the same numbers (ties, calibration, multiclass)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from monitoring.accuracy import auc, classification_metrics, ece


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
    doc = classification_metrics(probabilities, truth, ["No", "Yes"], (p >= 0.5).astype(np.intp))
    assert abs(doc["log_loss"] - log_loss(truth, p)) < 1e-9
    assert abs(doc["brier"] - brier_score_loss(truth, p)) < 1e-12
    assert doc["ece"] < 0.05  # outcomes drawn at the predicted rate: well calibrated
    assert ece(truth.astype(bool), np.clip(p + 0.3, 0, 1)) > 0.2  # shifted: badly calibrated
