"""Shadow traffic: the challenger scores the rows the champion answered, on a thread of its own.

The champion's batcher hands each answered batch over (`DataPlane`); the rows are re-coded into
the challenger's inputs (numbers by name, levels through the challenger's vocabulary) and queued.
The request never waits for the challenger and never fails because of it: when the queue is full
the batch is shed and counted. Agreement is read off the last `window` compared rows. With the
prediction log on, both outputs are kept per id, so outcomes posted as feedback give both
versions' live metrics on the same records.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from monitoring.accuracy import metrics_of, truth_of
from monitoring.log import text_of
from service.drift import NO_ROWS, population_stability, psi_noise, reading, score_of
from service.features import NumericFeature, Preprocess

if TYPE_CHECKING:
    from monitoring.feedback import Labelled
    from service.store import LoadedModel

log = logging.getLogger("tabserve.shadow")


class NotComparable(ValueError):
    """The challenger reads a field the champion's inputs do not carry."""


class Recode:
    """The champion's encoded rows as the challenger's inputs: numeric columns taken by name, each
    categorical's codes mapped through the challenger's vocabulary (a level the champion never saw
    reaches it as missing, as it reached the champion)."""

    def __init__(self, champion: Preprocess, challenger: Preprocess) -> None:
        nums = {f.name: j for j, f in enumerate(champion.numeric)}
        cats = {f.name: (j, f) for j, f in enumerate(champion.categorical)}
        missing = [f.name for f in challenger.numeric if f.name not in nums]
        missing += [f.name for f in challenger.categorical if f.name not in cats]
        if missing:
            raise NotComparable(f"the challenger reads {', '.join(missing)}, which the champion does not")
        self.num = [nums[f.name] for f in challenger.numeric]
        # a date's number is its age at its bundle's reference date (the latest in its training data):
        # the challenger's ages are the champion's moved by the days between the two references
        shift = [_days_apart(champion.numeric[nums[f.name]], f) for f in challenger.numeric]
        self.shift = np.array(shift, np.float32) if any(shift) else None
        self.cat = []
        for f in challenger.categorical:
            j, old = cats[f.name]
            codes = np.array([0, *(f.index_.get(level, 0) for level in old.vocab_)], np.int64)
            self.cat.append((j, codes))

    def __call__(self, num: np.ndarray, cat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new_num = np.ascontiguousarray(num[:, self.num], np.float32)
        if self.shift is not None:
            new_num += self.shift
        new_cat = np.empty((len(cat), len(self.cat)), np.int64)
        for k, (j, codes) in enumerate(self.cat):
            new_cat[:, k] = codes[cat[:, j]]
        return new_num, new_cat


def _days_apart(old: NumericFeature, new: NumericFeature) -> float:
    """Days from the champion's reference date to the challenger's, for a date feature (0 for a number)."""
    if old.date is None and new.date is None:
        return 0.0
    if old.date is None or new.date is None:
        raise NotComparable(f"{new.name} is a date to one version and a number to the other")
    return float((new.date.reference_ - old.date.reference_).total_seconds() / 86400.0)


class Shadow:
    """One champion and its challenger: what they answer on the same rows."""

    def __init__(
        self, champion: LoadedModel, challenger: LoadedModel, window: int, max_queued_rows: int, keyed: bool = False
    ) -> None:
        self.champion, self.challenger = champion, challenger
        self.window, self.max_queued_rows = window, max_queued_rows
        self.recode = Recode(champion.pre, challenger.pre)
        assert challenger.score is not None  # set by load_model
        self._score = challenger.score
        self.compared = self.shed = self.unscored = 0  # unscored: rows whose challenger outputs were not numbers
        self.keyed = keyed and bool(champion.pre.id_columns)  # outputs kept per id, for outcomes to label
        self._scored: OrderedDict[tuple[str | None, ...], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._labelled: OrderedDict[tuple[str | None, ...], tuple[np.ndarray, np.ndarray, str]] = OrderedDict()
        self._queue: deque[tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, Any]]]] = deque()
        self._queued = 0
        self._wake = threading.Condition()
        self._closed = False
        # the last `window` compared rows: both scores, |difference|, and whether the labels agree
        self._mine: deque[np.ndarray] = deque()
        self._theirs: deque[np.ndarray] = deque()
        self._diff: deque[np.ndarray] = deque()
        self._agree: deque[np.ndarray] = deque()
        self._held = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="tabserve-shadow", daemon=True)
        self._thread.start()

    def offer(self, num: np.ndarray, cat: np.ndarray, out: np.ndarray, notes: list[tuple[int, Any]]) -> None:
        """A batch the champion answered, with each request's (rows, note) (on the event loop: never waits)."""
        n = len(num)
        with self._wake:
            if self._closed or self._queued + n > self.max_queued_rows:
                self.shed += n  # the shadow falls behind: its work goes first
                return
            self._queue.append((num, cat, out, notes))
            self._queued += n
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    def idle(self) -> bool:
        """Nothing queued or being scored (tests wait for it)."""
        with self._wake:
            return not self._queue and self._queued == 0

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._queue or self._closed)
                if self._closed:
                    return
                num, cat, out, notes = self._queue.popleft()
            try:
                theirs = self._score(*self.recode(num, cat))
                finite = np.isfinite(theirs).all(axis=1)  # a value its graph overflows on: no figure to compare
                self.unscored += int((~finite).sum())
                self._note(out[finite], theirs[finite])
                if self.keyed:
                    self._keep(out, theirs, notes)
            except Exception:  # the shadow never takes the champion down; it says so
                log.exception("shadow scoring on %s version %d failed", self.challenger.name, self.challenger.version)
            with self._wake:
                self._queued -= len(num)

    def _note(self, mine: np.ndarray, theirs: np.ndarray) -> None:
        pre, other = self.champion.pre, self.challenger.pre
        if pre.task == "regression":
            diff, agree = np.abs(mine[:, 0] - theirs[:, 0]), None
        else:
            diff = np.abs(mine - theirs).max(axis=1)  # binary: |Δ probability| of either class
            labels = np.asarray(pre.labels, object)[pre.label_index(mine)]
            agree = labels == np.asarray(other.labels, object)[other.label_index(theirs)]
        with self._lock:
            self.compared += len(mine)
            self._mine.append(score_of(pre, mine))
            self._theirs.append(score_of(other, theirs))
            self._diff.append(diff)
            self._agree.append(agree if agree is not None else np.zeros(0, bool))
            self._held += len(mine)
            while self._held - len(self._diff[0]) >= self.window:  # whole batches: between window and more
                self._held -= len(self._diff[0])
                for kept in (self._mine, self._theirs, self._diff, self._agree):
                    kept.popleft()

    def _keep(self, mine: np.ndarray, theirs: np.ndarray, notes: list[tuple[int, Any]]) -> None:
        """Both outputs of each row, by its ids as the log writes them (the latest `window` ids)."""
        row = 0
        with self._lock:
            for n, note in notes:
                ids = note[0] if note else ()
                if ids:
                    texts = [[text_of(v) for v in values] for _, values in ids]
                    for r in range(n):
                        key = tuple(t[r] for t in texts)
                        self._scored.pop(key, None)
                        if np.isfinite(theirs[row + r]).all():
                            self._scored[key] = (mine[row + r], theirs[row + r])
                row += n
            while len(self._scored) > self.window:
                self._scored.popitem(last=False)

    def labelled(self, items: Iterable[Labelled]) -> None:
        """Outcomes that came back (feedback): those of rows both versions scored are kept."""
        with self._lock:
            for item in items:
                both = self._scored.get(item.key)
                if both is not None:
                    self._labelled.pop(item.key, None)
                    self._labelled[item.key] = (*both, item.outcome)
            while len(self._labelled) > self.window:
                self._labelled.popitem(last=False)

    def live(self) -> dict[str, Any] | None:
        """Both versions' live metrics on the same labelled records (None: no outcome yet)."""
        with self._lock:
            found = list(self._labelled.values())
        if not found:
            return None
        outcomes = [o for _, _, o in found]
        mine, theirs = np.stack([m for m, _, _ in found]), np.stack([t for _, t, _ in found])
        champion, challenger = self.champion, self.challenger
        return {
            "rows": len(found),
            str(champion.version): metrics_of(champion.pre, mine, truth_of(champion.pre, outcomes)),
            str(challenger.version): metrics_of(challenger.pre, theirs, truth_of(challenger.pre, outcomes)),
        }

    def report(self) -> dict[str, Any]:
        """Agreement over the last `window` compared rows (None where nothing was compared yet)."""
        with self._lock:
            parts = [list(kept) for kept in (self._mine, self._theirs, self._diff, self._agree)]
            compared, shed, unscored = self.compared, self.shed, self.unscored
        doc: dict[str, Any] = {
            "challenger": self.challenger.version,
            "compared": compared,
            "shed": shed,
            "unscored": unscored,
            "window": 0,
            "label_agreement": None,
            "mean_abs_diff": None,
            "p99_abs_diff": None,
            "score_psi": None,
            "score_psi_reading": NO_ROWS,
            "live": self.live() if self.keyed else None,
        }
        if not parts[0]:
            return doc
        mine, theirs, diff, agree = (np.concatenate(p) for p in parts)
        doc.update(window=len(diff), mean_abs_diff=float(diff.mean()), p99_abs_diff=float(np.percentile(diff, 99)))
        if self.champion.pre.task != "regression":
            doc["label_agreement"] = float(agree.mean())
        doc["score_psi"] = score_psi(mine, theirs)
        doc["score_psi_reading"] = reading(doc["score_psi"], psi_noise(np.ones(10), len(mine)))  # ~deciles
        return doc


def score_psi(mine: np.ndarray, theirs: np.ndarray, bins: int = 10) -> float:
    """PSI of the challenger's scores against the champion's on the same rows, in the champion's deciles."""
    edges = np.unique(np.quantile(mine, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, mine, side="right"), minlength=len(edges) + 1) / len(mine)
    counts = np.bincount(np.searchsorted(edges, theirs, side="right"), minlength=len(edges) + 1)
    return population_stability(counts, expected)
