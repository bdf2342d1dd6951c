"""Prometheus metrics, one registry per app (so tests and workers never share state by accident).

Hot series are plain counters made into metric families at scrape time: far cheaper per request
than labelled prometheus_client metrics (BENCHMARKS.md).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from service.drift import Drift
from service.features import Preprocess

if TYPE_CHECKING:
    from monitoring.accuracy import LiveAccuracy
    from monitoring.log import LogCounts

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


class Histogram:
    """Counts per bucket (`le` semantics) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.sum = bounds, [0] * (len(bounds) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, float(total)))
        return out


class Telemetry(Collector):
    """The service's metrics: request series written on the event loop, batch series under a lock."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, Histogram] = {}
        self._rows: dict[str, int] = {}
        self._version_rows: dict[tuple[str, int], int] = {}
        self._batch_rows: dict[str, Histogram] = {}
        self._inference: dict[str, Histogram] = {}
        self._warnings: dict[tuple[str, str, str], int] = {}
        self.drift: dict[str, Drift | None] = {}  # model → its serving version's drift window
        self.log: LogCounts | None = None  # the prediction log's counts, when it is on
        self.accuracy: dict[str, LiveAccuracy] = {}  # model → its labelled predictions (feedback)
        self.releases: Callable[[], dict[str, dict[str, Any]]] = dict  # model → its release state (the store's)
        self.refused: Callable[[], dict[int, int]] = dict  # status → answers the HTTP layer gave itself
        self._lock = threading.Lock()
        self.queue_depth = Gauge("tabserve_queue_depth", "Requests waiting for a batch", ["model"], registry=r)
        self.model_info = Gauge(
            "tabserve_model_info",
            "Loaded model versions (1 = loaded in that role: champion, or the challenger release.json names)",
            ["model", "version", "provider", "role"],
            registry=r,
        )
        self.reloads = Counter("tabserve_reloads", "Bundle loads by outcome", ["outcome"], registry=r)
        r.register(self)

    def live(
        self, model: str, pre: Preprocess, window: int, pre_of: Callable[[int], Preprocess | None] | None = None
    ) -> LiveAccuracy:
        """A model's live accuracy window (made on first use); `pre_of` gives a version's contract."""
        from monitoring.accuracy import LiveAccuracy

        found = self.accuracy.get(model)
        if found is None:
            found = self.accuracy[model] = LiveAccuracy(pre, window, pre_of)
        return found

    def request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        hist = self._latency.get(route)
        if hist is None:
            hist = self._latency[route] = Histogram(LATENCY_BUCKETS)
        hist.observe(seconds)

    def batch(self, model: str, rows: int, seconds: float, version: int = 0) -> None:
        """One ONNX Runtime call (called from inference threads)."""
        with self._lock:
            self._rows[model] = self._rows.get(model, 0) + rows
            self._version_rows[model, version] = self._version_rows.get((model, version), 0) + rows
            self._batch_rows.setdefault(model, Histogram(BATCH_BUCKETS)).observe(rows)
            self._inference.setdefault(model, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def rows_scored(self, model: str, rows: int, version: int) -> None:
        """Rows scored outside the batcher (CSV uploads): by model and by version, as batches are."""
        with self._lock:
            self._rows[model] = self._rows.get(model, 0) + rows
            self._version_rows[model, version] = self._version_rows.get((model, version), 0) + rows

    def warnings(self, model: str, tally: dict[tuple[str, str], int] | None) -> None:
        """Input warnings by (field, kind): a drift signal."""
        if not tally:
            return
        with self._lock:
            for (field, kind), n in tally.items():
                key = (model, field, kind)
                self._warnings[key] = self._warnings.get(key, 0) + n

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("tabserve_requests", "Requests by route and status", labels=["route", "status"])
        for (route, status), n in list(self._requests.items()):
            requests.add_metric([route, str(status)], n)
        yield requests
        refused = CounterMetricFamily(
            "tabserve_http_refused",
            "Answers the HTTP layer gave without the app (too many connections, a head over a limit or "
            "too slow, bytes that are no HTTP), by status; not in tabserve_requests",
            labels=["status"],
        )
        for status, n in sorted(self.refused().items()):
            refused.add_metric([str(status)], n)
        yield refused
        yield _histograms("tabserve_request_seconds", "Request latency", "route", self._latency)
        with self._lock:
            rows = CounterMetricFamily("tabserve_rows_scored", "Rows scored", labels=["model"])
            for model, n in self._rows.items():
                rows.add_metric([model], n)
            yield rows
            by_version = CounterMetricFamily(
                "tabserve_version_rows_scored", "Rows scored by model version", labels=["model", "version"]
            )
            for (model, version), n in self._version_rows.items():
                by_version.add_metric([model, str(version)], n)
            yield by_version
            warnings = CounterMetricFamily(
                "tabserve_input_warnings",
                "Scored values the model did not see in training (unseen_level, out_of_range) or a "
                "look-alike of an absent feature (lookalike_field)",
                labels=["model", "field", "kind"],
            )
            for labels, n in self._warnings.items():
                warnings.add_metric(list(labels), n)
            yield warnings
            yield _histograms("tabserve_batch_rows", "Rows per ONNX Runtime call", "model", self._batch_rows)
            yield _histograms("tabserve_inference_seconds", "ONNX Runtime call time", "model", self._inference)
        yield from self._drift()
        yield from self._log()
        yield from self._accuracy()
        yield from self._release()

    def _release(self) -> Iterator[Metric]:
        """Champion and challenger versions, the canary share and the shadow's agreement per model."""
        role = GaugeMetricFamily("tabserve_release_version", "Version by role", labels=["model", "role"])
        canary = GaugeMetricFamily("tabserve_canary_share", "Share of traffic the challenger answers", labels=["model"])
        shadow: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for model, state in self.releases().items():
            for name in ("champion", "challenger"):
                if state[name] is not None:
                    role.add_metric([model, name], state[name])
            canary.add_metric([model], state["canary"])
            for key, value in (state["shadow"] or {}).items():
                if key != "challenger" and isinstance(value, int | float):
                    family = shadow.get(key)
                    if family is None:
                        family = shadow[key] = _shadow_family(key)
                    family.add_metric([model], float(value))
        yield from (role, canary, *shadow.values())

    def _accuracy(self) -> Iterator[Metric]:
        """Live metrics per model and version over the labelled predictions (tabserve_live_auc, …)."""
        families: dict[str, GaugeMetricFamily] = {}
        for model, live in list(self.accuracy.items()):
            for version, report in live.report().items():
                for key, value in report.items():
                    if isinstance(value, int | float) and value is not None:
                        family = families.get(key)
                        if family is None:
                            family = families[key] = GaugeMetricFamily(
                                f"tabserve_live_{key}",
                                f"Live {key} over labelled predictions",
                                labels=["model", "version"],
                            )
                        family.add_metric([model, version], float(value))
        yield from families.values()

    def _log(self) -> Iterator[Metric]:
        """Records the prediction log wrote and dropped (a full buffer: never an error to the client)."""
        if self.log is None:
            return
        written = CounterMetricFamily("tabserve_log_records", "Scored records written to the log", labels=["model"])
        dropped = CounterMetricFamily(
            "tabserve_log_dropped", "Scored records the log dropped (its buffer was full)", labels=["model"]
        )
        for model in sorted({*self.log.written, *self.log.dropped}):  # a zero is said, not left out
            written.add_metric([model], self.log.written.get(model, 0))
            dropped.add_metric([model], self.log.dropped.get(model, 0))
        yield from (written, dropped)

    def _drift(self) -> Iterator[Metric]:
        """PSI of each feature and of the score over each model's window, and missing rates."""
        feature = GaugeMetricFamily(
            "tabserve_feature_psi", "PSI of a feature, live window vs training", labels=["model", "field"]
        )
        score = GaugeMetricFamily("tabserve_score_psi", "PSI of the score, live window vs training", labels=["model"])
        missing = GaugeMetricFamily(
            "tabserve_missing_rate", "Share of missing values in the live window", labels=["model", "field"]
        )
        for model, drift in list(self.drift.items()):
            if drift is None:
                continue
            report = drift.report()
            if not report["window_rows"]:
                continue  # nothing scored yet: no series rather than a PSI of 0 that reads "stable"
            score.add_metric([model], report["score"]["psi"])
            for field, doc in report["features"].items():
                feature.add_metric([model, field], doc["psi"])
                if "missing_rate" in doc:
                    missing.add_metric([model, field], doc["missing_rate"])
        yield from (feature, score, missing)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


SHADOW_COUNTS = {  # counted since the shadow began (a counter: rate() reads them); the rest describe its window
    "compared": "Shadow: rows both champion and challenger scored",
    "shed": "Shadow: rows the challenger never scored, its queue full (the shadow fell behind)",
    "unscored": "Shadow: rows whose challenger outputs were not numbers",
}


def _shadow_family(key: str) -> GaugeMetricFamily | CounterMetricFamily:
    if key in SHADOW_COUNTS:
        return CounterMetricFamily(f"tabserve_shadow_{key}", SHADOW_COUNTS[key], labels=["model"])
    return GaugeMetricFamily(f"tabserve_shadow_{key}", f"Shadow: challenger vs champion, {key}", labels=["model"])


def _histograms(name: str, doc: str, label: str, series: dict[str, Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, hist in list(series.items()):
        family.add_metric([value], hist.buckets(), sum_value=hist.sum)
    return family
