"""The `tabserve` command: train, list models, serve, score files."""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import errno
import inspect
import itertools
import os
import re
import signal
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

from service import bundle, release

PIPED_WIDTH = 200  # piped output: tables take their natural width up to this, text is never wrapped


def _console(stderr: bool = False) -> Console:
    """Rich's console; piped (CI, nohup, a file) it never wraps a line: one message stays one line."""
    if (sys.stderr if stderr else sys.stdout).isatty():
        return Console(stderr=stderr, highlight=False)
    width = None if os.environ.get("COLUMNS") else PIPED_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


app = typer.Typer(help="Train, serve and score tabular business models.", no_args_is_help=True)
console = _console()
err_console = _console(stderr=True)

ModelsDir = Annotated[
    Path | None,
    typer.Option("--models-dir", "--models", help="Model store (default $TABSERVE_MODELS_DIR or ./models)."),
]


LogDir = Annotated[
    str | None,
    typer.Option("--log", help="Prediction log folder (or a URI pyarrow reads): DIR/<model>/date=…/*.parquet."),
]
LogExclude = Annotated[list[str] | None, typer.Option(help="A field never written to the log (repeatable).")]
Cpus = Annotated[
    int | None,
    typer.Option(
        min=1,
        envvar="TABSERVE_CPUS",
        show_envvar=False,
        help="CPUs to use (default: the affinity mask and cgroup CPU quota decide; $TABSERVE_CPUS).",
    ),
]
SHOWN_WARNINGS = 8
STDIO = "-"  # `--input -` / `--output -`: stdin / stdout


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2."""
    err_console.print(Text.assemble(("error: ", "bold red"), message.replace("\n", " ")), soft_wrap=True)
    raise typer.Exit(2)


def _cpu_budget(cpus: int | None) -> int:
    """The command's CPU budget (`--cpus`, else the affinity mask and quota), Arrow's pool sized to it
    (Arrow sees the affinity mask, not a cgroup quota)."""
    import pyarrow as pa

    from service.cpus import cpu_budget

    budget = cpu_budget(cpus)
    pa.set_cpu_count(budget.cpus)
    return budget.cpus


def _version(shown: bool) -> None:
    """`tabserve --version`: the version, the CPU budget, the device and the C accelerators built."""
    if not shown:
        return
    from importlib.metadata import version

    from service.accelerators import accelerators
    from service.cpus import cpu_budget
    from service.runtime import describe_device

    setting = os.environ.get("TABSERVE_CPUS", "").strip() or None  # as `serve` and `score` read it
    if setting is not None and not (setting.isascii() and setting.isdecimal() and int(setting) >= 1):
        _fail(f"TABSERVE_CPUS takes a whole number of CPUs, 1 or more, not {setting!r}")
    budget = cpu_budget(int(setting) if setting is not None else None)
    quota = f"{budget.quota:g} CPUs" if budget.quota is not None else "none"
    console.print(f"tabserve {version('tabserve')}")
    console.print(f"CPU budget: {budget}; affinity {budget.affinity} CPU(s), cgroup quota {quota}", soft_wrap=True)
    console.print(describe_device("auto"), soft_wrap=True)
    built = accelerators()
    console.print("C accelerators: " + ", ".join(f"{k} {'built' if ok else 'missing'}" for k, ok in built.items()))
    raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Version, CPU budget, device; then exit."),
    ] = False,
) -> None:
    """Train, serve and score tabular business models."""


TRAIN_ALIASES = {"models_dir": ["--models"]}


def _config_options() -> list[inspect.Parameter]:
    """One `tabserve train` option per `TrainConfig` field: flag, type, help and default all come from
    training/config.py, so nothing is declared twice. A flag not given leaves the value to the
    `--config` file, else the field's default."""
    from training.config import TrainConfig, flag

    hints = typing.get_type_hints(TrainConfig)
    options = []
    for field in dataclasses.fields(TrainConfig):
        kind = hints[field.name]
        option_flag = flag(field.name)
        default: Any = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        extra: dict[str, Any] = {}
        plain: Any
        shown: Any
        if kind is bool:
            plain = bool
            option_flag, shown = f"{option_flag}/--no-{option_flag[2:]}", "on" if default else "off"
        elif typing.get_origin(kind) is list:
            plain, shown = list[str], ",".join(map(str, default))
            if typing.get_args(kind) == (int,):
                extra["metavar"] = "N,N,…"
        else:
            plain, shown = next((t for t in typing.get_args(kind) if t is not type(None)), kind), default
        text = field.metadata["help"] + _default_text(field.metadata["help"], shown)
        option = typer.Option(option_flag, *TRAIN_ALIASES.get(field.name, []), help=text, show_default=False, **extra)
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
            typer.Option(
                help="TOML or YAML file whose keys are these settings' field names; flags win over it (default none)"
            ),
        ],
    )
    at = [p.name for p in options].index("name") + 1
    return [*options[:at], config, *options[at:]]


def _default_text(help: str, shown: Any) -> str:
    """` (default …)` for a flag's help, unless its help already says it (or that it is required)."""
    if "default" in help or "(required)" in help:
        return ""
    return f" (default {'none' if shown in ('', None) else shown})"


def _int_list(flag: str, values: list[str]) -> list[int]:
    """`--hidden 128,64` (or `--hidden 128 --hidden 64`) → [128, 64], read as a config file's value."""
    from training.config import int_list

    sizes = int_list(",".join(values))
    if not sizes:  # `--hidden ''` read as no flag at all ran with the default sizes
        _fail(f"{flag} takes whole numbers separated by commas, such as 128,64, not {','.join(values)!r}")
    return sizes


def train(config: Path | None = None, **flags: Any) -> None:
    """Train an MLP on a CSV and publish it as the next version of a model bundle.

    A flag not given leaves the setting to the --config file, else to its default (training/config.py)."""
    from training.config import TrainConfig, build_config, flag

    hints = typing.get_type_hints(TrainConfig)
    overrides: dict[str, Any] = {}
    for name, value in flags.items():
        if value is not None and typing.get_origin(hints[name]) is list:
            value = _int_list(flag(name), value) if hints[name] == list[int] else list(value)
        overrides[name] = value if value != [] else None  # an empty repeatable option means "not given"
    try:  # NOTE: before torch is imported (seconds): a wrong argument is answered at once
        cfg = build_config(config, **overrides)
        _check_readable(Path(cfg.data))
        try:  # before any training: a name the store refuses failed only at publishing, minutes later
            bundle.check_name(cfg.name)
        except bundle.BundleError as exc:
            default = "" if flags.get("name") else " (it defaults to the data file's name: pass --name)"
            raise ValueError(f"{exc}{default}") from None
        root = bundle.models_dir(cfg.models_dir)
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(f"model store {root} is a file, not a folder")
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    try:
        from training.progress import train_with_progress
    except ImportError as exc:
        _fail(f"training needs the train extra (pip install 'tabserve[train]'): {exc}")
    try:
        train_with_progress(cfg, console)
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(str(exc))


def _check_readable(path: Path) -> None:
    """The data file exists, is a file and can be read (its content is training's to judge)."""
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if not path.is_file():
        raise IsADirectoryError(f"data file is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"data file cannot be read (permissions): {path}")


def _no_training() -> None:
    """Train a model: not in this install (the serving image carries no training code)."""
    _fail("this install has no training code (the serving image): train where tabserve[train] is installed")


try:
    train.__signature__ = inspect.Signature(_config_options())  # type: ignore[attr-defined]
except ModuleNotFoundError:  # the serving image (Dockerfile): serve and score, but `train` says why not
    app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(_no_training)
else:
    train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}  # type: ignore[attr-defined]
    app.command()(train)


@app.command("models")
def list_models(models_dir: ModelsDir = None) -> None:
    """List the bundles in the model store: which serves (champion), which is challenger, and the
    last release decisions."""

    root = bundle.models_dir(models_dir)
    table = Table("name", "version", "role", "task", "key metric", "created", title=f"models in {root}")
    states: dict[str, release.Release | str] = {}
    for ref in bundle.iter_bundles(root):
        if ref.name not in states:
            try:
                states[ref.name] = release.current(root, ref.name)
            except release.ReleaseError as exc:
                states[ref.name] = str(exc)
        state = states[ref.name]
        role = _role(state, ref.version)
        try:
            m = ref.metrics
        except (OSError, ValueError) as exc:
            table.add_row(ref.name, str(ref.version), role, "[red]unreadable[/]", str(exc)[:40], "")
            continue
        key = m.get("key_metric", "")
        value = m.get("test", {}).get(key)
        shown = f"{key} {value:.4f}" if isinstance(value, float) else key
        table.add_row(ref.name, str(ref.version), role, m.get("task", "?"), shown, m.get("created", ""))
    if not table.row_count:
        console.print(f"no models in {root}; train one with `tabserve train`")
        return
    console.print(table)
    for name, state in sorted(states.items()):
        numbers = bundle.retired_versions(root, name)
        if numbers:
            console.print(f"{name}: retired version(s) {', '.join(map(str, numbers))} (kept, never served)")
        if isinstance(state, str):
            console.print(f"[red]{name}: {state}[/] (services keep their last good state)", soft_wrap=True)
        for entry in state.history[-release.HISTORY_SHOWN :] if not isinstance(state, str) else []:
            what = f"{entry.get('action')} {entry.get('version') or ''}".strip()
            if entry.get("action") == "rollback":  # no version is named: say which one is back
                what += f" to {entry.get('champion')}"
            if entry.get("action") == "promote" and entry.get("canary"):  # a share of traffic, not champion
                what += f" as canary ({entry['canary'] * 100:g} %)"
            if entry.get("action") == "shadow" and "shadow" in entry:  # older files did not record which way
                what += " on" if entry["shadow"] else " off"
            # named: with several models in the store, their decisions follow one another
            line = f"  {name}  {entry.get('at')}  {entry.get('who')}: {what} — {entry.get('why', '')}"
            # one line each: a file edited by hand may hold line breaks or terminal escapes in a reason
            console.print("".join(c if c.isprintable() else repr(c)[1:-1] for c in line), soft_wrap=True, markup=False)


def _role(state: Any, version: int) -> str:
    if isinstance(state, str):
        return "[red]?[/]"
    if version == state.champion:
        return "[green]champion[/]"
    if version == state.challenger:
        canary = f", canary {state.canary * 100:g} %" if state.canary else ""
        return f"challenger{canary}{', shadow' if state.shadow else ''}"
    # an earlier champion is what rollback restores; "retired" is only a `tabserve retire` folder (never served)
    return "[dim]previous champion[/]" if version in state.previous else "[dim]not serving[/]"


ModelSpec = Annotated[str, typer.Argument(help="name@version (promote: name alone promotes its challenger).")]
Why = Annotated[str, typer.Option(help="Why: kept in the audit trail (release.json).")]


def _decide(models_dir: Path | None, spec: str, action: str, **options: Any) -> None:

    root = bundle.models_dir(models_dir)
    name, _, wanted = spec.partition("@")
    if wanted and not wanted.isdigit():
        _fail(f"{spec!r}: write name@version, such as churn@7")
    if not bundle.versions(root, name):
        _fail(f"no model named {name!r} in {root}")
    try:
        state = release.decide(root, name, action, int(wanted) if wanted else None, **options)
    except (release.ReleaseError, OSError) as exc:
        _fail(str(exc))
    canary = f", canary {state.canary * 100:g} % to version {state.challenger}" if state.canary else ""
    challenger = f", challenger {state.challenger}" if state.challenger and not state.canary else ""
    console.print(
        f"{name}: champion {state.champion}{challenger}{canary}{', shadow on' if state.shadow else ''} "
        "(running services switch at their next poll or POST /admin/reload)",
        soft_wrap=True,
    )


@app.command()
def promote(
    model: ModelSpec,
    canary: Annotated[
        float | None, typer.Option(help="Percent of traffic (above 0, below 100; sticky per id) instead of all of it.")
    ] = None,
    why: Why = "",
    models_dir: ModelsDir = None,
) -> None:
    """Make a version champion (it serves), or with --canary let it answer that share of the traffic."""
    if canary is not None and not 0 < canary < 100:
        _fail("--canary takes a percent above 0 and below 100")
    _decide(models_dir, model, "promote", canary=canary / 100 if canary is not None else None, why=why)


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="Model name.")], why: Why = "", models_dir: ModelsDir = None
) -> None:
    """Put the previous champion back (and end any canary)."""
    _decide(models_dir, _name_only(model, "rollback"), "rollback", why=why)


@app.command()
def shadow(
    model: Annotated[str, typer.Argument(help="Model name.")],
    on: Annotated[str, typer.Argument(help="on or off.")],
    why: Why = "",
    models_dir: ModelsDir = None,
) -> None:
    """Let the challenger score every request off the request path (agreement in GET /models/NAME)."""
    if on.lower() not in ("on", "off"):
        _fail(f"say on or off, not {on!r}")
    _decide(models_dir, _name_only(model, "shadow"), "shadow", shadow=on.lower() == "on", why=why)


def _name_only(model: str, command: str) -> str:
    """A model name; `churn@7` is refused: the command picks its versions itself (a version was ignored)."""
    if "@" in model:
        _fail(
            f"tabserve {command} takes a model name, not a version ({model!r}): it acts on the release file's versions"
        )
    return model


@app.command()
def retire(
    model: Annotated[str, typer.Argument(help="name (its newest version) or name@version.")],
    why: Why = "",
    models_dir: ModelsDir = None,
) -> None:
    """Take a model version out of the store: the folder is kept as `<version>.retired` and its
    number is never reused (rename it back to restore it). Without a release file the newest
    remaining version serves; with one, retire a champion only after `tabserve rollback`, a
    canary's version after promoting the champion again; a challenger stops being one."""

    root = bundle.models_dir(models_dir)
    try:
        ref, state = release.retire(root, model, why=why)
    except (bundle.BundleError, release.ReleaseError, OSError) as exc:
        _fail(str(exc))
    serving = state.champion if state is not None else bundle.versions(root, ref.name)[-1]
    console.print(
        f"retired {ref.name} version {ref.version} → {ref.path}; version {serving} serves "
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
        if typing.get_origin(kind) is list:
            plain, default = kind, "none"
        else:
            plain = str if choices else next((t for t in typing.get_args(kind) if t is not type(None)), kind)
            default = field.default if field.default is not None else "none"
        if kind is bool:
            flag, default = f"{flag}/--no-{flag[2:]}", "on" if field.default else "off"  # as `train --help` says it
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
        run_server({k: v for k, v in flags.items() if v is not None and v != []})
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))


serve.__signature__ = inspect.Signature(_settings_options())  # type: ignore[attr-defined]
serve.__annotations__ = {p.name: p.annotation for p in serve.__signature__.parameters.values()}  # type: ignore[attr-defined]
app.command()(serve)


@app.command()
def score(
    model: Annotated[
        str, typer.Option(help="Name (its champion, the version that serves), name@version, or a bundle directory.")
    ],
    input: Annotated[
        Path,
        typer.Option(
            "--input",
            help="File to score: .csv (any delimiter), .csv.gz, .parquet, .jsonl or .xlsx/.xls; - reads CSV (or gzip) from stdin (Ray: a folder or glob).",
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
    chunk_rows: Annotated[int, typer.Option(min=1, help="Rows per block (memory stays bounded by this).")] = 16_384,
    device: Annotated[str, typer.Option(help="auto | cuda | cpu.")] = "auto",
    engine: Annotated[str, typer.Option(help="local (this machine) | ray (Ray Data).")] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join: auto, host:port (default: $RAY_ADDRESS, else a local Ray).")
    ] = None,
    explain: Annotated[
        str | None,
        typer.Option(
            help="Reason codes: N (1-100) adds reason_1, effect_1 … reason_N, effect_N; all adds effect_<feature> for every feature; 0 adds none."
        ),
    ] = None,
    log: LogDir = None,
    log_exclude: LogExclude = None,
    cpus: Cpus = None,
    sep: Annotated[
        str | None, typer.Option(help="CSV delimiter (default: the training file's, else told by the header).")
    ] = None,
    encoding: Annotated[
        str | None, typer.Option(help="Text encoding of a CSV (default: the training file's, else detected).")
    ] = None,
    decimal: Annotated[
        str | None, typer.Option(help="Decimal mark of the file's numbers, . or , (default: the training file's).")
    ] = None,
) -> None:
    """Score a file: one output row per input row, in input order, failures kept with the reason in `error`."""
    try:
        from service.explain import checked_explain
        from service.features import did_you_mean
        from service.scoring.files import output_format_of

        if str(output) != STDIO:  # an output format tabserve does not write is refused before any work
            output_format_of(output)
        if errors is not None and errors.suffix.lower() not in (".csv", ".txt", ""):  # written as plain CSV
            raise ValueError(f"--errors {errors}: the failed rows are written as CSV; name the file .csv or .txt")
        if device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"--device is auto, cuda or cpu, not {device!r}")
        output, errors = (
            _written(input, output, "--output", folder=engine == "ray"),
            _written(input, errors, "--errors"),
        )
        if errors is not None and str(output) != STDIO and errors == output:
            raise ValueError(f"--errors {errors} is the --output file: name another")
        budget = _cpu_budget(cpus)

        reasons = checked_explain(explain, "--explain")
        ref = release.resolve(bundle.models_dir(models_dir), model)
        reading = ref.preprocess.read.but(sep, encoding, decimal)
        unknown = [f for f in log_exclude or [] if f not in ref.preprocess.known_fields]
        if log is not None and unknown:  # a misspelt field kept out of the log is a field logged
            hint = did_you_mean(unknown[0], ref.preprocess.known_fields)
            raise ValueError(f"--log-exclude {unknown[0]!r} is no field of {ref.name}'s records{hint}")
        if engine == "ray":
            if STDIO in (str(input), str(output)):
                raise ValueError("the Ray engine reads and writes files and folders, not stdin/stdout")
            if log is not None:  # it was ignored: every record left out of the log, without a word
                raise ValueError("--log is not written by the Ray engine: score with --engine local to log the records")
            try:
                from service.scoring.ray_engine import score_with_ray
            except ImportError as exc:
                raise ValueError(f"--engine ray needs the ray extra (pip install 'tabserve[ray]'): {exc}") from None

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
                    cpus=budget,
                    reading=reading,
                    errors=errors,
                )
        elif engine == "local":
            with _prediction_log(log, log_exclude) as logged:
                summary = _score_local(
                    ref,
                    input,
                    output,
                    keep,
                    keep_all,
                    errors,
                    chunk_rows,
                    device,
                    reasons,
                    logged,
                    budget,
                    reading,
                )
        else:
            raise ValueError(f"unknown engine {engine!r}: use local or ray")
    except OSError as exc:
        if exc.errno == errno.EPIPE and str(output) == STDIO:
            _reader_gone()
        _fail(str(exc))
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    out = err_console if str(output) == STDIO else console  # NOTE: stdout may be the scores themselves
    out.print(
        f"{ref.name} v{ref.version}: {summary.rows_in:,} rows in, {summary.rows_scored:,} scored, "
        f"{summary.rows_failed:,} with errors, {summary.seconds:.1f} s ({summary.rows_per_second:,.0f} rows/s) → {output}",
        soft_wrap=True,
    )
    if summary.warnings:
        out.print(
            f"warnings on scored rows ({summary.warnings.total():,}; the rows are scored; see each row's warning column):"
        )
        for message, rows in summary.warnings.most_common(SHOWN_WARNINGS):
            out.print(f"  {rows:>10,} × {message}", soft_wrap=True, markup=False)
        if len(summary.warnings) > SHOWN_WARNINGS:
            out.print(f"  … and {len(summary.warnings) - SHOWN_WARNINGS:,} other kinds")
    if summary.unvalued:  # a column an export left empty: no row's warning says it
        fields = ", ".join(repr(name) for name in summary.unvalued)
        out.print(
            f"warning: no row has a value the model can use for {fields} (blank, missing or an unseen level): "
            "every row was scored as if it were missing",
            soft_wrap=True,
            markup=False,
        )
    if summary.read_as_utf8:  # an ASCII start kept the training file's encoding; the bytes past it said otherwise
        was = next(iter(summary.read_as_utf8.values()))
        files = ", ".join(sorted(name for name in summary.read_as_utf8 if name)) or str(input)
        out.print(
            f"note: {files} read as UTF-8, not as {was} (the training file's encoding): the first bytes beyond "
            f"ASCII are UTF-8 (pass --encoding {was} if that is wrong)",
            soft_wrap=True,
            markup=False,
        )
    hint = summary.encoding_hint()  # rows lost to the encoding: name the flag that reads them
    if hint:
        out.print(hint, soft_wrap=True, markup=False)
    failing = _file_level_failure(summary)
    if failing:
        _fail(failing)


def _reader_gone() -> NoReturn:
    """`--output - | head`: the reader stopped early, as with any Unix filter, so exit as `cat` does
    there (128 + SIGPIPE), silently; the rest of stdout goes nowhere (no second error at exit)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(128 + signal.SIGPIPE)


FILE_FAILURE_SHARE = 0.5  # most rows failing is a file-level problem (wrong encoding, file, model)


def _file_level_failure(summary: Any) -> str | None:
    """The reason to fail the whole run when most rows failed, mostly the same way; else None."""
    if summary.unclosed_row is not None:  # the rows after it are in no output: the file's fault, not a row's
        where = f" of {summary.unclosed_file}" if summary.unclosed_file else ""  # one of a Ray run's files
        return (
            f'a quote (") opened in row {summary.unclosed_row:,}{where} is never closed: the rest of the file was '
            "read into that row, so the rows after it are in no output. Fix the quote and score the file again"
        )
    if summary.rows_in < 10 or summary.rows_failed <= FILE_FAILURE_SHARE * summary.rows_in:
        return None
    kinds = collections.Counter(_error_kind(message) for _, message in summary.errors)
    kind, seen = kinds.most_common(1)[0] if kinds else ("", 0)
    example = next((m for _, m in summary.errors if _error_kind(m) == kind), "")
    hint = " (pass --encoding, e.g. cp1252)" if "UTF-8" in kind else ""
    return (
        f"{summary.rows_failed:,} of {summary.rows_in:,} rows failed, {seen} of the first {len(summary.errors)} "
        f"the same way: {example}{hint}. A file where most rows fail does not fit the model; the rows are in the output"
    )


def _error_kind(message: str) -> str:
    """An error without its file, row and value: `field 'tenure': expected a number`."""
    kind = re.sub(r"^(.*?: )?(row|record) \d+,?\s*", "", message)  # a Ray run's `b.csv: row 3` too
    return re.sub(r",? got .*$", "", kind)


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
    log: Any,
    cpus: int,
    reading: Any = None,
) -> Any:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from service.scoring.files import CsvSink, open_source, open_stream
    from service.scoring.local import Scorer, ScoringError, score_file, score_stream, scoring_workers

    scorer = Scorer(ref, device, explain=explain, log=log, reading=reading)  # type: ignore[arg-type]
    from_stdin = str(input) == STDIO
    if not from_stdin and (input.is_dir() or (not input.exists() and any(c in str(input) for c in "*?["))):
        raise ScoringError(f"{input}: the local engine scores one file; a folder or a glob needs --engine ray")
    if not from_stdin and not input.is_file():
        raise ScoringError(f"input file not found: {input}")
    if from_stdin:
        source = open_stream(sys.stdin.buffer, chunk_rows, reading=reading)
    else:
        source = open_source(input, chunk_rows, reading)
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
        options["workers"] = scoring_workers(cpus)
        if str(output) == STDIO:
            return score_stream(scorer, source, lambda schema: CsvSink(sys.stdout.buffer, schema), **options)
        return score_file(scorer, source, output, **options)


def _written(input: Path, path: Path | None, flag: str, folder: bool = False) -> Path | None:
    """A file `tabserve score` writes (renamed into place at the end), checked before any work: never
    the input, a folder (but Ray's output), a device or pipe (a rename would replace it), or in a
    folder that is not there or not writable. A link is written through, to the file it names."""
    if path is None or str(path) == STDIO:
        return path
    if not path.name:
        raise ValueError(f"{flag} {str(path)!r}: name a file")
    path = Path(os.path.realpath(path)) if path.is_symlink() else path
    if path.exists():
        if path.is_dir() and not folder:
            raise ValueError(f"{flag} {path} is a folder: name a file in it")
        if not path.is_dir() and not path.is_file():
            raise ValueError(f"{flag} {path} is not a regular file (a device or a pipe); --output - writes to stdout")
        if str(input) != STDIO and input.exists() and os.path.samefile(input, path):
            raise ValueError(f"{flag} {path} is the input file: writing it would replace the rows being read")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {parent} is not writable by this user")
    return path


@contextlib.contextmanager
def _prediction_log(root: str | None, exclude: list[str] | None) -> Iterator[Any]:
    """`--log DIR`: a prediction log for the scored rows, closed (everything written) at the end."""
    if root is None:
        yield None
        return
    from monitoring.log import PredictionLog

    log = PredictionLog(root, exclude=exclude or ())
    try:
        yield log
    finally:
        log.close()


@app.command()
def feedback(
    model: Annotated[str, typer.Option(help="Model name (its serving version's contract checks the outcomes).")],
    input: Annotated[
        Path, typer.Option("--input", help="CSV, .csv.gz (or JSON {records: [...]}) of id columns and the outcome.")
    ],
    log: Annotated[str, typer.Option("--log", help="The prediction log the ids were scored into.")],
    models_dir: ModelsDir = None,
    partial: Annotated[bool, typer.Option(help="Store the good records even when some are refused.")] = False,
    encoding: Annotated[
        str | None, typer.Option(help="Text encoding of a CSV (default: the training file's, else detected).")
    ] = None,
    cpus: Cpus = None,
) -> None:
    """Store delayed outcomes beside the prediction log, keyed by the model's id column."""
    from monitoring.feedback import Feedback, NotUtf8, in_record, records_of
    from monitoring.log import LogLocation
    from service.errors import InputError
    from service.features import text_encoding

    if encoding is not None and not text_encoding(
        encoding
    ):  # checked alone: a LookupError caught around the work hid its bugs as this
        _fail(f"--encoding: {encoding!r} is not a text encoding Python knows (e.g. utf-8, cp1252)")

    media = "application/json" if input.name.lower().removesuffix(".gz").endswith(".json") else "text/csv"

    def row(record: int) -> str:  # a CSV's data rows counted from 1, as scoring's errors file does
        return f"row {record + 1}"

    def where(detail: dict[str, Any]) -> str:
        record = detail["record"]
        place = row(record) if media == "text/csv" and isinstance(record, int) else f"record {record}"
        field = f", field '{detail['field']}'" if detail.get("field") is not None else ""  # none: a row not read
        return f"  {place}{field}: {detail['message']}"

    try:
        _cpu_budget(cpus)
        ref = release.resolve(bundle.models_dir(models_dir), model)
        data = _feedback_bytes(input)
        if media == "text/csv":  # as `tabserve score` reads a CSV: the training file's encoding, else detected
            data = _as_utf8(input, data, encoding, ref.preprocess.read.encoding)
        records = records_of(data, media, limit=None)
        feedback = Feedback(LogLocation.of(log), ref.name, ref.preprocess)
        stored = feedback.submit_file(records, partial, place=row if media == "text/csv" else in_record)
    except NotUtf8 as exc:
        how = f"--encoding {exc.bom}" if exc.bom else "--encoding with its encoding (e.g. cp1252)"
        _fail(f"nothing stored: {input} is not UTF-8 ({exc.where}): pass {how}, or save the file as UTF-8")
    except InputError as exc:
        for detail in exc.details[:SHOWN_WARNINGS]:
            err_console.print(where(detail), markup=False)
        if not exc.details:  # the file as a whole (empty, not CSV) or the log: no record was looked at
            _fail(f"nothing stored: {input}: {exc}")
        if exc.kind == "malformed":  # rows the reader cannot split: the whole file is refused, --partial or not
            _fail(f"nothing stored: {input}: {where(exc.details[0]).strip()} ({len(exc.details):,} row(s) not read)")
        _fail(f"nothing stored: {where(exc.details[0]).strip()} ({len(exc.details):,} record(s) refused)")
    except (ValueError, OSError, bundle.BundleError) as exc:
        _fail(str(exc))
    twice = len(stored.duplicates)
    again = f" ({twice:,} repeated an earlier row's id and outcome: stored once)" if twice else ""
    console.print(f"{ref.name}: {stored.stored:,} outcome(s) stored{again}, {len(stored.refused):,} refused")
    for detail in stored.refused[:SHOWN_WARNINGS]:
        console.print(where(detail), markup=False)


def _feedback_bytes(path: Path) -> bytes:
    """A feedback file's bytes, gzip inflated (`.csv.gz`, as `tabserve score` reads it)."""
    import gzip

    data = path.read_bytes()
    if data.startswith(b"\x1f\x8b"):  # gzip's magic bytes, whatever the name says
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path} is not a whole gzip file: {exc}") from None
    return data


def _as_utf8(path: Path, data: bytes, encoding: str | None, trained: str) -> bytes:
    """A CSV's bytes as UTF-8, read in `encoding`, else chosen as `tabserve score` chooses it (the training
    file's encoding, `trained`, unless the bytes say otherwise); a guess is said with the words it reads."""
    import codecs

    from service.scoring.files import HEADER_PROBE, choose_encoding, guessed_encoding_note

    if codecs.lookup(trained).name == "utf-8-sig":  # UTF-8 whose byte-order mark training dropped
        trained = "utf-8"
    chosen = encoding or choose_encoding(data[:HEADER_PROBE], trained)
    name = codecs.lookup(chosen).name
    if name in ("utf-8", "utf-8-sig"):
        return data  # a byte that is not UTF-8 is refused naming its line (NotUtf8)
    moot = data.isascii()
    if encoding is None and name not in ("utf-16", "utf-32") and not moot and _valid_utf8(data):
        # past an ASCII start the guess kept the training file's encoding; the whole file says otherwise
        err_console.print(
            f"note: {path} is valid UTF-8: read as UTF-8, not as {chosen} (pass --encoding {chosen} if that is wrong)",
            markup=False,
        )
        return data
    try:
        text = data.decode(chosen)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not {chosen} either (byte 0x{data[exc.start]:02x} at {exc.start:,})") from None
    if encoding is not None or name in ("utf-16", "utf-32") or moot:  # given, a byte-order mark's, or moot
        return text.encode("utf-8")
    if name != codecs.lookup(trained).name:
        err_console.print(f"warning: {path} is " + guessed_encoding_note(data[:HEADER_PROBE], chosen), markup=False)
    else:  # an ASCII start says nothing: the rest was read in the training file's encoding, unchecked
        words = collections.Counter(_non_ascii_words(text, SAMPLED_WORDS)).most_common(3)
        err_console.print(
            f"warning: {path} was read as {chosen}, the training file's encoding, reading "
            f"{', '.join(repr(w) for w, _ in words)}: pass --encoding if that is wrong",
            markup=False,
        )
    return text.encode("utf-8")


SAMPLED_WORDS = 10_000  # words that are not ASCII the warning's examples are counted among: a bound on its time
WORD_SIDE = 40  # letters a side a word is shown with


def _non_ascii_words(text: str, limit: int) -> Iterator[str]:
    """The words around the first `limit` runs of characters that are not ASCII, each widened over
    letters and digits by at most WORD_SIDE a side (`\\w*` around them in one regex is quadratic
    on a long run of letters: 20,000 took 1.9 s)."""
    for run in itertools.islice(re.finditer(r"[^\x00-\x7f]+", text), limit):
        lo, hi = run.start(), run.end()
        while lo > run.start() - WORD_SIDE and lo > 0 and text[lo - 1].isalnum():
            lo -= 1
        while hi < run.end() + WORD_SIDE and hi < len(text) and text[hi].isalnum():
            hi += 1
        yield text[lo:hi]


def _valid_utf8(data: bytes, block: int = 1 << 20) -> bool:
    """Whether `data` is UTF-8, decoded a block at a time (no second copy of a large file)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for at in range(0, len(data), block):
            decoder.decode(data[at : at + block])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


log_app = typer.Typer(help="The prediction log.", no_args_is_help=True)
app.add_typer(log_app, name="log")


@log_app.command("export")
def log_export(
    model: Annotated[str, typer.Option(help="Model name.")],
    log: Annotated[str, typer.Option("--log", help="The prediction log folder.")],
    output: Annotated[Path, typer.Option(help="Parquet (or .csv) file to write.")],
    labelled: Annotated[
        bool, typer.Option(help="Only records with an outcome, the outcome under the target's name: a training file.")
    ] = False,
    models_dir: ModelsDir = None,
    cpus: Cpus = None,
) -> None:
    """Write logged records to one file (with --labelled, ready for `tabserve train --data`)."""
    try:
        from monitoring.report import LogReader, readable

        store: Path | None = bundle.models_dir(models_dir)
        if store is not None and not (store / model).is_dir():  # said, not silent: which columns are dates is unknown
            err_console.print(
                f"warning: {model} is not in {store} (--models-dir): a date feature is written as its age in days",
                markup=False,
            )
            store = None
        with readable(log, model):
            rows = LogReader(log, model, threads=_cpu_budget(cpus)).export(output, labelled, store)
    except ImportError as exc:
        _fail(f"the log commands need the monitor extra (pip install 'tabserve[monitor]'): {exc}")
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    console.print(f"{rows:,} {'labelled ' if labelled else ''}record(s) of {model} → {output}")


@app.command()
def monitor(
    model: Annotated[str, typer.Option(help="Model name, or name@version: its training is the reference.")],
    log: Annotated[str, typer.Option("--log", help="The prediction log folder.")],
    models_dir: ModelsDir = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only the last span: a whole number and m (minutes), h, d or w: 90m, 12h, 30d, 2w. "
            "Over 10,000 years: the whole log."
        ),
    ] = None,
    by: Annotated[str, typer.Option(help="Period: day | week | hour.")] = "day",
    html: Annotated[Path | None, typer.Option(help="Also write an HTML report with plots here.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON here.")] = None,
    cpus: Cpus = None,
) -> None:
    """Drift and live accuracy over the whole prediction log: PSI per feature per period against
    training (< 0.1 stable, 0.1–0.25 moderate, > 0.25 act) and the labelled predictions' metrics."""
    try:
        from monitoring.report import PERIODS, LogReader, build_report, readable

        if by not in PERIODS:
            raise ValueError(f"--by takes {', '.join(PERIODS)}, not {by!r}")
        ref = release.resolve(bundle.models_dir(models_dir), model)
        with readable(log, ref.name):
            reader = LogReader(log, ref.name, ref.preprocess.id_columns, threads=_cpu_budget(cpus))
            outputs = {
                flag: (path, reader.check_output(path, flag))  # before any work
                for flag, path in (("--json", json_out), ("--html", html))
                if path is not None
            }
            report = build_report(reader, ref, since, by)
        _write_report(report, outputs)
    except ImportError as exc:
        _fail(f"tabserve monitor needs the monitor extra (pip install 'tabserve[monitor]'): {exc}")
    except (ValueError, OSError, bundle.BundleError) as exc:
        _fail(str(exc))
    _print_report(report)
    if html is not None:
        console.print(f"report → {html}")


def _write_report(report: Any, outputs: dict[str, tuple[Path, Path]]) -> None:
    """`--json` and `--html` (flag → the path given, the file it names), each written under a temporary
    name and renamed when whole; a write that fails names its flag and path."""
    import json

    from monitoring.html import write_html
    from service.atomic import written_whole

    write: dict[str, Callable[[Path], object]] = {
        "--json": lambda tmp: tmp.write_text(json.dumps(report.to_json(), indent=1, allow_nan=False)),
        "--html": lambda tmp: write_html(report, tmp),
    }
    for flag, (given, written) in outputs.items():
        try:
            with written_whole(written) as tmp:
                write[flag](tmp)
        except OSError as exc:  # a full disk, a file-size limit: not the temporary's name, the flag's
            raise ValueError(f"{flag} {given}: cannot write it ({exc.strerror or exc})") from None


def _print_report(report: Any, shown: int = 10) -> None:
    """PSI per field per period (the last `shown` periods), the fields that moved most first; then live metrics."""
    from service.drift import FEW_ROWS, NO_ROWS

    for version, rows in report.other_versions.items():  # a canary's, a former champion's: not this reference's
        console.print(f"left out: {rows:,} rows scored by v{version} (their report: --model {report.model}@{version})")
    if report.empty:  # an empty table would colour nothing and say nothing: no verdict without rows
        console.print(f"{report.model} v{report.version}: {NO_ROWS} in this span (no drift verdict)")
        return
    periods = report.periods[-shown:]
    table = Table(
        "field",
        *[p[:10] if p.endswith("00:00") else p for p in periods],
        title=f"PSI of {report.model} v{report.version} against training (rows per period in the last line)",
    )
    colour = {"stable": "green", "moderate": "yellow", "act": "bold red", FEW_ROWS: "dim"}
    said = {name: report.readings(name)[-shown:] for name in report.psi}

    for name in sorted(report.psi, key=lambda name: -report.moved(name, shown)):
        values = report.psi[name][-shown:]
        table.add_row(name, *[f"[{colour[r]}]{v:.3f}[/]" for v, r in zip(values, said[name], strict=True)])
    table.add_row("rows", *[f"{n:,}" for n in report.rows[-shown:]])
    console.print(table)
    if any(FEW_ROWS in readings for readings in said.values()):
        console.print(f"dim: {FEW_ROWS} in that period to tell (an unchanged population would read 0.1 or more)")
    if report.live:
        keys = [
            k
            for k in ("rows", "auc", "log_loss", "brier", "ece", "positive_rate", "accuracy", "rmse", "mae", "bias")
            if k in report.live[0]
        ]
        live = Table("period", *keys, title="live metrics of labelled predictions")
        for doc in report.live[-shown:]:
            live.add_row(
                doc["period"],
                *[f"{doc[k]:,}" if k == "rows" else ("-" if doc[k] is None else f"{doc[k]:.4f}") for k in keys],
            )
        console.print(live)
        test = (report.training or {}).get("test") or {}
        if test:
            console.print(
                "training's test split: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
            )
    else:
        console.print("no outcomes yet: post them to /models/<name>/feedback or run `tabserve feedback`")


@contextlib.contextmanager
def _errors_file(path: Path | None) -> Iterator[Callable[[int, str], None] | None]:
    """`--errors FILE`: a CSV of (row, error), written under a temporary name and renamed when the run
    succeeds (as the output is), so a killed run leaves no half-written file; None without the flag."""
    if path is None:
        yield None
        return
    from service.atomic import written_whole

    with written_whole(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "error"])
        yield lambda row, message: writer.writerow([row, message])


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
