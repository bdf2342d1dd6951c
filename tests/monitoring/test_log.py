"""The prediction log's writer on its own: rotation into whole files, recovery after a crash, a full
buffer counted as dropped, sampling, and levels the model never saw kept as sent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from monitoring.log import PredictionLog
from service import bundle
from service.features import Preprocess


@pytest.fixture(scope="module")
def pre(churn_bundle: bundle.BundleRef) -> Preprocess:
    return churn_bundle.preprocess


def rows(pre: Preprocess, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    num = rng.normal(size=(n, len(pre.numeric))).astype(np.float32)
    cat = np.stack([rng.integers(0, f.cardinality, n) for f in pre.categorical], axis=1)
    p = rng.random(n).astype(np.float32)
    return num, cat, np.stack([1 - p, p], axis=1)


def parquet(root: Path) -> list[Path]:
    return sorted(root.glob("churn/date=*/*.parquet"))


def test_files_rotate_by_rows_and_hold_every_row_once(pre: Preprocess, tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, file_rows=250, flush_s=0.05)
    for i in range(20):
        num, cat, out = rows(pre, 50, seed=i)
        log.add("churn", 1, pre, num, cat, out, [("customerID", [f"{i}-{j}" for j in range(50)])])
        log.flush()
    log.close()
    files = parquet(tmp_path)
    assert len(files) >= 3  # 1,000 rows at 250 per file (a flush may overshoot a little)
    table = pq.read_table(files)
    assert table.num_rows == 1000 and len(set(table.column("customerID").to_pylist())) == 1000
    assert log.counts.written == {"churn": 1000} and not log.counts.dropped
    assert not list(tmp_path.rglob(".*"))  # no segment or temporary file left


def test_a_crashed_writer_segment_is_recovered_by_the_next_log(pre: Preprocess, tmp_path: Path) -> None:
    # a process that logs, flushes (its segment is on disk) and is killed before any Parquet file
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from monitoring.log import PredictionLog
from service.features import Preprocess
from tests.monitoring.test_log import rows
pre = Preprocess.load(__import__("pathlib").Path({str(pre_path(pre, tmp_path))!r}))
log = PredictionLog({str(tmp_path / "log")!r})
for i in range(3):
    log.add("churn", 1, pre, *rows(pre, 100, seed=i))
log.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == -9, done.stderr
    assert not parquet(tmp_path / "log") and list((tmp_path / "log").rglob(".*.arrows"))
    PredictionLog(tmp_path / "log").close()
    assert pq.read_table(parquet(tmp_path / "log")).num_rows == 300


def pre_path(pre: Preprocess, tmp_path: Path) -> Path:
    path = tmp_path / "preprocess.json"
    pre.save(path)
    return path


def test_a_full_buffer_drops_and_counts_never_blocks(pre: Preprocess, tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, buffer_rows=100, flush_s=60)  # the writer sleeps until a flush is due
    for n in (40, 70, 150):  # 40 fit (under half: no early flush); 40 + 70 do not; 150 never would
        log.add("churn", 1, pre, *rows(pre, n))
    log.close()
    assert log.counts.dropped == {"churn": 220} and log.counts.written == {"churn": 40}
    assert pq.read_table(parquet(tmp_path)).num_rows == 40


def test_sampling_logs_about_that_share_of_requests(pre: Preprocess, tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, sample=0.25)
    num, cat, out = rows(pre, 1)
    for _ in range(2000):
        log.add("churn", 1, pre, num, cat, out)
    log.close()
    assert 400 <= pq.read_table(parquet(tmp_path)).num_rows <= 600


def test_a_level_the_model_never_saw_is_kept_as_sent(pre: Preprocess, tmp_path: Path) -> None:
    log = PredictionLog(tmp_path)
    num, cat, out = rows(pre, 3)
    field = pre.categorical[0]
    cat[:, 0] = [0, 0, 1]  # the first two scored as missing: one was sent as a new level, one was missing
    log.add("churn", 1, pre, num, cat, out, levels={field.name: [" Brand new ", None, field.vocab_[0]]})
    log.close()
    assert pq.read_table(parquet(tmp_path)).column(field.name).to_pylist() == ["Brand new", None, field.vocab_[0]]


def test_report_periods_are_utc_days_in_any_time_zone(
    pre: Preprocess, churn_bundle: bundle.BundleRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows a second either side of midnight UTC are two days, as their `date=` folders, in Tokyo too."""
    import json
    import os
    import time

    from tests.service.conftest import copy_store

    log = PredictionLog(tmp_path / "log", flush_s=0.05)
    for i, at in enumerate((1796342399.0, 1796342400.0)):  # 2026-12-03 23:59:59 and 12-04 00:00:00 UTC
        monkeypatch.setattr(time, "time", lambda at=at: at)
        num, cat, out = rows(pre, 300 - 100 * i, seed=i)
        log.add("churn", 1, pre, num, cat, out, [("customerID", [f"{i}-{j}" for j in range(300 - 100 * i)])])
        log.flush()
    monkeypatch.undo()
    log.close()
    assert [p.parent.name for p in parquet(tmp_path / "log")] == ["date=2026-12-03", "date=2026-12-04"]
    store, figures = copy_store(churn_bundle, tmp_path / "models"), tmp_path / "figures.json"
    args = [
        "monitor",
        "--model",
        "churn",
        "--log",
        str(tmp_path / "log"),
        "--models",
        str(store),
        "--json",
        str(figures),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "tabserve.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "Asia/Tokyo"},
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(figures.read_text())
    assert doc["rows"] == [300, 200], doc["periods"] if "periods" in doc else list(doc)


def test_rows_of_two_days_in_one_buffer_go_to_their_days_in_any_order() -> None:
    """A scored file's rows carry its start, /predict's rows the time they came: a buffer's times are
    not in order, and a run on another day between two of the same day was filed under theirs."""
    from monitoring.log import days

    midnight = 1_764_806_400.0  # 2025-12-04 00:00 UTC
    ats = [midnight - 10, midnight + 5, midnight - 3]  # an upload started before midnight, a request after
    assert days(ats) == [("2025-12-03", 0, 1), ("2025-12-04", 1, 2), ("2025-12-03", 2, 3)]
