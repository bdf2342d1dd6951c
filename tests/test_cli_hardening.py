"""The `tabserve` command under abuse, as a user runs it: over-long records and headers, `kill -9`
half-way through, a full disk. Clean exits with one-line errors; nothing half-written left behind."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service import bundle
from tests.conftest import GERMAN, TELCO
from tests.service.conftest import copy_store
from tests.service.test_scoring_hardening import tiny_tmpfs

RECORD_LIMIT = 1 << 20  # the documented limit for one CSV record


def _telco_file(path: Path, rows: int, bad_every: int = 0) -> Path:
    """A CSV of `rows` telco rows (the file cycled); every `bad_every`-th row has too few fields."""
    lines = TELCO.read_bytes().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    with path.open("wb") as fh:
        fh.write(header)
        for i in range(rows):
            fh.write(b"too,few\n" if bad_every and i % bad_every == bad_every - 1 else body[i % len(body)])
    return path


def _command(store: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tabserve.cli", *args, "--models-dir", str(store)]


def _run(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(_command(store, *args), capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def store(churn_bundle: bundle.BundleRef, tmp_path: Path) -> Path:
    return copy_store(churn_bundle, tmp_path / "models")


def test_score_writes_a_record_over_the_limit_in_place(store: Path, tmp_path: Path) -> None:
    source = _telco_file(tmp_path / "in.csv", 40_000)
    lines = source.read_bytes().splitlines(keepends=True)
    fields = lines[30_000].split(b",")
    fields[1] = b"x" * (3 * RECORD_LIMIT)
    lines[30_000] = b",".join(fields)
    source.write_bytes(b"".join(lines))
    out = tmp_path / "out.csv"
    run = _run(store, "score", "--model", "churn", "--input", str(source), "--output", str(out))
    assert run.returncode == 0, run.stderr
    assert "40,000 rows in, 39,999 scored, 1 with errors" in run.stdout
    scored = out.read_text().splitlines()
    assert len(scored) == 40_001
    length = len(lines[30_000].rstrip(b"\r\n"))  # NOTE: the line break is not part of the record
    assert scored[30_000].endswith(f'"row 30000: the record is {length:,} bytes, over the 1 MiB limit for one record"')


def test_a_quote_never_closed_fails_the_run_naming_the_rows_it_swallowed(store: Path, tmp_path: Path) -> None:
    """A business-files audit: row 100's unclosed quote read the 300 rows after it into one field;
    the run said "100 rows in, 99 scored, 1 with errors" and exited 0, those customers in no output. In
    the last field the row even kept its field count (a diff review), and a closed quote or an inch
    mark elsewhere is no such thing."""
    source = _telco_file(tmp_path / "in.csv", 400)
    lines = source.read_bytes().splitlines(keepends=True)
    out = tmp_path / "out.csv"
    for field in (1, -1):  # a middle field: too few fields; the last: the count comes out right
        fields = lines[100].split(b",")
        fields[field] = b'"' + fields[field]
        source.write_bytes(b"".join([*lines[:100], b",".join(fields), *lines[101:]]))
        run = _run(store, "score", "--model", "churn", "--input", str(source), "--output", str(out))
        assert run.returncode == 2, run.stdout + run.stderr
        assert 'a quote (") opened in row 100 is never closed' in run.stderr and "Fix the quote" in run.stderr
    fields = lines[100].split(b",")
    fields[1] = b'"24"" monitor,\nsecond line"'  # a quoted field over two lines, with an inch mark
    source.write_bytes(b"".join([*lines[:100], b",".join(fields), *lines[101:]]))
    run = _run(store, "score", "--model", "churn", "--input", str(source), "--output", str(out))
    assert run.returncode == 0 and "400 rows in" in run.stdout, run.stdout + run.stderr


def test_score_refuses_a_header_over_the_limit_in_one_line(store: Path, tmp_path: Path) -> None:
    source = tmp_path / "wide.csv"
    source.write_bytes(b"h" * (2 * RECORD_LIMIT) + b"," + _telco_file(tmp_path / "rows.csv", 10).read_bytes())
    run = _run(store, "score", "--model", "churn", "--input", str(source), "--output", str(tmp_path / "out.csv"))
    assert run.returncode == 2, run.stderr
    assert "the header line is over the 1 MiB limit for one record" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "rows.csv", "wide.csv"]


def _kill_when(proc: subprocess.Popen[bytes], seen: Callable[[], bool]) -> bool:
    """SIGKILL `proc` as soon as `seen()` is true; False if it ended first."""
    while proc.poll() is None:
        if seen():
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        time.sleep(0.002)
    return False


def test_kill_9_while_scoring_leaves_nothing_under_the_final_names(store: Path, tmp_path: Path) -> None:
    source = _telco_file(tmp_path / "big.csv", 600_000, bad_every=1000)
    out, errors = tmp_path / "out.csv", tmp_path / "errors.csv"
    args = ["score", "--model", "churn", "--input", str(source), "--output", str(out), "--errors", str(errors)]
    proc = subprocess.Popen(_command(store, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    at = f"{socket.gethostname()}@{proc.pid}-"

    def temporaries(name: str) -> list[Path]:  # the run's temporary of `name` and its lock
        return sorted(tmp_path.glob(f".{name}.tmp-{at}*"))

    def scoring() -> bool:  # NOTE: both files open and the output half-way written
        tmp_out = [p for p in temporaries("out.csv") if not p.name.endswith(".lock")]
        return bool(tmp_out) and tmp_out[0].stat().st_size > 1_000_000 and len(temporaries("errors.csv")) == 2

    assert _kill_when(proc, scoring), "the run ended before it could be killed: make the input bigger"
    assert not out.exists() and not errors.exists()  # NOTE: nothing half-written under a final name
    left = [*temporaries("out.csv"), *temporaries("errors.csv")]
    assert len(left) == 4, left  # each temporary beside the lock its writer held
    alive = tmp_path / f".out.csv.tmp-{os.getpid()}"  # NOTE: an older version's name: a live pid, left alone
    alive.write_text("in use")
    # a store or output on a shared filesystem, written by an older version (no lock): another host's
    # pid means nothing here, so its temporary is left alone until it has gone a day unwritten
    elsewhere, abandoned = tmp_path / ".out.csv.tmp-other-host@1", tmp_path / ".out.csv.tmp-other-host@2"
    elsewhere.write_text("in use")
    abandoned.write_text("killed")
    os.utime(abandoned, (time.time() - 90_000, time.time() - 90_000))
    small = _telco_file(tmp_path / "small.csv", 3000, bad_every=1000)
    again = _run(
        store, "score", "--model", "churn", "--input", str(small), "--output", str(out), "--errors", str(errors)
    )
    assert again.returncode == 0, again.stderr
    assert not any(p.exists() for p in left) and alive.exists()
    assert elsewhere.exists() and not abandoned.exists()
    assert len(out.read_text().splitlines()) == 3001
    with errors.open(newline="") as fh:
        assert list(csv.reader(fh))[1:] == [[str(n), f"row {n}: expected 21 fields, got 2"] for n in (1000, 2000, 3000)]


def test_a_failed_score_leaves_no_errors_file(store: Path, tmp_path: Path) -> None:
    thin = tmp_path / "thin.csv"
    thin.write_text("a,b\n1,2\n")
    errors = tmp_path / "errors.csv"
    run = _run(
        store,
        "score",
        "--model",
        "churn",
        "--input",
        str(thin),
        "--output",
        str(tmp_path / "o.csv"),
        "--errors",
        str(errors),
    )
    assert run.returncode == 2 and "missing" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "thin.csv"]


def test_kill_9_while_publishing_leaves_a_staging_dir_the_next_train_removes(tmp_path: Path) -> None:
    store, model_dir = tmp_path / "models", tmp_path / "models" / "credit"
    train = ["train", "--data", str(GERMAN), "--target", "creditability", "--name", "credit"]
    quick = ["--epochs", "2", "--ensemble", "1", "--patience", "1", "--screen", "off"]
    for _ in range(5):  # NOTE: the staging directory lives for as long as the bundle takes to write
        proc = subprocess.Popen(
            _command(store, *train, *quick, "--plots"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if _kill_when(proc, lambda: model_dir.is_dir() and any(model_dir.glob(".staging-*"))):
            break
    else:
        pytest.fail("every training published before it could be killed")
    left = sorted(p.name for p in model_dir.glob(".staging-*"))
    assert len(left) == 2 and left[0].startswith(f".staging-{socket.gethostname()}@{proc.pid}-"), left
    assert left[1] == left[0] + ".lock", left  # the lock the killed run held: free now
    # NOTE: what older versions left, without a lock: names before the pid, or another host's, go
    # after a day untouched; this host's by its pid
    old, fresh = model_dir / ".staging-abcd1234", model_dir / ".staging-efgh5678"
    alive = model_dir / f".staging-{os.getpid()}-inuse"
    elsewhere, abandoned = model_dir / ".staging-other-host@1-inuse", model_dir / ".staging-other-host@2-gone"
    for folder in (old, fresh, alive, elsewhere, abandoned):
        folder.mkdir()
    for folder in (old, abandoned):
        os.utime(folder, (time.time() - 90_000, time.time() - 90_000))
    run = _run(store, *train, *quick, "--no-plots")
    assert run.returncode == 0 and "published credit version" in run.stdout, run.stderr
    assert sorted(p.name for p in model_dir.glob(".staging-*")) == sorted([fresh.name, alive.name, elsewhere.name])


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with tiny_tmpfs(tmp_path / "full") as mount:
        yield mount


def test_a_full_disk_is_a_one_line_error_every_time(store: Path, tmp_path: Path, full_disk: Path) -> None:
    """The run must end with the error and status 2, never an abort (SIGABRT, 134) at exit."""
    source = _telco_file(tmp_path / "in.csv", 200_000)
    out = full_disk / "out.csv"
    for attempt in range(10):
        run = _run(store, "score", "--model", "churn", "--input", str(source), "--output", str(out))
        assert run.returncode == 2, f"run {attempt}: exit {run.returncode}\n{run.stderr[-2000:]}"
        assert "No space left on device" in run.stderr and len(run.stderr.strip().splitlines()) == 1
        assert list(full_disk.iterdir()) == []


def test_what_score_writes_is_checked_before_any_work(store: Path, tmp_path: Path) -> None:
    """Found by a CLI audit: `--output` the input replaced the rows being read (exit 0); a device
    (`/dev/full`) was swapped for a plain file by the final rename; `--errors` the output left a mix;
    a folder or a missing one failed after the work, naming a temporary file; `--device gpu` ran as
    auto; a log that is a file lost every record with exit 0. Each is one line and exit 2, first."""
    source = _telco_file(tmp_path / "in.csv", 20)
    before = source.read_bytes()
    out = tmp_path / "out.csv"
    cases = [
        (["--output", str(source)], "--output", "is the input file"),
        (["--output", str(out), "--errors", str(source)], "--errors", "is the input file"),
        (["--output", str(out), "--errors", str(out)], "--errors", "is the --output file"),
        (["--output", "/dev/full"], "--output /dev/full", "not a regular file"),
        (["--output", str(tmp_path)], "--output", "is a folder"),
        (["--output", str(tmp_path / "nowhere" / "out.csv")], "--output", "does not exist"),
        (["--output", str(out), "--device", "gpu"], "--device", "auto, cuda or cpu"),
        (["--output", str(out), "--log", str(source)], "prediction log", "a file, not a folder"),
        (["--output", str(out), "--engine", "ray", "--log", str(tmp_path)], "--log", "not written by the Ray engine"),
        (
            ["--output", str(out), "--log", str(tmp_path / "log"), "--log-exclude", "customerId"],
            "--log-exclude",
            "did you mean 'customerID'?",
        ),
    ]
    for extra, named, said in cases:
        run = _run(store, "score", "--model", "churn", "--input", str(source), *extra)
        assert run.returncode == 2 and named in run.stderr and said in run.stderr, (extra, run.stderr)
        assert "Traceback" not in run.stderr and not out.exists()
    assert source.read_bytes() == before and Path("/dev/full").is_char_device()
    link = tmp_path / "link.csv"
    link.symlink_to(out)  # a link is written through, to the file it names
    assert _run(store, "score", "--model", "churn", "--input", str(source), "--output", str(link)).returncode == 0
    assert link.is_symlink() and out.read_text().count("\n") == 21


def test_the_ray_engine_refuses_an_output_whose_replacing_would_delete_files(store: Path, tmp_path: Path) -> None:
    """An audit: `--output precious` deleted the folder's notes.txt, and `--input 'gm/*.csv' --output gm`
    deleted the inputs (the check for the input ran only on a path that exists, never a glob's)."""
    pytest.importorskip("ray.data", reason="the Ray extra is not installed")
    inputs = tmp_path / "gm"
    inputs.mkdir()
    for name in ("a.csv", "b.csv"):
        _telco_file(inputs / name, 5)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    cases = [(str(inputs / "a.csv"), precious, "did not write"), (str(inputs / "*.csv"), inputs, "holds the input")]
    for source, output, said in cases:
        run = _run(store, "score", "--model", "churn", "--engine", "ray", "--input", source, "--output", str(output))
        assert run.returncode == 2 and said in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    # nor an --errors file that is an input (a glob's) or inside the folder the run replaces
    out = tmp_path / "out"
    out.mkdir()  # empty: a folder the run may replace
    for errors, said in ((inputs / "b.csv", "is an input file"), (out / "errors.csv", "inside the --output folder")):
        args = ("--input", str(inputs / "*.csv"), "--output", str(out), "--errors", str(errors))
        run = _run(store, "score", "--model", "churn", "--engine", "ray", *args)
        assert run.returncode == 2 and said in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert (precious / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in inputs.iterdir()) == ["a.csv", "b.csv"]
    assert (inputs / "b.csv").read_text() == (inputs / "a.csv").read_text()


def test_a_ray_address_where_nothing_answers_is_one_line_in_seconds(store: Path, tmp_path: Path) -> None:
    """An audit: ray.init retried 127.0.0.1:1 for minutes (killed at 120 s), printing only Ray's warnings."""
    pytest.importorskip("ray.data", reason="the Ray extra is not installed")
    with socket.socket() as probe:  # a port nothing listens on: bound, then let go
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ("--input", str(_telco_file(tmp_path / "a.csv", 5)), "--output", str(tmp_path / "out"))
    started = time.monotonic()
    run = _run(store, "score", "--model", "churn", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", *args)
    assert run.returncode == 2 and f"no Ray cluster at '127.0.0.1:{port}'" in run.stderr, run.stderr
    assert "nothing answers" in run.stderr and time.monotonic() - started < 60


def test_the_local_engine_says_a_folder_or_a_glob_needs_ray(store: Path, tmp_path: Path) -> None:
    _telco_file(tmp_path / "a.csv", 5)
    for source in (tmp_path, tmp_path / "*.csv"):  # was `input file not found: …`
        run = _run(store, "score", "--model", "churn", "--input", str(source), "--output", str(tmp_path / "o.csv"))
        assert run.returncode == 2, run.stderr
        assert "the local engine scores one file; a folder or a glob needs --engine ray" in run.stderr


def test_release_commands_refuse_a_version_they_would_ignore_and_train_a_name_before_training(
    store: Path, tmp_path: Path
) -> None:
    rollback = _run(store, "rollback", "churn@7")  # answered "champion 1", exit 0
    assert rollback.returncode == 2 and "takes a model name, not a version" in rollback.stderr
    monitor = _run(store, "monitor", "--model", "nosuch", "--log", str(tmp_path / "log"))  # a traceback
    assert monitor.returncode == 2 and "no model named 'nosuch'" in monitor.stderr
    named = _run(store, "train", "--data", str(TELCO), "--target", "Churn", "--name", "a/b")
    assert named.returncode == 2 and "model name 'a/b'" in named.stderr  # before training, not after it
    assert "Traceback" not in named.stderr and "epoch" not in named.stdout.lower() and named.stdout == ""


def test_serve_refuses_a_model_or_log_field_its_store_does_not_have(store: Path, tmp_path: Path) -> None:
    """Found by a CLI audit: `--default-model` misspelt started and answered 404 to every /predict;
    `--log-exclude` misspelt logged the field it meant to keep out. Both are refused before serving;
    an empty store (filled later) takes any name."""
    log = ["--log", str(tmp_path / "log"), "--port", "1"]  # port 1: a start that got past the check fails
    cases = [
        (["--default-model", "Churn"], "--default-model 'Churn' is no model in", "did you mean 'churn'?"),
        ([*log, "--log-exclude", "customerId"], "--log-exclude 'customerId' is no field", "did you mean 'customerID'?"),
    ]
    for extra, named, said in cases:
        run = _run(store, "serve", *extra)
        assert run.returncode == 2 and named in run.stderr and said in run.stderr, (extra, run.stderr)
    empty = tmp_path / "empty"
    empty.mkdir()
    run = _run(
        empty,
        "serve",
        "--default-model",
        "Churn",
        *log,
        "--log-exclude",
        "customerId",
        "--host",
        "no.such.host.invalid",
    )
    assert "is no model" not in run.stderr and "is no field" not in run.stderr and run.returncode != 0
    # a bad value is named where it was given: the flag, or the variable (TABSERVE_CPUS=0 was "--cpus")
    env = {**os.environ, "TABSERVE_CPUS": "0"}
    run = subprocess.run(_command(empty, "serve"), capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 2 and "TABSERVE_CPUS: Input should be greater than or equal to 1" in run.stderr
    assert "--cpus: Input" in _run(empty, "serve", "--cpus", "0").stderr
