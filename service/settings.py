"""Service settings: one object, from `TABSERVE_*` environment variables or CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.cpus import CpuBudget


class Settings(BaseSettings):
    """Everything `tabserve serve` can be told. Each description says why the default is what it is."""

    model_config = SettingsConfigDict(
        env_prefix="TABSERVE_", extra="ignore", env_ignore_empty=True
    )  # empty: unset, as the CLI reads it

    models_dir: Path = Field(Path("models"), description="the store `tabserve train` publishes to")
    default_model: str | None = Field(
        None,
        description="served at POST /predict (None: the only model, or first by name when the store is first read)",
    )
    host: str = Field("127.0.0.1", description="loopback unless told otherwise: exposing a port is a deliberate act")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0: any free one)")
    workers: int = Field(
        1, ge=1, description="processes; each loads every model and takes its share of the CPU budget (not a copy)"
    )
    cpus: int | None = Field(
        None,
        ge=1,
        description="the CPU budget; None: the affinity mask and cgroup CPU quota decide (docs/operations.md)",
    )
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: CUDA when it can really run, else CPU")
    threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime threads per worker; 0: its share of the CPU budget less one for the event loop, at least 1",
    )
    inference: Literal["auto", "thread", "loop"] = Field(
        "auto",
        description="where ORT runs; auto: on the event loop if the worker's share is one CPU of several cores (a quota, "
        "--cpus 1, workers splitting the budget), where a thread beside it would spend that CPU in parallel; else on a thread",
    )
    batching: bool = Field(True, description="gather concurrent requests into one ONNX Runtime call")
    max_batch_size: int = Field(
        1024, ge=1, description="rows per ORT call; past ~1k rows the call costs more than it saves"
    )
    max_delay_ms: float = Field(0.0, ge=0, description="extra wait for a fuller batch; 0: whatever queued meanwhile")
    max_queue: int = Field(2048, ge=1, description="pending requests per model before 503 (bounded latency)")
    max_records: int = Field(10_000, ge=1, description="records per request")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="request body limit (JSON routes)")
    max_score_bytes: int = Field(10 * 1024**3, ge=1024, description="CSV upload limit, counted after gzip is inflated")
    max_uploads: int = Field(2, ge=1, description="concurrent CSV uploads (each takes a scoring thread); 503 beyond")
    max_spool_bytes: int = Field(1024**3, ge=1 << 20, description="answer bytes an upload may hold unread on disk")
    max_header_bytes: int = Field(32 * 1024, ge=1024, description="a request's head in all (nginx: 32 KiB); 431 beyond")
    max_header_line_bytes: int = Field(8 * 1024, ge=256, description="one header line or the URL (nginx: 8 KiB)")
    max_connections: int = Field(2048, ge=1, description="open connections; more get 503 and are closed (file handles)")
    header_timeout_s: float = Field(10.0, gt=0, description="to send a request's head, from connect or the last answer")
    body_timeout_s: float = Field(30.0, gt=0, description="longest pause while a body is being sent")
    keep_alive_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    request_timeout_s: float = Field(10.0, gt=0, description="queue wait plus inference; 504 beyond (header lowers it)")
    drain_timeout_s: float = Field(10.0, ge=0, description="on SIGTERM: time to answer what was accepted, then exit")
    older_versions: int = Field(
        4, ge=0, description="other versions than champion and challenger, loaded on demand by V2 routes (LRU); 0: off"
    )
    poll_interval_s: float = Field(2.0, ge=0, description="how often to look for new versions; 0 turns polling off")
    admin_token: str | None = Field(
        None, description="POST /admin/* needs `Authorization: Bearer <token>`; None disables"
    )
    http: Literal["tabserve", "stock"] = Field(
        "tabserve", description="tabserve: uvicorn's httptools protocol with our limits; stock: uvicorn's h11 as is"
    )
    proxy_headers: bool = Field(
        False, description="trust X-Forwarded-* (behind a proxy you run); off costs nothing per request"
    )
    monitor_window: int = Field(
        10_000, ge=100, description="scored records in each model's live drift window (GET /models/{name}/monitor)"
    )
    log: str | None = Field(
        None, description="prediction log: a folder (or a URI pyarrow reads) that every scored record is appended to"
    )
    log_sample: float = Field(1.0, gt=0, le=1, description="share of requests logged (whole requests)")
    log_exclude: list[str] = Field(
        default_factory=list, description="fields never written to the log (PII); repeat the flag for more"
    )
    log_flush_s: float = Field(1.0, gt=0, description="log records go to disk this often: what a crash can lose")
    log_rotate_s: float = Field(600.0, gt=0, description="a log file is closed after this long (or at log_file_rows)")
    log_file_rows: int = Field(500_000, ge=1, description="rows per log file at most")
    log_buffer_rows: int = Field(
        200_000, ge=1, description="records waiting for the log writer; beyond, dropped and counted (never a delay)"
    )
    shadow: bool = Field(
        False,
        description="every model's challenger also scores each request off the request path (or per model: release.json)",
    )
    shadow_queue_rows: int = Field(
        4096, ge=1, description="rows waiting for the shadow; beyond, shed and counted (the champion never waits)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="server log level")

    def sized(self, budget: CpuBudget) -> Settings:
        """These settings with what was left to the CPU budget (`threads` 0, `inference` auto) decided
        from the worker's share of it: workers split the budget, never multiply it."""
        threads = self.threads or budget.serving_threads(self.workers)
        inference = self.inference
        if inference == "auto":
            inference = "loop" if budget.inference_on_loop(self.workers) else "thread"
        return self.model_copy(update={"threads": threads, "inference": inference})
