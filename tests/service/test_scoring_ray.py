"""The Ray engine (service/scoring/ray_engine.py): the same rows as the local engine."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from service import bundle
from service.scoring.local import Scorer, score_file
from tests.service.test_scoring import _read, _telco_head


def _score_to_rows(ref: bundle.BundleRef, source: Path, work: Path) -> list[dict[str, str]]:
    out = work.with_suffix(".csv")
    score_file(Scorer(ref, "cpu"), source, out)
    return _read(out)


def test_ray_engine_equals_the_local_engine(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    pytest.importorskip("ray.data", reason="the Ray extra is not installed")
    import ray

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
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = score_with_ray(churn_bundle, str(source), tmp_path / "ray.csv", keep_all=True, chunk_rows=32)
        parquet = score_with_ray(churn_bundle, str(folder), tmp_path / "ray_pq.csv.gz")
        gz = tmp_path / "in.csv.gz"  # NOTE: the input's format decides how it is opened, not the output's
        gz.write_bytes(gzip.compress(source.read_bytes()))
        zipped = score_with_ray(churn_bundle, str(gz), tmp_path / "ray_gz.parquet")
        failures: list[tuple[int, str]] = []
        split = score_with_ray(
            churn_bundle, str(halves), tmp_path / "halves.csv", on_error=lambda *failure: failures.append(failure)
        )
    finally:
        ray.shutdown()
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
