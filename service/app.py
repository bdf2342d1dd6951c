"""The app factory: `create_app(settings)` wires the store, batchers, routes and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator, MutableMapping
from time import perf_counter
from typing import Any

import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitoring.feedback import Feedback
from monitoring.log import PredictionLog
from service import accelerators
from service.api import admin, feedback, health, metrics, models, openapi, protocols, score
from service.api.predict import PredictEndpoint
from service.cpus import cpu_budget
from service.dataplane import DataPlane
from service.http import HttpProtocol, protocol_for
from service.runtime import describe_device, providers_for
from service.scoring.upload import QUIET_CUT_SHORT, AnswerCutShort, Uploads
from service.settings import Settings
from service.store import ModelStore
from service.telemetry import Telemetry

log = logging.getLogger("tabserve")


class RequestMetrics:
    """Counts every non-predict request by route template and status (predict counts its own)."""

    def __init__(self, app: Any, telemetry: Telemetry) -> None:
        self.app, self.telemetry = app, telemetry

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = perf_counter(), [500]

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except AnswerCutShort as exc:
            status[0] = exc.status
            raise
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.telemetry.request(route, status[0], perf_counter() - started)


class TabserveApp(FastAPI):
    """FastAPI, with the predict routes answered before FastAPI's own middleware stack runs."""

    predict_endpoint: PredictEndpoint | None = None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":  # a load balancer's probe of a GET route:
            await self._head(scope, receive, send)  # 405 left it marking the service down
            return
        endpoint = self.predict_endpoint
        if endpoint is not None:
            route = endpoint.route(scope)
            if route is not None:
                await endpoint.handle(scope, receive, send, route)
                return
        await super().__call__(scope, receive, send)

    async def _head(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        """HEAD as the GET it names, answered without its body (its headers, Content-Length too, kept)."""

        async def headers_only(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body"):
                    return
                message = {**message, "body": b""}
            await send(message)

        await self(dict(scope, method="GET"), receive, headers_only)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A FastAPI app serving every bundle in settings.models_dir."""
    settings = settings or Settings()
    budget = cpu_budget(settings.cpus)
    settings = settings.sized(budget)
    pa.set_cpu_count(budget.per_worker(settings.workers))  # Arrow's pool sees the affinity, not the quota
    logging.getLogger("uvicorn.error").addFilter(QUIET_CUT_SHORT)  # an upload's stop is logged once, by us
    telemetry = Telemetry()
    store = ModelStore(settings, telemetry)
    prediction_log = open_log(settings)
    telemetry.log = prediction_log.counts if prediction_log is not None else None
    telemetry.releases = lambda: {name: store.release_state(name) for name in list(store.current)}
    telemetry.refused = lambda: dict(HttpProtocol.refused)  # the HTTP layer's own answers (process-wide)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        providers_for(settings.device)  # device=cuda with no usable CUDA fails the start here
        log.info(describe_device(settings.device))
        loader = asyncio.create_task(_load_then_poll(store, settings, prediction_log))
        yield
        loader.cancel()
        if prediction_log is not None:  # after the last request is answered: everything accepted is written
            await asyncio.to_thread(prediction_log.close)

    app = TabserveApp(
        title="tabserve",
        version="0.1.0",
        lifespan=lifespan,
        description="Tabular business predictions served by ONNX Runtime.",
        docs_url=None,  # served by openapi.install_docs, from local assets
        redoc_url=None,  # ReDoc would load from a CDN
    )
    app.state.store, app.state.settings, app.state.telemetry = store, settings, telemetry
    app.state.accelerators = accelerators.report()  # a missing one is said once, at start
    app.state.cpus = {
        **budget.to_json(),
        "workers": settings.workers,
        "threads_per_worker": settings.threads,
        "inference": settings.inference,
    }
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    for router in (
        health.router,
        models.router,
        feedback.router,
        score.router,
        protocols.router,
        admin.router,
        metrics.router,
    ):
        app.include_router(router)
    openapi.install(app, store, settings.max_records)
    openapi.install_docs(app)
    app.add_middleware(RequestMetrics, telemetry=telemetry)
    app.state.plane, app.state.uploads = DataPlane(store, prediction_log), Uploads(settings, telemetry, prediction_log)
    app.predict_endpoint = PredictEndpoint(app.state.plane, settings, telemetry)
    return app


def open_log(settings: Settings) -> PredictionLog | None:
    """The prediction log the settings ask for (None: off)."""
    if settings.log is None:
        return None
    return PredictionLog(
        settings.log,
        sample=settings.log_sample,
        exclude=settings.log_exclude,
        flush_s=settings.log_flush_s,
        rotate_s=settings.log_rotate_s,
        file_rows=settings.log_file_rows,
        buffer_rows=settings.log_buffer_rows,
    )


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Every route answers errors in one shape: {"error": "..."} (as the scoring routes do)."""
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """A bad path or query parameter: 422 naming it."""
    details = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
    return JSONResponse({"error": details[0]["message"] if details else "invalid request", "details": details}, 422)


async def _load_then_poll(store: ModelStore, settings: Settings, prediction_log: PredictionLog | None) -> None:
    report = await store.refresh()
    if prediction_log is not None:
        await _restore_live_accuracy(store, prediction_log, settings.monitor_window)
    # everything alive now (modules, sessions, the app) lives as long as the process: moving
    # it out of the collector's reach keeps full collections short. Without it, request bodies
    # with many small objects (a V2 request holds one dict per feature) set off collections that
    # walk the whole heap, which shows in the p99 (BENCHMARKS.md).
    gc.freeze()
    if not store.current:
        absent = "" if settings.models_dir.is_dir() else " (no such folder: a typo?)"
        log.warning("no loadable bundles in %s%s yet; not ready until one is published", settings.models_dir, absent)
    elif report.failed:
        log.warning("some bundles were refused: %s", report.failed)
    if settings.poll_interval_s > 0:
        await store.poll()


async def _restore_live_accuracy(store: ModelStore, prediction_log: PredictionLog, window: int) -> None:
    """Each model's live window as the stored outcomes left it (a restart forgets nothing)."""
    for model in list(store.current.values()):
        if not model.pre.id_columns:
            continue
        try:
            found = Feedback(prediction_log.location, model.name, model.pre).stored
            labelled = await asyncio.to_thread(found, window)
        except Exception:  # the service starts either way; the window fills with new feedback
            log.exception("live accuracy of %s could not be read back from the log", model.name)
            continue
        pre_of = functools.partial(store.preprocess_of, model.name)
        store.telemetry.live(model.name, model.pre, window, pre_of).add_all(labelled)


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` and multi-worker runs: settings from TABSERVE_* variables."""
    settings = Settings()
    protocol_for(settings)  # each worker is a process of its own: its connections take the same limits
    return create_app(settings)
