"""`tabserve monitor` and `tabserve log export` on real logs, as a monitoring audit found them: what
they write is whole or absent, and a bad file or a bad flag is one line, not a traceback."""

from __future__ import annotations

import json
import os
import resource
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
    strict JSON reader takes; the route said null (FastAPI's encoder writes a non-finite float so)."""
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
    """The audit: `echo x > LOG/churn/date=…/x.parquet` ended monitor and export in a DuckDB traceback. In the
    prediction log it is named for a person to move; among the outcomes, set aside (the review: monitor and
    export failed until someone moved it) as `.x.parquet.unreadable`, named, and the rest read."""
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
    if folder.startswith("feedback"):
        aside = bad.parent / ".x.parquet.unreadable"
        assert monitor.returncode == 0 and export.returncode == 0 and out.exists(), monitor.stderr + export.stderr
        assert f"feedback file {bad} is not readable Parquet" in monitor.stderr and str(aside) in monitor.stderr
        assert not bad.exists() and aside.read_text() == "x\n" and str(bad) not in export.stderr
        return
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


def _export(log: Path, store: Path, out: Path, fsize: int = 0) -> subprocess.CompletedProcess[str]:
    """`tabserve log export` (with `fsize`: no file it writes may grow past that many bytes, a full disk's stand-in)."""
    env = {**os.environ, "COLUMNS": "200"}
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))) if fsize else None
    command = ["log", "export", "--model", "churn", "--log", str(log), "--models", str(store), "--output", str(out)]
    return subprocess.run(
        [sys.executable, "-m", "tabserve.cli", *command],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=limit,
        check=False,
    )


def test_export_onto_a_full_disk_or_through_a_link_to_a_missing_folder(
    churn_bundle: bundle.BundleRef, store: Path, tmp_path: Path
) -> None:
    """The review: a full disk (DuckDB's IOException is no OSError) was a traceback after every footer
    was scanned; through a link to a missing folder, the link's own folder was made, not the one written."""
    log = logged(tmp_path / "log", churn_bundle.preprocess, copies=50)
    out = tmp_path / "out" / "served.csv"
    full = _export(log, store, out, fsize=1_000_000)
    assert full.returncode == 2 and full.stderr.startswith(f"error: --output {out}: cannot write it ("), full.stderr
    assert len(full.stderr.strip().splitlines()) == 1 and ".tmp-" not in full.stderr
    assert list(out.parent.iterdir()) == []  # neither the temporary nor its lock
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "missing" / "served.csv")
    done = _export(log, store, link)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and sum(1 for _ in link.open()) == 2_000 * 50 + 1


@pytest.mark.parametrize("flag", ["--json", "--html"])
def test_monitor_output_onto_a_full_disk_names_its_flag_and_file(
    churn_bundle: bundle.BundleRef, store: Path, tmp_path: Path, flag: str
) -> None:
    """The review: a write that failed after all the work said only `error: [Errno 27] File too large`."""
    log = logged(tmp_path / "log", churn_bundle.preprocess)
    out = tmp_path / "out" / "report"
    command = ["monitor", "--model", "churn", "--log", str(log), "--models", str(store), flag, str(out)]
    env = {**os.environ, "COLUMNS": "200"}
    full = subprocess.run(
        [sys.executable, "-m", "tabserve.cli", *command],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (500, 500)),  # a full disk's stand-in
    )
    said = f"error: {flag} {out}: cannot write it (File too large)\n"
    assert full.returncode == 2 and full.stderr == said, full.stderr
    assert list(out.parent.iterdir()) == []  # neither the temporary nor its lock


def test_monitor_output_in_a_folder_it_cannot_make_fails_first_naming_it(
    churn_bundle: bundle.BundleRef, store: Path, tmp_path: Path
) -> None:
    """The review: `--json` into a missing folder failed after all the work, naming `.x.json.tmp-…`."""
    log = logged(tmp_path / "log", churn_bundle.preprocess)
    (tmp_path / "a-file").write_text("")
    monitor = ["monitor", "--model", "churn", "--log", str(log), "--models", str(store)]
    refused = tabserve(*monitor, "--json", str(tmp_path / "a-file" / "x.json"))
    assert refused.returncode == 2 and f"--json {tmp_path / 'a-file' / 'x.json'}: cannot make" in refused.stderr
    assert ".tmp-" not in refused.stderr, refused.stderr
    figures = tmp_path / "new" / "figures.json"  # a missing folder is made, as export makes its own
    assert tabserve(*monitor, "--json", str(figures)).returncode == 0 and json.loads(figures.read_text())["rows"]


@pytest.mark.parametrize(
    ("raised", "said"),
    [
        (PermissionError(13, "Permission denied"), "not readable by this user"),
        (OSError(5, "Input/output error"), "Input/output error"),
        (pa.ArrowInvalid("Parquet magic bytes not found"), "as Parquet"),
    ],
)
def test_a_log_file_that_cannot_be_read_gets_the_advice_that_fits(
    churn_bundle: bundle.BundleRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: Exception, said: str
) -> None:
    """The review: a permission or I/O error was read as "not Parquet", and the advice was to move the file out."""
    import duckdb

    from monitoring import report

    log = logged(tmp_path / "log", churn_bundle.preprocess)
    (scored,) = log.glob("churn/date=*/*.parquet")

    def read_metadata(path: str) -> None:
        raise raised

    monkeypatch.setattr(report.pq, "read_metadata", read_metadata)
    with pytest.raises(ValueError, match="cannot read") as caught, report.readable(log, "churn"):
        raise duckdb.IOException("IO Error: a file DuckDB did not name")
    assert str(caught.value).startswith(f"cannot read {scored}") and said in str(caught.value)
    assert ("move it out" in str(caught.value)) == (said == "as Parquet")


def test_since_of_thousands_of_digits_reads_the_whole_log_and_a_span_of_0_is_refused() -> None:
    """The review: over 4,300 digits gave Python's int-limit message; `0d` read an empty span."""
    from monitoring.report import interval

    assert interval("9" * 5_000 + "d") is None and interval("0" * 5_000 + "7d") == "7 days"
    for zero in ("0d", "000h"):
        with pytest.raises(ValueError, match=f"--since {zero}: a span of 0"):
            interval(zero)
