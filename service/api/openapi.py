"""OpenAPI for the predict routes, generated per model from its bundle (so /docs shows features)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.schema import example_record, request_schema
from service.store import LoadedModel, ModelStore

ERRORS = {
    "400": {"description": "Malformed JSON"},
    "404": {"description": "No such model"},
    "413": {"description": "Too many records or body too large"},
    "415": {"description": "Content-Type is not application/json"},
    "422": {"description": "Invalid records: `details` name the record index and field"},
    "503": {"description": "Queue full (Retry-After) or models still loading"},
}


def _operation(model: LoadedModel, max_records: int, summary: str) -> dict[str, Any]:
    schema = request_schema(model.pre, max_records)
    return {
        "post": {
            "tags": ["predict"],
            "summary": summary,
            "description": f"{model.pre.task} prediction of `{model.pre.target}`; version {model.version} "
            f"on {model.provider}. Each record gets an answer, in order.",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": schema,
                        "example": {"records": [example_record(model.pre)]},
                    }
                },
            },
            "responses": {"200": {"description": "One prediction per record"}, **ERRORS},
        }
    }


def install(app: FastAPI, store: ModelStore, max_records: int) -> None:
    """Regenerate the OpenAPI document on each request, so reloaded models appear in /docs."""

    def openapi() -> dict[str, Any]:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        paths = doc.setdefault("paths", {})
        default = store.current.get(store.default_name or "")
        if default is not None:
            paths["/predict"] = _operation(default, max_records, f"Predict with the default model ({default.name})")
        for name, model in sorted(store.current.items()):
            paths[f"/models/{name}/predict"] = _operation(model, max_records, f"Predict with {name}")
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
