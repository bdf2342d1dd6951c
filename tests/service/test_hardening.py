"""Client input that used to get a 500, and the store's, deadline's and docs' defences, against a
real server."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service import bundle
from tests.conftest import TELCO
from tests.service.conftest import Server, copy_store, running_server, telco_records, wait_until
from tests.service.test_api import v2_body

V2_INFER = "/v2/models/churn/infer"
SCORING_ROUTES = ["/predict", "/models/churn/predict"]


def post(server: Server, path: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(server.url + path, content=body, headers={"content-type": "application/json", **headers})


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("path", SCORING_ROUTES)
@pytest.mark.parametrize("depth", [300, 5000])
def test_deeply_nested_id_is_a_4xx(churn_server: Server, path: str, depth: int) -> None:
    record = json.dumps(telco_records(1)[0])
    body = record.replace('"customerID": "7590-VHVEG"', f'"customerID": {nested(depth)}')
    assert body != record
    answer = post(churn_server, path, b'{"records": [%s]}' % body.encode())
    assert answer.status_code in (400, 422), answer.text
    assert "customerID" in answer.text or "nested" in answer.text


@pytest.mark.parametrize("path", SCORING_ROUTES)
def test_id_beyond_64_bits_is_refused_by_name_on_every_decoding_path(churn_server: Server, path: str) -> None:
    plain = telco_records(1)[0]
    general = {**plain, "tenure": "1"}  # a numeric string: the general path decodes this one
    for record in (plain, general):
        text = json.dumps({"records": [{**record, "customerID": 0}]}).replace(
            '"customerID": 0', f'"customerID": {10**29}'
        )
        answer = post(churn_server, path, text.encode())
        assert answer.status_code == 422, answer.text
        assert answer.json()["details"][0] == {
            "record": 0,
            "field": "customerID",
            "message": "an integer beyond 64 bits cannot be echoed exactly; send the id as a string",
        }
    fits = json.dumps({"records": [{**plain, "customerID": 2**64 - 1}]})
    answer = post(churn_server, path, fits.encode())
    assert answer.status_code == 200 and answer.json()["predictions"][0]["customerID"] == 2**64 - 1


def test_v2_ids_that_cannot_be_echoed_are_400(churn_server: Server) -> None:
    body = json.dumps(v2_body(telco_records(1)))
    for value in (str(10**29), nested(300), nested(5000)):
        answer = post(churn_server, V2_INFER, ('{"id": ' + value + ", " + body[1:]).encode())
        assert answer.status_code == 400, answer.text
    answer = post(churn_server, V2_INFER, (f'{{"id": {2**63 - 1}, ' + body[1:]).encode())
    assert answer.status_code == 200 and answer.json()["id"] == 2**63 - 1


def test_huge_numbers_in_paths_and_headers_are_4xx(churn_server: Server) -> None:
    digits = "9" * 5000
    body = json.dumps(v2_body(telco_records(1))).encode()
    answer = post(churn_server, f"/v2/models/churn/versions/{digits}/infer", body)
    assert answer.status_code == 404 and answer.json()["error"]
    for path in (f"/v2/models/churn/versions/{digits}", f"/v2/models/churn/versions/{digits}/ready"):
        assert httpx.get(churn_server.url + path).status_code in (404, 422)
    # one reading of a version on every route: digits name one; `1.0`, `+1`, `abc` and 19 digits name
    # none, said with the text (19 digits said "no version -1"; the others got a bare Not Found)
    for text in ("9" * 19, "1.0", "+1", "abc"):
        base = f"/v2/models/churn/versions/{text}"
        answers = [
            post(churn_server, base + "/infer", body),
            *(httpx.get(churn_server.url + base + end) for end in ("", "/ready")),
        ]
        for answer in answers:
            assert answer.status_code == 404 and f"has no version '{text}'" in answer.json()["error"], answer.text
    answer = post(churn_server, V2_INFER, body, **{"inference-header-content-length": digits})
    assert answer.status_code == 400 and "Inference-Header-Content-Length" in answer.json()["error"]


def test_request_deadline_is_504_and_counted(churn_server: Server) -> None:
    body = json.dumps({"records": telco_records(200)}).encode()
    answer = post(churn_server, "/predict", body, **{"x-request-timeout-ms": "0.000001"})
    assert answer.status_code == 504 and "deadline" in answer.json()["error"]
    v2 = post(
        churn_server, V2_INFER, json.dumps(v2_body(telco_records(1))).encode(), **{"x-request-timeout-ms": "1e-9"}
    )
    assert v2.status_code == 504
    assert post(churn_server, "/predict", body, **{"x-request-timeout-ms": "5000"}).status_code == 200
    for bad in ("soon", "-5", "0", "nan"):
        answer = post(churn_server, "/predict", body, **{"x-request-timeout-ms": bad})
        assert answer.status_code == 400 and "x-request-timeout-ms" in answer.json()["error"]
    metrics = httpx.get(churn_server.url + "/metrics").text
    assert 'route="/predict",status="504"' in metrics


def test_admin_401_says_how_to_authenticate(churn_server: Server) -> None:
    answer = httpx.post(churn_server.url + "/admin/reload", headers={"authorization": "Bearer wrong"})
    assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer")


def test_docs_need_no_cdn(churn_server: Server) -> None:
    page = httpx.get(churn_server.url + "/docs").text
    assert "cdn." not in page and "https://" not in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert asset in page
        answer = httpx.get(f"{churn_server.url}/docs/assets/{asset}")
        assert answer.status_code == 200 and len(answer.content) > 10_000


def test_record_schema_says_one_feature_is_needed(churn_server: Server) -> None:
    spec = httpx.get(churn_server.url + "/openapi.json").json()
    schema = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    record = schema["properties"]["records"]["items"]
    assert {"required": ["tenure"]} in record["anyOf"]
    assert post(churn_server, "/predict", b'{"records": [{}]}').status_code == 422  # as the schema now says


def test_empty_store_says_no_model_is_loaded_yet(tmp_path: Path) -> None:
    store = tmp_path / "models"
    store.mkdir()
    with running_server(store, ready=False) as server:
        answer = post(server, "/predict", json.dumps({"records": telco_records(1)}).encode())
        assert answer.status_code == 503
        assert "no model is loaded yet" in answer.json()["error"] and "None" not in answer.json()["error"]


def test_v2_versions_resolve_only_inside_the_store(
    churn_bundle: bundle.BundleRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(churn_bundle.path, tmp_path / "churn@5")  # a bundle beside the server, outside its store
    store = copy_store(churn_bundle, tmp_path / "models")
    broken = store / "churn" / "2"
    shutil.copytree(churn_bundle.path, broken)
    (broken / bundle.MODEL_FILE).write_bytes(b"not onnx")
    (store / "churn" / "1").rename(store / "churn" / "3")  # 3 current, 2 broken and older
    body = json.dumps(v2_body(telco_records(1))).encode()
    with running_server(store) as server:
        assert post(server, "/v2/models/churn/versions/5/infer", body).status_code == 404
        answer = post(server, "/v2/models/churn/versions/2/infer", body)
        assert answer.status_code == 404
        assert answer.json()["error"] == "churn version 2 cannot be loaded (see the server log)"
        assert str(store) not in answer.text
    with running_server(store, env={"TABSERVE_OLDER_VERSIONS": "0"}) as server:
        (store / "churn" / "3").rename(store / "churn" / "1")
        shutil.copytree(store / "churn" / "1", store / "churn" / "3")
        assert post(server, "/v2/models/churn/versions/1/infer", body).status_code == 404


def test_a_half_copied_bundle_is_tried_again_once_complete(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, "--admin-token", "t") as server:
        partial = store / "churn" / "2"
        partial.mkdir()
        for item in churn_bundle.path.iterdir():
            if item.name != bundle.MODEL_FILE:
                shutil.copy2(item, partial / item.name)
        onnx = (churn_bundle.path / bundle.MODEL_FILE).read_bytes()
        (partial / bundle.MODEL_FILE).write_bytes(onnx[: len(onnx) // 2])  # the copy is still going on
        auth = {"authorization": "Bearer t"}
        reload = httpx.post(server.url + "/admin/reload", headers=auth).json()
        assert "churn@2" in reload["refused"] and reload["current"] == {"churn": 1}
        assert "churn@2" in httpx.get(server.url + "/models").json()["refused"]
        (partial / bundle.MODEL_FILE).write_bytes(onnx)  # ... and now it is complete
        deadline = time.monotonic() + 10
        while httpx.get(server.url + "/models/churn").json()["version"] != 2:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        assert httpx.get(server.url + "/models").json()["refused"] == {}
        wait_until(server, "/health/ready")


def test_a_bundle_loaded_before_its_copy_ends_is_loaded_again_once_complete(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """Found by a release audit: a copy that wrote the three files a bundle needs first was loaded,
    and explain.onnx and drift.json arriving after were never read (no reason codes, no drift)."""
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, "--admin-token", "t") as server:
        partial = store / "churn" / "2"
        partial.mkdir()
        for name in bundle.REQUIRED_FILES:
            shutil.copy2(churn_bundle.path / name, partial / name)
        auth = {"authorization": "Bearer t"}
        assert httpx.post(server.url + "/admin/reload", headers=auth).json()["current"] == {"churn": 2}
        one = {"records": telco_records(1)}
        assert httpx.post(server.url + "/predict?explain=2", json=one).status_code == 422  # no explain.onnx yet
        assert httpx.get(server.url + "/models/churn/monitor").status_code == 404  # no drift.json yet
        for item in churn_bundle.path.iterdir():  # ... and now the copy ends
            if not (partial / item.name).exists():
                shutil.copy2(item, partial / item.name)
        # loaded again by this reload, or by the poll that saw the files first
        assert httpx.post(server.url + "/admin/reload", headers=auth).json()["current"] == {"churn": 2}
        assert server.output().count("serving churn version 2") >= 2
        explained = httpx.post(server.url + "/predict?explain=2", json=one)
        assert explained.status_code == 200 and len(explained.json()["predictions"][0]["reasons"]) == 2
        assert httpx.get(server.url + "/models/churn/monitor").status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
        assert 'role="champion",version="2"} 1.0' in metrics
        again = httpx.post(server.url + "/admin/reload", headers=auth).json()  # unchanged: not loaded again
        assert again["loaded"] == [] and again["current"] == {"churn": 2}


BOM = b"\xef\xbb\xbf"  # what Windows tools (PowerShell 5, Notepad) put before the JSON they save


@pytest.mark.parametrize("path", [*SCORING_ROUTES, V2_INFER, "/invocations"])
@pytest.mark.parametrize("typed", [True, False])
def test_a_byte_order_mark_before_the_json_is_ignored(churn_server: Server, path: str, typed: bool) -> None:
    records = telco_records(3)
    if not typed:  # a numeric string: the records decoder leaves its fast (C) path for the Python one
        records[1]["tenure"] = str(records[1]["tenure"])
    protocol = {V2_INFER: v2_body(records), "/invocations": {"dataframe_records": records}}
    body = json.dumps(protocol.get(path, {"records": records})).encode()
    plain, marked = post(churn_server, path, body), post(churn_server, path, BOM + body)
    if path == V2_INFER and not typed:  # a V2 tensor's data must be of its declared type
        assert plain.status_code == marked.status_code == 400 and "is not a number (FP64 declared)" in marked.text
        return
    assert plain.status_code == 200, plain.text
    assert marked.status_code == 200 and marked.json() == plain.json(), marked.text


def test_a_byte_order_mark_before_a_v2_binary_request_is_ignored(churn_server: Server) -> None:
    records = telco_records(2)
    doc = v2_body(records)
    raw = b""
    for tensor in doc["inputs"]:  # type: ignore[attr-defined]
        if tensor["datatype"] == "FP64":  # the numbers as raw little-endian doubles after the JSON
            values = tensor.pop("data")
            tensor["parameters"] = {"binary_data_size": 8 * len(values)}
            raw += struct.pack(f"<{len(values)}d", *values)
    head = BOM + json.dumps(doc).encode()  # the client counts the mark in the JSON part's length
    answer = post(churn_server, V2_INFER, head + raw, **{"inference-header-content-length": str(len(head))})
    plain = post(churn_server, V2_INFER, json.dumps(v2_body(records)).encode())
    assert answer.status_code == 200 and answer.json()["outputs"] == plain.json()["outputs"], answer.text
    # bytes past the last input's binary_data_size: sizes that do not add up were ignored
    junk = post(churn_server, V2_INFER, head + raw + b"\0" * 8, **{"inference-header-content-length": str(len(head))})
    assert junk.status_code == 400 and "8 bytes past the last input's binary_data_size" in junk.text, junk.text
    # an input given both ways (an HTTP audit: the JSON data was dropped without a word)
    both = json.loads(head.removeprefix(BOM))
    sized = next(t for t in both["inputs"] if "parameters" in t)
    sized["data"] = [1.0] * len(records)
    head = json.dumps(both).encode()
    twice = post(churn_server, V2_INFER, head + raw, **{"inference-header-content-length": str(len(head))})
    assert twice.status_code == 400 and f"input '{sized['name']}' has both data and binary_data_size" in twice.text


@pytest.mark.parametrize("path", [*SCORING_ROUTES, V2_INFER, "/invocations"])
def test_a_value_that_overflows_inside_the_graph_is_refused_by_name_never_answered_nan(
    churn_server: Server, path: str
) -> None:
    """SeniorCitizen -3e38 is within float32's range, but standardized it overflows inside the graph:
    the outputs were NaN, answered 200 with a null probability on every route (and logged). Now the
    request is refused naming the record and the field; requests batched beside it are answered."""
    records = telco_records(12)
    records[1]["SeniorCitizen"] = -3e38

    def body(rows: list[dict[str, object]]) -> bytes:
        protocol = {V2_INFER: v2_body(rows), "/invocations": {"dataframe_records": rows}}
        return json.dumps(protocol.get(path, {"records": rows})).encode()

    with ThreadPoolExecutor(8) as pool:  # the bad request among good ones, to share their batches
        good = [pool.submit(post, churn_server, path, body([r])) for r in records[2:]]
        answer = post(churn_server, path, body(records[:2]))
        assert all(g.result().status_code == 200 for g in good)
    assert answer.status_code == (422 if path in SCORING_ROUTES else 400), answer.text  # as any bad value there
    assert "record 1, field 'SeniorCitizen': -3e+38 is too far from training's values (0 to 1) to score" in answer.text


def test_a_file_row_that_overflows_inside_the_graph_fails_by_name_and_the_others_are_scored(
    churn_server: Server,
) -> None:
    head = TELCO.read_text().splitlines()[:4]
    cells = head[2].split(",")
    cells[2] = "-3e38"  # SeniorCitizen
    body = "\n".join([head[0], head[1], ",".join(cells), head[3]]) + "\n"
    answer = httpx.post(churn_server.url + "/models/churn/score", content=body, headers={"content-type": "text/csv"})
    assert answer.status_code == 200, answer.text
    lines = answer.text.splitlines()
    assert len(lines) == 4 and "nan" not in answer.text.lower()
    assert "row 2, field 'SeniorCitizen': -3e+38 is too far from training's values (0 to 1) to score" in lines[2]
    assert lines[1].split(",")[-1] == "" and lines[3].split(",")[-1] == ""  # its neighbours scored


@pytest.mark.parametrize("path", [*SCORING_ROUTES, V2_INFER, "/invocations"])
@pytest.mark.parametrize("n", [1, 2])
def test_a_record_of_nulls_is_refused_by_name_on_every_route(churn_server: Server, path: str, n: int) -> None:
    """Every feature null: answered 200 as the all-median customer (on /predict's C decoder path too)."""
    records = [{k: (v if k == "customerID" else None) for k, v in r.items()} for r in telco_records(n)]
    body = {V2_INFER: v2_body(records), "/invocations": {"dataframe_records": records}}.get(path, {"records": records})
    answer = post(churn_server, path, json.dumps(body).encode())
    assert answer.status_code == (422 if path in SCORING_ROUTES else 400), answer.text
    assert "every feature is blank or null" in answer.text and "None" not in answer.text


@pytest.mark.parametrize("path", [*SCORING_ROUTES, V2_INFER, "/invocations"])
def test_a_gzip_body_is_read_as_gzip_and_other_encodings_are_refused(churn_server: Server, path: str) -> None:
    """Content-Encoding was ignored on these routes: a gzip body failed as "malformed JSON", and a
    plain body claimed as gzip or br was scored as if nothing were said."""
    records = telco_records(3)
    body = json.dumps(
        {V2_INFER: v2_body(records), "/invocations": {"dataframe_records": records}}.get(path, {"records": records})
    ).encode()
    plain = post(churn_server, path, body)
    zipped = post(churn_server, path, gzip.compress(body), **{"content-encoding": "gzip"})
    assert plain.status_code == zipped.status_code == 200 and zipped.json() == plain.json(), zipped.text
    claimed = post(churn_server, path, body, **{"content-encoding": "gzip"})
    assert claimed.status_code == 400 and "not valid gzip" in claimed.text, claimed.text
    cut = post(churn_server, path, gzip.compress(body)[:-12], **{"content-encoding": "gzip"})
    assert cut.status_code == 400 and "truncated" in cut.text, cut.text
    other = post(churn_server, path, body, **{"content-encoding": "br"})
    assert other.status_code == 415 and "'br' is not supported" in other.text, other.text
    # two members (`cat a.gz b.gz`) are the whole body; bytes after the gzip are no gzip (an HTTP audit:
    # the first member alone was read, "malformed JSON", and trailing bytes were dropped without a word)
    members = gzip.compress(body[:40]) + gzip.compress(body[40:])
    assert post(churn_server, path, members, **{"content-encoding": "gzip"}).json() == plain.json()
    trailing = post(churn_server, path, gzip.compress(body) + b"garbage", **{"content-encoding": "gzip"})
    assert trailing.status_code == 400 and "not valid gzip" in trailing.text, trailing.text
    # a diff review: 50,000 empty members took a pass each over the rest of the body (a 2 MB one held
    # the event loop for 11 s); a body is at most 64 members
    many = post(churn_server, path, gzip.compress(b"") * 5_000 + gzip.compress(body), **{"content-encoding": "gzip"})
    assert many.status_code == 400 and "more than 64 gzip members" in many.text, many.text


def test_empty_mlflow_bodies_and_odd_binary_sizes_are_said_in_their_own_words(churn_server: Server) -> None:
    """MLflow without rows said '"records" is empty' (a key MLflow clients never send); a V2
    binary_data_size of -4, 4.0 or "4" said it "runs past the body"."""
    for doc in ({"dataframe_records": []}, {"dataframe_split": {"columns": ["tenure"], "data": []}}):
        answer = post(churn_server, "/invocations", json.dumps(doc).encode())
        assert answer.status_code == 400 and "no rows to score" in answer.text and "records" not in answer.text
    for size in (-4, 4.0, "4"):
        doc = v2_body(telco_records(1))
        doc["inputs"][0]["parameters"] = {"binary_data_size": size}  # type: ignore[index]
        head = json.dumps(doc).encode()
        answer = post(churn_server, V2_INFER, head + b"\0" * 8, **{"inference-header-content-length": str(len(head))})
        assert answer.status_code == 400 and f"binary_data_size must be a byte count, not {size!r}" in answer.text


def test_a_column_named_twice_is_refused_on_mlflow_as_on_the_upload_route(churn_server: Server) -> None:
    """`dataframe_split` columns ["tenure", "tenure"] and a CSV header naming tenure twice were
    scored with the last value (the upload route refuses such a header)."""
    record = telco_records(1)[0]
    names = [*record, "tenure"]
    split = {"dataframe_split": {"columns": names, "data": [[*record.values(), 70]]}}
    answer = post(churn_server, "/invocations", json.dumps(split).encode())
    assert answer.status_code == 400 and "named more than once in the dataframe_split columns: tenure" in answer.text
    csv_body = ",".join(names) + "\n" + ",".join(map(str, [*record.values(), 70])) + "\n"
    answer = post(churn_server, "/invocations", csv_body.encode(), **{"content-type": "text/csv"})
    assert answer.status_code == 400 and "named more than once in the CSV header: tenure" in answer.text


@pytest.mark.parametrize("path", [*SCORING_ROUTES, "/invocations"])
def test_a_number_beyond_float64_is_named_by_its_path(churn_server: Server, path: str) -> None:
    """`"tenure": 1e309` was "Number out of range - at `$[...][0][...]`": now the field's path."""
    records = telco_records(2)
    key = "dataframe_records" if path == "/invocations" else "records"
    text = json.dumps({key: records}).replace('"tenure": 34.0', '"tenure": 1e309')
    assert "1e309" in text
    answer = post(churn_server, path, text.encode())
    assert answer.status_code in (400, 422) and f"beyond float64's range at $.{key}[1].tenure" in answer.text, (
        answer.text
    )
