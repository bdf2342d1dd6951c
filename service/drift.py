"""Live drift: how far the records a model scores have moved from its training population.

Training stores each feature's reference distribution in the bundle (`drift.json`: numeric
deciles and their shares plus the missing share, categorical level shares, the score's deciles).
Here each batch's rows are counted into the same bins (a few numpy calls per batch, on the
inference thread) over a sliding window of the last `monitor_window` records, and the population
stability index (PSI) of each feature and of the score is read off the counts: < 0.1 stable,
0.1–0.25 moderate, > 0.25 act; too few rows where noise alone would read moderate or worse.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np

from service.features import Preprocess

SMOOTH = 1e-4  # a share of zero would make PSI infinite; the usual smoothing
COUNT_ROWS = 2048  # batches wait for this many rows (at most a tenth of the window), then are counted at once


def score_of(pre: Preprocess, out: np.ndarray) -> np.ndarray:
    """The one number per row whose distribution is watched: the positive class's probability,
    the most probable class's, or the value."""
    if pre.task == "binary":
        return np.asarray(out[:, 1])
    return np.asarray(out.max(axis=1) if pre.task == "multiclass" else out[:, 0])


def population_stability(counts: np.ndarray, expected: np.ndarray) -> float:
    """PSI of observed bin counts against expected shares (0.0 with nothing observed)."""
    rows = counts.sum()
    if not rows:
        return 0.0
    actual = counts / rows
    return float(np.sum((actual - expected) * np.log((actual + SMOOTH) / (expected + SMOOTH))))


NO_ROWS = "no rows yet"  # the reading of a window (or a report's span) with no scored row: no verdict
FEW_ROWS = "too few rows"  # a window so small that an unchanged population would read moderate or worse
STABLE, ACT = 0.1, 0.25  # the usual bounds: < 0.1 stable, 0.1–0.25 moderate, > 0.25 act


def psi_noise(expected: np.ndarray, rows: int) -> float:
    """About the PSI an unchanged population shows on `rows` rows: (bins − 1) / rows, as PSI is
    near χ² / rows (a 3-row window of deciles reads 3, "act", with nothing moved)."""
    return (np.count_nonzero(expected) - 1) / rows if rows else float("inf")


def reading(psi: float | None, noise: float = 0.0) -> str:
    """The usual reading of a PSI (None: nothing was compared; `noise`: its psi_noise)."""
    if psi is None:
        return NO_ROWS
    if noise >= STABLE:
        return FEW_ROWS
    return "stable" if psi < STABLE else "moderate" if psi <= ACT else "act"


class Drift:
    """One model's drift window: bin counts of the last `window` scored records (counted in blocks
    of up to a tenth of it, so the window holds between `window` and 1.1 × `window` records)."""

    def __init__(self, pre: Preprocess, reference: dict[str, Any], window: int) -> None:
        self.pre, self.window = pre, window
        features = reference["features"]
        self._edges = [np.asarray(features[f.name]["edges"], np.float64) for f in pre.numeric]
        self._score_edges = np.asarray(reference["score"]["edges"], np.float64)
        # one flat vector of bins: each numeric's (deciles + missing), each categorical's levels, the score's
        sizes = [len(e) + 2 for e in self._edges] + [f.cardinality for f in pre.categorical]
        sizes.append(len(self._score_edges) + 1)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        names = [f.name for f in pre.numeric] + [f.name for f in pre.categorical]
        self._names = names
        expected = [features[name]["shares"] for name in names] + [reference["score"]["shares"]]
        self._expected = [np.asarray(e, np.float64) for e in expected]
        self._cat_offsets = self._offsets[len(pre.numeric) : len(pre.numeric) + len(pre.categorical)]
        self._counts = np.zeros(self._offsets[-1], np.int64)
        self._chunks: deque[tuple[np.ndarray, int]] = deque()
        self._rows = 0
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self._count_rows = max(1, min(COUNT_ROWS, window // 10))  # a count has ~20 us of fixed cost
        self._lock = threading.Lock()

    def update(self, num: np.ndarray, cat: np.ndarray, out: np.ndarray) -> None:
        """Note a batch of scored rows (called from inference threads; counted a few thousand rows at a time)."""
        with self._lock:
            self._pending.append((num, cat, out))
            self._pending_rows += len(num)
            if self._pending_rows >= self._count_rows:
                self._count_pending()

    def _count_pending(self) -> None:
        """Count the noted rows into the window (the lock held)."""
        if not self._pending_rows:
            return
        parts = self._pending
        num, cat, out = (np.concatenate([p[i] for p in parts]) for i in range(3))
        self._pending, self._pending_rows = [], 0
        # blocks of at most a tenth of the window, so that dropping whole blocks keeps it under 1.1 x;
        # rows before a big batch's last `window` would be dropped again at once
        for lo in range(max(0, len(num) - self.window), len(num), self._count_rows):
            hi = lo + self._count_rows
            self._count(num[lo:hi], cat[lo:hi], out[lo:hi])

    def _count(self, num: np.ndarray, cat: np.ndarray, out: np.ndarray) -> None:
        """Count one block into the window and drop the oldest blocks it no longer needs."""
        n = len(num)
        places = []
        for j, edges in enumerate(self._edges):
            places.append(_bin(edges, num[:, j]) + self._offsets[j])
        if cat.shape[1]:
            places.append((cat + self._cat_offsets).ravel())
        score = np.searchsorted(self._score_edges, score_of(self.pre, out), side="right")
        places.append(score + self._offsets[-2])
        counts = np.bincount(np.concatenate(places), minlength=len(self._counts))
        self._counts += counts
        self._chunks.append((counts, n))
        self._rows += n
        while self._chunks and self._rows - self._chunks[0][1] >= self.window:
            old, old_n = self._chunks.popleft()
            self._counts -= old
            self._rows -= old_n

    def report(self) -> dict[str, Any]:
        """PSI per feature and of the score over the window, with each numeric's missing rate."""
        with self._lock:
            self._count_pending()
            counts, rows = self._counts.copy(), self._rows
        features: dict[str, Any] = {}
        psis: list[float | None] = []
        for i, expected in enumerate(self._expected):
            part = counts[self._offsets[i] : self._offsets[i + 1]]
            psi = population_stability(part, expected) if rows else None  # an empty window: no verdict
            psis.append(psi)
            if i < len(self._names):
                doc: dict[str, Any] = {"psi": psi, "reading": reading(psi, psi_noise(expected, rows))}
                if i < len(self._edges):
                    doc["missing_rate"] = float(part[-1] / rows) if rows else None
                features[self._names[i]] = doc
        score = {"psi": psis[-1], "reading": reading(psis[-1], psi_noise(self._expected[-1], rows))}
        return {"window_rows": rows, "score": score, "features": features}


def reference_distribution(pre: Preprocess, num: np.ndarray, cat: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """drift.json from training rows: deciles and shares per numeric (the last share: missing),
    level shares per categorical (code 0: missing or rare), the score's deciles and shares."""
    features: dict[str, Any] = {}
    for j, feat in enumerate(pre.numeric):
        features[feat.name] = _binned(num[:, j])
    for j, cfeat in enumerate(pre.categorical):
        counts = np.bincount(cat[:, j], minlength=cfeat.cardinality)
        features[cfeat.name] = {"shares": (counts / max(len(cat), 1)).tolist()}
    score = _binned(scores.astype(np.float64))
    score["shares"] = score["shares"][:-1]  # a score is never missing
    return {"format_version": 1, "features": features, "score": score}


def _binned(values: np.ndarray) -> dict[str, Any]:
    present = values[~np.isnan(values)]
    edges = np.unique(np.quantile(present, np.linspace(0.1, 0.9, 9))) if len(present) else np.empty(0)
    counts = np.bincount(_bin(edges, values), minlength=len(edges) + 2)
    return {"edges": edges.tolist(), "shares": (counts / max(len(values), 1)).tolist()}


def _bin(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's bin among the edges; NaN (missing) in the bin after the last: the one rule for
    training's reference and the live window."""
    return np.where(np.isnan(values), len(edges) + 1, np.searchsorted(edges, values, side="right"))
