"""The `tabserve` command: train, list models, serve, score files."""

from __future__ import annotations

import contextlib
import csv
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


def _csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="CSV file to train on.")],
    target: Annotated[str, typer.Option(help="Column to predict.")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the file's stem).")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML or YAML file with training settings.")] = None,
    models_dir: ModelsDir = None,
    task: Annotated[str | None, typer.Option(help="auto | binary | multiclass | regression.")] = None,
    positive: Annotated[str | None, typer.Option(help="Positive class of a binary target.")] = None,
    id_column: Annotated[list[str] | None, typer.Option(help="Identifier column (repeatable).")] = None,
    drop: Annotated[list[str] | None, typer.Option(help="Column to leave out (repeatable).")] = None,
    hidden: Annotated[str | None, typer.Option(help="Hidden layer sizes, e.g. 128,64.")] = None,
    activation: Annotated[str | None, typer.Option(help="relu | leaky_relu | gelu | tanh | sigmoid.")] = None,
    batch_norm: Annotated[bool | None, typer.Option("--batch-norm/--no-batch-norm")] = None,
    dropout: Annotated[float | None, typer.Option()] = None,
    linear_skip: Annotated[bool | None, typer.Option("--linear-skip/--no-linear-skip")] = None,
    epochs: Annotated[int | None, typer.Option(help="Upper bound; early stopping ends sooner.")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option()] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience in epochs.")] = None,
    class_weight: Annotated[str | None, typer.Option(help="none | balanced.")] = None,
    ensemble: Annotated[int | None, typer.Option(help="k-fold ensemble members (1: one model).")] = None,
    threshold_rule: Annotated[str | None, typer.Option(help="f1 | youden | accuracy | a number.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    plots: Annotated[bool | None, typer.Option("--plots/--no-plots", help="PNG plots in the bundle.")] = None,
) -> None:
    """Train an MLP on a CSV and publish it as the next version of a model bundle."""
    try:
        from training.progress import run_training
    except ImportError as exc:
        _fail(f"training needs the train extra (pip install 'tabserve[train]'): {exc}")

    overrides: dict[str, Any] = dict(
        data=str(data),
        target=target,
        name=name,
        models_dir=str(models_dir) if models_dir else None,
        task=task,
        positive=positive,
        id_columns=id_column or None,
        drop=drop or None,
        hidden=[int(h) for h in _csv_list(hidden) or []] or None,
        activation=activation,
        batch_norm=batch_norm,
        dropout=dropout,
        linear_skip=linear_skip,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        patience=patience,
        class_weight=class_weight,
        ensemble=ensemble,
        threshold_rule=threshold_rule,
        seed=seed,
        report_plots=plots,
    )
    try:
        run_training(config, overrides, console)
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(str(exc))


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
) -> None:
    """Score a file: one output row per input row, in input order, failures kept with the reason in `error`."""
    try:
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
                )
        elif engine == "local":
            summary = _score_local(ref, input, output, keep, keep_all, errors, chunk_rows, device)
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
) -> Any:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from service.scoring.files import CsvSink, open_source, open_stream
    from service.scoring.local import Scorer, ScoringError, score_file, score_stream

    scorer = Scorer(ref, device)  # type: ignore[arg-type]
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
