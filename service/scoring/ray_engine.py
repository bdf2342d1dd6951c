"""Batch scoring on Ray Data: the local engine's sources, contract and scorer, spread out.

Reading through the same sources keeps unsplittable rows in place, as on one machine (docs/scoring.md).
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from service.atomic import folder_written_whole
from service.bundle import BundleRef
from service.cpus import cpu_budget
from service.explain import Explain
from service.features import Reading
from service.release import resolve
from service.runtime import Device
from service.scoring.files import (
    EXCEL_SUFFIXES,
    ROW,
    UNPARSED,
    CsvSource,
    Format,
    ParquetSource,
    ScoringError,
    Source,
    check_writable,
    csv_write_options,
    format_of,
    numbered,
    open_sink,
    open_source,
)
from service.scoring.local import KEPT_ERRORS, Scorer, Summary

try:
    import ray
    import ray.data
    from ray.data.datasource import FileBasedDatasource
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError("the Ray engine needs Ray Data: pip install 'tabserve[ray]'") from exc

INPUT_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt", ".parquet", ".pq", ".jsonl", ".ndjson", *EXCEL_SUFFIXES)
FILE = "__tabserve_file__"  # with several input files, each row's file (for its error message)
ROW_IN_MESSAGE = re.compile(r"\brow (\d+)")
MARKER = ".tabserve-output"  # in every folder this engine writes: the only folders it replaces
# a Ray Data part (`<write id>_<dataset uuid>_000000.csv`): a folder of nothing else is a run's from before MARKER
RAY_PART = re.compile(r"[0-9A-Za-z]+_[0-9a-f]{32}_\d{6}(_\d{6})?\.(csv|parquet)(\.gz)?")


def input_files(spec: str) -> list[str]:
    """A file, a folder's input files, or a glob's matching files; sorted, never empty."""
    path = Path(spec)
    if path.is_dir():  # not hidden files (macOS's `._a.csv`), nor folders (a previous output, `scored.csv/`)
        found = sorted(str(p) for p in path.iterdir() if _is_input(p))
    elif _is_glob(spec):
        found = sorted(f for f in glob.glob(spec) if os.path.isfile(f))
    else:
        found = [spec] if path.is_file() else []
    if not found:
        raise ScoringError(f"no input files at {spec}")
    formats = {format_of(Path(f)) == "parquet" for f in found}
    if len(formats) > 1:
        raise ScoringError(f"{spec} mixes CSV and Parquet files; score them separately")
    return found


def _taken_in(spec: str, path: Path) -> bool:
    """Whether a file written at `path` (a real path) is one a later run of `input_files(spec)` reads:
    a folder's input file, or a glob's match (a name matched in a folder the glob's folder part names)."""
    if Path(spec).is_dir():
        return path.parent == Path(os.path.realpath(spec)) and _input_name(path.name)
    if not _is_glob(spec):
        return False
    folder, name = os.path.split(spec)
    folders = {Path(os.path.realpath(f)) for f in glob.glob(folder or ".") if os.path.isdir(f)}
    hidden_ok = name.startswith(".")  # glob's `*` matches no leading dot
    return path.parent in folders and fnmatch.fnmatch(path.name, name) and (hidden_ok or not path.name.startswith("."))


def _is_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def _input_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(INPUT_SUFFIXES)


def _is_input(path: Path) -> bool:
    return path.is_file() and _input_name(path.name)


def check_output(output: Path, input: str, files: list[str], errors: Path | None = None) -> None:
    """Refuse, before any work, an output folder whose replacing would delete what this engine did not
    write: the input or a folder holding it, a file, or a folder neither empty nor marked as its output;
    and an `--errors` file that is an input, one a later run of the same input reads, or inside the output."""
    target = Path(os.path.realpath(output))
    folder = Path(input) if Path(input).is_dir() else None
    if errors is not None:
        written = Path(os.path.realpath(errors))
        if target == written or target in written.parents:
            raise ScoringError(f"--errors {errors} is inside the --output folder, which the run replaces: name another")
        if any(written == Path(os.path.realpath(f)) for f in files):
            raise ScoringError(f"--errors {errors} is an input file: writing it would replace its rows")
        if _taken_in(input, written):
            raise ScoringError(f"--errors {errors} is among the input's files: the next run would read it")
    for source in [Path(f) for f in files] + ([folder] if folder is not None else []):
        real = Path(os.path.realpath(source))
        if target == real or target in real.parents:
            raise ScoringError(f"--output {output} holds the input {source}: name another folder")
    if folder is not None and Path(os.path.realpath(folder)) in target.parents:
        raise ScoringError(f"--output {output} is inside the input folder {folder}: name a folder outside it")
    _check_replaceable(output)


def _check_replaceable(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise ScoringError(
            f"--output {output} is a file; the Ray engine writes a folder of part files: name a new folder"
        )
    if output.is_dir() and any(output.iterdir()) and not _ours(output):
        raise ScoringError(
            f"--output {output} is a folder the Ray engine did not write (no {MARKER} in it), "
            "so replacing it could delete other files: name a new or empty folder"
        )


def _ours(folder: Path) -> bool:
    """A folder this engine wrote: marked, or (written before the marker) only Ray's part files."""
    if (folder / MARKER).is_file():
        return True
    return all(p.is_file() and not p.is_symlink() and RAY_PART.fullmatch(p.name) for p in folder.iterdir())


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
        self,
        paths: list[str],
        wanted: list[str],
        chunk_rows: int,
        name_files: bool,
        tally: Any,
        reading: Reading | None = None,
    ) -> None:
        super().__init__(paths)
        self.wanted, self.chunk_rows, self.name_files, self.reading = wanted, chunk_rows, name_files, reading
        self.tally = tally

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        if format_of(Path(path)) == "parquet":
            f = self._filesystem.open_input_file(path)  # Parquet needs random access
        source = _open(path, f, self.chunk_rows, self.reading)
        name = pa.scalar(Path(path).name, pa.string())
        # a look-alike column (`Tenure`) one file lacks is read as empty there: every block has one schema
        absent = [c for c in self.wanted if c not in source.columns]
        last_row = 0
        for batch in numbered(source, [c for c in self.wanted if c in source.columns]):
            table = pa.Table.from_batches([batch])
            for column in absent:
                table = table.append_column(column, pa.nulls(table.num_rows, pa.string()))
            table = table.select([*self.wanted, ROW, UNPARSED])
            last_row = table.column(ROW)[-1].as_py() if table.num_rows else last_row
            yield table.append_column(FILE, pa.repeat(name, table.num_rows)) if self.name_files else table
        if getattr(source, "unclosed_quote", False):  # waited for, so the driver's count after the run is complete
            ray.get(self.tally.unclosed.remote(name.as_py() if self.name_files else None, last_row))
        if given_up := getattr(source, "read_as_utf8", None):
            ray.get(self.tally.read_as_utf8.remote(name.as_py() if self.name_files else "", given_up))


@ray.remote(num_cpus=0)
class Tally:
    """What the read tasks and actors saw beside the rows, for the run's summary."""

    def __init__(self) -> None:
        self.summary = Summary()

    def add(self, warnings: dict[str, int], not_utf8: list[bytes]) -> None:
        self.summary.count_warnings(Counter(warnings))
        self.summary.count_not_utf8(not_utf8)

    def unclosed(self, file: str | None, row: int) -> None:
        seen = (self.summary.unclosed_file or "", self.summary.unclosed_row or 0)
        if self.summary.unclosed_row is None or (file or "", row) < seen:  # the run names one: the first file's
            self.summary.unclosed_row, self.summary.unclosed_file = row, file

    def read_as_utf8(self, file: str, encoding: str) -> None:
        self.summary.read_as_utf8[file] = encoding

    def total(self) -> Summary:
        return self.summary


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
        if scored.warnings or scored.not_utf8:  # waited for, so the driver's count after the run is complete
            ray.get(self.tally.add.remote(dict(scored.warnings), scored.not_utf8))
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


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """A `host:port` (or `ray://host:port`) that answers no connection is refused in seconds: ray.init
    retried such an address for minutes, printing only its own warnings."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdecimal():  # `auto`, `local`: Ray finds them itself
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port} ({exc.strerror or exc})") from None


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
    errors: Path | None = None,
) -> Summary:
    """Score `input` (file, folder or glob) into the folder `output`; `on_error` gets each failed row
    (written to `errors`, which is checked before any work);
    `explain` adds reason columns as the local engine does; `cpus`: a local Ray's CPU budget
    (default: this process's, service/cpus.py)."""
    started = time.perf_counter()
    output = Path(os.path.realpath(output)) if output.is_symlink() else output  # replaced where the link points
    files = input_files(input)
    check_output(output, input, files, errors)
    fmt = format_of(output)
    # only for the header checks and the output schema (and a bundle without explain.onnx fails here)
    scorer = Scorer(ref, "cpu", threads=1, explain=explain, reading=reading)
    read_as = reading or scorer.pre.read  # the training file's delimiter and encoding, unless told otherwise
    wanted, schema = _plan(scorer, files, keep, keep_all, chunk_rows, read_as)
    check_writable(schema, fmt)

    cpus = cpus or cpu_budget().cpus
    address = cluster_address(address)
    local = address == "local"
    if not ray.is_initialized():
        # a read task takes a whole logical CPU: fewer than two leaves none beside the actor (a hang)
        logical = max(2, cpus) if local else None
        try:
            _reachable(address)
            ray.init(address=address, num_cpus=logical, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)  # fmt: skip
        except ConnectionError as exc:  # Ray's own text names its flag (`--address`), not ours
            raise ScoringError(
                f"no Ray cluster at {address!r} (--ray-address or RAY_ADDRESS): {str(exc).split('. ')[0]}; "
                "start one (`ray start --head`), or leave both out for a Ray of this process's own"
            ) from None
    # Ray Data's INFO lines (its plan; progress as log lines off a terminal) buried the run's summary;
    # its log files keep them
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(max(handler.level, logging.WARNING))
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # output rows in input order
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    gpus = resources.get("GPU", 0) if device != "cpu" else 0
    if device == "cuda" and not gpus:
        raise ScoringError("device=cuda, but the Ray cluster has no GPUs (use --device auto or cpu)")
    # locally one actor per two CPUs of the budget: the reads and writes need the rest
    pool = actors or (max(1, cpus // 2) if local else max(1, int(gpus) or int(resources.get("CPU", 1))))
    tally = Tally.remote()  # type: ignore[attr-defined]
    blocks = ray.data.read_datasource(NumberedSource(files, wanted, chunk_rows, len(files) > 1, tally, read_as))
    scored = blocks.map_batches(
        ScoreActor,
        fn_constructor_args=(str(ref.path), "cuda" if gpus else "cpu", schema, tally, explain, reading),
        batch_format="pyarrow",
        batch_size=None,
        compute=ray.data.ActorPoolStrategy(size=pool),  # `concurrency=` is deprecated since Ray 2.51
        # on a small local Ray an actor pool holding every CPU starves the read tasks
        num_cpus=0.5 if local else 1,
        num_gpus=1 if gpus else 0,
    )
    with folder_written_whole(output) as tmp:  # what killed runs left is removed first, as the local engine does
        _write(scored, tmp, fmt, schema)
        (tmp / MARKER).write_text(f"{ref.name} v{ref.version}\n")
        summary = _count(tmp, fmt, on_error, ray.get(tally.total.remote()))
        _check_replaceable(output)  # again: checked before the work, which took a while
    summary.seconds = time.perf_counter() - started
    return summary


def _plan(
    scorer: Scorer, files: list[str], keep: list[str] | None, keep_all: bool, chunk_rows: int, reading: Reading
) -> tuple[list[str], pa.Schema]:
    """Every file's header checked before any work: the columns to read (any file's) and the one output schema."""
    plans = []
    for path in files:
        parquet = format_of(Path(path)) == "parquet"  # the input's format; gzip CSV decompressed
        with pa.OSFile(path) if parquet else pa.input_stream(path) as raw:
            source = _open(path, raw, chunk_rows, reading)
            try:
                plans.append(scorer.plan(source, keep, keep_all))
            except ScoringError as exc:  # which of the files
                raise ScoringError(f"{path}: {exc}" if len(files) > 1 else str(exc)) from None
    schema = plans[0][1]
    for path, (_, other) in zip(files[1:], plans[1:], strict=True):
        # one output holds every file's rows: one set of columns (in any order: they are taken by name)
        if dict(zip(other.names, other.types, strict=True)) != dict(zip(schema.names, schema.types, strict=True)):
            raise ScoringError(_unlike(files[0], schema, path, other))
    return list(dict.fromkeys(name for wanted, _ in plans for name in wanted)), schema


def _unlike(first: str, schema: pa.Schema, path: str, other: pa.Schema) -> str:
    """How two files' output columns differ, and what to do."""
    lacks = [n for n in schema.names if n not in other.names]
    adds = [n for n in other.names if n not in schema.names]
    shared = [n for n in schema.names if n in other.names]
    typed = [f"{n} as {other.field(n).type}" for n in shared if other.field(n).type != schema.field(n).type]
    said = [
        *([f"lacks {', '.join(lacks)}"] if lacks else []),
        *([f"adds {', '.join(adds)}"] if adds else []),
        *([f"holds {', '.join(typed)}"] if typed else []),
    ]
    return (
        f"{path} {'; '.join(said)} beside {first}: the output has one set of columns for every file; "
        "score the files apart, or --keep columns each has"
    )


def _write(scored: Any, tmp: Path, fmt: Format, schema: pa.Schema) -> None:
    """Ray writes the parts into the folder `tmp`; no rows, one part of no rows, as the local engine writes."""
    if fmt == "parquet":
        scored.write_parquet(str(tmp))
    else:
        scored.write_csv(
            str(tmp),
            arrow_csv_args_fn=lambda: {"write_options": csv_write_options()},
            **({"arrow_open_stream_args": {"compression": "gzip"}} if fmt == "csv.gz" else {}),
        )
    tmp.mkdir(exist_ok=True)  # Ray writes nothing for no rows
    if fmt == "csv.gz":  # Ray names parts by format ("….csv"); these hold gzip
        for part in output_files(tmp):
            part.rename(part.with_name(part.name + ".gz"))
    if not output_files(tmp):
        open_sink(tmp / f"part-0.{fmt}", schema, fmt).close()


def output_files(folder: Path) -> list[Path]:
    """The part files Ray wrote, in output order."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith((".", "_")))


def _count(
    folder: Path, fmt: str, on_error: Callable[[int, str], None] | None, summary: Summary | None = None
) -> Summary:
    """Rows and errors read back from the parts (Ray's writers report nothing), into `summary`."""
    summary = summary or Summary()
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


__all__ = ["MARKER", "check_output", "input_files", "output_files", "score_with_ray"]
