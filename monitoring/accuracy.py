"""Live accuracy: the model's predictions against the outcomes that came back as feedback.

The same functions score the service's live window, `tabserve monitor`'s periods and training's
test split reading, so a figure means one thing wherever it is shown.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from service.features import Preprocess

if TYPE_CHECKING:
    from monitoring.feedback import Labelled

ECE_BINS = 10  # equal-width probability bins, the usual choice for expected calibration error
EPS = 1e-7  # probabilities clipped before their logs are taken (float32: 1 - 1e-7 is still < 1)


def finite(doc: Any) -> Any:
    """A document for JSON with each non-finite number as None: JSON has no Infinity (an outcome of
    1e308 makes an infinite RMSE): `tabserve monitor --json` says null, as FastAPI's encoder does for the route."""
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {key: finite(value) for key, value in doc.items()}
    if isinstance(doc, list | tuple):
        return [finite(value) for value in doc]
    return doc


def auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (tied scores count half); None with one class."""
    positive = positive.astype(bool)
    if positive.all() or not positive.any():
        return None
    return float(weighted_auc(positive, score)[0])


def weighted_auc(y: np.ndarray, score: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """ROC AUC from one sort (tied scores count half), for each row of `counts` (rows' multiplicities:
    one row per bootstrap resample, training/gate.py); None of counts: the rows once."""
    order = np.argsort(score, kind="stable")
    s, pos = score[order], y[order] == 1
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the last row of each run of tied scores
    w = np.ones((1, len(s))) if counts is None else counts[:, order]
    pos_upto = np.cumsum(w * pos, axis=1)[:, last]
    neg_upto = np.cumsum(w * ~pos, axis=1)[:, last]
    pos_at = np.diff(pos_upto, axis=1, prepend=0)
    neg_at = np.diff(neg_upto, axis=1, prepend=0)
    wins = np.sum(pos_at * (neg_upto - 0.5 * neg_at), axis=1)  # negatives below, half of those tied
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample with one class has no AUC
        return np.asarray(wins / (pos_upto[:, -1] * neg_upto[:, -1]))


def bin_of(probability: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Each probability's equal-width bin, 0 to bins - 1 (a probability of 1 in the last)."""
    return np.clip((probability * bins).astype(np.int64), 0, bins - 1)


def ece(positive: np.ndarray, probability: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |mean probability - observed rate| per bin, weighted by the bin's rows."""
    return _binned_error(positive, probability, bin_of(probability, bins), bins)


def ece_floor(probability: np.ndarray, draws: int = 200, seed: int = 0, bins: int = ECE_BINS) -> float:
    """The ECE a perfectly calibrated model with these probabilities would show on this many rows
    (each outcome drawn from its own probability; seeded): chance alone, in each bin's mean outcome,
    more on few rows. An ECE near or below it is no sign of miscalibration."""
    rng, which = np.random.default_rng(seed), bin_of(probability, bins)
    outcomes = (rng.random(len(probability)) < probability for _ in range(draws))
    return float(np.mean([_binned_error(y, probability, which, bins) for y in outcomes]))


def _binned_error(positive: np.ndarray, probability: np.ndarray, which: np.ndarray, bins: int) -> float:
    """Σ over bins of |Σ (outcome − probability)| / rows: each bin's |observed − predicted| by its share."""
    if not len(probability):
        return 0.0
    residual = np.asarray(positive, dtype=np.float64) - probability
    return float(np.abs(np.bincount(which, weights=residual, minlength=bins)).sum() / len(probability))


def calibration(positive: np.ndarray, probability: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per non-empty probability bin: its range, rows, mean predicted probability and observed
    positive rate (a reliability diagram)."""
    which = bin_of(probability, bins)
    return [
        {
            "low": b / bins,
            "high": (b + 1) / bins,
            "rows": int((which == b).sum()),
            "predicted": float(probability[which == b].mean()),
            "observed": float(positive[which == b].mean()),
        }
        for b in np.unique(which).tolist()
    ]


def calibration_outcomes(task: str, y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What ECE compares: binary, the outcome and the positive class's probability; multiclass,
    whether the predicted class was right and its probability (top-label), whatever the classes' number."""
    if task == "multiclass":
        return (probs.argmax(axis=1) == y).astype(float), probs.max(axis=1)
    return y, probs[:, 1]


def row_log_loss(task: str, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Each row's log loss (its true class's), probabilities clipped to [EPS, 1 - EPS] (multiclass: then
    renormalised), as scikit-learn's log_loss takes them in training/evaluate.py."""
    if task == "binary":
        p = np.clip(out[:, 1], EPS, 1 - EPS)
        return np.asarray(-np.where(y == 1, np.log(p), np.log(1 - p)))
    clipped = np.clip(out, EPS, 1 - EPS)
    clipped /= clipped.sum(axis=1, keepdims=True)
    return np.asarray(-np.log(clipped[np.arange(len(y)), y]))


def classification_metrics(
    task: str, probabilities: np.ndarray, truth: np.ndarray, labels: list[str], predicted: np.ndarray
) -> dict[str, Any]:
    """AUC (binary), log loss, Brier, ECE and accuracy (of the predicted label indices) of class
    probabilities against true label indices."""
    n, k = probabilities.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), truth] = 1.0
    doc: dict[str, Any] = {
        "rows": n,
        "log_loss": float(row_log_loss(task, truth, probabilities.astype(np.float64)).mean()),
        "accuracy": float((predicted == truth).mean()),
    }
    doc["ece"] = ece(*calibration_outcomes(task, truth, probabilities.astype(np.float64)))
    if task == "binary":
        positive, score = truth == 1, probabilities[:, 1].astype(np.float64)
        doc["auc"] = auc(positive, score)
        doc["brier"] = float(((score - positive) ** 2).mean())
        doc["positive_rate"] = float(positive.mean())
        doc["predicted_positive_rate"] = float(score.mean())
        doc["positive"] = labels[1]
    else:
        doc["brier"] = float(((probabilities - onehot) ** 2).sum(axis=1).mean())
    return doc


def regression_metrics(predicted: np.ndarray, actual: np.ndarray) -> dict[str, Any]:
    """RMSE, MAE and bias (mean predicted minus actual)."""
    error = predicted.astype(np.float64) - actual
    return {
        "rows": len(actual),
        "rmse": float(np.sqrt((error**2).mean())),
        "mae": float(np.abs(error).mean()),
        "bias": float(error.mean()),
    }


def truth_of(pre: Preprocess, outcomes: list[str]) -> np.ndarray:
    """Outcome texts as the metrics take them: label indices, or values (regression)."""
    if pre.task == "regression":
        return np.array([float(o) for o in outcomes])
    index = {str(label): i for i, label in enumerate(pre.labels)}
    return np.array([index[o] for o in outcomes], np.int64)


def metrics_of(pre: Preprocess, outputs: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The task's live metrics for model outputs (as the ONNX graph gives them) against `truth_of` outcomes."""
    if pre.task == "regression":
        return regression_metrics(outputs[:, 0], truth)
    labels = [str(label) for label in pre.labels]
    return classification_metrics(pre.task, outputs, truth, labels, pre.label_index(outputs))  # the served labels' rule


class LiveAccuracy:
    """One model's labelled predictions, the latest `window` per version (a later label for an id replaces
    the earlier one, whichever version scored it), and their metrics, each version by its own contract
    (`pre_of`: its threshold and labels; the current `pre` for a version no longer in the store)."""

    def __init__(self, pre: Preprocess, window: int, pre_of: Callable[[int], Preprocess | None] | None = None) -> None:
        self.pre, self.window, self._pre_of = pre, window, pre_of
        self._pairs: dict[int, OrderedDict[tuple[Any, ...], tuple[np.ndarray, str]]] = {}
        self._pres: dict[int, Preprocess] = {}
        self._lock = threading.Lock()

    def add(self, version: int, key: tuple[Any, ...], outputs: np.ndarray, outcome: str) -> None:
        """One prediction (its model outputs) and the outcome that came back for it."""
        if version not in self._pres:  # read once per version
            found = self._pre_of(version) if self._pre_of is not None else None
            same = found is not None and found.task == self.pre.task and found.labels == self.pre.labels
            self._pres[version] = found if found is not None and same else self.pre  # outcomes are the current's labels
        with self._lock:
            for other in self._pairs.values():
                other.pop(key, None)
            pairs = self._pairs.setdefault(version, OrderedDict())
            pairs[key] = (outputs, outcome)
            while len(pairs) > self.window:
                pairs.popitem(last=False)

    def add_all(self, labelled: Iterable[Labelled]) -> None:
        """Outcomes matched to their predictions (monitoring.feedback)."""
        for item in labelled:
            self.add(item.version, item.key, item.outputs, item.outcome)

    def report(self) -> dict[str, Any]:
        """Metrics per version over its window."""
        with self._lock:
            snapshot = {v: list(pairs.values()) for v, pairs in self._pairs.items()}
        versions = {}
        for version, pairs in sorted(snapshot.items()):
            if not pairs:  # every id it scored was labelled again under another version
                continue
            pre, outputs = self._pres[version], np.stack([o for o, _ in pairs])
            versions[str(version)] = metrics_of(pre, outputs, truth_of(pre, [t for _, t in pairs]))
        return versions
