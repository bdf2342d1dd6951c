"""The monitoring loop end to end on the real service: serve with a prediction log, send the telco
test split, post its true outcomes, read the live accuracy, export the labelled records and train on them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from service import bundle
from tests.conftest import TELCO, quick_config
from tests.service.conftest import copy_store, running_server

NUMERIC = {"SeniorCitizen", "tenure", "MonthlyCharges", "TotalCharges"}


def tabserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tabserve.cli", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def test_split() -> list[dict[str, object]]:
    """The telco test split as training cut it, as a JSON client sends it (Churn still in)."""
    from training.pipeline import prepare_data

    prep = prepare_data(quick_config(TELCO, "Churn", Path("unused"), name="churn"), say=lambda _: None)
    rows = prep.df.iloc[prep.split.test].astype(str).to_dict("records")
    return [
        {k: (float(v) if k in NUMERIC and v.strip() else None if k in NUMERIC else v) for k, v in r.items()}
        for r in rows
    ]


def test_live_auc_equals_offline_and_the_export_trains(
    churn_bundle: bundle.BundleRef, test_split: list[dict[str, object]], tmp_path: Path
) -> None:
    store, log = copy_store(churn_bundle, tmp_path / "models"), tmp_path / "log"
    probability, truth = {}, {}
    with running_server(store, "--log", str(log)) as server:
        for i in range(0, len(test_split), 100):
            chunk = test_split[i : i + 100]
            records = [{k: v for k, v in r.items() if k != "Churn"} for r in chunk]
            answer = httpx.post(server.url + "/predict", json={"records": records}).json()
            for record, prediction in zip(chunk, answer["predictions"], strict=True):
                probability[record["customerID"]] = prediction["probability"]
                truth[record["customerID"]] = record["Churn"]
        ids = list(probability)
        half = len(ids) // 2  # one half as JSON, the other as a CSV body
        first = httpx.post(
            server.url + "/models/churn/feedback",
            json={"records": [{"customerID": c, "Churn": truth[c]} for c in ids[:half]]},
        )
        csv_body = "customerID,Churn\n" + "".join(f"{c},{truth[c]}\n" for c in ids[half:])
        second = httpx.post(
            server.url + "/models/churn/feedback", content=csv_body, headers={"content-type": "text/csv"}
        )
        monitor = httpx.get(server.url + "/models/churn/monitor").json()
        metrics = httpx.get(server.url + "/metrics").text
    assert first.json()["stored"] == half and second.json()["stored"] == len(ids) - half, (first.text, second.text)
    offline = roc_auc_score([truth[c] == "Yes" for c in ids], [probability[c] for c in ids])
    live = monitor["accuracy"]["versions"]["1"]
    assert live["rows"] == len(ids)
    assert abs(live["auc"] - offline) < 1e-6, (live["auc"], offline)
    line = next(x for x in metrics.splitlines() if x.startswith("tabserve_live_auc{"))
    assert abs(float(line.split()[-1]) - offline) < 1e-6

    with running_server(store, "--log", str(log)) as restarted:  # the window is read back from the log
        deadline, again = time.monotonic() + 20, {}
        while again.get("rows") != len(ids) and time.monotonic() < deadline:  # read back just after start
            time.sleep(0.2)
            again = httpx.get(restarted.url + "/models/churn/monitor").json()["accuracy"]["versions"].get("1", {})
    assert again["rows"] == len(ids) and abs(again["auc"] - offline) < 1e-6

    logged = pq.read_table(sorted(log.glob("churn/date=*/*.parquet")))
    assert logged.num_rows == len(ids)  # after SIGTERM: every scored record on disk
    exported = tmp_path / "train.parquet"
    done = tabserve("log", "export", "--model", "churn", "--log", str(log), "--labelled", "--output", str(exported))
    assert done.returncode == 0, done.stderr
    table = pq.read_table(exported)
    assert table.num_rows == len(ids) and "Churn" in table.column_names
    assert not [c for c in table.column_names if c.startswith("_")]
    assert sorted(table.column("customerID").to_pylist()) == sorted(ids)

    from training.pipeline import train

    retrained = train(quick_config(exported, "Churn", tmp_path / "next", name="churn"), say=lambda _: None)
    assert retrained.bundle is not None and retrained.metrics["test"]["roc_auc"] > 0.7

    report = tabserve(
        "monitor", "--model", "churn", "--log", str(log), "--models", str(store), "--html", str(tmp_path / "r.html")
    )
    assert report.returncode == 0, report.stderr
    assert "PSI of churn v1" in report.stdout and "live metrics" in report.stdout
    assert (tmp_path / "r.html").read_text().count("<svg") >= 3
