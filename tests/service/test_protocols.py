"""KServe V2 and MLflow front doors: conformance, and the same answers as /predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from service import bundle
from tests.service.conftest import Server, copy_store, republish, running_server, telco_records
from tests.service.test_api import v2_body


def _records(n: int, start: int = 0) -> list[dict[str, object]]:
    return [r for r in telco_records(n + 20, start) if None not in r.values()][:n]


def _native(server: Server, records: list[dict[str, object]]) -> list[dict[str, object]]:
    r = httpx.post(server.url + "/predict", json={"records": records})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def _outputs(answer: dict[str, object]) -> dict[str, object]:
    return {o["name"]: o for o in answer["outputs"]}  # type: ignore[union-attr, index]


def test_v2_server_and_model_metadata(churn_server: Server) -> None:
    url = churn_server.url
    assert httpx.get(url + "/v2").json()["extensions"] == ["binary_tensor_data"]
    assert httpx.get(url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(url + "/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(url + "/v2/models/churn").json()
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["tenure"] == {"name": "tenure", "datatype": "FP64", "shape": [-1]}
    assert inputs["Contract"]["datatype"] == "BYTES" and "customerID" not in inputs and len(inputs) == 19
    # attributions: each feature's effect, and the score and reference they add up to, sent only when asked for
    explained = ["attributions", "explanation_score", "explanation_reference"]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probability", "probabilities", *explained]
    assert meta["outputs"][3]["shape"] == [-1, 19]
    assert meta["outputs"][2]["shape"] == [-1, 2] and meta["versions"] == ["1"]
    assert meta["parameters"]["labels"] == ["No", "Yes"]  # the columns of `probabilities`, in order
    assert httpx.get(url + "/v2/models/churn/ready").json() == {"name": "churn", "ready": True}
    assert httpx.get(url + "/v2/models/churn/versions/1/ready").status_code == 200
    assert httpx.get(url + "/v2/models/nope").status_code == 404
    assert "error" in httpx.get(url + "/v2/models/churn/versions/7").json()


def test_v2_infer_batch_equals_predict(churn_server: Server) -> None:
    records = _records(6)
    body = {"id": "req-42", **v2_body(records)}
    r = httpx.post(churn_server.url + "/v2/models/churn/infer", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["id"] == "req-42" and answer["model_name"] == "churn" and answer["model_version"] == "1"
    out = _outputs(answer)
    native = _native(churn_server, records)
    assert out["probability"]["shape"] == [6] and out["probability"]["datatype"] == "FP32"
    assert out["probability"]["data"] == [p["probability"] for p in native]
    assert out["label"]["data"] == [p["label"] for p in native]
    probs = np.array(out["probabilities"]["data"]).reshape(out["probabilities"]["shape"])
    np.testing.assert_allclose(probs[:, 1], out["probability"]["data"])


def test_v2_nested_and_flat_inputs_mix(churn_server: Server) -> None:
    records = _records(3, start=30)
    body = v2_body(records)
    for tensor in body["inputs"][::2]:  # type: ignore[index]
        tensor["shape"] = [3, 1]
        tensor["data"] = [[v] for v in tensor["data"]]
    body["outputs"] = [{"name": "probability"}]
    r = httpx.post(churn_server.url + "/v2/models/churn/infer", json=body)
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["probability"]
    assert r.json()["outputs"][0]["data"] == [p["probability"] for p in _native(churn_server, records)]


def _v2_error(server: Server, body: dict[str, object]) -> str:
    r = httpx.post(server.url + "/v2/models/churn/infer", json=body)
    assert r.status_code == 400, r.text
    return r.json()["error"]


def test_v2_errors_name_the_input(churn_server: Server) -> None:
    good = v2_body(_records(2))
    inputs = good["inputs"]  # type: ignore[assignment]

    def variant(name: str, **change: object) -> dict[str, object]:
        return {"inputs": [{**t, **change} if t["name"] == name else t for t in inputs]}

    assert "tenure" in _v2_error(churn_server, variant("tenure", datatype="BYTES"))
    assert "Contract" in _v2_error(churn_server, variant("Contract", datatype="FP32"))
    assert "missing input(s): tenure" in _v2_error(
        churn_server, {"inputs": [t for t in inputs if t["name"] != "tenure"]}
    )
    assert "shape" in _v2_error(churn_server, variant("tenure", shape=[2, 2]))
    assert "data holds 3" in _v2_error(churn_server, variant("tenure", data=[1, 2, 3]))
    assert "unknown input 'nope'" in _v2_error(churn_server, {"inputs": [*inputs, {**inputs[0], "name": "nope"}]})
    renamed = {"inputs": [{**t, "name": "Tenure"} if t["name"] == "tenure" else t for t in inputs]}
    assert "unknown input 'Tenure'; did you mean 'tenure'?" in _v2_error(churn_server, renamed)
    message = _v2_error(churn_server, variant("tenure", data=[1, "lots"]))
    assert "input 'tenure', element 1" in message and "lots" in message
    assert "unknown output" in _v2_error(churn_server, {**good, "outputs": [{"name": "nope"}]})
    assert '"outputs" must be a list' in _v2_error(churn_server, {**good, "outputs": {}})
    one = v2_body(_records(1))["inputs"]  # NOTE: single rows take the remembered-layout fast path

    def single(name: str, **change: object) -> dict[str, object]:
        return {"inputs": [{**t, **change} if t["name"] == name else t for t in one]}

    assert "input 'tenure', element 0" in _v2_error(churn_server, single("tenure", data=["lots"]))
    assert "True is not a number (FP64 declared)" in _v2_error(churn_server, single("tenure", data=[True]))
    # data of another type than its tensor declares (they were read as numbers anyway)
    assert "input 'SeniorCitizen', element 0: 1000 is not an INT8 value" in _v2_error(
        churn_server, single("SeniorCitizen", datatype="INT8", data=[1000])
    )
    assert "input 'tenure', element 1: 70.9 is not an INT64 value" in _v2_error(
        churn_server, variant("tenure", datatype="INT64", data=[1, 70.9])
    )
    assert "input 'tenure', element 0: '$1,000' is not a number (FP64 declared)" in _v2_error(
        churn_server, variant("tenure", data=["$1,000", 3])
    )
    assert "70000 is beyond FP16's range" in _v2_error(
        churn_server, variant("tenure", datatype="FP16", data=[1, 70000])
    )
    assert "tenure" in _v2_error(churn_server, single("tenure", datatype="BYTES"))
    assert "given twice" in _v2_error(churn_server, {"inputs": [*one[:-1], one[0]]})
    assert "unknown output" in _v2_error(churn_server, {"inputs": one, "outputs": [{"name": "nope"}]})
    nested = httpx.post(churn_server.url + "/v2/models/churn/infer", json=single("tenure", shape=[1, 1], data=[[3]]))
    flat = httpx.post(churn_server.url + "/v2/models/churn/infer", json=single("tenure", data=[3]))
    assert nested.status_code == flat.status_code == 200 and nested.json() == flat.json()
    # NOTE: an id and named outputs on the fast path, against the full path (a nested value sends it there)
    asked = {"id": "one", "outputs": [{"name": "label"}, {"name": "probability"}]}
    fast = httpx.post(churn_server.url + "/v2/models/churn/infer", json={**single("tenure", data=[3]), **asked})
    full = httpx.post(
        churn_server.url + "/v2/models/churn/infer", json={**single("tenure", shape=[1, 1], data=[[3]]), **asked}
    )
    assert fast.status_code == full.status_code == 200 and fast.json() == full.json()
    assert fast.json()["id"] == "one" and [o["name"] for o in fast.json()["outputs"]] == ["label", "probability"]
    assert "malformed JSON" in httpx.post(churn_server.url + "/v2/models/churn/infer", content=b"{").json()["error"]
    assert httpx.post(churn_server.url + "/v2/models/nope/infer", json=good).status_code == 404


def test_tritonclient_gets_the_same_probabilities(churn_server: Server) -> None:
    http = pytest.importorskip("tritonclient.http")
    records = _records(5, start=50)
    client = http.InferenceServerClient(churn_server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("churn")
    inputs = []
    for meta in client.get_model_metadata("churn")["inputs"]:
        if meta["datatype"] == "BYTES":
            values = np.array([str(r[meta["name"]]).encode() for r in records], dtype=np.object_)
        else:
            values = np.array([r[meta["name"]] for r in records], dtype=np.float64)
        tensor = http.InferInput(meta["name"], [len(records)], meta["datatype"])
        tensor.set_data_from_numpy(values)  # NOTE: binary by default: the binary tensor extension
        inputs.append(tensor)
    result = client.infer("churn", inputs, request_id="t-1")
    native = _native(churn_server, records)
    assert result.get_response()["id"] == "t-1"
    np.testing.assert_array_equal(result.as_numpy("probability"), np.float32([p["probability"] for p in native]))
    assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")] == [p["label"] for p in native]


def test_older_versions_are_addressable(churn_bundle: bundle.BundleRef, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = copy_store(churn_bundle, tmp_path / "models")
    republish(store, churn_bundle)
    records = _records(2)
    with running_server(store) as server:
        current = httpx.post(server.url + "/v2/models/churn/infer", json=v2_body(records)).json()
        older = httpx.post(server.url + "/v2/models/churn/versions/1/infer", json=v2_body(records)).json()
        meta = httpx.get(server.url + "/v2/models/churn/versions/1").json()
    assert current["model_version"] == "2" and older["model_version"] == "1"
    assert _outputs(older)["probability"]["data"] == _outputs(current)["probability"]["data"]  # same weights
    assert meta["versions"] == ["1", "2"] and meta["parameters"]["version"] == "1"


def test_mlflow_csv_headers_are_stripped_as_the_other_routes_strip_them(churn_server: Server) -> None:
    """` tenure ` was ignored with a warning (and tenure scored as missing) where /score and the CLI strip it."""
    records = _records(2, start=80)
    columns = list(records[0])
    lines = [",".join(f" {c} " for c in columns)] + [",".join(str(r[c]) for c in columns) for r in records]
    r = httpx.post(churn_server.url + "/invocations", content="\n".join(lines), headers={"content-type": "text/csv"})
    assert r.status_code == 200 and "warnings" not in r.json(), r.text
    assert [p["probability"] for p in r.json()["predictions"]] == [
        p["probability"] for p in _native(churn_server, records)
    ]


@pytest.mark.parametrize("form", ["dataframe_split", "dataframe_records", "instances", "inputs", "csv"])
def test_mlflow_invocations_every_input_form(churn_server: Server, form: str) -> None:
    records = _records(4, start=80)
    columns = list(records[0])
    url = churn_server.url + "/invocations"
    if form == "csv":
        lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in records]
        r = httpx.post(url, content="\n".join(lines), headers={"content-type": "text/csv"})
    else:
        payload: object = {
            "dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in records]},
            "dataframe_records": records,
            "instances": records,
            "inputs": {c: [r[c] for r in records] for c in columns},
        }[form]
        r = httpx.post(url, json={form: payload, "params": {}})
    assert r.status_code == 200, r.text
    native = _native(churn_server, records)
    assert r.json() == {"predictions": [{"label": p["label"], "probability": p["probability"]} for p in native]}


def test_mlflow_answer_reports_warnings_beside_the_predictions(churn_server: Server) -> None:
    records = _records(3, start=10)
    records[1] = {**records[1], "Contract": "Decade-long"}
    r = httpx.post(churn_server.url + "/invocations", json={"dataframe_records": records})
    assert r.status_code == 200, r.text
    native = _native(churn_server, records)
    assert r.json()["predictions"] == [{"label": p["label"], "probability": p["probability"]} for p in native]
    assert r.json()["warnings"] == [{"row": 1, "warnings": native[1]["warnings"]}]
    assert "unseen level 'Decade-long'" in native[1]["warnings"][0]


def test_mlflow_errors_and_health(churn_server: Server) -> None:
    url = churn_server.url + "/invocations"
    both = httpx.post(url, json={"instances": _records(1), "inputs": _records(1)})
    assert both.status_code == 400 and both.json()["error_code"] == "BAD_REQUEST"
    assert "exactly one of" in both.json()["message"]
    wrong = httpx.post(url, json={"dataframe_records": [{**_records(1)[0], "tenure": "lots"}]})
    assert wrong.status_code == 400 and "tenure" in wrong.json()["message"]
    assert wrong.json()["error_code"] == "BAD_REQUEST" and not wrong.json()["message"].endswith("; ")
    rows = [{**r, "tenure": bad} for r, bad in zip(_records(2), ["lots", "many"], strict=True)]
    columns = list(rows[0])
    two = httpx.post(url, json={"dataframe_split": {"columns": columns, "data": [list(r.values()) for r in rows]}})
    assert two.json()["message"].endswith("record 1, field 'tenure': expected a number, got 'many'")
    typo = httpx.post(url, json={"dataframe_records": [{"Tenure": 5}]})  # a row object: fields are checked
    assert typo.status_code == 400 and "none of the model's 19 features" in typo.json()["message"]


def test_mlflow_tables_need_every_feature_column_as_files_do(churn_server: Server) -> None:
    """A table lacking feature columns was scored with them imputed for every row, and MLflow's
    clients read no warnings; the upload and `tabserve score` refuse such a file. Row objects may
    still leave a feature out (a missing value, as on /predict)."""
    url, records = churn_server.url + "/invocations", _records(3)
    lower = [c.lower() for c in records[0]]
    lines = [",".join(lower)] + [",".join(str(v) for v in r.values()) for r in records]
    csv_lower = httpx.post(url, content="\n".join(lines), headers={"content-type": "text/csv"})
    assert csv_lower.status_code == 400, csv_lower.text
    assert "is 'tenure' meant to be 'tenure'" not in csv_lower.text  # tenure is lower case already
    assert "missing 17 column(s)" in csv_lower.json()["message"], csv_lower.text
    assert "is 'contract' meant to be 'Contract'?" in csv_lower.json()["message"]
    few = {c: [r[c] for r in records] for c in ("customerID", "gender", "tenure")}
    split = {"columns": list(few), "data": [[r[c] for c in few] for r in records]}
    for payload in ({"dataframe_split": split}, {"inputs": few}):
        r = httpx.post(url, json=payload)
        assert r.status_code == 400 and "missing 17 column(s) the model needs" in r.json()["message"], r.text
    ids = httpx.post(url, json={"inputs": {"customerID": ["a"]}})  # JSON has no header line to blame
    assert ids.status_code == 400 and "missing 19 column(s)" in ids.text and "header" not in ids.text, ids.text
    rows = [{k: r[k] for k in few} for r in records]
    partial = httpx.post(url, json={"dataframe_records": rows})
    assert partial.status_code == 200 and len(partial.json()["predictions"]) == 3, partial.text
    assert httpx.post(url, content=b"x", headers={"content-type": "text/plain"}).json()["error_code"] == "BAD_REQUEST"
    assert httpx.get(churn_server.url + "/ping").status_code == 200
    assert httpx.get(churn_server.url + "/health").status_code == 200


def test_docs_examples_for_v2_and_mlflow_work_as_sent(churn_server: Server) -> None:
    spec = httpx.get(churn_server.url + "/openapi.json").json()
    for path in ("/v2/models/churn/infer", "/invocations"):
        example = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"]
        r = httpx.post(churn_server.url + path, json=example)
        assert r.status_code == 200, (path, r.text)
    assert spec["paths"]["/v2/models/churn/infer"]["post"]["tags"] == ["KServe V2"]


def test_docs_declare_every_request_body_and_status(churn_server: Server) -> None:
    """Found by schemathesis against /openapi.json: bodies and statuses the routes had but the spec lacked."""
    spec = httpx.get(churn_server.url + "/openapi.json").json()["paths"]
    infer, mlflow = spec["/v2/models/churn/infer"]["post"], spec["/invocations"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["required"] == ["inputs"]
    assert {"400", "404", "413", "415", "503"} <= set(infer["responses"])
    assert {"400", "413", "415", "503"} <= set(mlflow["responses"])
    # a docs audit: the versioned infer route worked but was not in the spec, and V2 answers 415 (br)
    versioned = spec["/v2/models/churn/versions/{version}/infer"]["post"]
    assert versioned["parameters"][0]["name"] == "version" and "415" in versioned["responses"]
    example = versioned["requestBody"]["content"]["application/json"]["example"]
    assert httpx.post(churn_server.url + "/v2/models/churn/versions/1/infer", json=example).status_code == 200
    brotli = httpx.post(churn_server.url + "/v2/models/churn/infer", json=example, headers={"content-encoding": "br"})
    assert brotli.status_code == 415
    score = spec["/models/{name}/score"]["post"]["requestBody"]
    assert score["required"] and "text/csv" in score["content"]
    # every status the spec names for MLflow is one the route gives: 415 for a missing content type
    r = httpx.post(churn_server.url + "/invocations", content=b"{}")
    assert r.status_code == 415 and r.json()["error_code"] == "BAD_REQUEST"


def test_a_key_given_twice_is_refused_on_every_protocol_but_an_ignored_field(churn_server: Server) -> None:
    """JSON parsers keep one of two values for a key (msgspec the last) without a word: a feature, an
    id or a protocol's own key given twice in one object is refused by name, on every decoding path
    (the C decoder's plain bodies, msgspec's, the general one with reasons); a field every path
    ignores stays ignored, once or twice."""
    records = _records(3)
    plain = _compact({"records": records})
    url = churn_server.url

    def twice(text: str, field: str, value: str) -> str:
        return text.replace(f'"{field}":', f'"{field}":{value},"{field}":', 1)

    second = plain.split("},{", 1)
    body = second[0] + "},{" + twice(second[1], "tenure", "999")  # record 1's tenure twice
    for query, text in [("", body), ("", body.replace('"Yes"', '"Y\\u0065s"')), ("?explain=2", body)]:
        r = httpx.post(url + "/predict" + query, content=text, headers={"content-type": "application/json"})
        assert r.status_code == 422, (query, r.text)
        assert r.json()["error"].startswith("record 1: field 'tenure' is given twice")
        assert r.json()["details"] == [{"record": 1, "field": "tenure", "message": "given twice"}]
    same = httpx.post(url + "/predict", content=plain, headers={"content-type": "application/json"}).json()
    for text in [twice(plain, "customerID", '"x"'), plain.replace('"records":', '"records":[],"records":', 1)]:
        r = httpx.post(url + "/predict", content=text, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "given twice" in r.json()["error"], r.text
    noted = plain.replace('"tenure":', '"note":"a","note":"b","tenure":')  # ignored, twice: still ignored
    for text in [noted, noted.replace('"note":"a"', '"note":"caf\\u00e9"')]:
        r = httpx.post(url + "/predict", content=text, headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json() == same, r.text

    v2 = _compact(v2_body(records[:1]))
    r = httpx.post(url + "/v2/models/churn/infer", content=twice(v2, "data", "[0]"))
    assert r.status_code == 400 and "field 'data' is given twice" in r.json()["error"], r.text
    mlflow = twice(_compact({"dataframe_records": records}), "MonthlyCharges", "1")
    r = httpx.post(url + "/invocations", content=mlflow, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "field 'MonthlyCharges' is given twice" in r.json()["message"], r.text


def _compact(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"))


def test_what_a_protocols_audit_found_read_without_a_word_is_refused_by_name(churn_server: Server) -> None:
    """A protocols audit: MLflow CSV with a quote never closed read the rest of the body into one field (one
    prediction for three rows); a V2 answer held `label` twice when asked twice; a BYTES object was its JSON text."""
    url = churn_server.url
    body = 'tenure,Contract\n1,"Two year\n60,Month-to-month\n5,One year\n'
    unclosed = httpx.post(url + "/invocations", content=body, headers={"content-type": "text/csv"})
    said = unclosed.json()["message"]
    assert unclosed.status_code == 400 and said == 'CSV record 0: a quote (") opened in it is never closed'
    # a review: text after a closing quote before the unclosed one hid it from a strict re-read of the record
    hidden = 'tenure,Contract\n"1" ,"Two year\n60,Month-to-month\n'
    unclosed = httpx.post(url + "/invocations", content=hidden, headers={"content-type": "text/csv"})
    assert unclosed.status_code == 400 and unclosed.json()["message"] == said
    # a review: read strictly, a space after a closing quote was refused too, which pandas (so MLflow) reads
    records = _records(2)
    columns = list(records[0])
    quoted = [{**r, "tenure": f'"{r["tenure"]}" ', "Contract": f'"{r["Contract"]}" '} for r in records]
    spaced = "\n".join([",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in quoted])
    lenient = httpx.post(url + "/invocations", content=spaced, headers={"content-type": "text/csv"})
    assert lenient.status_code == 200 and len(lenient.json()["predictions"]) == 2, lenient.text
    split = {"columns": columns, "data": [[r[c] for c in columns] for r in records]}
    for index in ([0], [0, 1, 2], "0,1"):  # pandas refuses an index that does not fit the rows
        misfit = httpx.post(url + "/invocations", json={"dataframe_split": {**split, "index": index}})
        assert (
            misfit.status_code == 400 and "dataframe_split index must be a list of one label per row (2)" in misfit.text
        )
    assert httpx.post(url + "/invocations", json={"dataframe_split": {**split, "index": [7, 9]}}).status_code == 200
    twice = httpx.post(url + "/v2/models/churn/infer", json={**v2_body(records), "outputs": [{"name": "label"}] * 2})
    assert twice.status_code == 400 and "output 'label' is asked for twice" in twice.text
    doc = v2_body(records)
    contract = next(t for t in doc["inputs"] if t["name"] == "Contract")  # type: ignore[attr-defined]
    contract["data"] = [contract["data"][0], {"a": 1}]
    refused = httpx.post(url + "/v2/models/churn/infer", json=doc)
    assert refused.status_code == 400, refused.text
    assert "input 'Contract', element 1: {'a': 1} is not text, a number or true/false (BYTES)" in refused.text
    contract["data"] = [contract["data"][0], True]  # matched by its text, as /predict matches it
    answer = httpx.post(url + "/v2/models/churn/infer", json=doc)
    assert answer.status_code == 200 and "unseen level 'True'" in answer.text, answer.text


def test_mlflow_ping_follows_the_default_model_that_invocations_scores_with(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """An audit: with the default model (first by name) broken beside a good one, /ping and /health said
    200 while every /invocations failed; an MLflow client's probe kept sending it traffic."""
    store = copy_store(churn_bundle, tmp_path / "models")
    shutil.copytree(churn_bundle.path, store / "aaa" / "1")
    (store / "aaa" / "1" / bundle.MODEL_FILE).write_bytes(b"broken")
    with running_server(store) as server:  # ready: churn serves, aaa is listed as refused
        assert httpx.post(server.url + "/invocations", json={"dataframe_records": _records(1)}).status_code == 404
        for path in ("/ping", "/health"):
            assert httpx.get(server.url + path).status_code == 503, path
        assert httpx.get(server.url + "/health/ready").json()["refused"]  # the store's readiness is unchanged
    with running_server(store, "--default-model", "churn") as server:
        assert httpx.post(server.url + "/invocations", json={"dataframe_records": _records(1)}).status_code == 200
        assert httpx.get(server.url + "/ping").status_code == 200


@pytest.mark.parametrize("name", ["churn\n", "\nchurn", "churn\r"])
def test_a_model_name_with_a_newline_is_no_model_name(
    churn_bundle: bundle.BundleRef, tmp_path: Path, name: str
) -> None:
    """An audit: `$` matched before a trailing newline, so `churn\\n` was published and served, its name
    in every metric label and log line."""
    with pytest.raises(bundle.BundleError):
        bundle.check_name(name)
    store = tmp_path / "models"
    shutil.copytree(churn_bundle.path, store / name / "1")
    assert [ref.name for ref in bundle.iter_bundles(store)] == []
