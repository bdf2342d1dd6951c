"""The service over HTTP: answers, errors, batching under concurrency, metrics, docs."""

from __future__ import annotations

import asyncio
import random

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from service import bundle, release
from service.features import Preprocess
from service.runtime import providers_for
from tests.service.conftest import Server, telco_records


def direct(server: Server, records: list[dict[str, object]]) -> np.ndarray:
    """What one plain session.run gives for these records (the reference)."""
    ref = release.resolve(server.store, "churn")
    pre = Preprocess.load(ref.path / bundle.PREPROCESS_FILE)
    enc = pre.encode_records(records)
    session = ort.InferenceSession(str(ref.path / bundle.MODEL_FILE), providers=["CPUExecutionProvider"])
    return session.run(None, {"num": enc.num, "cat": enc.cat})[0]


def test_predict_answers_each_record(churn_server: Server) -> None:
    records = telco_records(5)
    r = httpx.post(churn_server.url + "/predict", json={"records": records})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "churn" and body["version"] == 1
    want = direct(churn_server, records)[:, 1]
    got = [p["probability"] for p in body["predictions"]]
    np.testing.assert_allclose(got, want, atol=1e-6)
    threshold = Preprocess.load(release.resolve(churn_server.store, "churn").path / bundle.PREPROCESS_FILE).threshold
    for p, rec in zip(body["predictions"], records, strict=True):
        assert p["label"] == ("Yes" if p["probability"] >= threshold else "No")
        assert p["customerID"] == rec["customerID"]  # the id column passes through
    named = httpx.post(churn_server.url + "/models/churn/predict", json={"records": records})
    assert named.json()["predictions"] == body["predictions"]


def test_missing_nulls_strings_extras_and_unseen_levels(churn_server: Server) -> None:
    rec = telco_records(1)[0]
    variants = [
        {**rec, "tenure": str(rec["tenure"]), "extra_field": "ignored"},
        {k: v for k, v in rec.items() if k != "TotalCharges"},
        {**rec, "TotalCharges": None, "Contract": None},
        {**rec, "Contract": "Ten-year"},
        {**{k: v for k, v in rec.items() if k != "Contract"}, "contract": rec["Contract"]},  # a typo
        {**rec, "tenure": 500},  # beyond anything seen in training
        {**rec, "Contract": None, "contract ": "One year"},  # null beside a look-alike: the C decoder hands it on
        {**rec, "Contract": " ", "contract": None},  # a look-alike with no value says nothing
    ]
    r = httpx.post(churn_server.url + "/predict", json={"records": variants})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert abs(preds[0]["probability"] - direct(churn_server, [rec])[0, 1]) < 1e-6
    np.testing.assert_allclose([p["probability"] for p in preds], direct(churn_server, variants)[:, 1], atol=1e-6)
    assert "warnings" not in preds[1] and "warnings" not in preds[2]
    assert "Ten-year" in preds[3]["warnings"][0] and "Contract" in preds[3]["warnings"][0]
    assert preds[4]["warnings"] == [
        "field 'contract' is not a feature and was ignored: did you mean 'Contract'? "
        "'Contract' has no value and was scored as missing"
    ]
    assert preds[5]["warnings"] == ["field 'tenure': above the largest value seen in training (72)"]
    assert preds[6]["warnings"] == [preds[4]["warnings"][0].replace("'contract'", "'contract '")]
    assert "warnings" not in preds[7]


@pytest.mark.parametrize(
    ("body", "headers", "status", "needle"),
    [
        (b'{"records": [{"tenure": 1}, {"tenure": "lots"}]}', {}, 422, "record 1, field 'tenure'"),
        (b'{"records": [{"tenure": true}]}', {}, 422, "field 'tenure'"),
        (b'{"records": [{"Contract": {"a": 1}}]}', {}, 422, "field 'Contract'"),
        (b'{"records": [{"tenure": 1}, {"Tenure": 1}]}', {}, 422, "record 1: none of the model's 19 features"),
        # valid JSON (numbers have no range there) with a value no float holds: named, as any bad value
        (b'{"records": [{"tenure": 1e999}]}', {}, 422, "beyond float64's range at $.records[0].tenure"),
        # past Python's 4,300-digit limit for ints: it was "malformed JSON" with no record or field
        (b'{"records": [{"tenure": 1' + b"0" * 5000 + b"}]}", {}, 422, "beyond float64's range at $.records[0].tenure"),
        (b'{"records": []}', {}, 422, "empty"),
        (b'{"records": [1, 2]}', {}, 422, "record 0 is not a JSON object"),
        (b'{"rows": []}', {}, 422, '"records"'),
        (b'{"records": [', {}, 400, "malformed JSON"),
        (b"tenure=1", {"content-type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        (b'{"records": [' + b'{"tenure": 1},' * 600 + b'{"tenure": 1}]}', {}, 413, "limit is 500"),
        (b'{"records": [{"x": "' + b"y" * 250_000 + b'"}]}', {}, 413, "byte limit"),
    ],
)
def test_bad_requests_get_clear_4xx(
    churn_server: Server, body: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    r = httpx.post(churn_server.url + "/predict", content=body, headers={"content-type": "application/json", **headers})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


@pytest.mark.parametrize("path", ["/predict", "/models/churn/predict", "/v2/models/churn/infer", "/invocations"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_scoring_routes_answer_other_methods_with_405(churn_server: Server, path: str, method: str) -> None:
    r = httpx.request(method, churn_server.url + path)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    body = r.json()
    assert f"{method} is not allowed on {path}" in body.get("error", body.get("message", ""))


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/v2/health/ready", "/models/churn", "/ping"])
def test_head_answers_as_get_without_the_body(churn_server: Server, path: str) -> None:
    """An HTTP audit: HEAD was 405 on every GET route, so a load balancer probing by HEAD marked the service down."""
    got, head = httpx.get(churn_server.url + path), httpx.head(churn_server.url + path)
    assert got.status_code == head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert httpx.head(churn_server.url + "/predict").headers["allow"] == "POST"  # still no way to score


def test_error_details_name_record_and_field(churn_server: Server) -> None:
    records = telco_records(3)
    records[2]["MonthlyCharges"] = "twelve"
    r = httpx.post(churn_server.url + "/predict", json={"records": records})
    assert r.status_code == 422
    assert r.json()["details"] == [
        {"record": 2, "field": "MonthlyCharges", "message": "expected a number, got 'twelve'"}
    ]


def test_unknown_model_is_404(churn_server: Server) -> None:
    r = httpx.post(churn_server.url + "/models/nope/predict", json={"records": telco_records(1)})
    assert r.status_code == 404 and "nope" in r.json()["error"]
    assert httpx.get(churn_server.url + "/models/nope").status_code == 404


def v2_body(records: list[dict[str, object]]) -> dict[str, object]:
    """An Open Inference Protocol request for these records: one tensor per feature."""
    numeric = {"SeniorCitizen", "tenure", "MonthlyCharges", "TotalCharges"}
    names = [k for k in records[0] if k not in ("customerID", "Churn")]
    return {
        "inputs": [
            {
                "name": n,
                "shape": [len(records)],
                "datatype": "FP64" if n in numeric else "BYTES",
                "data": [r[n] for r in records],
            }
            for n in names
        ]
    }


async def _ask(client: httpx.AsyncClient, protocol: str, records: list[dict[str, object]]) -> list[float]:
    """One scoring request in the given protocol; the positive-class probabilities back."""
    if protocol == "v2":
        r = await client.post("/v2/models/churn/infer", json=v2_body(records))
        assert r.status_code == 200, r.text
        return next(o["data"] for o in r.json()["outputs"] if o["name"] == "probability")
    if protocol == "mlflow":
        r = await client.post("/invocations", json={"dataframe_records": records})
        assert r.status_code == 200, r.text
        return [p["probability"] for p in r.json()["predictions"]]
    r = await client.post("/predict", json={"records": records})
    assert r.status_code == 200, r.text
    return [p["probability"] for p in r.json()["predictions"]]


async def _client(
    url: str, rng: random.Random, pool: list[dict[str, object]], n: int
) -> list[tuple[list[dict[str, object]], list[float]]]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(n):
            records = rng.sample(pool, rng.randint(1, 7))
            protocol = rng.choice(["native", "v2", "mlflow"])  # NOTE: all three share one batcher
            out.append((records, await _ask(client, protocol, records)))
    return out


def test_concurrent_clients_each_get_their_own_answers(churn_server: Server) -> None:
    pool = [r for r in telco_records(400) if None not in r.values()]

    async def main() -> list[tuple[list[dict[str, object]], list[float]]]:
        results = await asyncio.gather(*[_client(churn_server.url, random.Random(i), pool, 15) for i in range(24)])
        return [pair for client in results for pair in client]

    before = _metric(httpx.get(churn_server.url + "/metrics").text, 'tabserve_batch_rows_count{model="churn"}')
    pairs = asyncio.run(main())
    metrics = httpx.get(churn_server.url + "/metrics").text
    batch_count = _metric(metrics, 'tabserve_batch_rows_count{model="churn"}') - before
    assert batch_count < len(pairs)  # requests really were gathered into shared batches
    for records, got in pairs:
        np.testing.assert_allclose(got, direct(churn_server, records)[:, 1], atol=1e-6)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_move_when_requests_are_served(churn_server: Server) -> None:
    before = httpx.get(churn_server.url + "/metrics").text
    for _ in range(3):
        httpx.post(churn_server.url + "/predict", json={"records": telco_records(4)})
    httpx.post(churn_server.url + "/predict", content=b"{", headers={"content-type": "application/json"})
    after = httpx.get(churn_server.url + "/metrics").text
    ok = 'tabserve_requests_total{route="/predict",status="200"}'
    assert _metric(after, ok) == _metric(before, ok) + 3
    bad = 'tabserve_requests_total{route="/predict",status="400"}'
    assert _metric(after, bad) == _metric(before, bad) + 1
    rows = 'tabserve_rows_scored_total{model="churn"}'
    assert _metric(after, rows) == _metric(before, rows) + 12
    served_on = providers_for("auto")[0]  # CUDA on a GPU machine
    assert f'tabserve_model_info{{model="churn",provider="{served_on}",role="champion",version="1"}} 1.0' in after
    for name in ("tabserve_request_seconds_bucket", "tabserve_inference_seconds_bucket", "tabserve_queue_depth"):
        assert name in after
    assert 'tabserve_requests_total{route="/metrics",status="200"}' in after
    # drift signal: input warnings by model, field and kind (native and V2 requests alike)
    rec = telco_records(1)[0]
    drifted = [{**rec, "tenure": 500}, {**rec, "tenure": -3, "Contract": "Ten-year"}]
    assert httpx.post(churn_server.url + "/predict", json={"records": drifted}).status_code == 200
    v2_request = {"inputs": [{**t, "data": [500]} if t["name"] == "tenure" else t for t in v2_body([rec])["inputs"]]}
    v2_answer = httpx.post(churn_server.url + "/v2/models/churn/infer", json=v2_request)
    assert v2_answer.json()["parameters"] == {
        "warnings": "element 0: field 'tenure': above the largest value seen in training (72)"
    }
    final = httpx.get(churn_server.url + "/metrics").text
    tenure = 'tabserve_input_warnings_total{field="tenure",kind="out_of_range",model="churn"}'
    contract = 'tabserve_input_warnings_total{field="Contract",kind="unseen_level",model="churn"}'
    assert _metric(final, tenure) == _metric(after, tenure) + 3
    assert _metric(final, contract) == _metric(after, contract) + 1


def test_health_models_and_docs(churn_server: Server) -> None:
    assert httpx.get(churn_server.url + "/health/live").json() == {"status": "live"}
    ready = httpx.get(churn_server.url + "/health/ready").json()
    assert ready["status"] == "ready" and ready["models"]["churn"]["provider"] == providers_for("auto")[0]
    listing = httpx.get(churn_server.url + "/models").json()
    assert listing["default"] == "churn" and listing["models"][0]["version"] == 1
    meta = httpx.get(churn_server.url + "/models/churn").json()
    assert meta["task"] == "binary" and meta["labels"] == ["No", "Yes"] and 0 < meta["threshold"] < 1
    contract = next(f for f in meta["features"] if f["name"] == "Contract")
    assert contract["levels"] == ["Month-to-month", "One year", "Two year"]
    example = httpx.post(churn_server.url + "/predict", json=meta["example"])
    assert example.status_code == 200
    spec = httpx.get(churn_server.url + "/openapi.json").json()
    op = spec["paths"]["/models/churn/predict"]["post"]
    props = op["requestBody"]["content"]["application/json"]["schema"]["properties"]["records"]["items"]["properties"]
    assert "Month-to-month" in props["Contract"]["description"] and "tenure" in props
    assert "/predict" in spec["paths"] and httpx.get(churn_server.url + "/docs").status_code == 200


def test_admin_reload_needs_the_token(churn_server: Server) -> None:
    url = churn_server.url + "/admin/reload"
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, headers={"authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.post(url, headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["current"] == {"churn": 1}


def test_example_record_is_a_real_training_row(churn_server: Server) -> None:
    """/models/{name} and every /docs example show the same row of the training file, which scores."""
    (record,) = httpx.get(churn_server.url + "/models/churn").json()["example"]["records"]
    rows = {row["customerID"]: row for row in telco_records(10_000)}
    assert record == {k: v for k, v in rows[record["customerID"]].items() if k in record}
    assert set(record) == set(rows[record["customerID"]])  # every feature and the id, nothing else
    spec = httpx.get(churn_server.url + "/openapi.json").json()["paths"]
    body = spec["/models/churn/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert body == {"records": [record]}
    assert spec["/invocations"]["post"]["requestBody"]["content"]["application/json"]["example"] == {
        "dataframe_records": [record]
    }
    answer = httpx.post(churn_server.url + "/predict", json=body).json()["predictions"][0]
    assert "warnings" not in answer and answer["customerID"] == record["customerID"]


def test_a_bundle_without_an_example_row_keeps_the_made_up_record(churn_bundle: bundle.BundleRef) -> None:
    from service.api.schema import example_record

    pre = Preprocess.load(churn_bundle.path / bundle.PREPROCESS_FILE)
    old = {k: v for k, v in churn_bundle.metrics.items() if k != "data"}
    made_up = example_record(pre, old)
    assert made_up["customerID"] == "example-id" and made_up["Contract"] == "Month-to-month"
    assert example_record(pre, churn_bundle.metrics) == churn_bundle.metrics["data"]["example"]
