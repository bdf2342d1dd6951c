"""Batch scoring on Ray Data: the local engine's sources, contract and scorer, spread out.

Reading through the same sources keeps unsplittable rows in place, as on one machine (docs/scoring.md).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from service.bundle import BundleRef
from service.cpus import cpu_budget
from service.explain import Explain
from service.features import Reading
from service.release import resolve
from service.runtime import Device
from service.scoring.files import (
    CsvSource,
    ParquetSource,
    ScoringError,
    Source,
    check_writable,
    csv_write_options,
    format_of,
    numbered,
    open_source,
)
from service.scoring.local import KEPT_ERRORS, Scorer, Summary

try:
    import ray
    import ray.data
    from ray.data.datasource import FileBasedDatasource
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError("the Ray engine needs Ray Data: pip install 'tabserve[ray]'") from exc

INPUT_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt", ".parquet", ".pq", ".jsonl", ".ndjson", ".xlsx", ".xls")
FILE = "__tabserve_file__"  # with several input files, each row's file (for its error message)
ROW_IN_MESSAGE = re.compile(r"\brow (\d+)")


def input_files(spec: str) -> list[str]:
    """A file, a folder's CSV/Parquet files, or a glob's matches; sorted, never empty."""
    path = Path(spec)
    if path.is_dir():
        found = sorted(str(p) for p in path.iterdir() if p.name.lower().endswith(INPUT_SUFFIXES))
    elif any(c in spec for c in "*?["):
        found = sorted(glob.glob(spec))
    else:
        found = [spec] if path.is_file() else []
    if not found:
        raise ScoringError(f"no input files at {spec}")
    formats = {format_of(Path(f)) == "parquet" for f in found}
    if len(formats) > 1:
        raise ScoringError(f"{spec} mixes CSV and Parquet files; score them separately")
    return found


def _open(path: str, raw: Any, chunk_rows: int, reading: Reading | None = None) -> Source:
    fmt = format_of(Path(path))
    if fmt == "parquet":
        return ParquetSource(raw, chunk_rows)
    if fmt in ("jsonl", "excel"):  # no streaming reader: the file is read whole, where the task runs
        return open_source(Path(path), chunk_rows, reading)
    return CsvSource(raw, chunk_rows=chunk_rows, name=path, reading=reading)


class NumberedSource(FileBasedDatasource):
    """Ray read tasks giving `numbered` blocks; with `name_files`, each row names its file."""

    def __init__(
        self, paths: list[str], wanted: list[str], chunk_rows: int, name_files: bool, reading: Reading | None = None
    ) -> None:
        super().__init__(paths)
        self.wanted, self.chunk_rows, self.name_files, self.reading = wanted, chunk_rows, name_files, reading

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        if format_of(Path(path)) == "parquet":
            f = self._filesystem.open_input_file(path)  # Parquet needs random access
        source = _open(path, f, self.chunk_rows, self.reading)
        name = pa.scalar(Path(path).name, pa.string())
        for batch in numbered(source, self.wanted):
            table = pa.Table.from_batches([batch])
            yield table.append_column(FILE, pa.repeat(name, table.num_rows)) if self.name_files else table


@ray.remote(num_cpus=0)
class WarningTally:
    """Every actor's warning counts, for the run's summary."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, counts: dict[str, int]) -> None:
        self.counts.update(counts)

    def total(self) -> Counter[str]:
        return self.counts


class ScoreActor:
    """Scores blocks into the output schema with its own ONNX Runtime session."""

    def __init__(
        self,
        bundle_path: str,
        device: Device,
        schema: pa.Schema,
        tally: Any,
        explain: Explain | None,
        reading: Reading | None = None,
    ) -> None:
        ref = resolve(Path(bundle_path).parent.parent, bundle_path)
        self.scorer = Scorer(ref, device, threads=1, explain=explain, reading=reading)
        self.schema, self.tally = schema, tally

    def __call__(self, table: pa.Table) -> pa.Table:
        batch = table.combine_chunks().to_batches()
        if not batch:
            return self.schema.empty_table()
        scored = self.scorer.score_batch(batch[0], self.schema)
        if scored.warnings:  # waited for, so the driver's count after the run is complete
            ray.get(self.tally.add.remote(dict(scored.warnings)))
        out = pa.Table.from_batches([scored.batch])
        if FILE not in table.column_names:
            return out
        # "b.csv: row 12, field 'tenure': …" — row numbers count within each file
        named = pc.binary_join_element_wise(table.column(FILE), out.column("error"), ": ")
        return out.set_column(out.schema.get_field_index("error"), "error", named)


def cluster_address(address: str | None) -> str:
    """The Ray to score on: the one named (--ray-address, else Ray's RAY_ADDRESS), else "local", a Ray
    of our own. Not ray.init's default: that joins the last cluster started on this machine (`ray
    start`, another job's), which refuses a CPU count."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def score_with_ray(
    ref: BundleRef,
    input: str,
    output: Path,
    *,
    keep: list[str] | None = None,
    keep_all: bool = False,
    address: str | None = None,
    device: Device = "auto",
    actors: int | None = None,
    chunk_rows: int = 16_384,
    on_error: Callable[[int, str], None] | None = None,
    explain: Explain | None = None,
    cpus: int | None = None,
    reading: Reading | None = None,
) -> Summary:
    """Score `input` (file, folder or glob) into the folder `output`; `on_error` gets each failed row;
    `explain` adds reason columns as the local engine does; `cpus`: a local Ray's CPU budget
    (default: this process's, service/cpus.py)."""
    started = time.perf_counter()
    files = input_files(input)
    fmt = format_of(output)
    # only for the header checks and the output schema (and a bundle without explain.onnx fails here)
    scorer = Scorer(ref, "cpu", threads=1, explain=explain, reading=reading)
    plans = []
    for path in files:  # every file's header is checked before any work
        parquet = format_of(Path(path)) == "parquet"  # the input's format; gzip CSV decompressed
        with pa.OSFile(path) if parquet else pa.input_stream(path) as raw:
            plans.append(scorer.plan(_open(path, raw, chunk_rows, reading or scorer.pre.read), keep, keep_all))
    wanted, schema = plans[0]
    check_writable(schema, fmt)

    cpus = cpus or cpu_budget().cpus
    address = cluster_address(address)
    local = address == "local"
    if not ray.is_initialized():
        # a read task takes a whole logical CPU: fewer than two leaves none beside the actor (a hang)
        logical = max(2, cpus) if local else None
        try:
            ray.init(address=address, num_cpus=logical, include_dashboard=False, log_to_driver=False)
        except ConnectionError as exc:  # Ray's own text names its flag (`--address`), not ours
            raise ScoringError(
                f"no Ray cluster at {address!r} (--ray-address or RAY_ADDRESS): {str(exc).split('. ')[0]}; "
                "start one (`ray start --head`), or leave both out for a Ray of this process's own"
            ) from None
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # output rows in input order
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    gpus = resources.get("GPU", 0) if device != "cpu" else 0
    if device == "cuda" and not gpus:
        raise ScoringError("device=cuda, but the Ray cluster has no GPUs (use --device auto or cpu)")
    # locally one actor per two CPUs of the budget: the reads and writes need the rest
    pool = actors or (max(1, cpus // 2) if local else max(1, int(gpus) or int(resources.get("CPU", 1))))
    read_as = reading or scorer.pre.read  # the training file's delimiter and encoding, unless told otherwise
    blocks = ray.data.read_datasource(NumberedSource(files, wanted, chunk_rows, len(files) > 1, read_as))
    tally = WarningTally.remote()  # type: ignore[attr-defined]
    scored = blocks.map_batches(
        ScoreActor,
        fn_constructor_args=(str(ref.path), "cuda" if gpus else "cpu", schema, tally, explain, reading),
        batch_format="pyarrow",
        batch_size=None,
        concurrency=pool,
        # on a small local Ray an actor pool holding every CPU starves the read tasks
        num_cpus=0.5 if local else 1,
        num_gpus=1 if gpus else 0,
    )
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if fmt == "parquet":
            scored.write_parquet(str(tmp))
        else:
            scored.write_csv(
                str(tmp),
                arrow_csv_args_fn=lambda: {"write_options": csv_write_options()},
                **({"arrow_open_stream_args": {"compression": "gzip"}} if fmt == "csv.gz" else {}),
            )
        if fmt == "csv.gz":  # Ray names parts by format ("….csv"); these hold gzip
            for part in output_files(tmp):
                part.rename(part.with_name(part.name + ".gz"))
        summary = _count(tmp, fmt, on_error)
        summary.count_warnings(ray.get(tally.total.remote()))
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.seconds = time.perf_counter() - started
    return summary


def output_files(folder: Path) -> list[Path]:
    """The part files Ray wrote, in output order."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith((".", "_")))


def _count(folder: Path, fmt: str, on_error: Callable[[int, str], None] | None) -> Summary:
    """Rows and errors read back from the parts (Ray's writers report nothing)."""
    summary = Summary()
    for part in output_files(folder):
        if fmt == "parquet":
            errors = pq.read_table(part, columns=["error"]).column("error")
        else:
            opts = pcsv.ConvertOptions(include_columns=["error"], column_types={"error": pa.string()})
            quoted = pcsv.ParseOptions(newlines_in_values=True)  # a kept column's text may hold line breaks
            errors = pcsv.read_csv(part, parse_options=quoted, convert_options=opts).column("error")
        summary.rows_in += len(errors)
        failed = errors.filter(pc.fill_null(pc.not_equal(errors, ""), False))
        summary.rows_failed += len(failed)
        kept = max(0, KEPT_ERRORS - len(summary.errors))
        for message in (failed if on_error is not None else failed.slice(0, kept)).to_pylist():
            found = ROW_IN_MESSAGE.search(message)
            row = int(found[1]) if found else 0
            if len(summary.errors) < KEPT_ERRORS:
                summary.errors.append((row, message))
            if on_error is not None:
                on_error(row, message)
    summary.rows_scored = summary.rows_in - summary.rows_failed
    return summary


__all__ = ["input_files", "output_files", "score_with_ray"]
