"""The promotion gate: a new model against the champion, on the new run's test rows.

The new model is judged by its evaluation fit (trained without the test rows; the published bundle
is refitted on every row). The champion scores the same raw rows as serving does (its
preprocess.json, then its model.onnx on ONNX Runtime) — or, when it was trained on this very file
and split (so its bundle has seen these rows), by the outputs its own evaluation fit gave them. Gate metrics: binary → ROC AUC and log loss; multiclass → log
loss; regression → RMSE. Each difference is signed so that positive = better for the challenger
(challenger − champion for AUC, champion − challenger for a loss), with a 95 % paired bootstrap
interval (the same resampled rows for both models).

Rule (`--promote auto`): promote when, for every gate metric, the interval's lower end is
≥ −tolerance (not worse beyond the tolerance, 95 % sure) and, with `--min-gain G`, the key metric's
(the first gate metric's) point difference is ≥ G. Tolerance: 0.01 for AUC and log loss, 2 % of
the champion's RMSE; `--gate-tolerance` replaces it (for RMSE, as that fraction). `always` promotes
regardless and `never` does not; the comparison is recorded either way. A champion that cannot
score the rows (a column it needs is missing, another target) is a refusal: not promoted by `auto`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.accuracy import row_log_loss, weighted_auc
from service import bundle
from service.features import Preprocess
from service.runtime import create_session
from training import data as D

MODES = ("auto", "always", "never")
GATE_METRICS = {"binary": ("roc_auc", "log_loss"), "multiclass": ("log_loss",), "regression": ("rmse",)}
TITLE = {"roc_auc": "ROC AUC", "log_loss": "log loss", "rmse": "RMSE"}
HIGHER_IS_BETTER = {"roc_auc": True, "log_loss": False, "rmse": False}
TOLERANCE = 0.01  # AUC and log loss, absolute: about the noise of one retraining on a few thousand rows
RMSE_TOLERANCE = 0.02  # a fraction of the champion's RMSE: RMSE is in the target's own units
RESAMPLES = 1000
SEED = 0  # fixed, not the training seed: the same rows and scores always give the same interval
CELLS = 4_000_000  # resamples × rows held at once (float64: 32 MB), whatever the test split's size


class Refusal(ValueError):
    """The champion cannot score the new rows, so nothing can be compared."""


@dataclass(frozen=True)
class MetricDiff:
    """One gate metric on the same rows: both values, the signed difference and its interval."""

    metric: str
    champion: float
    challenger: float
    difference: float  # positive = better for the challenger
    low: float
    high: float
    tolerance: float

    @property
    def passes(self) -> bool:
        return bool(self.low >= -self.tolerance)  # NaN fails

    def text(self) -> str:
        low, high = _signed(self.low, self.metric), _signed(self.high, self.metric)
        return f"{TITLE[self.metric]} {_signed(self.difference, self.metric)} [{low}, {high}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "challenger": self.challenger,
            "difference": self.difference,
            "interval": [self.low, self.high],
            "tolerance": self.tolerance,
            "passes": self.passes,
        }


@dataclass
class Comparison:
    """The gate's verdict on one new bundle against the champion."""

    champion: int
    mode: str
    promote: bool
    reason: str
    metrics: list[MetricDiff] = field(default_factory=list)
    rows: int = 0
    refused: str | None = None
    min_gain: float | None = None
    # y, champion output, challenger output on the compared rows: for the model card's plots
    outputs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "rows": self.rows,
            "resamples": RESAMPLES,
            "confidence": 0.95,
            "promote": self.mode,
            "min_gain": self.min_gain,
            "metrics": {d.metric: d.to_json() for d in self.metrics},
            "refused": self.refused,
            "decision": "promote" if self.promote else "challenger",
            "reason": self.reason,
        }


def compare(
    champion_dir: Path,
    champion: int,
    new_pre: Preprocess,
    new_out: np.ndarray,
    rows: pd.DataFrame,
    y: np.ndarray,
    *,
    champion_out: np.ndarray | None = None,
    mode: str = "auto",
    min_gain: float | None = None,
    tolerance: float | None = None,
) -> Comparison:
    """The challenger's outputs on the raw test rows (from its evaluation fit, which never saw them)
    against the champion's — scored from its bundle, or `champion_out` (its own evaluation fit's,
    when it was refitted on these very rows) — on the task's gate metrics; the rule applied."""
    new_ok = np.ones(len(rows), dtype=bool)
    try:
        if champion_out is not None:
            old_pre, old_out, old_ok = (
                Preprocess.load(champion_dir / bundle.PREPROCESS_FILE),
                np.asarray(champion_out, np.float64),
                new_ok,
            )
        else:
            old_pre, old_out, old_ok = bundle_outputs(champion_dir, rows)
        old_out = aligned(old_pre, new_pre, old_out)
    except Refusal as exc:
        return refused(champion, f"champion v{champion} {exc}", mode, min_gain)
    except Exception as exc:  # noqa: BLE001 - an old or damaged champion bundle refuses, never ends the run
        first_line = next(iter(str(exc).splitlines()), type(exc).__name__)
        return refused(champion, f"champion v{champion} could not score the rows: {first_line}", mode, min_gain)
    ok = old_ok & new_ok  # a row the champion refuses (as serving would) is left out for both
    if not ok.any():
        return refused(champion, "no test row could be encoded by both bundles", mode, min_gain)
    y, old_out, new_out = y[ok], old_out[ok], np.asarray(new_out, np.float64)[ok]
    diffs = paired_bootstrap(new_pre.task, y, old_out, new_out, tolerance)
    promote, reason = verdict(mode, *rule(diffs, min_gain))
    outputs = (y, old_out, new_out)
    return Comparison(champion, mode, promote, reason, diffs, int(ok.sum()), None, min_gain, outputs)


def refused(champion: int, why: str, mode: str, min_gain: float | None) -> Comparison:
    """A comparison that could not be made: promoted only by `--promote always`."""
    promote, reason = verdict(mode, False, f"not promoted: {why}")
    return Comparison(champion, mode, promote, reason, refused=why, min_gain=min_gain)


def bundle_outputs(bundle_dir: Path, rows: pd.DataFrame) -> tuple[Preprocess, np.ndarray, np.ndarray]:
    """A bundle's outputs on raw rows, encoded and run as serving does; and which rows it could encode."""
    pre = Preprocess.load(bundle_dir / bundle.PREPROCESS_FILE)
    # serving imputes an absent field, but a whole column gone from the data is a different population
    missing = [name for name in pre.kinds if name not in rows.columns]
    if missing:
        raise Refusal(f"needs column(s) the new data lacks: {', '.join(missing)}")
    enc = pre.encode_columns(D.columns_of(rows), len(rows))
    session = create_session(bundle_dir / bundle.MODEL_FILE, "cpu", 1)
    out = np.asarray(session.run(None, {"num": enc.num, "cat": enc.cat})[0], dtype=np.float64)
    ok = np.ones(len(rows), dtype=bool)
    ok[list(enc.errors)] = False
    return pre, out, ok


def aligned(old: Preprocess, new: Preprocess, out: np.ndarray) -> np.ndarray:
    """The champion's outputs in the challenger's class order; Refusal if they predict different things."""
    if (old.task, old.target) != (new.task, new.target):
        raise Refusal(f"predicts {old.target!r} ({old.task}), this run {new.target!r} ({new.task})")
    if new.task == "regression":
        return out
    if sorted(map(str, old.labels)) != sorted(map(str, new.labels)):
        raise Refusal(f"knows the classes {old.labels}, the new data has {new.labels}")
    where = [list(map(str, old.labels)).index(str(label)) for label in new.labels]
    return out[:, where]


def paired_bootstrap(
    task: str, y: np.ndarray, old: np.ndarray, new: np.ndarray, tolerance: float | None = None
) -> list[MetricDiff]:
    """Point differences and 95 % intervals of every gate metric, both models on the same resamples."""
    rng = np.random.default_rng(SEED)
    n = len(y)
    chunk = max(1, CELLS // max(n, 1))
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in GATE_METRICS[task]}
    for start in range(0, RESAMPLES, chunk):
        counts = resample_counts(rng, n, min(chunk, RESAMPLES - start))
        for m in diffs:
            diffs[m].append(_signed_diff(m, metric(m, task, y, old, counts), metric(m, task, y, new, counts)))
    ones = np.ones((1, n))
    found = []
    for m, parts in diffs.items():
        champ, chall = float(metric(m, task, y, old, ones)[0]), float(metric(m, task, y, new, ones)[0])
        low, high = np.nanpercentile(np.concatenate(parts), [2.5, 97.5]) if n else (np.nan, np.nan)
        tol = _tolerance(m, champ, tolerance)
        found.append(MetricDiff(m, champ, chall, float(_signed_diff(m, champ, chall)), float(low), float(high), tol))
    return found


def resample_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """How often each of n rows is drawn in each of `size` resamples with replacement: float [size, n]."""
    picks = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
    return np.bincount(picks.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


def metric(name: str, task: str, y: np.ndarray, out: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A metric on each resample, given as row counts [resamples, n] (all ones: the rows themselves)."""
    if name == "roc_auc":
        return weighted_auc(y, out[:, 1], counts)
    if name == "log_loss":
        return np.asarray(counts @ row_log_loss(task, y, out) / counts.sum(axis=1))
    return np.asarray(np.sqrt(counts @ (out[:, 0] - y) ** 2 / counts.sum(axis=1)))


def _signed_diff(name: str, champion: Any, challenger: Any) -> Any:
    return challenger - champion if HIGHER_IS_BETTER[name] else champion - challenger


def _tolerance(name: str, champion: float, given: float | None) -> float:
    if name == "rmse":
        return (RMSE_TOLERANCE if given is None else given) * champion
    return TOLERANCE if given is None else given


def rule(diffs: list[MetricDiff], min_gain: float | None) -> tuple[bool, str]:
    """`--promote auto`: no gate metric worse beyond its tolerance, 95 % sure; the key metric gains ≥ min_gain."""
    worse = [d for d in diffs if not d.passes]
    if worse:
        # the rule reads the interval's low end: a difference inside the tolerance may still fail it
        return False, "not promoted: " + "; ".join(f"{d.text()} reaches below the tolerance −{_tol(d)}" for d in worse)
    key = diffs[0]
    if min_gain is not None and not key.difference >= min_gain:
        return False, f"not promoted: {key.text()} gains less than the minimum {min_gain:g}"
    within = " and ".join(d.text() for d in diffs)
    verb = "is" if len(diffs) == 1 else "are"
    gain = f"; {TITLE[key.metric]} gains at least {min_gain:g}" if min_gain is not None else ""
    return True, f"promoted: {within} {verb} within the tolerance {_tol(key)}{gain}"


def verdict(mode: str, promote: bool, reason: str) -> tuple[bool, str]:
    """The rule's answer, overridden by `--promote always` or `never` (the reason keeps the figures)."""
    if mode == "always":
        return True, f"promoted (--promote always); by the rule alone, {reason}"
    if mode == "never":
        return False, f"not promoted (--promote never); by the rule alone, {reason}"
    return promote, reason


def _tol(d: MetricDiff) -> str:
    share = f" ({d.tolerance / d.champion:.0%} of the champion's RMSE)" if d.metric == "rmse" and d.champion else ""
    return f"{d.tolerance:.3g}{share}"


def _signed(x: float, metric: str) -> str:
    text = f"{x:+.4g}" if metric == "rmse" else f"{x:+.3f}"  # RMSE is in the target's units, any scale
    return text.replace("-", "−")
