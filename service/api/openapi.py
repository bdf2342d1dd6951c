"""OpenAPI for the scoring routes (native, V2, MLflow), built per model from its bundle for /docs."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from service.api.schema import example_record, request_schema
from service.protocols import v2
from service.store import LoadedModel, ModelStore

BUSY = {
    "503": {"description": "Queue full (Retry-After) or models still loading"},
    "504": {"description": "Not answered within the request's deadline (request_timeout_s, X-Request-Timeout-Ms)"},
}
ERRORS = {
    "400": {"description": "Malformed JSON, or an X-Request-Timeout-Ms that is not a positive number"},
    "404": {"description": "No such model"},
    "413": {"description": "Too many records or body too large"},
    "415": {"description": "Content-Type is not application/json, or a Content-Encoding other than gzip"},
    "422": {"description": "Invalid records: `details` name the record index and field"},
    **BUSY,
}
# what the V2 and MLflow routes answer besides 200 (service/api/predict.py), so a client
# generated from /openapi.json knows every status it can get
V2_ERRORS = {
    "400": {"description": "Malformed JSON, or a tensor that does not fit the model (the error names it)"},
    "404": {"description": "No such model or version"},
    "413": {"description": "Too many rows or body too large"},
    "415": {"description": "A Content-Encoding other than gzip"},
    **BUSY,
}
MLFLOW_ERRORS = {
    "400": {"description": "BAD_REQUEST: the body or a value cannot be scored (the message names it)"},
    "404": {"description": "No default model"},
    "413": {"description": "Too many rows or body too large"},
    "415": {
        "description": "Content-Type is neither application/json nor text/csv, or a Content-Encoding other than gzip"
    },
    **BUSY,
}


def v2_request(inputs: list[str], outputs: list[str]) -> dict[str, Any]:
    """The V2 infer body's schema, with the model's input and output names."""
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"description": "echoed back in the answer"},
            "inputs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "shape", "datatype"],
                    "properties": {
                        "name": {"enum": inputs},
                        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                        "datatype": {"type": "string"},
                        "data": {"type": "array"},
                        "parameters": {"description": "accepted and ignored"},
                    },
                },
            },
            "outputs": {
                "type": ["array", "null"],
                "items": {"type": "object", "required": ["name"], "properties": {"name": {"enum": outputs}}},
            },
            "parameters": {"description": "accepted and ignored"},
        },
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
                        "example": {"records": [example_record(model.pre, model.metrics)]},
                    }
                },
            },
            "responses": {"200": {"description": "One prediction per record"}, **ERRORS},
        }
    }


def _v2_operation(model: LoadedModel) -> dict[str, Any]:
    """The Open Inference Protocol infer route of a model, with a ready-to-send example."""
    record = example_record(model.pre, model.metrics)
    inputs = [{**meta, "shape": [1], "data": [record[meta["name"]]]} for meta in v2.input_metadata(model.pre)]
    names = [o["name"] for o in v2.output_metadata(model.pre)]
    outputs = ", ".join(f"`{o['name']}` ({o['datatype']})" for o in v2.output_metadata(model.pre))
    return {
        "post": {
            "tags": ["KServe V2"],
            "summary": f"Open Inference Protocol infer with {model.name}",
            "description": "One input tensor per feature (numeric: FP32/FP64/INT*, categorical: BYTES), "
            f"shape [N] or [N, 1], data flat or nested, or binary (tensor extension). Outputs: {outputs}. "
            "Add `/versions/{v}` before `/infer` for an older version.",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": v2_request([f.name for f in model.pre.features], names),
                        "example": {"inputs": inputs},
                    }
                },
            },
            "responses": {"200": {"description": "Output tensors"}, **V2_ERRORS},
        }
    }


def _v2_versioned(model: LoadedModel) -> dict[str, Any]:
    """The same infer route for one version (older, or newer than a rolled-back champion)."""
    doc = _v2_operation(model)
    post = doc["post"]
    post["summary"] = f"Open Inference Protocol infer with one version of {model.name}"
    post["description"] = post["description"].replace(
        "Add `/versions/{v}` before `/infer` for an older version.", "The example is the serving version's."
    )
    post["parameters"] = [
        {"name": "version", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
    ]
    return doc


def _mlflow_operation(model: LoadedModel) -> dict[str, Any]:
    """MLflow's scoring route (the default model)."""
    return {
        "post": {
            "tags": ["MLflow"],
            "summary": f"MLflow scoring protocol with the default model ({model.name})",
            "description": "Exactly one of `dataframe_split`, `dataframe_records`, `instances`, `inputs` "
            '(plus optional `params`), or a `text/csv` body. Answers `{"predictions": [...]}`.',
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "minProperties": 1},
                        "example": {"dataframe_records": [example_record(model.pre, model.metrics)]},
                    },
                    "text/csv": {"schema": {"type": "string", "minLength": 1}},
                },
            },
            "responses": {"200": {"description": "One prediction per row"}, **MLFLOW_ERRORS},
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
            paths["/invocations"] = _mlflow_operation(default)
        for name, model in sorted(store.current.items()):
            paths[f"/models/{name}/predict"] = _operation(model, max_records, f"Predict with {name}")
            paths[f"/v2/models/{name}/infer"] = _v2_operation(model)
            paths[f"/v2/models/{name}/versions/{{version}}/infer"] = _v2_versioned(model)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI) -> None:
    """/docs with Swagger UI from the installed package, not a CDN, so it works offline."""
    assets = "/docs/assets"
    app.mount(assets, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
        )
