"""The read-only routes of the KServe V2 and MLflow protocols (scoring: service/api/predict.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from service.api.deps import StoreDep
from service.protocols import v2
from service.store import ModelNotFound, ModelStore, version_in_path

router = APIRouter(tags=["protocols"])
VERSION = "0.1.0"


def _missing(exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=404)


@router.get("/v2")
def server_metadata() -> dict[str, Any]:
    """Open Inference Protocol server metadata."""
    return {"name": "tabserve", "version": VERSION, "extensions": ["binary_tensor_data"]}


@router.get("/v2/health/live")
def server_live() -> dict[str, Any]:
    """Live as soon as the process answers."""
    return {"live": True}


@router.get("/v2/health/ready", responses={503: {}})
def server_ready(store: StoreDep) -> JSONResponse:
    """Ready once every model is loaded and warm (503 otherwise)."""
    return JSONResponse({"ready": store.ready}, status_code=200 if store.ready else 503)


async def _model_doc(store: ModelStore, name: str, version: int | str | None) -> dict[str, Any] | JSONResponse:
    try:
        model = await store.get_version(name, version)
    except ModelNotFound as exc:
        return _missing(exc)
    return {
        "name": model.name,
        "versions": [str(v) for v in store.versions(model.name)],
        "platform": "onnxruntime_onnx",
        "inputs": v2.input_metadata(model.pre),
        "outputs": v2.output_metadata(model.pre, model.explainer is not None),
        "parameters": {
            "version": str(model.version),
            "task": model.pre.task,
            "provider": model.provider,
            # the order of `probabilities`' columns: a client has no other way to tell them apart
            **({"labels": [str(label) for label in model.pre.labels]} if model.pre.labels else {}),
        },
    }


@router.get("/v2/models/{name}", response_model=None, responses={404: {}})
async def model_metadata(name: str, store: StoreDep) -> dict[str, Any] | JSONResponse:
    """Inputs (one tensor per feature) and outputs of the current version."""
    return await _model_doc(store, name, None)


@router.get("/v2/models/{name}/versions/{version}", response_model=None, responses={404: {}})
async def model_version_metadata(name: str, version: str, store: StoreDep) -> dict[str, Any] | JSONResponse:
    """Inputs and outputs of a given version (older versions in the store included)."""
    return await _model_doc(store, name, version_in_path(version))


async def _ready(store: ModelStore, name: str, version: int | str | None) -> JSONResponse:
    try:
        model = await store.get_version(name, version)
    except ModelNotFound as exc:
        return _missing(exc)
    return JSONResponse({"name": model.name, "ready": True})


@router.get("/v2/models/{name}/ready", responses={404: {}})
async def model_ready(name: str, store: StoreDep) -> JSONResponse:
    """Ready: the model is loaded and warm."""
    return await _ready(store, name, None)


@router.get("/v2/models/{name}/versions/{version}/ready", responses={404: {}})
async def model_version_ready(name: str, version: str, store: StoreDep) -> JSONResponse:
    """Ready: that version is loaded (older ones load on this call) and warm."""
    return await _ready(store, name, version_in_path(version))


@router.get("/ping", response_class=PlainTextResponse)
@router.get("/health", response_class=PlainTextResponse)
def mlflow_ping(store: StoreDep) -> PlainTextResponse:
    """MLflow's health check: 200 once the default model serves (/invocations scores with it alone)."""
    name = store.default_name
    ready = store.ready and name is not None and name in store.current
    return PlainTextResponse("\n", status_code=200 if ready else 503)
