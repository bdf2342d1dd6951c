"""What a user watches during `tabserve train`: a live epoch bar, member lines, a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from training.config import build_config
from training.pipeline import TrainResult, train

MONITOR_NAME = {"binary": "val AUC", "multiclass": "val acc", "regression": "val RMSE"}


def run_training(config_file: Path | None, overrides: dict[str, Any], console: Console) -> TrainResult:
    """Build the config, train with live progress, print the summary; returns the result."""
    cfg = build_config(config_file, **overrides)
    console.print(f"training [bold]{cfg.name}[/] on {cfg.data} → target [bold]{cfg.target}[/]")
    progress = Progress(
        TextColumn("[cyan]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    bars: dict[int, Any] = {}

    def on_epoch(member: int, epoch: int, train_loss: float, val_loss: float, metric: float) -> None:
        if member not in bars:
            bars[member] = progress.add_task(f"member {len(bars) + 1}/{cfg.ensemble}", total=cfg.epochs, stats="")
        stats = f"train loss {train_loss:.4f}  val loss {val_loss:.4f}  {metric:.4f}"
        progress.update(bars[member], completed=epoch + 1, stats=stats)

    with progress:
        result = train(cfg, on_epoch=on_epoch, say=lambda msg: console.print(f"  {msg}", markup=False, soft_wrap=True))
    _print_members(result, console)
    _print_summary(result, console)
    return result


def _print_members(result: TrainResult, console: Console) -> None:
    name = MONITOR_NAME[result.pre.task]
    for i, h in enumerate(result.histories):
        best = h.best_epoch
        console.print(
            f"  member {i + 1}: {len(h.val_loss)} epochs, best epoch {best + 1}: "
            f"train loss {h.train_loss[best]:.4f}, val loss {h.val_loss[best]:.4f}, "
            f"{name} {h.val_metric[best]:.4f}"
        )


def _print_summary(result: TrainResult, console: Console) -> None:
    m = result.metrics
    table = Table("test metric", "MLP", m["baseline"], m["gbm"], title="summary (test split)")
    for key, value in m["test"].items():
        others = [f"{m[which].get(key, float('nan')):.4f}" for which in ("baseline_test", "gbm_test")]
        table.add_row(key, f"{value:.4f}", *others)
    console.print(table)
    if result.pre.threshold is not None:
        console.print(f"decision threshold {result.pre.threshold:.4f} for class {result.pre.positive!r}")
    if result.bundle:
        console.print(
            f"published [bold]{result.bundle.name}[/] version {result.bundle.version} → "
            f"{result.bundle.path} in {m['train_seconds']:.1f} s "
            f"(ONNX parity {m.get('onnx_parity_max_abs_diff', float('nan')):.1e})"
        )
    _print_release(result, console)


def _print_release(result: TrainResult, console: Console) -> None:
    """The gate's table (champion and this model on the same test rows) and the decision, in one line."""
    c = result.comparison
    if c is not None and c.metrics:
        table = Table(
            "metric",
            f"champion v{c.champion}",
            "this model",
            "difference (+ better)",
            "95 % interval",
            "tolerance",
            title=f"against the champion ({c.rows} test rows, paired bootstrap)",
        )
        for d in c.metrics:
            table.add_row(
                d.metric,
                f"{d.champion:.4f}",
                f"{d.challenger:.4f}",
                f"{d.difference:+.4f}",
                f"[{d.low:+.4f}, {d.high:+.4f}]",
                f"{d.tolerance:.4g}",
            )
        console.print(table)
    if result.bundle and result.release:
        role = "champion" if result.release.champion == result.bundle.version else "challenger"
        console.print(f"{result.bundle.name} v{result.bundle.version} is {role}: {result.decision}", markup=False)
