"""The prediction log on the real service and the real scorer: nothing accepted is lost at SIGTERM,
excluded fields never reach a file, bad feedback is refused per record and changes nothing."""

from __future__ import annotations

import gzip
import json
import signal
import struct
import threading
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from monitoring.feedback import UNREADABLE_ID
from service import bundle
from tests.service.conftest import copy_store, running_server, telco_records

RECORDS = telco_records(400)


def all_files(log: Path) -> list[Path]:
    return sorted(p for p in log.rglob("*") if p.is_file())


def test_sigterm_under_load_loses_no_accepted_record_and_excluded_fields_never_appear(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    store, log = copy_store(churn_bundle, tmp_path / "models"), tmp_path / "log"
    accepted, stop = [0] * 8, threading.Event()

    def client(k: int, url: str) -> None:
        with httpx.Client(timeout=10) as http:
            i = 0
            while not stop.is_set():
                batch = [{**r, "customerID": f"{k}-{i}-{j}"} for j, r in enumerate(RECORDS[i % 300 : i % 300 + 1 + k])]
                try:
                    if http.post(url + "/predict", json={"records": batch}).status_code == 200:
                        accepted[k] += len(batch)
                except httpx.HTTPError:
                    return  # the server went away: this request was not accepted
                i += 1

    with running_server(
        store, "--log", str(log), "--log-exclude", "gender", "--log-exclude", "customerID", "--log-flush-s", "5"
    ) as server:
        threads = [threading.Thread(target=client, args=(k, server.url)) for k in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while sum(accepted) <= 600:  # a count, not a fixed sleep: a loaded machine answers slower
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)  # while requests are in flight, records still in the buffer
        # uvicorn exits by the signal it got, once the shutdown is complete
        assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM), server.output()
        assert "Application shutdown complete" in server.output()
        stop.set()
        for t in threads:
            t.join()
    files = all_files(log)
    assert files and all(f.suffix == ".parquet" and not f.name.startswith(".") for f in files), files
    tables = [pq.read_table(f) for f in files]
    assert sum(t.num_rows for t in tables) == sum(accepted) > 500
    for table in tables:
        assert "gender" not in table.column_names and "customerID" not in table.column_names
        assert "Partner" in table.column_names  # only what was excluded is missing
    for f in files:  # not even in a file's metadata or a string somewhere
        assert b"gender" not in f.read_bytes()
    # outcomes for a log without its id column: said so (a 500 with a second id, "never scored" with one)
    import subprocess
    import sys

    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("customerID,Churn\n0-0-0,Yes\n")
    command = ["feedback", "--model", "churn", "--input", str(outcomes), "--log", str(log), "--models-dir", str(store)]
    run = subprocess.run(
        [sys.executable, "-m", "tabserve.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "the prediction log of churn holds no 'customerID'" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and not (log / "churn" / "feedback").exists()


def nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def test_bad_feedback_is_refused_per_record_and_changes_nothing(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store, log = copy_store(churn_bundle, tmp_path / "models"), tmp_path / "log"
    scored = RECORDS[:5]
    with running_server(store, "--log", str(log)) as server:
        assert httpx.post(server.url + "/predict", json={"records": scored}).status_code == 200
        url = server.url + "/models/churn/feedback"
        ok = {"customerID": scored[0]["customerID"], "Churn": "Yes"}
        bad = [
            ok,
            {"customerID": "never-scored", "Churn": "No"},
            {"customerID": scored[1]["customerID"], "Churn": "Maybe"},
            {"Churn": "Yes"},
            {"customerID": scored[2]["customerID"]},
            {"customerID": 10**29, "Churn": "Yes"},  # these two were a 500 (orjson could not write them)
            {"customerID": nested(300), "Churn": "Yes"},
            {"customerID": scored[0]["customerID"], "Churn": "No"},  # record 0's id, another outcome
        ]
        answer = httpx.post(url, json={"records": bad})
        too_deep = httpx.post(
            url, content=b'{"records": ' + b"[" * 100_000, headers={"content-type": "application/json"}
        )
        wrong_type = httpx.post(url, content=b"customerID,Churn\nx,Yes\n", headers={"content-type": "text/plain"})
        malformed = httpx.post(url, content=b'{"records": [', headers={"content-type": "application/json"})
        twice = httpx.post(url, content=b"customerID,Churn,Churn\nx,Yes,No\n", headers={"content-type": "text/csv"})
        unknown_model = httpx.post(server.url + "/models/nope/feedback", json={"records": [ok]})
        time.sleep(1.5)  # past a flush
        stored_after_refusals = list(log.glob("churn/feedback/**/*.parquet"))
        before = {f: f.read_bytes() for f in all_files(log)}
        partial = httpx.post(url + "?partial=true", json={"records": bad})
        monitor = httpx.get(server.url + "/models/churn/monitor").json()
        # found by an HTTP audit: a CSV with bare CRs (old Mac) was a 500, a gzip body was not inflated
        # (a 500 as CSV), and a key given twice kept its last value without a word
        csv_type = {"content-type": "text/csv"}
        mac = httpx.post(url, content=f"customerID,Churn\r{scored[3]['customerID']},No\r".encode(), headers=csv_type)
        zipped = gzip.compress(f"customerID,Churn\n{scored[4]['customerID']},Yes\n".encode())
        gz = httpx.post(url, content=zipped, headers={**csv_type, "content-encoding": "gzip"})
        dup = f'{{"records": [{{"customerID": "{scored[1]["customerID"]}", "Churn": "Yes", "Churn": "No"}}]}}'
        twice_key = httpx.post(url, content=dup.encode(), headers={"content-type": "application/json"})
    assert (mac.status_code, mac.json().get("stored")) == (200, 1), mac.text
    assert (gz.status_code, gz.json().get("stored")) == (200, 1), gz.text
    assert twice_key.status_code == 422 and twice_key.json()["details"][0] == {
        "record": 0, "field": "Churn", "message": "given twice"
    }  # fmt: skip
    assert answer.status_code == 422
    details = answer.json()["details"]
    assert [(d["record"], d["field"]) for d in details] == [
        (1, "customerID"),
        (2, "Churn"),
        (3, "customerID"),
        (4, "Churn"),
        (5, "customerID"),
        (6, "customerID"),
        (7, "customerID"),
    ]
    assert "never scored" in details[0]["message"] and "'Maybe' is not a label" in details[1]["message"]
    assert "id column is missing" in details[2]["message"] and "outcome (Churn) is missing" in details[3]["message"]
    assert details[4]["message"] == details[5]["message"] == UNREADABLE_ID
    assert details[6]["message"] == f"id {scored[0]['customerID']} has another outcome in record 0 of this submission"
    assert too_deep.status_code == 400 and "nested too deeply" in too_deep.json()["error"]
    assert wrong_type.status_code == 415 and "text/csv" in wrong_type.json()["error"]
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["error"]
    assert twice.status_code == 400 and "named more than once in the CSV header: Churn" in twice.json()["error"]
    assert unknown_model.status_code == 404
    assert not stored_after_refusals  # refused: nothing stored
    # with ?partial=true the good record is stored, the bad ones named, the predictions untouched
    assert partial.status_code == 200 and partial.json()["stored"] == 1 and len(partial.json()["refused"]) == 7
    assert all(f.read_bytes() == data for f, data in before.items() if f.exists())
    assert monitor["accuracy"]["versions"]["1"]["rows"] == 1


def test_tabserve_score_logs_every_scored_row_by_its_row_number(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import TELCO

    log, out = tmp_path / "log", tmp_path / "scores.csv"
    done = subprocess.run(
        [sys.executable, "-m", "tabserve.cli", "score", "--model", str(churn_bundle.path), "--input", str(TELCO),
         "--output", str(out), "--log", str(log), "--chunk-rows", "500", "--cpus", "2"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = pq.read_table(sorted(log.glob("churn/date=*/*.parquet")))
    rows = sum(1 for _ in TELCO.open()) - 1
    assert table.num_rows == rows and sorted(table.column("_row").to_pylist()) == list(range(1, rows + 1))
    assert len(set(table.column("_request").to_pylist())) == 1  # one file, one request id
    # and one time: blocks logged as they finished (out of order on two threads) had their own, so an
    # outcome for an id the file gives twice joined whichever block finished last, not the later row
    assert len(set(table.column("_at").to_pylist())) == 1
    first = table.filter(table.column("_row").to_numpy() == 1).to_pylist()[0]  # numbered as errors number rows
    assert first["customerID"] == "7590-VHVEG" and first["Contract"] == "Month-to-month"


def test_every_scoring_route_logs_its_records(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    from tests.service.test_api import v2_body

    store, log = copy_store(churn_bundle, tmp_path / "models"), tmp_path / "log"
    records = RECORDS[:4]
    columns = list(records[0])
    csv_body = ",".join(columns) + "\n" + "".join(",".join(str(r[c] or "") for c in columns) + "\n" for r in records)
    # integer ids as a binary tensor (tritonclient's way): np.int64 values were logged as absent
    binary_ids = {"id": "v2-ids", **v2_body(records)}
    sized = {"binary_data_size": 8 * len(records)}
    binary_ids["inputs"].append({"name": "customerID", "datatype": "INT64", "shape": [4], "parameters": sized})  # type: ignore[attr-defined]
    head = json.dumps(binary_ids).encode()
    with running_server(store, "--log", str(log)) as server:
        sent = {
            "native": httpx.post(
                server.url + "/predict", json={"records": records}, headers={"x-request-id": "native-1"}
            ),
            "v2": httpx.post(server.url + "/v2/models/churn/infer", json={"id": "v2-1", **v2_body(records)}),
            "v2-ids": httpx.post(
                server.url + "/v2/models/churn/infer",
                content=head + struct.pack("<4q", 7, 8, 9, 2**62),
                headers={"inference-header-content-length": str(len(head)), "content-type": "application/json"},
            ),
            "mlflow": httpx.post(
                server.url + "/invocations",
                json={"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in records]}},
                headers={"x-request-id": "mlflow-1"},
            ),
            "upload": httpx.post(
                server.url + "/models/churn/score", content=csv_body, headers={"content-type": "text/csv"}
            ),
            "unseen": httpx.post(
                server.url + "/predict",
                json={"records": [{**records[0], "Contract": "Ten-year"}]},
                headers={"x-request-id": "unseen-1"},
            ),
        }
        assert all(r.status_code == 200 for r in sent.values()), {k: r.text for k, r in sent.items()}
        window = httpx.get(server.url + "/models/churn/monitor").json()["window_rows"]
    assert window == 5 * 4 + 1  # the upload's rows count in the live drift window too
    table = pq.read_table(sorted(log.glob("churn/date=*/*.parquet")))
    by_request: dict[str, list[dict[str, object]]] = {}
    for row in table.to_pylist():
        by_request.setdefault(str(row["_request"]), []).append(row)
    assert [len(by_request[k]) for k in ("native-1", "v2-1", "mlflow-1", "unseen-1")] == [4, 4, 4, 1]
    uploads = [rows for key, rows in by_request.items() if key.startswith("churn-")]
    assert len(uploads) == 1 and sorted(r["_row"] for r in uploads[0]) == [1, 2, 3, 4]
    for key in ("native-1", "mlflow-1"):  # the protocols that carry ids
        assert [r["customerID"] for r in by_request[key]] == [r["customerID"] for r in records]
    assert [r["customerID"] for r in by_request["v2-ids"]] == ["7", "8", "9", str(2**62)]
    native = sent["native"].json()["predictions"]
    assert [r["_probability"] for r in by_request["native-1"]] == pytest.approx([p["probability"] for p in native])
    assert by_request["v2-1"][2]["Contract"] == records[2]["Contract"] and by_request["v2-1"][0]["customerID"] is None
    assert by_request["unseen-1"][0]["Contract"] == "Ten-year"  # kept as sent, though scored as missing
