"""`tabserve monitor` and `tabserve log export` on real logs, as a monitoring audit found them: what
they write is whole or absent, and a bad file or a bad flag is one line, not a traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monitoring.log import PredictionLog
from service import atomic, bundle
from service.features import Preprocess
from tests.monitoring.test_log import rows
from tests.service.conftest import copy_store


def tabserve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "tabserve.cli", *args], capture_output=True, text=True, env=env, check=False
    )


def logged(root: Path, pre: Preprocess, n: int = 2_000, copies: int = 1) -> Path:
    """A churn log of `n` scored rows (with `copies`, a file of them repeated that many times)."""
    log = PredictionLog(root, flush_s=0.05)
    num, cat, out = rows(pre, n)
    log.add("churn", 1, pre, num, cat, out, [("customerID", [f"c{j}" for j in range(n)])])
    log.close()
    if copies > 1:
        (written,) = root.glob("churn/date=*/*.parquet")
        pq.write_table(pa.concat_tables([pq.read_table(written)] * copies), written)
    return root


@pytest.fixture
def store(churn_bundle: bundle.BundleRef, tmp_path: Path) -> Path:
    return copy_store(churn_bundle, tmp_path / "models")


def test_kill_9_while_exporting_leaves_nothing_under_the_final_name(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """The audit: COPY wrote straight to --output; killed, it left a valid-looking CSV cut short."""
    log = logged(tmp_path / "log", churn_bundle.preprocess, copies=500)
    out = tmp_path / "served.csv"
    command = [sys.executable, "-m", "tabserve.cli", "log", "export", "--model", "churn", "--log", str(log)]
    proc = subprocess.Popen([*command, "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written = f".served.csv.tmp-{socket.gethostname()}@{proc.pid}-*"
    killed = False
    while proc.poll() is None and not killed:
        tmp = next((p for p in tmp_path.glob(written) if not p.name.endswith(atomic.LOCK)), None)
        if tmp is not None and tmp.stat().st_size > 1_000_000:  # half-way through the rows
            proc.send_signal(signal.SIGKILL)
            killed = proc.wait(timeout=30) == -signal.SIGKILL
        time.sleep(0.002)
    assert killed, "the export ended before it could be killed (or wrote no temporary): make the log bigger"
    assert not out.exists() and len(list(tmp_path.glob(written))) == 2  # the temporary and its lock
    with atomic.temporary(tmp_path, atomic.prefix_of(out)) as alive:  # a live writer's is left alone
        alive.write_text("in use")
        again = tabserve(*command[3:], "--output", str(out))
        assert again.returncode == 0, again.stderr
        assert not list(tmp_path.glob(written)) and alive.exists()
    assert sum(1 for _ in out.open()) == 2_000 * 500 + 1


def test_an_infinite_figure_is_null_in_the_route_and_in_monitor_json(tmp_path: Path) -> None:
    """The audit: an outcome of 1e308 (finite, accepted) made `"rmse": Infinity` in --json, which no
    strict JSON reader takes; the route said null."""
    import httpx

    from tests.monitoring.test_feedback import _scored
    from tests.service.conftest import running_server

    ref, log = _scored(tmp_path, "credit_amount", ",")
    assert ref.preprocess.task == "regression"
    store, figures = tmp_path / "models", tmp_path / "figures.json"
    with running_server(store, "--log", str(log)) as server:
        sent = {"records": [{"loan_id": "L0001", "credit_amount": 1e308}, {"loan_id": "L0002", "credit_amount": 900}]}
        answer = httpx.post(server.url + "/models/m/feedback", json=sent)
        assert answer.status_code == 200 and answer.json()["stored"] == 2, answer.text
        live = httpx.get(server.url + "/models/m/monitor").json()["accuracy"]["versions"]["1"]
    done = tabserve("monitor", "--model", "m", "--log", str(log), "--models", str(store), "--json", str(figures))
    assert done.returncode == 0, done.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    doc = json.loads(figures.read_text(), parse_constant=refuse)
    assert live["rmse"] is None and doc["live"][0]["rmse"] is None
    assert doc["live"][0]["rows"] == live["rows"] == 2


@pytest.mark.parametrize("folder", ["date=2026-12-04", "feedback/date=2026-12-04"])
def test_a_file_that_is_not_parquet_is_named_in_one_line(
    churn_bundle: bundle.BundleRef, store: Path, tmp_path: Path, folder: str
) -> None:
    """The audit: `echo x > LOG/churn/date=…/x.parquet` ended monitor and export in a DuckDB traceback."""
    log = logged(tmp_path / "log", churn_bundle.preprocess)
    outcomes = log / "churn" / "feedback" / "date=2026-12-03"
    outcomes.mkdir(parents=True)
    at = pa.array([time.time() * 1e6], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    pq.write_table(
        pa.table({"customerID": ["c1"], "_outcome": ["Yes"], "_target": ["Churn"], "_at": at}), outcomes / "f.parquet"
    )
    bad = log / "churn" / folder / "x.parquet"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("x\n")
    monitor = tabserve("monitor", "--model", "churn", "--log", str(log), "--models", str(store))
    out = tmp_path / "labelled.csv"
    export = tabserve(
        "log", "export", "--model", "churn", "--log", str(log), "--models", str(store), "--output", str(out)
    )
    for done in (monitor, export):
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: cannot read {bad} as Parquet") and "move it out of" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()
    bad.unlink()
    assert tabserve("monitor", "--model", "churn", "--log", str(log), "--models", str(store)).returncode == 0


def test_since_longer_than_any_log_reads_it_all_and_m_is_minutes(
    churn_bundle: bundle.BundleRef, store: Path, tmp_path: Path
) -> None:
    """The audit: `--since 99999999999999999999d` and `1000000000w` were DuckDB overflow tracebacks;
    `1m` (a minute, read as a month) was in no help text."""
    log = logged(tmp_path / "log", churn_bundle.preprocess)
    (scored,) = log.glob("churn/date=*/*.parquet")
    table = pq.read_table(scored)
    earlier = pa.array([(time.time() - 7200) * 1e6] * table.num_rows, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    pq.write_table(table.set_column(table.schema.get_field_index("_at"), "_at", earlier), scored.with_name("e.parquet"))
    figures = tmp_path / "figures.json"
    counted = {}
    for since in ("99999999999999999999d", "1000000000w", "90m", "3h"):
        done = tabserve("monitor", "--model", "churn", "--log", str(log), "--models", str(store),
                        "--since", since, "--json", str(figures))  # fmt: skip
        assert done.returncode == 0, done.stderr
        counted[since] = sum(json.loads(figures.read_text())["rows"])
    assert counted == {"99999999999999999999d": 4_000, "1000000000w": 4_000, "90m": 2_000, "3h": 4_000}
    assert "m (minutes), h, d or w" in " ".join(tabserve("monitor", "--help").stdout.split())
    refused = tabserve("monitor", "--model", "churn", "--log", str(log), "--models", str(store), "--since", "1mo")
    assert refused.returncode == 2 and "m (minutes), h, d or w" in refused.stderr


def test_monitor_writes_json_and_html_whole_and_never_into_the_log(
    churn_bundle: bundle.BundleRef, store: Path, tmp_path: Path
) -> None:
    """The audit: --json and --html were written in place (a reader, or a link to the last report, saw
    them half-written) and could be pointed at a file of the log, which export refuses."""
    log = logged(tmp_path / "log", churn_bundle.preprocess)
    (scored,) = log.glob("churn/date=*/*.parquet")
    before = scored.read_bytes()
    monitor = ["monitor", "--model", "churn", "--log", str(log), "--models", str(store)]
    for flag, path in (("--json", scored), ("--html", log / "churn" / "report.html")):
        done = tabserve(*monitor, flag, str(path))
        assert done.returncode == 2 and f"{flag} {path} is inside the log's churn/" in done.stderr, done.stderr
    assert scored.read_bytes() == before and not (log / "churn" / "report.html").exists()
    figures, page, last = tmp_path / "figures.json", tmp_path / "report.html", tmp_path / "last-week.json"
    last.write_text("last week's figures")
    os.link(last, figures)  # a file kept from the last run: a new report replaces the name, not its bytes
    stale = tmp_path / f".report.html.tmp-{socket.gethostname()}@1-0a1b2c3d"  # what a killed run left
    stale.write_text("<html>cut sh")
    stale.with_name(stale.name + atomic.LOCK).touch()  # its lock, which no process holds now
    done = tabserve(*monitor, "--json", str(figures), "--html", str(page))
    assert done.returncode == 0, done.stderr
    assert last.read_text() == "last week's figures" and json.loads(figures.read_text())["rows"] == [2_000]
    assert page.read_text().startswith("<!doctype html>") and "<svg" in page.read_text() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "figures.json",
        "last-week.json",
        "log",
        "models",
        "report.html",
    ]
