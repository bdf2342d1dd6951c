"""The `tabserve` command under abuse, as a user runs it: over-long records and headers, `kill -9`
half-way through, a full disk. Clean exits with one-line errors; nothing half-written left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import bundle
from tests.conftest import TELCO
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


def test_score_refuses_a_header_over_the_limit_in_one_line(store: Path, tmp_path: Path) -> None:
    source = tmp_path / "wide.csv"
    source.write_bytes(b"h" * (2 * RECORD_LIMIT) + b"," + _telco_file(tmp_path / "rows.csv", 10).read_bytes())
    run = _run(store, "score", "--model", "churn", "--input", str(source), "--output", str(tmp_path / "out.csv"))
    assert run.returncode == 2, run.stderr
    assert "the header line is over the 1 MiB limit for one record" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "rows.csv", "wide.csv"]


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
