"""The `tabserve` command: train, list models, serve, score files."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import inspect
import os
import sys
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from service import bundle

app = typer.Typer(help="Train, serve and score tabular business models.", no_args_is_help=True)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

ModelsDir = Annotated[
    Path | None,
    typer.Option("--models-dir", "--models", help="Model store (default $TABSERVE_MODELS_DIR or ./models)."),
]


SHOWN_WARNINGS = 8
STDIO = "-"  # `--input -` / `--output -`: stdin / stdout


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2."""
    err_console.print(Text.assemble(("error: ", "bold red"), message.replace("\n", " ")), soft_wrap=True)
    raise typer.Exit(2)


TRAIN_FLAGS = {"id_columns": "--id-column", "report_plots": "--plots"}  # the names users already type
TRAIN_ALIASES = {"models_dir": ["--models"]}


def _config_options() -> list[inspect.Parameter]:
    """One `tabserve train` option per `TrainConfig` field: flag, type, help and default all come from
    training/config.py, so nothing is declared twice. A flag not given leaves the value to the
    `--config` file, else the field's default."""
    from training.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    options = []
    for field in dataclasses.fields(TrainConfig):
        kind = hints[field.name]
        flag = TRAIN_FLAGS.get(field.name, "--" + field.name.replace("_", "-"))
        default: Any = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        extra: dict[str, Any] = {}
        plain: Any
        shown: Any
        if kind is bool:
            plain = bool
            flag, shown = f"{flag}/--no-{flag[2:]}", "on" if default else "off"
        elif typing.get_origin(kind) is list:
            plain, shown = list[str], ",".join(map(str, default))
            if typing.get_args(kind) == (int,):
                extra["metavar"] = "N,N,…"
        else:
            plain, shown = next((t for t in typing.get_args(kind) if t is not type(None)), kind), default
        text = field.metadata["help"] + ("" if shown in ("", None) else f" (default {shown})")
        option = typer.Option(flag, *TRAIN_ALIASES.get(field.name, []), help=text, show_default=False, **extra)
        options.append(
            inspect.Parameter(
                field.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[plain | None, option]
            )
        )
    config = inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Path | None,
            typer.Option(help="TOML or YAML file whose keys are these settings' field names; flags win over it"),
        ],
    )
    at = [p.name for p in options].index("name") + 1
    return [*options[:at], config, *options[at:]]


def _int_list(flag: str, values: list[str]) -> list[int]:
    """`--hidden 128,64` (or `--hidden 128 --hidden 64`) → [128, 64]."""
    parts = [part.strip() for value in values for part in value.split(",") if part.strip()]
    try:
        return [int(part) for part in parts]
    except ValueError:
        _fail(f"{flag} takes whole numbers separated by commas, such as 128,64, not {','.join(values)!r}")


def train(config: Path | None = None, **flags: Any) -> None:
    """Train an MLP on a CSV and publish it as the next version of a model bundle.

    A flag not given leaves the setting to the --config file, else to its default (training/config.py)."""
    try:
        from training.progress import run_training
    except ImportError as exc:
        _fail(f"training needs the train extra (pip install 'tabserve[train]'): {exc}")
    from training.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    overrides: dict[str, Any] = {}
    for name, value in flags.items():
        if value is not None and typing.get_origin(hints[name]) is list:
            value = (
                _int_list(TRAIN_FLAGS.get(name, "--" + name.replace("_", "-")), value)
                if hints[name] == list[int]
                else list(value)
            )
        overrides[name] = value if value != [] else None  # an empty repeatable option means "not given"
    try:
        run_training(config, overrides, console)
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(str(exc))


train.__signature__ = inspect.Signature(_config_options())  # type: ignore[attr-defined]
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}  # type: ignore[attr-defined]
app.command()(train)


@app.command("models")
def list_models(models_dir: ModelsDir = None) -> None:
    """List the bundles in the model store."""
    root = bundle.models_dir(models_dir)
    table = Table("name", "version", "task", "key metric", "created", title=f"models in {root}")
    names: set[str] = set()
    for ref in bundle.iter_bundles(root):
        names.add(ref.name)
        try:
            m = ref.metrics
        except (OSError, ValueError) as exc:
            table.add_row(ref.name, str(ref.version), "[red]unreadable[/]", str(exc)[:40], "")
            continue
        key = m.get("key_metric", "")
        value = m.get("test", {}).get(key)
        shown = f"{key} {value:.4f}" if isinstance(value, float) else key
        table.add_row(ref.name, str(ref.version), m.get("task", "?"), shown, m.get("created", ""))
    if not table.row_count:
        console.print(f"no models in {root}; train one with `tabserve train`")
        return
    console.print(table)
    for name in sorted(names):
        numbers = bundle.retired_versions(root, name)
        if numbers:
            console.print(f"{name}: retired version(s) {', '.join(map(str, numbers))} (kept, never served)")


@app.command()
def retire(
    model: Annotated[str, typer.Argument(help="name (its newest version) or name@version.")],
    models_dir: ModelsDir = None,
) -> None:
    """Take a model version out of service (roll back): the newest remaining version becomes current
    in running services at their next poll or `POST /admin/reload`; the folder is kept as
    `<version>.retired` and its number is never reused (rename it back to restore it)."""
    root = bundle.models_dir(models_dir)
    try:
        ref = bundle.retire(root, model)
    except (bundle.BundleError, OSError) as exc:
        _fail(str(exc))
    current = bundle.versions(root, ref.name)[-1]
    console.print(
        f"retired {ref.name} version {ref.version} → {ref.path}; version {current} is now current "
        "(running services switch at their next poll or POST /admin/reload)",
        soft_wrap=True,
    )


def _settings_options() -> list[inspect.Parameter]:
    """One `tabserve serve` option per service setting: flag, type, help and default all come from
    `Settings` (service/settings.py), so nothing is declared twice. A flag not given leaves the
    setting to its TABSERVE_* variable or default."""
    from service.settings import Settings

    options = []
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = field.annotation
        choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else ()
        if kind is bool:
            flag = f"{flag}/--no-{flag[2:]}"
        plain = str if choices else next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        default = field.default if field.default is not None else "none"
        shown = f"{' | '.join(choices)}: " if choices else ""
        option = typer.Option(
            *([flag, "--models"] if name == "models_dir" else [flag]),
            help=f"{shown}{field.description} (default {default})",
            show_default=False,
        )
        options.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[plain | None, option]
            )
        )
    return options


def serve(**flags: Any) -> None:
    """Serve every bundle in the model store over HTTP (flags override TABSERVE_* variables)."""
    from service.server import run_server

    try:
        run_server({k: v for k, v in flags.items() if v is not None})
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))


serve.__signature__ = inspect.Signature(_settings_options())  # type: ignore[attr-defined]
serve.__annotations__ = {p.name: p.annotation for p in serve.__signature__.parameters.values()}  # type: ignore[attr-defined]
app.command()(serve)


@app.command()
def score(
    model: Annotated[str, typer.Option(help="Model name, name@version, or a bundle directory.")],
    input: Annotated[
        Path,
        typer.Option(
            "--input",
            help="File to score: .csv, .csv.gz or .parquet; - reads CSV (or gzip) from stdin (Ray: a folder or glob).",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            help="Where to write the scores: .csv, .csv.gz or .parquet; - writes CSV to stdout (Ray: a folder).",
        ),
    ],
    models_dir: ModelsDir = None,
    keep: Annotated[list[str] | None, typer.Option(help="Input column to copy to the output (repeatable).")] = None,
    keep_all: Annotated[bool, typer.Option("--keep-all", help="Copy every input column.")] = False,
    errors: Annotated[Path | None, typer.Option(help="Also write the rows that failed (row, error) here.")] = None,
    chunk_rows: Annotated[int, typer.Option(help="Rows per block (memory stays bounded by this).")] = 16_384,
    device: Annotated[str, typer.Option(help="auto | cuda | cpu.")] = "auto",
    engine: Annotated[str, typer.Option(help="local (this machine) | ray (Ray Data).")] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to connect to (default: start a local Ray).")
    ] = None,
    explain: Annotated[
        str | None,
        typer.Option(
            help="Reason codes: N (1-100) adds reason_1, effect_1 … reason_N, effect_N; all adds effect_<feature> for every feature."
        ),
    ] = None,
) -> None:
    """Score a file: one output row per input row, in input order, failures kept with the reason in `error`."""
    try:
        from service.explain import checked_explain

        reasons = checked_explain(explain, "--explain")
        ref = bundle.resolve(bundle.models_dir(models_dir), model)
        if engine == "ray":
            if STDIO in (str(input), str(output)):
                raise ValueError("the Ray engine reads and writes files and folders, not stdin/stdout")
            from service.scoring.ray_engine import score_with_ray

            with contextlib.ExitStack() as stack:
                summary = score_with_ray(
                    ref,
                    str(input),
                    output,
                    keep=keep,
                    keep_all=keep_all,
                    address=ray_address,
                    device=device,  # type: ignore[arg-type]
                    chunk_rows=chunk_rows,
                    on_error=stack.enter_context(_errors_file(errors)),
                    explain=reasons,
                )
        elif engine == "local":
            summary = _score_local(ref, input, output, keep, keep_all, errors, chunk_rows, device, reasons)
        else:
            raise ValueError(f"unknown engine {engine!r}: use local or ray")
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(str(exc))
    out = err_console if str(output) == STDIO else console  # NOTE: stdout may be the scores themselves
    out.print(
        f"{ref.name} v{ref.version}: {summary.rows_in:,} rows in, {summary.rows_scored:,} scored, "
        f"{summary.rows_failed:,} with errors, {summary.seconds:.1f} s ({summary.rows_per_second:,.0f} rows/s) → {output}",
        soft_wrap=True,
    )
    if summary.warnings:
        out.print(f"warnings on scored rows ({summary.warnings.total():,}; the rows are scored):")
        for message, rows in summary.warnings.most_common(SHOWN_WARNINGS):
            out.print(f"  {rows:>10,} × {message}", soft_wrap=True, markup=False)
        if len(summary.warnings) > SHOWN_WARNINGS:
            out.print(f"  … and {len(summary.warnings) - SHOWN_WARNINGS:,} other kinds")


def _score_local(
    ref: bundle.BundleRef,
    input: Path,
    output: Path,
    keep: list[str] | None,
    keep_all: bool,
    errors: Path | None,
    chunk_rows: int,
    device: str,
    explain: Any,
) -> Any:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from service.scoring.files import CsvSink, open_source, open_stream
    from service.scoring.local import Scorer, ScoringError, score_file, score_stream

    scorer = Scorer(ref, device, explain=explain)  # type: ignore[arg-type]
    from_stdin = str(input) == STDIO
    if not from_stdin and not input.is_file():
        raise ScoringError(f"input file not found: {input}")
    source = open_stream(sys.stdin.buffer, chunk_rows) if from_stdin else open_source(input, chunk_rows)
    bar = Progress(
        TextColumn("[cyan]scoring"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rows]} rows"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    started = time.perf_counter()
    with bar, contextlib.ExitStack() as stack:
        task = bar.add_task("score", total=None if from_stdin else input.stat().st_size, rows="0", rate="")
        on_error = stack.enter_context(_errors_file(errors))

        def on_block(rows: int, position: int) -> None:
            rate = rows / max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=position, rows=f"{rows:,}", rate=f"{rate:,.0f} rows/s")

        options: dict[str, Any] = {"keep": keep, "keep_all": keep_all, "progress": on_block, "on_error": on_error}
        if str(output) == STDIO:
            return score_stream(scorer, source, lambda schema: CsvSink(sys.stdout.buffer, schema), **options)
        return score_file(scorer, source, output, **options)


@contextlib.contextmanager
def _errors_file(path: Path | None) -> Iterator[Callable[[int, str], None] | None]:
    """`--errors FILE`: a CSV of (row, error), written under a temporary name and renamed when the run
    succeeds (as the output is), so a killed run leaves no half-written file; None without the flag."""
    if path is None:
        yield None
        return
    from service.scoring.local import remove_stale, temporary

    remove_stale(path)
    tmp = temporary(path)
    try:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["row", "error"])
            yield lambda row, message: writer.writerow([row, message])
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
