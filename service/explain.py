"""Reason codes: each feature's effect on a record's score (from the bundle's `explain.onnx`) and
the sentences a person reads. docs/explain.md has the method, the reference and a worked example.

The graph gives one effect per feature that sums, with the others, to the score minus the score of
the training population's mean input. A record's reasons are the features that moved its score most
toward the outcome explained: the positive class (binary), the predicted class (multiclass) or the
side of the reference the value fell on (regression).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from service.features import CategoricalFeature, Preprocess, category_key, parse_number, shown

Explain = int | Literal["all"]  # reasons per record, or every feature's effect
EXPLAIN_OUTPUTS = ["effects", "score", "baseline", "target"]
ADDITIVITY_TOL = 1e-4  # |effects.sum - (score - baseline)|, in the score's units (regression: × target std)
# plus this share of the row's sum of |effects|: where large effects cancel (collinear columns),
# float32 rounds in proportion to them (docs/explain.md)
ROUNDING = 1e-6
# and this share of |score| + |reference|: each is float32, rounded by half a step (a year-like score
# past 2,048 has steps of 2.4e-4: 13 of 121 such records were refused); the worst seen, 0.27 of it
SCORE_ROUNDING = float(np.finfo(np.float32).eps)


def explanation_keys(task: str, explain: Explain | None) -> list[str]:
    """What a row's flat columns (a file, MLflow, V2's tensors) say of its effects, as `explanation_<key>`:
    the class explained (multiclass), and beside every effect the score and reference they add up to."""
    return (["class"] if task == "multiclass" else []) + (["score", "reference"] if explain == "all" else [])


def checked_explain(value: Any, where: str = '"explain"') -> Explain | None:
    """A request's `explain` value (None or 0: no reasons), or ValueError naming what is wrong."""
    if value == "all":
        return "all"
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if value is None or (type(value) is int and value == 0):  # 0.0 and 4.0 alike: not a count
        return None
    if type(value) is int and 1 <= value <= 100:
        return value
    raise ValueError(f'{where} must be a number of reasons from 1 to 100 (0: none), or "all"; got {value!r}')


@dataclass
class Effects:
    """The graph's answer for some rows: effects [N, features] in feature order, the score they
    explain and its value at the reference, both [N]: effects.sum(1) == score - baseline."""

    effects: np.ndarray
    score: np.ndarray
    baseline: np.ndarray
    target: np.ndarray  # the class whose score is explained (multiclass: the graph's predicted class)


class Explainer:
    """One model's effects and reasons."""

    def __init__(self, pre: Preprocess, session: ort.InferenceSession, stats: dict[str, Any]) -> None:
        self.pre, self.session, self.stats = pre, session, stats
        self.names = [f.name for f in pre.features]
        self._numeric_at = {f.name: j for j, f in enumerate(pre.numeric)}
        self._categorical = {f.name: f for f in pre.categorical}
        self._modes = {name: _mode(doc) for name, doc in stats["features"].items() if doc["kind"] == "categorical"}
        self._percentiles = {
            n: d.get("percentiles") or [] for n, d in stats["features"].items() if d["kind"] == "numeric"
        }

    def run(self, num: np.ndarray, cat: np.ndarray) -> Effects:
        """Effects of these rows (ONNX Runtime, on the caller's thread)."""
        effects, score, baseline, target = self.session.run(EXPLAIN_OUTPUTS, {"num": num, "cat": cat})
        return Effects(effects, score, baseline, target)

    @cached_property
    def tolerance(self) -> float:
        """How far a row's effects may miss score - reference, past float32's rounding of them; an
        effect no larger is not named as a reason (it is zero to the effects' accuracy)."""
        return ADDITIVITY_TOL * (max(1.0, self.pre.target_std) if self.pre.task == "regression" else 1.0)

    def excess(self, found: Effects) -> np.ndarray:
        """Per row, by how much the effects miss score - reference beyond their rounding (NaN: not numbers)."""
        miss = np.abs(found.effects.sum(axis=1, dtype=np.float64) - (found.score - found.baseline))
        rounding = ROUNDING * np.abs(found.effects).sum(axis=1, dtype=np.float64)
        rounding += SCORE_ROUNDING * (np.abs(found.score, dtype=np.float64) + np.abs(found.baseline, dtype=np.float64))
        excess: np.ndarray = miss - rounding
        return excess

    def unexplained(self, found: Effects) -> np.ndarray:
        """The rows whose effects are not numbers or do not add up (a graph exported before a fix):
        refused by name, never answered wrong."""
        return np.flatnonzero(~(self.excess(found) <= self.tolerance))

    def order(self, found: Effects, k: Explain) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the features to name (indices [N, k]) and which of them to keep: those whose
        effect points toward the outcome explained by more than `tolerance` (all of them with "all")."""
        toward = found.effects * self.direction(found)[:, None]
        n = toward.shape[1] if k == "all" else min(k, toward.shape[1])
        if k == "all" or not np.isfinite(toward).all():  # argmax would place a NaN differently
            order = np.argsort(-toward, axis=1, kind="stable")[:, :n]
        else:  # k passes of argmax pick the same (a tie: the first feature first) without sorting every feature
            rows, left = np.arange(len(toward)), toward.copy()
            order = np.empty((len(toward), n), np.intp)
            for i in range(n):
                order[:, i] = top = left.argmax(axis=1)
                left[rows, top] = -np.inf
        keep = np.take_along_axis(toward, order, axis=1) > self.tolerance
        return order, keep | (k == "all")

    def _picked(self, found: Effects, k: Explain) -> list[list[int]]:
        """`order` as lists of the kept indices; plain Python for a request's few rows (numpy's
        per-call cost is most of the work there)."""
        if len(found.score) > 16:
            order, keep = self.order(found, k)
            return [
                [j for j, ok in zip(o, kk, strict=True) if ok]
                for o, kk in zip(order.tolist(), keep.tolist(), strict=True)
            ]
        signs, least = self.direction(found).tolist(), self.tolerance
        n = len(self.names) if k == "all" else min(k, len(self.names))
        picked = []
        for sign, row in zip(signs, found.effects.tolist(), strict=True):
            ranked = sorted(range(len(row)), key=lambda j: -row[j] * sign)[:n]
            picked.append(ranked if k == "all" else [j for j in ranked if row[j] * sign > least])
        return picked

    def direction(self, found: Effects) -> np.ndarray:
        """+1 where a reason raises the score explained, -1 where it lowers it (regression below the reference)."""
        if self.pre.task != "regression":
            return np.ones(len(found.score))
        return np.where(found.score >= found.baseline, 1.0, -1.0)

    def reasons(
        self, found: Effects, k: Explain, values: list[dict[str, Any]], labels: list[Any]
    ) -> list[list[dict[str, Any]]]:
        """Each record's reasons: field, value as sent, effect and a sentence."""
        effects = found.effects.tolist()
        out = []
        for row, picked in enumerate(self._picked(found, k)):
            record = values[row] if row < len(values) else {}
            these = []
            for j in picked:
                name, effect = self.names[j], effects[row][j]
                value = record.get(name)
                text = self.text(name, value, effect, labels[row])
                these.append({"field": name, "value": value, "effect": effect, "text": text})
            out.append(these)
        return out

    def explained_labels(self, found: Effects, labels: list[Any]) -> list[Any]:
        """The class each record's effects explain: multiclass, the graph's own pick (the served
        label but on a near-tie, which a computation in another order may break the other way)."""
        if self.pre.task != "multiclass":
            return labels
        return [self.pre.labels[int(i)] for i in found.target.tolist()]

    def text(self, name: str, value: Any, effect: float, label: Any) -> str:
        """The sentence for one feature's effect on one record."""
        return f"{self.describe(name, value)}; {self.outcome(effect, label)}"

    def describe(self, name: str, value: Any) -> str:
        """The value placed against training: `tenure is 1 — lower than 95 % of training records`."""
        feature = self._categorical.get(name)
        if feature is not None:
            return self._describe_level(feature, value)
        number = _number(value, self._parsers.get(name, parse_number))
        if number is None:
            share = self._missing.get(name)
            if share:  # the model reads the blank itself (a missing indicator), not only the typical value
                shown = f"{round(100 * share)} %" if share >= 0.005 else "under 1 %"
                return f"{name} was missing — as in {shown} of training records"
            return f"{name} was missing and taken as the typical value"
        percentiles = self._percentiles.get(name, [])
        if name in self.pre.dates:  # the model reads a date's age in days: a lower age is a later date
            age = f"{_shown(number)} days old" if number >= 0 else f"{_shown(-number)} days ahead"
            shown, placed = f"{value} ({age})", _placed(number, percentiles, ("later", "earlier"))
        else:
            shown, placed = _with_unit(_shown(number), self._units.get(name, "")), _placed(number, percentiles)
        return f"{name} is {shown}" + (f" — {placed}" if placed else "")

    @cached_property
    def _units(self) -> dict[str, str]:
        """Each numeric's currency or percent sign, as its training values carried it."""
        return {f.name: f.unit for f in self.pre.numeric if f.unit}

    @cached_property
    def _missing(self) -> dict[str, float]:
        """The share of training records each numeric with a missing indicator was missing in."""
        return {self.pre.numeric[j].name: self.pre.numeric[j].missing_ for j in self.pre.indicated}

    @cached_property
    def _parsers(self) -> dict[str, Callable[[Any], float]]:
        """Each numeric feature's parser (a decimal comma, a date's age), as the model read the value."""
        return dict(zip([f.name for f in self.pre.numeric], self.pre.parsers or [], strict=False))

    def _describe_level(self, feature: CategoricalFeature, value: Any) -> str:
        mode = self._modes.get(feature.name)
        try:
            text = category_key(value)  # as the model read it: 2.0 is level "2"
        except ValueError:
            text = None
        if not text:
            return f"{feature.name} was missing"
        code = feature.code_of(text)
        if code == 0:
            return f"{feature.name} {shown(text)} was not seen in training and taken as missing"
        level = feature.vocab_[code - 1]  # as matched: `YES` is `Yes`, `17.0` is `17`
        if mode is None or level == mode:
            return f"{feature.name} is {level} (the most common value in training)"
        return f"{feature.name} is {level} (most common in training: {mode})"

    def outcome(self, effect: float, label: Any) -> str:
        """`raises the chance of Churn = Yes`, `lowers the predicted price`."""
        pre = self.pre
        verb = "raises" if effect > 0 else "lowers" if effect < 0 else "does not move"  # 0: a restated copy
        if pre.task == "regression":
            return f"{verb} the predicted {pre.target}"
        explained = pre.labels[1] if pre.task == "binary" else label
        return f"{verb} the chance of {pre.target} = {explained}"


def _mode(doc: dict[str, Any]) -> str | None:
    levels: dict[str, float] = doc.get("levels") or {}
    return max(levels, key=lambda level: levels[level]) if levels else None


def _number(value: Any, parse: Callable[[Any], float] = parse_number) -> float | None:
    """The value as the model read it (None: missing)."""
    try:
        number = parse(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _shown(number: float) -> str:
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else f"{number:g}"


def _with_unit(number: str, unit: str) -> str:
    """`$1029.85`, `18.5%`, `120 EUR`: the number with the sign its training values carried."""
    if unit == "%":
        return f"{number}%"
    return f"{unit}{number}" if len(unit) == 1 else f"{number} {unit}" if unit else number


def _placed(number: float, percentiles: list[float], words: tuple[str, str] = ("lower", "higher")) -> str:
    """`lower than 95 % of training records` from the training percentiles (empty: unknown); a
    value many records share (a minimum of 0, say) is placed as such. `words`: how a lower and a
    higher value read (a date's age: later, earlier)."""
    if not percentiles:
        return ""
    lower, higher = words
    if number < percentiles[0] or number > percentiles[-1]:
        return f"{lower if number < percentiles[0] else higher} than any training record"
    below, at_most = _share(number, percentiles, False), _share(number, percentiles, True)
    if at_most - below >= 10:
        return f"the same as {round(at_most - below)} % of training records"
    # inside the training range some record is at or beyond it: never "lower than 100 %" (the
    # percentiles cannot see the few records at a minimum)
    if 100 - at_most >= below:
        return f"{lower} than {min(round(100 - at_most), 99)} % of training records"
    return f"{higher} than {min(round(below), 99)} % of training records"


def _share(number: float, percentiles: list[float], inclusive: bool) -> float:
    """The share of training values below `number` (or at most `number`), in %, read off evenly
    spaced percentiles by linear interpolation."""
    last = len(percentiles) - 1
    if number < percentiles[0]:
        return 0.0
    if number > percentiles[last]:
        return 100.0
    if inclusive:
        i = bisect.bisect_right(percentiles, number) - 1  # the last percentile at or below
        if percentiles[i] == number or i == last:
            return i * 100 / last
        lo, hi = percentiles[i], percentiles[i + 1]
        return (i + (number - lo) / (hi - lo)) * 100 / last
    i = bisect.bisect_left(percentiles, number)  # the first percentile at or above
    if percentiles[i] == number or i == 0:
        return i * 100 / last
    lo, hi = percentiles[i - 1], percentiles[i]
    return (i - 1 + (number - lo) / (hi - lo)) * 100 / last
