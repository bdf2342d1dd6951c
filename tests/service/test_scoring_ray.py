"""The Ray engine (service/scoring/ray_engine.py): the same rows as the local engine."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from service import atomic, bundle
from service.scoring.files import ScoringError
from service.scoring.local import Scorer, score_file
from tabserve.cli import _file_level_failure
from tests.conftest import TELCO
from tests.service.test_scoring import _read, _telco_head


@pytest.fixture(scope="module")
def ray_up() -> Iterator[None]:
    """One small Ray for this module's runs: starting one takes seconds."""
    pytest.importorskip("ray.data", reason="the Ray extra is not installed")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _score_to_rows(ref: bundle.BundleRef, source: Path, work: Path) -> list[dict[str, str]]:
    out = work.with_suffix(".csv")
    score_file(Scorer(ref, "cpu"), source, out)
    return _read(out)


def test_ray_engine_equals_the_local_engine(churn_bundle: bundle.BundleRef, tmp_path: Path, ray_up: None) -> None:
    from service.scoring.ray_engine import output_files, score_with_ray

    lines = _telco_head(tmp_path / "in.csv", 200).read_bytes().splitlines(keepends=True)
    lines[10] = b"too,few\n"
    fields = lines[20].decode().split(",")
    fields[5] = "lots"
    lines[20] = ",".join(fields).encode()
    fields = lines[30].decode().split(",")
    fields[15] = "Decade-long"  # NOTE: an unseen Contract level: scored, with a warning
    lines[30] = ",".join(fields).encode()
    source = tmp_path / "in.csv"
    source.write_bytes(b"".join(lines))
    halves = tmp_path / "halves"  # NOTE: two CSV files; one more malformed row, in the second
    halves.mkdir()
    (halves / "a.csv").write_bytes(b"".join(lines[:101]))
    (halves / "b.csv").write_bytes(b"".join([lines[0], *lines[101:151], b"too,few\n", *lines[152:]]))
    local = score_file(Scorer(churn_bundle, "cpu"), source, tmp_path / "local.csv", keep_all=True, chunk_rows=32)
    import pandas as pd

    folder = tmp_path / "parts"  # NOTE: a folder of Parquet files (typed columns) → one .csv.gz folder
    folder.mkdir()
    frame = pd.read_csv(_telco_head(tmp_path / "clean.csv", 90))
    frame.iloc[:50].to_parquet(folder / "a.parquet")
    frame.iloc[50:].to_parquet(folder / "b.parquet")
    expected = [
        row for name in ("a", "b") for row in _score_to_rows(churn_bundle, folder / f"{name}.parquet", tmp_path / name)
    ]
    summary = score_with_ray(churn_bundle, str(source), tmp_path / "ray.csv", keep_all=True, chunk_rows=32)
    parquet = score_with_ray(churn_bundle, str(folder), tmp_path / "ray_pq.csv.gz")
    gz = tmp_path / "in.csv.gz"  # NOTE: the input's format decides how it is opened, not the output's
    gz.write_bytes(gzip.compress(source.read_bytes()))
    zipped = score_with_ray(churn_bundle, str(gz), tmp_path / "ray_gz.parquet")
    failures: list[tuple[int, str]] = []
    split = score_with_ray(
        churn_bundle, str(halves), tmp_path / "halves.csv", on_error=lambda *failure: failures.append(failure)
    )
    # several files: row numbers count within each file, and the message names the file
    assert (split.rows_in, split.rows_failed) == (200, 3)
    assert [(row, message.split(":")[0]) for row, message in failures] == [(10, "a.csv"), (20, "a.csv"), (51, "b.csv")]
    assert all(message.startswith(f"{message.split(':')[0]}: row {row}") for row, message in failures)
    assert split.errors == failures
    # warnings on scored rows reach the summary, as with the local engine
    assert summary.warnings == local.warnings and sum(local.warnings.values()) == 1
    assert parquet.rows_in == 90 and parquet.rows_failed == 0
    assert (zipped.rows_in, zipped.rows_failed) == (200, 2)
    assert [row for part in output_files(tmp_path / "ray_pq.csv.gz") for row in _read(part)] == expected
    parts = output_files(tmp_path / "ray.csv")
    distributed = [row for part in parts for row in _read(part)]
    assert (summary.rows_in, summary.rows_failed) == (local.rows_in, local.rows_failed) == (200, 2)
    assert distributed == _read(tmp_path / "local.csv")


def test_without_an_address_ray_starts_its_own_and_never_joins_the_last_cluster(
    churn_bundle: bundle.BundleRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ray.init's default joins the last cluster `ray start` left on the machine, which refuses the
    CPU count a Ray of our own gets: no address is "local"; Ray's own variable, or the flag, names one."""
    pytest.importorskip("ray.data", reason="the Ray extra is not installed")
    import ray

    from service.scoring.ray_engine import score_with_ray

    class Started(Exception):
        """ray.init reached: what it was given is all this test needs."""

    calls: list[dict[str, object]] = []

    def init(**options: object) -> None:
        calls.append(options)
        raise Started

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    source = _telco_head(tmp_path / "in.csv", 20)
    runs = [(None, None, ("local", 3)), ("10.0.0.5:6379", None, ("10.0.0.5:6379", None))]
    runs.append(("10.0.0.5:6379", "auto", ("auto", None)))  # the flag over the variable
    for variable, flag, (address, cpus) in runs:
        if variable is None:
            monkeypatch.delenv("RAY_ADDRESS", raising=False)
        else:
            monkeypatch.setenv("RAY_ADDRESS", variable)
        with pytest.raises(Started):
            score_with_ray(churn_bundle, str(source), tmp_path / "out.csv", address=flag, cpus=3)
        assert (calls[-1]["address"], calls[-1]["num_cpus"]) == (address, cpus)


def test_the_row_count_reads_parts_whose_kept_text_holds_line_breaks(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """Ray's writers report nothing: the summary reads the parts back. A kept column of multi-line
    notes put quoted line breaks across Arrow's blocks there, and the count failed after every row
    was scored (`Expected 25 columns`); here a part as the local engine writes the same rows."""
    pytest.importorskip("ray.data", reason="the Ray extra is not installed")
    from service.scoring.ray_engine import _count

    lines = _telco_head(tmp_path / "head.csv", 7000).read_bytes().splitlines()
    notes = [b'"called twice,\nthen wrote"' if i % 3 == 0 else b"ok" for i in range(len(lines) - 1)]
    rows = [lines[0] + b",note\n"] + [line + b"," + note + b"\n" for line, note in zip(lines[1:], notes, strict=True)]
    source = tmp_path / "notes.csv"
    source.write_bytes(b"".join(rows * 1)[:None] + b"".join(rows[1:] * 4))
    parts = tmp_path / "parts"
    parts.mkdir()
    local = score_file(Scorer(churn_bundle, "cpu"), source, parts / "part-0.csv", keep_all=True)
    counted = _count(parts, "csv", None)
    assert counted.rows_in == local.rows_in == 35_000 and counted.rows_failed == local.rows_failed == 0


def _dead_pid() -> int:
    """The id of a process that has ended: what a `kill -9`ed run leaves its temporaries under."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(ended.stdout)


def _folder(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir()
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def test_input_files_are_a_folders_or_globs_input_files_only(tmp_path: Path) -> None:
    """An audit: a folder's hidden `._a.csv` (macOS) and a previous output folder `scored.csv/` were
    taken as input, and `.ods`/`.xlsm`, which the Excel reader reads, were left out."""
    pytest.importorskip("ray.data", reason="the Ray extra is not installed")
    from service.scoring.ray_engine import input_files

    lines = _telco_head(tmp_path / "head.csv", 5).read_bytes()
    folder = _folder(tmp_path / "in", {"a.csv": lines, "._a.csv": b"\x00\x05", "b.xlsm": b"", "c.ods": b""})
    (folder / "scored.csv").mkdir()
    (folder / "scored.csv" / "part-0.csv").write_bytes(lines)
    assert [Path(f).name for f in input_files(str(folder))] == ["a.csv", "b.xlsm", "c.ods"]
    assert [Path(f).name for f in input_files(str(folder / "*.csv"))] == ["a.csv"]


def test_every_files_header_is_checked_before_any_work(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """An audit: only the first file's header planned the run; a later file without the kept
    `customerID` failed in a Ray task (59 lines of traceback), and with --keep-all a later file's extra
    column was dropped without a word. Now one line names the file and the column, before Ray starts."""
    pytest.importorskip("ray.data", reason="the Ray extra is not installed")
    from service.scoring.ray_engine import score_with_ray

    header, *rows = _telco_head(tmp_path / "head.csv", 10).read_bytes().splitlines(keepends=True)
    cut = [b",".join(line.rstrip(b"\r\n").split(b",")[1:]) + b"\n" for line in [header, *rows]]  # no customerID
    extra = [header.replace(b"Churn", b"Churn,notes"), *(line.rstrip(b"\r\n") + b",x\n" for line in rows)]
    cases = [
        ({"b.csv": b"".join(cut)}, {}, r"b\.csv lacks customerID beside .*a\.csv"),
        ({"b.csv": b"".join(extra)}, {"keep_all": True}, r"b\.csv adds notes beside .*a\.csv"),
        ({"b.csv": b"gender,tenure\nMale,3\n"}, {}, r"b\.csv: input is missing 17 column"),
    ]
    for i, (files, options, said) in enumerate(cases):
        folder = _folder(tmp_path / f"in{i}", {"a.csv": header + b"".join(rows), **files})
        with pytest.raises(ScoringError, match=said):
            score_with_ray(churn_bundle, str(folder), tmp_path / f"out{i}.csv", **options)
    assert not list(tmp_path.glob("*out*"))


def test_a_folder_the_engine_did_not_write_is_never_replaced(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """An audit: `--output precious` deleted precious/notes.txt, and a glob's output set to its own
    folder deleted the inputs. Refused before any work, whatever the folder holds."""
    pytest.importorskip("ray.data", reason="the Ray extra is not installed")
    from service.scoring.ray_engine import MARKER, score_with_ray

    lines = _telco_head(tmp_path / "head.csv", 5).read_bytes()
    inputs = _folder(tmp_path / "in", {"a.csv": lines, "b.csv": lines})
    precious = _folder(tmp_path / "precious", {"notes.txt": b"keep"})
    marked = _folder(tmp_path / "marked", {MARKER: b"", "a.csv": lines})  # an output someone put the input in
    cases = [
        (str(inputs / "a.csv"), precious, "is a folder the Ray engine did not write"),
        (str(inputs / "*.csv"), inputs, "holds the input"),
        (str(marked / "a.csv"), marked, "holds the input"),
        (str(inputs), inputs / "out.csv", "is inside the input folder"),
        (str(inputs), tmp_path / "head.csv", "is a file; the Ray engine writes a folder"),
    ]
    for source, output, said in cases:
        with pytest.raises(ScoringError, match=said):
            score_with_ray(churn_bundle, source, output)
    assert (precious / "notes.txt").read_bytes() == b"keep" and (marked / "a.csv").read_bytes() == lines
    assert sorted(p.name for p in inputs.iterdir()) == ["a.csv", "b.csv"]


def test_a_previous_output_is_replaced_and_killed_runs_leftovers_removed(
    churn_bundle: bundle.BundleRef, tmp_path: Path, ray_up: None
) -> None:
    """An empty folder, or one this engine wrote (its marker), is replaced whole; a killed run's
    temporary folders go, as the local engine's files do, and a running process's stay."""
    from service.scoring.ray_engine import MARKER, output_files, score_with_ray

    source = _telco_head(tmp_path / "in.csv", 20)
    out = tmp_path / "out.csv"
    out.mkdir()
    score_with_ray(churn_bundle, str(source), out)
    assert (out / MARKER).is_file() and sum(len(_read(p)) for p in output_files(out)) == 20
    (out / "part-from-before.csv").write_bytes(source.read_bytes())
    dead, alive = _dead_pid(), os.getppid()
    killed = tmp_path / f".out.csv.tmp-{atomic.HOST}@1-0a1b2c3d"  # a run here, its lock free now
    left = [
        tmp_path / f".out.csv.tmp-{dead}",  # older versions': no lock, judged by pid
        tmp_path / f".out.csv.tmp-{dead}.old",
        tmp_path / f".out.csv.tmp-{alive}",
        killed,
        killed.with_name(killed.name + ".old"),
    ]
    for folder in left:
        _folder(folder, {"part.csv": b"x"})
    killed.with_name(killed.name + ".lock").touch()
    score_with_ray(churn_bundle, str(source), out)
    assert not (out / "part-from-before.csv").exists() and sum(len(_read(p)) for p in output_files(out)) == 20
    assert [p.exists() for p in left] == [False, False, True, False, False]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.csv.tmp-")) == [left[2].name]


def test_a_folder_of_ray_parts_from_before_the_marker_is_replaced_an_errors_file_never_among_inputs(
    tmp_path: Path,
) -> None:
    """A review: nightly runs into a folder written before the marker would all have been refused; and
    an --errors file written into the input folder was read as an input by the next run."""
    pytest.importorskip("ray.data", reason="the Ray extra is not installed")
    from service.scoring.ray_engine import check_output

    (tmp_path / "in").mkdir()
    source = _telco_head(tmp_path / "in" / "a.csv", 5)
    part = "0358XnQ0d2xz9OLTcJpvXr_92129ab7ff1340e6b4e5e1c5d557de13_000000.csv"  # as Ray Data names them
    before = _folder(tmp_path / "before", {part: b"a\n1\n", part.replace("000000", "000001") + ".gz": b""})
    check_output(before, str(source), [str(source)])  # ours: nothing raised
    (before / "notes.txt").write_text("keep")
    with pytest.raises(ScoringError, match="did not write"):
        check_output(before, str(source), [str(source)])
    (tmp_path / "link").symlink_to(tmp_path / "in")
    taken = [("in", "in/errors.csv"), ("in/*.csv", "in/errors.csv"), ("in/*.csv", "link/errors.csv")]
    for spec, errors in taken:  # a folder's, or a glob's match, by any path (second and third reviews)
        with pytest.raises(ScoringError, match="is among the input's files"):
            check_output(tmp_path / "out", str(tmp_path / spec), [str(source)], errors=tmp_path / errors)
    for spec, errors in [("in/*.csv", "in/.errors.csv"), ("in/*.csv", "in/sub/errors.csv"), ("in", "in/errors")]:
        check_output(tmp_path / "out", str(tmp_path / spec), [str(source)], errors=tmp_path / errors)  # never read


def test_a_file_of_no_rows_gives_an_output_of_no_rows(
    churn_bundle: bundle.BundleRef, tmp_path: Path, ray_up: None
) -> None:
    """An audit: a header-only CSV or a Parquet file of no rows failed (`No such file or directory:
    '.r.csv.tmp-…'`: Ray writes no part); the local engine writes the header alone."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from service.scoring.ray_engine import output_files, score_with_ray

    header = _telco_head(tmp_path / "head.csv", 0)
    local = tmp_path / "local.csv"
    score_file(Scorer(churn_bundle, "cpu"), header, local)
    summary = score_with_ray(churn_bundle, str(header), tmp_path / "out.csv")
    parts = output_files(tmp_path / "out.csv")
    assert summary.rows_in == 0 and [p.read_bytes() for p in parts] == [local.read_bytes()]
    empty = tmp_path / "empty.parquet"
    pq.write_table(pcsv.read_csv(_telco_head(tmp_path / "five.csv", 5)).slice(0, 0), empty)
    assert score_with_ray(churn_bundle, str(empty), tmp_path / "out.parquet").rows_in == 0
    (part,) = output_files(tmp_path / "out.parquet")
    assert pq.read_table(part).num_rows == 0 and "probability" in pq.read_schema(part).names


def test_what_the_read_tasks_see_reaches_the_summary(
    churn_bundle: bundle.BundleRef, tmp_path: Path, ray_up: None
) -> None:
    """An audit: Ray exited 0 on a quote never closed (the rows after it in no output), never said
    how many rows were not UTF-8 and what reads them, and counted "1 of the first 20 the same way"
    where every message began with its file's name. All as the local engine says them now."""
    from service.scoring.ray_engine import score_with_ray

    header, *rows = _telco_head(tmp_path / "head.csv", 30).read_bytes().splitlines(keepends=True)
    windows = [row.replace(b"-", "ü".encode("cp1252"), 1) if i % 15 == 0 else row for i, row in enumerate(rows)]
    fields = rows[10].split(b",")
    fields[1] = b'"' + fields[1]
    quoted = [*rows[:10], b",".join(fields), *rows[11:]]
    folder = _folder(tmp_path / "in", {"a.csv": header + b"".join(windows), "b.csv": header + b"".join(quoted)})
    summary = score_with_ray(churn_bundle, str(folder), tmp_path / "out.csv")
    assert (summary.unclosed_row, summary.unclosed_file) == (11, "b.csv")
    assert _file_level_failure(summary).startswith('a quote (") opened in row 11 of b.csv is never closed')  # type: ignore[union-attr]
    assert summary.encoding_hint() == "2 rows are not valid UTF-8: --encoding cp1252 reads them"
    # a file kept in the training file's encoding over an ASCII start, UTF-8 past it: said by its name
    ascii_start = b"".join(TELCO.read_bytes().splitlines(keepends=True)[1:1000])
    folder = _folder(tmp_path / "utf8", {"a.csv": header + ascii_start + b"".join(windows).decode("cp1252").encode()})
    trained = replace(churn_bundle.preprocess.read, encoding="cp1252")
    summary = score_with_ray(churn_bundle, str(folder), tmp_path / "utf8.csv", reading=trained)
    assert summary.read_as_utf8 == {"": "cp1252"} and summary.rows_failed == 0

    charges = header.split(b",").index(b"MonthlyCharges")
    bad = [b",".join(f if j != charges else b"x" + f for j, f in enumerate(row.split(b","))) for row in rows[:20]]
    # a look-alike column in one file of two: read where it is, empty in the other (which failed in Ray)
    at = header.split(b",").index(b"tenure")
    near = [
        b",".join([*f[:at], b"" if i == 0 else f[at], *f[at:]]) for i, f in enumerate(r.split(b",") for r in rows[:5])
    ]
    twice = header.replace(b"tenure", b"tenure,Tenure")  # the first row's value only under `Tenure`
    folder = _folder(tmp_path / "most", {"a.csv": twice + b"".join(near), "b.csv": header + b"".join(bad)})
    summary = score_with_ray(churn_bundle, str(folder), tmp_path / "most.csv")
    assert list(summary.warnings.values()) == [1] and "did you mean 'tenure'?" in next(iter(summary.warnings))
    assert (_file_level_failure(summary) or "").startswith(
        "20 of 25 rows failed, 20 of the first 20 the same way: b.csv: row 1, field 'MonthlyCharges'"
    )
