"""The loop while the service still writes: the report and the export read the open segment, outcomes
come as a spreadsheet exports them (`;`, labels in another case), and nothing scored means no verdict."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from monitoring.log import LogLocation, logged_parts
from service import bundle
from tests.conftest import TELCO
from tests.service.conftest import Server, copy_store, running_server

ROWS = sum(1 for _ in TELCO.open()) - 1


def tabserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tabserve.cli", *args], capture_output=True, text=True, check=False)


def outcomes(n: int, sep: str, case: str = "") -> bytes:
    """The first `n` telco outcomes as `customerID<sep>Churn` (labels lower- or upper-cased on request)."""
    with TELCO.open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    churn = [getattr(r["Churn"], case)() if case else r["Churn"] for r in rows]
    lines = [f"customerID{sep}Churn", *(f"{r['customerID']}{sep}{c}" for r, c in zip(rows, churn, strict=True))]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def served(churn_bundle: bundle.BundleRef, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A service whose log holds the telco file, scored once, still in its open segment (rotation 600 s)."""
    store = copy_store(churn_bundle, tmp_path_factory.mktemp("open") / "models")
    with running_server(store, "--log", str(store.parent / "log")) as server:
        answer = httpx.post(
            server.url + "/models/churn/score", content=TELCO.read_bytes(), headers={"content-type": "text/csv"}
        )
        assert answer.status_code == 200, answer.text
        # the writer thread appends to the segment just after the answer: wait for every row to be there
        location, deadline = LogLocation.of(store.parent / "log"), time.monotonic() + 30
        while sum(table.num_rows for table in logged_parts(location, "churn")[0]) < ROWS:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        yield server


def test_monitor_and_export_read_the_open_segment(served: Server, tmp_path: Path) -> None:
    log = served.store.parent / "log"
    assert not list(log.glob("churn/date=*/*.parquet"))  # all in the open segment
    figures, exported = tmp_path / "figures.json", tmp_path / "served.parquet"
    report = tabserve(
        "monitor", "--model", "churn", "--log", str(log), "--models", str(served.store), "--json", str(figures)
    )
    export = tabserve("log", "export", "--model", "churn", "--log", str(log), "--output", str(exported))
    assert report.returncode == 0 and export.returncode == 0, report.stderr + export.stderr
    assert sum(json.loads(figures.read_text())["rows"]) == ROWS
    assert pq.read_table(exported).num_rows == ROWS


def test_monitor_reports_one_version_and_names_the_rows_it_left_out(
    served: Server, churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """After v2 is promoted, `--model churn` is v2 against v2's training: v1's rows are another
    model's scores, left out and counted (they were pooled with v2's reference)."""
    import shutil

    from service import release
    from tests.service.conftest import republish

    store = tmp_path / "models"
    shutil.copytree(served.store, store)
    republish(store, churn_bundle)
    release.decide(store, "churn", "promote", 2, why="retrained")
    log = str(served.store.parent / "log")
    figures = tmp_path / "v2.json"
    now = tabserve("monitor", "--model", "churn", "--log", log, "--models", str(store), "--json", str(figures))
    assert now.returncode == 0, now.stderr
    assert f"left out: {ROWS:,} rows scored by v1 (their report: --model churn@1)" in now.stdout
    assert "churn v2: no rows yet" in now.stdout and sum(json.loads(figures.read_text())["rows"]) == 0
    before = tabserve("monitor", "--model", "churn@1", "--log", log, "--models", str(store), "--json", str(figures))
    assert before.returncode == 0 and "left out" not in before.stdout, before.stderr
    assert sum(json.loads(figures.read_text())["rows"]) == ROWS


def test_semicolon_outcomes_are_stored_by_the_route_and_the_cli(served: Server, tmp_path: Path) -> None:
    answer = httpx.post(
        served.url + "/models/churn/feedback", content=outcomes(20, ";"), headers={"content-type": "text/csv"}
    )
    assert answer.status_code == 200 and answer.json()["stored"] == 20, answer.text
    semicolons = tmp_path / "outcomes.csv"
    semicolons.write_bytes(outcomes(30, ";"))
    log = str(served.store.parent / "log")
    done = tabserve(
        "feedback", "--model", "churn", "--input", str(semicolons), "--log", log, "--models", str(served.store)
    )
    assert done.returncode == 0 and "30 outcome(s) stored" in done.stdout, done.stdout + done.stderr
    # a bad data row is named as counted in the file from 1 (it said "record 1" for the second row)
    lines = outcomes(3, ";").decode().splitlines()
    semicolons.write_text("\n".join([lines[0], lines[1], "0000-NEVER;Yes", lines[2]]) + "\n")
    done = tabserve(
        "feedback", "--model", "churn", "--input", str(semicolons), "--log", log, "--models", str(served.store)
    )
    assert done.returncode != 0 and "row 2, field 'customerID': id 0000-NEVER is not in" in done.stderr, done.stderr


def test_outcomes_after_a_byte_order_mark_are_read(served: Server) -> None:
    """Windows tools start JSON and CSV with a UTF-8 BOM; the id column is still the id column."""
    url = served.url + "/models/churn/feedback"
    bom = b"\xef\xbb\xbf"
    record = b'{"records": [{"customerID": "7590-VHVEG", "Churn": "No"}]}'
    as_json = httpx.post(url, content=bom + record, headers={"content-type": "application/json"})
    as_csv = httpx.post(url, content=bom + outcomes(5, ","), headers={"content-type": "text/csv"})
    assert (as_json.status_code, as_csv.status_code) == (200, 200), as_json.text + as_csv.text
    assert as_csv.json()["stored"] == 5


def test_a_label_in_another_case_labels_as_the_model_names_it(served: Server, tmp_path: Path) -> None:
    lower = httpx.post(
        served.url + "/models/churn/feedback", content=outcomes(10, ",", "lower"), headers={"content-type": "text/csv"}
    )
    upper = httpx.post(
        served.url + "/models/churn/feedback", json={"records": [{"customerID": "7590-VHVEG", "Churn": "NO"}]}
    )
    assert lower.status_code == 200 and upper.status_code == 200, lower.text + upper.text
    exported = tmp_path / "labelled.parquet"
    log = str(served.store.parent / "log")
    done = tabserve("log", "export", "--model", "churn", "--log", log, "--labelled", "--output", str(exported))
    assert done.returncode == 0, done.stderr
    assert set(pq.read_table(exported).column("Churn").to_pylist()) <= {"No", "Yes"}  # stored as the model's labels


def test_nothing_scored_gives_no_drift_verdict(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store) as server:
        monitor = httpx.get(server.url + "/models/churn/monitor").json()
        exposition = httpx.get(server.url + "/metrics").text
        httpx.post(server.url + "/models/churn/predict", json={"records": [{"tenure": 3}]}).raise_for_status()
        scored = httpx.get(server.url + "/metrics").text
    # no series rather than a PSI of 0 that a dashboard would read as stable; one after a row
    assert 'tabserve_score_psi{model="churn"}' not in exposition and 'tabserve_score_psi{model="churn"}' in scored
    assert monitor["window_rows"] == 0
    assert monitor["score"] == {"psi": None, "reading": "no rows yet"}
    assert all(doc["psi"] is None and doc["reading"] == "no rows yet" for doc in monitor["features"].values())
    assert monitor["features"]["tenure"]["missing_rate"] is None


def test_a_span_without_rows_gives_no_verdict_in_json_or_html(served: Server, tmp_path: Path) -> None:
    exported = tmp_path / "served.parquet"
    log = served.store.parent / "log"
    assert tabserve("log", "export", "--model", "churn", "--log", str(log), "--output", str(exported)).returncode == 0
    table = pq.read_table(exported)
    month_ago = pc.subtract(table.column("_at"), pa.scalar(timedelta(days=30), pa.duration("us")))
    old = tmp_path / "old-log" / "churn" / "date=2000-01-01"  # the partition name is not read
    old.mkdir(parents=True)
    pq.write_table(table.set_column(0, "_at", month_ago), old / "old.parquet")
    figures, page = tmp_path / "figures.json", tmp_path / "report.html"
    done = tabserve("monitor", "--model", "churn", "--log", str(old.parent.parent), "--models", str(served.store),
                    "--since", "1d", "--json", str(figures), "--html", str(page))  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(figures.read_text())
    assert doc["status"] == "no rows yet" and not any(doc["readings"].values()) and doc["score_shares"] == []
    assert "no rows yet" in page.read_text() and "<svg" not in page.read_text()  # no heat map coloured "stable"
    assert "churn v1: no rows yet in this span" in done.stdout and "PSI of" not in done.stdout  # nor an empty table


def test_an_unknown_id_against_an_open_log_is_refused_by_record(served: Server) -> None:
    """The log is only open segments yet: an id not in them is that record's refusal, not "no log"."""
    answer = httpx.post(
        served.url + "/models/churn/feedback?partial=true",
        json={"records": [{"customerID": "nobody", "Churn": "Yes"}, {"customerID": "7590-VHVEG", "Churn": "No"}]},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 1 and "not in the prediction log of churn" in answer.text
