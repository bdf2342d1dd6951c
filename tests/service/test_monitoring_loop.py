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


def test_each_version_is_scored_by_its_own_threshold_and_a_later_outcome_replaces_an_earlier(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """v1 scores and is labelled on 200 ids; v2 (its copy with threshold 0.5) scores 100 of them again,
    labelled again: v1's window keeps the other 100 (as after a restart), and each version's accuracy
    is that of the labels it served. Two copies of one id in a request: the later one is the latest."""
    import json

    from service import release
    from tests.service.conftest import republish, telco_records

    store, log = copy_store(churn_bundle, tmp_path / "models"), tmp_path / "log"
    records = telco_records(200)
    truth = {r["customerID"]: r["Churn"] for r in _telco_rows(200)}
    outcomes = [{"customerID": c, "Churn": truth[c]} for c in truth]
    with running_server(store, "--log", str(log)) as server:
        v1 = httpx.post(server.url + "/predict", json={"records": records}).json()["predictions"]
        assert httpx.post(server.url + "/models/churn/feedback", json={"records": outcomes}).status_code == 200
        v2 = republish(store, churn_bundle)
        contract = json.loads((v2.path / "preprocess.json").read_text())
        contract["threshold"] = 0.5
        (v2.path / "preprocess.json").write_text(json.dumps(contract))
        release.decide(store, "churn", "promote", 2, why="retrained")
        deadline = time.monotonic() + 20
        while httpx.get(server.url + "/models/churn").json()["version"] != 2:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        again = records[:100]
        twice = [*again[:99], {**again[99], "tenure": 1.0}, again[99]]  # the last copy of an id is the latest
        answer = httpx.post(server.url + "/predict", json={"records": twice}).json()["predictions"]
        served = answer[:99] + answer[100:]
        assert httpx.post(server.url + "/models/churn/feedback", json={"records": outcomes[:100]}).status_code == 200
        live = httpx.get(server.url + "/models/churn/monitor").json()["accuracy"]["versions"]
    assert {v: live[v]["rows"] for v in live} == {"1": 100, "2": 100}
    for version, answers in (("1", v1[100:]), ("2", served)):
        right = sum(a["label"] == truth[a["customerID"]] for a in answers) / len(answers)
        assert abs(live[version]["accuracy"] - right) < 1e-9, (version, live[version]["accuracy"], right)
    assert any(a["label"] != b["label"] for a, b in zip(v1[:100], served, strict=True))  # the thresholds differ
    figures = tmp_path / "v2.json"
    report = tabserve("monitor", "--model", "churn", "--log", str(log), "--models", str(store), "--json", str(figures))
    assert report.returncode == 0, report.stderr
    offline = json.loads(figures.read_text())
    assert abs(offline["live"][0]["accuracy"] - live["2"]["accuracy"]) < 1e-9, offline["live"]


def _telco_rows(n: int) -> list[dict[str, str]]:
    import csv

    with TELCO.open(newline="") as fh:
        return list(csv.DictReader(fh))[:n]


@pytest.mark.parametrize("fmt", ["%d.%m.%Y", "%Y-%m-%d"])
def test_a_date_feature_is_exported_as_the_date_it_was_and_the_retrain_scores_the_file(
    tmp_path: Path, fmt: str
) -> None:
    """Found by a monitoring audit: the log holds a date's age in days at its version's reference date,
    and the export wrote that number, so a model retrained on it took the date for a number and
    refused every row of the file the first one scored ("expected a number, got '30.05.2024'")."""
    import datetime as dt

    import pandas as pd

    from training.pipeline import train

    frame = pd.read_csv(TELCO, dtype=str, keep_default_na=False).head(800)
    start = dt.date(2024, 6, 30)
    frame["signup"] = [(start - dt.timedelta(days=30 * int(t))).strftime(fmt) for t in frame["tenure"]]
    frame = frame.drop(columns=["tenure"])
    source, store, log = tmp_path / "dated.csv", tmp_path / "models", tmp_path / "log"
    frame.to_csv(source, index=False)
    first = train(quick_config(source, "Churn", store, name="churn"), say=lambda _: None)
    assert first.bundle is not None and any(f.date is not None for f in first.bundle.preprocess.numeric)
    done = tabserve(
        "score", "--model", "churn", "--models-dir", str(store), "--input", str(source),
        "--output", str(tmp_path / "scores.csv"), "--log", str(log),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    outcomes = tmp_path / "outcomes.csv"
    frame[["customerID", "Churn"]].to_csv(outcomes, index=False)
    stored = tabserve(
        "feedback", "--model", "churn", "--models-dir", str(store), "--input", str(outcomes), "--log", str(log)
    )
    assert stored.returncode == 0, stored.stderr
    exported = tmp_path / "train.csv"
    done = tabserve(
        "log", "export", "--model", "churn", "--log", str(log), "--labelled", "--output", str(exported),
        "--models-dir", str(store),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    back = pd.read_csv(exported, dtype=str).set_index("customerID")
    assert back.loc[frame["customerID"], "signup"].tolist() == frame["signup"].tolist()  # as it was sent
    retrained = train(quick_config(exported, "Churn", tmp_path / "next", name="churn"), say=lambda _: None)
    assert retrained.bundle is not None
    again = tabserve(
        "score", "--model", str(retrained.bundle.path), "--input", str(source), "--output", str(tmp_path / "again.csv")
    )
    assert again.returncode == 0 and "800 scored" in again.stdout + again.stderr, again.stdout + again.stderr
