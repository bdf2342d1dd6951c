"""The two reference servers bench/serve.py measures tabserve against (run under uvicorn).

- `bare`: an ASGI app that reads the body and returns a constant JSON: this machine's HTTP ceiling.
- `plain_app`: what most people write: FastAPI, an `async def` endpoint with a pydantic request
  model built from the bundle's features, one `session.run` per request on the event loop (it
  even borrows tabserve's encoder, so the comparison is about serving, not about encoding).
"""

import os
from pathlib import Path
from typing import Any

from service import bundle
from service.encoders import RecordEncoder
from service.features import NumericFeature, Preprocess

CONSTANT = b'{"predictions":[{"label":"No","probability":0.1}]}'


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the request, answer a constant JSON."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": CONSTANT})


def plain_app() -> Any:
    """FastAPI + pydantic + session.run per request, for the bundle in $TABSERVE_BENCH_BUNDLE."""
    import onnxruntime as ort
    from fastapi import FastAPI
    from pydantic import create_model

    path = Path(os.environ["TABSERVE_BENCH_BUNDLE"])
    pre = Preprocess.load(path / bundle.PREPROCESS_FILE)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("TABSERVE_THREADS", "1"))
    session = ort.InferenceSession(str(path / bundle.MODEL_FILE), opts, providers=["CPUExecutionProvider"])
    fields: dict[str, Any] = {
        f.name: ((float | None) if isinstance(f, NumericFeature) else (str | None), None) for f in pre.features
    }
    fields.update({c: (str | None, None) for c in pre.id_columns})
    record_model = create_model("Record", **fields)
    request_model = create_model("PredictRequest", records=(list[record_model], ...))  # type: ignore[valid-type]
    encoder = RecordEncoder(pre)  # tabserve's own request encoder: the reference differs in the serving only
    app = FastAPI()

    @app.post("/predict")
    async def predict(body: request_model) -> dict[str, Any]:  # type: ignore[valid-type]
        records = [r.model_dump() for r in body.records]  # type: ignore[attr-defined]
        enc = encoder.encode(records)
        probs = session.run(None, {"num": enc.num, "cat": enc.cat})[0]
        threshold = pre.threshold or 0.5
        return {
            "predictions": [
                {"label": pre.labels[1] if p[1] >= threshold else pre.labels[0], "probability": float(p[1])}
                for p in probs
            ]
        }

    return app
