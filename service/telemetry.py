"""Prometheus metrics, one registry per app (so tests and workers never share state by accident)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


class Telemetry:
    """The service's metrics; labelled children are cached because label lookup is the slow part."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tabserve_requests", "Requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram(
            "tabserve_request_seconds", "Request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.rows = Counter("tabserve_rows_scored", "Rows scored", ["model"], registry=r)
        self.batch_rows = Histogram(
            "tabserve_batch_rows", "Rows per ONNX Runtime call", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "tabserve_inference_seconds",
            "ONNX Runtime call time",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("tabserve_queue_depth", "Requests waiting for a batch", ["model"], registry=r)
        self.model_info = Gauge(
            "tabserve_model_info",
            "Loaded model versions (1 = current)",
            ["model", "version", "provider"],
            registry=r,
        )
        self.reloads = Counter("tabserve_reloads", "Bundle loads by outcome", ["outcome"], registry=r)
        self._children: dict[tuple[str, ...], MetricWrapperBase] = {}

    def _child(self, metric: MetricWrapperBase, *labels: str) -> MetricWrapperBase:
        key = (str(id(metric)), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self._child(self.requests, route, str(status)).inc()  # type: ignore[attr-defined]
        self._child(self.latency, route).observe(seconds)  # type: ignore[attr-defined]

    def batch(self, model: str, rows: int, seconds: float) -> None:
        """One ONNX Runtime call."""
        self._child(self.rows, model).inc(rows)  # type: ignore[attr-defined]
        self._child(self.batch_rows, model).observe(rows)  # type: ignore[attr-defined]
        self._child(self.inference, model).observe(seconds)  # type: ignore[attr-defined]

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)
