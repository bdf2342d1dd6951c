"""Metrics, the decision threshold, and the baselines every model is compared with: the linear one
and gradient boosting with its defaults."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression

from monitoring.accuracy import EPS, calibration_outcomes, ece
from service.features import Encoded, Preprocess


def monitor_metric(task: str, y: np.ndarray, out: np.ndarray) -> float:
    """The per-epoch validation metric shown to the user: ROC AUC, accuracy or RMSE."""
    if task == "binary":
        return _safe_auc(y, out[:, 1])
    if task == "multiclass":
        return float(np.mean(out.argmax(axis=1) == y))
    return float(np.sqrt(np.mean((out[:, 0] - y) ** 2)))


def _safe_auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(skm.roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def log_odds(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, EPS, 1 - EPS)
    return np.asarray(np.log(clipped) - np.log1p(-clipped), dtype=np.float64)


def calibration_slope(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Cox's calibration slope and intercept: the logistic regression of the outcome on the predicted
    log-odds. Calibrated: 1 and 0; a slope above 1, predictions too timid; below 1, too sure."""
    none = {"slope": float("nan"), "intercept": float("nan")}
    positive = y == 1
    if positive.all() or not positive.any() or p[positive].min() >= p[~positive].max():
        return none  # one class, or classes apart (a leaked column): the likelihood has no maximum
    z = log_odds(p).reshape(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # nearly apart: a slope that never settled
        try:
            fit = LogisticRegression(C=np.inf).fit(z, y)  # no penalty: the slope itself is the figure
        except ConvergenceWarning:
            return none
    return {"slope": float(fit.coef_[0, 0]), "intercept": float(fit.intercept_[0])}


def choose_threshold(y: np.ndarray, p: np.ndarray, rule: str) -> float:
    """The positive-class probability cut-off, chosen on validation predictions by `rule`: midway
    between the lowest score the best cut flags and the score below it, so that a wide gap (classes
    nearly apart) is cut in its middle, not at the edge of the validation positives."""
    try:
        return float(rule)
    except ValueError:
        pass
    if rule == "f1":
        precision, recall, thr = skm.precision_recall_curve(y, p)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        cut = float(thr[int(np.argmax(f1[:-1]))])
    else:
        fpr, tpr, thr = skm.roc_curve(y, p)
        if rule == "youden":
            score = tpr - fpr
        elif rule == "accuracy":
            pos = float(np.mean(y))
            score = tpr * pos + (1 - fpr) * (1 - pos)
        else:
            raise ValueError(f"threshold rule must be f1, youden, accuracy or a number, not {rule!r}")
        cut = float(np.clip(thr[int(np.argmax(score))], 0.0, 1.0))
    below = p[p < cut]
    return (cut + float(below.max())) / 2 if below.size else cut


def classification_metrics(task: str, y: np.ndarray, probs: np.ndarray, threshold: float | None) -> dict[str, float]:
    """Binary: ROC/PR AUC, log loss, Brier, accuracy, F1, ECE; multiclass: accuracy, macro F1, log loss,
    top-label ECE, Brier."""
    labels = list(range(probs.shape[1]))
    clipped = np.clip(probs, EPS, 1 - EPS)
    if task == "multiclass":
        pred = probs.argmax(axis=1)
        return {
            "accuracy": float(np.mean(pred == y)),
            "macro_f1": float(skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
            "log_loss": float(skm.log_loss(y, clipped / clipped.sum(1, keepdims=True), labels=labels)),
            # of the predicted class's probability (top-label ECE); Brier summed over classes
            "ece": ece(*calibration_outcomes(task, y, probs)),
            "brier": float(np.mean(((np.eye(len(labels))[y] - probs) ** 2).sum(axis=1))),
        }
    p = probs[:, 1]
    pred = p >= (0.5 if threshold is None else threshold)
    return {
        "roc_auc": _safe_auc(y, p),
        "pr_auc": float(skm.average_precision_score(y, p)),
        "log_loss": float(skm.log_loss(y, np.clip(p, EPS, 1 - EPS), labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y, p)),
        "accuracy": float(np.mean(pred == y)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "ece": ece(y, p),
    }


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² in the target's own units."""
    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "r2": float(skm.r2_score(y, pred)),
    }


def task_metrics(pre: Preprocess, y: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """The task's full metric set from model outputs (probabilities or values)."""
    if pre.task == "regression":
        return regression_metrics(y, out[:, 0])
    return classification_metrics(pre.task, y, out, pre.threshold)


KEY_METRIC = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "rmse"}


def one_hot_design(x: np.ndarray, cat: np.ndarray, cardinalities: list[int]) -> np.ndarray:
    """Normalized numerics plus one-hot categories (column 0 of each block: missing/unseen)."""
    n, width = len(x), x.shape[1]
    out = np.zeros((n, width + sum(cardinalities)))  # filled in place: no per-column copies to stack
    out[:, :width] = x
    rows = np.arange(n)
    for j, card in enumerate(cardinalities):
        out[rows, width + cat[:, j]] = 1.0
        width += card
    return out


def design_matrix(pre: Preprocess, enc: Encoded) -> np.ndarray:
    """Imputed, standardized numerics, the missing indicators the network reads too (centred), plus
    one-hot categories: the baseline's inputs."""
    med = np.array([f.median_ for f in pre.numeric], dtype=np.float64)
    mean = np.array([f.mean_ for f in pre.numeric], dtype=np.float64)
    std = np.array([f.std_ for f in pre.numeric], dtype=np.float64)
    x = (np.where(np.isnan(enc.num), med, enc.num) - mean) / std
    flagged = pre.indicated
    missing = np.isnan(enc.num[:, flagged]) - np.array([pre.numeric[j].missing_ for j in flagged])
    return one_hot_design(np.hstack([x, missing]), enc.cat, [f.cardinality for f in pre.categorical])


PENALTIES = ("l2:1", "l2:0.1", "l1:0.1", "l1:0.03")  # what `linear_penalty = "auto"` picks from; see penalties


def penalties(task: str) -> tuple[str, ...]:
    """The grid for `task`. Regression's "l2:1" is least squares, unpenalized: a small ridge ("l2:100",
    alpha 0.01) steadies it where a many-level column (a panel's state, few rows each) sits beside columns
    nearly constant within each level (AER Fatalities; BENCHMARKS.md). Classification's "l2:1" is
    already a ridge."""
    return ("l2:1", "l2:100", *PENALTIES[1:]) if task == "regression" else PENALTIES


SAGA_PASSES = 100  # at most, for a multiclass L1 start (below)


def linear_model(task: str, penalty: str = "l2:1") -> Any:
    """A linear model: logistic regression (classification), least squares (regression), with an
    L2 or L1 penalty of strength 1/C given as "l2:C" / "l1:C" ("l2:1": the classical reference).
    L1 zeroes the columns that carry nothing (wide extracts of mostly useless columns)."""
    kind, _, value = penalty.partition(":")
    c = float(value or 1)
    if task == "regression":
        from sklearn.linear_model import Lasso, Ridge

        if penalty == "l2:1":
            return LinearRegression()
        # the target is standardized: Lasso's alpha 0.01 (C 0.1) to 0.03 (C 0.03) keeps the strong columns
        return Ridge(alpha=1 / c) if kind == "l2" else Lasso(alpha=0.001 / c, max_iter=5000)
    # liblinear's coordinate descent: 60x faster than saga on 900 columns; saga for multiclass. Both
    # visit rows in a random order: seeded, or the same run chose another penalty and start each time.
    # saga's step shrinks with the largest row: a few extreme rows took it 400+ passes (a minute on
    # 10 k rows, openintro loans) where other files converge in 65; its validation loss judges it
    if kind == "l1":
        solver, passes = ("liblinear", 1000) if task == "binary" else ("saga", SAGA_PASSES)
        return LogisticRegression(C=c, l1_ratio=1.0, solver=solver, max_iter=passes, tol=1e-3, random_state=0)
    return LogisticRegression(C=c, max_iter=2000)


def fit_linear(model: LogisticRegression | LinearRegression, x: np.ndarray, y: np.ndarray) -> None:
    """Fit quietly (lbfgs convergence chatter is not the user's concern)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y)


class Baseline:
    """Logistic regression (classification) or least squares (regression) on the same encoding."""

    def __init__(self, pre: Preprocess) -> None:
        self.pre = pre
        self.model = linear_model(pre.task)

    def fit(self, enc: Encoded, y: np.ndarray) -> Baseline:
        """Fit on the development rows."""
        fit_linear(self.model, design_matrix(self.pre, enc), y)
        return self

    def predict(self, enc: Encoded) -> np.ndarray:
        """Class probabilities [N, k] or values [N, 1]."""
        x = design_matrix(self.pre, enc)
        if isinstance(self.model, LinearRegression):
            return np.asarray(self.model.predict(x)).reshape(-1, 1)
        return np.asarray(self.model.predict_proba(x))


class GradientBoosting:
    """LightGBM with its defaults on the bundle's own inputs (numbers as read, missing as NaN; levels
    as categorical codes): the reference a tabular network has to match."""

    name = "LightGBM (defaults)"

    def __init__(self, pre: Preprocess, threads: int = 1) -> None:
        import lightgbm

        self.pre = pre
        kind = lightgbm.LGBMRegressor if pre.task == "regression" else lightgbm.LGBMClassifier
        self.model = kind(n_jobs=max(1, threads), verbose=-1, random_state=0)

    def _x(self, enc: Encoded) -> np.ndarray:
        return np.hstack([enc.num.astype(np.float64), enc.cat.astype(np.float64)])

    def fit(self, enc: Encoded, y: np.ndarray) -> GradientBoosting:
        """Fit on the development rows."""
        categorical = list(range(enc.num.shape[1], enc.num.shape[1] + enc.cat.shape[1]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(self._x(enc), y, categorical_feature=categorical or "auto")
        return self

    def predict(self, enc: Encoded) -> np.ndarray:
        """Class probabilities [N, k] or values [N, 1]."""
        x = self._x(enc)
        if self.pre.task == "regression":
            return np.asarray(self.model.predict(x)).reshape(-1, 1)
        return np.asarray(self.model.predict_proba(x))
