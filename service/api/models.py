"""Model metadata routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from service.api.deps import StoreDep, TelemetryDep
from service.api.schema import example_record, feature_doc
from service.store import LoadedModel, ModelNotFound

router = APIRouter(prefix="/models", tags=["models"])


def summary(model: LoadedModel) -> dict[str, Any]:
    """A model's entry in listings."""
    key = model.metrics.get("key_metric")
    return {
        "name": model.name,
        "version": model.version,
        "task": model.pre.task,
        "target": model.pre.target,
        "provider": model.provider,
        "key_metric": key,
        "test_score": model.metrics.get("test", {}).get(key),
        "created": model.metrics.get("created"),
    }


@router.get("")
def list_models(store: StoreDep, request: Request) -> dict[str, Any]:
    """Served models (each with its challenger, canary share and whether it is shadowed), the one
    /predict uses, versions refused and why, the C accelerators built and the CPU budget (how many
    CPUs, why, and each worker's ONNX Runtime threads)."""
    models = sorted(store.current.values(), key=lambda m: m.name)
    return {
        "default": store.default_name,
        "models": [{**summary(m), "release": store.release_brief(m.name)} for m in models],
        "refused": store.refused(),
        "accelerators": request.app.state.accelerators,
        "cpus": request.app.state.cpus,
    }


@router.get("/{name}/monitor", responses={404: {}})
def monitor(name: str, store: StoreDep, telemetry: TelemetryDep) -> dict[str, Any]:
    """Live drift: PSI of each feature and of the score over the last scored records against training
    (< 0.1 stable, 0.1–0.25 moderate, > 0.25 act), each numeric's missing rate; live accuracy per
    version over the predictions that feedback labelled, beside training's test figures."""
    try:
        model = store.get(name)
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    if model.drift is None:
        raise HTTPException(404, f"{model.name} version {model.version} has no drift.json: retrain it for live drift")
    live = telemetry.accuracy.get(model.name)
    accuracy = {
        "versions": live.report() if live is not None else {},
        "training": {"test": model.metrics.get("test"), "positive_rate": model.metrics.get("positive_rate")},
    }
    # an infinite figure (an RMSE of outcomes near 1e308) is null: FastAPI's encoder writes it so
    return {"model": model.name, "version": model.version, **model.drift.report(), "accuracy": accuracy}


@router.get("/{name}", responses={404: {}})
def get_model(name: str, store: StoreDep) -> dict[str, Any]:
    """Features, task, version, labels, threshold, test metrics, provider, an example record and
    what moves the score (mean |effect| per feature)."""
    try:
        model = store.get(name)
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    pre = model.pre
    return {
        **summary(model),
        "labels": pre.labels,
        "positive": pre.positive,
        "threshold": pre.threshold,
        "id_columns": pre.id_columns,
        "features": feature_doc(pre),
        "metrics": {"test": model.metrics.get("test"), "baseline_test": model.metrics.get("baseline_test")},
        "example": {"records": [example_record(pre, model.metrics)]},
        # mean |effect| per feature and top-4 shares on the test split (None: a bundle from before reason codes)
        "explanations": model.metrics.get("explanations") if model.explainer is not None else None,
        # champion, challenger, canary share, the shadow's agreement and the last decisions
        "release": store.release_state(model.name),
    }
