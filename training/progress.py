"""What a user watches during `tabserve train`: a live epoch bar, member lines, a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.bundle import CARD_FILE
from service.features import Preprocess
from training import report
from training.config import TrainConfig, build_config
from training.pipeline import TrainResult, train

# the per-epoch figure (training/evaluate.py monitor_metric): regression's is on the standardized target
MONITOR_NAME = {"binary": "val AUC", "multiclass": "val accuracy", "regression": "val RMSE (in std units)"}
# NOTE: epochs are counted from 1 everywhere a person reads them (console, metrics.json, model card,
# plots): best epoch N means the weights after N passes over the training rows, the epochs a refit replays


def run_training(config_file: Path | None, overrides: dict[str, Any], console: Console) -> TrainResult:
    """Build the config, train with live progress, print the summary; returns the result."""
    return train_with_progress(build_config(config_file, **overrides), console)


def train_with_progress(cfg: TrainConfig, console: Console) -> TrainResult:
    """Train with a live bar per member, then print the members and the summary; returns the result."""
    console.print(f"training [bold]{cfg.name}[/] on {cfg.data} → target [bold]{cfg.target}[/]")
    stops = (
        f"each stops {cfg.patience} epochs after its best validation loss (at most {cfg.epochs} epochs): its bar "
        f"ends at best epoch + {cfg.patience} unless validation improves"
        if cfg.epochs > cfg.patience
        else f"each runs its {cfg.epochs} epoch(s), fewer than the patience ({cfg.patience}), and keeps its best"
    )
    console.print(f"  {cfg.ensemble} member(s); {stops}", soft_wrap=True)
    progress = Progress(
        TextColumn("[cyan]{task.description}"),
        BarColumn(),
        TextColumn("epoch {task.completed:>3.0f}/{task.total:<3.0f}"),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # piped: the member lines below say it once, not a frame per epoch
    )
    watch = EpochWatch(cfg, progress)

    def say(message: str) -> None:
        console.print(f"  {message}", markup=False, soft_wrap=True)

    with progress:
        result = train(cfg, on_epoch=watch, say=say, on_ready=watch.ready)
    _print_members(result, console)
    _print_summary(result, console)
    return result


class EpochWatch:
    """The live bars: one per member, whose end is where early stopping would stop it now (best epoch
    + patience, at most the epoch cap), so the bar fills as the member really goes."""

    def __init__(self, cfg: TrainConfig, progress: Progress) -> None:
        self.cfg, self.progress = cfg, progress
        self.bars: dict[int, Any] = {}
        self.best: dict[int, tuple[int, float]] = {}  # member → (best epoch from 1, its val loss)
        self.metric = "val metric"

    def ready(self, pre: Preprocess) -> None:
        """The task is known: name the per-epoch figure."""
        self.metric = MONITOR_NAME[pre.task]

    def __call__(self, member: int, epoch: int, train_loss: float, val_loss: float, metric: float) -> None:
        if member not in self.bars:
            # members from `ensemble` on: the network on the screened columns (training/pipeline.py)
            n = self.cfg.ensemble
            label = f"member {member % n + 1}/{n}" + (", screened columns" if member >= n else "")
            self.bars[member] = self.progress.add_task(label, total=self.cfg.epochs, stats="")
        best, best_loss = self.best.get(member, (0, float("inf")))
        if val_loss < best_loss - 1e-6:  # the rule training/train.py stops by
            best, best_loss = epoch + 1, val_loss
            self.best[member] = (best, best_loss)
        stop = min(self.cfg.epochs, best + self.cfg.patience)
        left = f"{stop - epoch - 1} epoch(s) " + ("of patience left" if stop < self.cfg.epochs else "to the cap")
        stats = f"val loss {val_loss:.4f}  {self.metric} {metric:.4f}  best epoch {best} ({best_loss:.4f}), {left}"
        self.progress.update(self.bars[member], completed=epoch + 1, total=stop, stats=stats)


def _print_members(result: TrainResult, console: Console) -> None:
    """One line per member: where it stopped and its best epoch (counted from 1), with that epoch's figures."""
    name = MONITOR_NAME[result.pre.task]
    for i, h in enumerate(result.histories):
        best = h.best_epoch  # an index: epoch best + 1
        console.print(
            f"  member {i + 1}: best epoch {best + 1} of {len(h.val_loss)}: train loss {h.train_loss[best]:.4f}, "
            f"val loss {h.val_loss[best]:.4f}, {name} {h.val_metric[best]:.4f}"
            + (" (stopped: the target is learnt)" if h.learnt else ""),
            soft_wrap=True,
        )


def _print_summary(result: TrainResult, console: Console) -> None:
    m = result.metrics
    # the column is the candidate that ships (the network, or the linear path alone where it won on
    # out-of-fold rows) as the evaluation fit gave it: a refit on every row has no rows left to test on
    refit = report.published_is_refit(m)
    shipped = f"shipped ({report.shipped_candidate(m) or 'network'}{', evaluation fit' if refit else ''})"
    table = Table("test metric", shipped, m["baseline"], m["gbm"], title="summary (test split)")
    for key, value in m["test"].items():
        others = [f"{m[which].get(key, float('nan')):.4f}" for which in ("baseline_test", "gbm_test")]
        table.add_row(key, f"{value:.4f}", *others)
    console.print(table)
    if refit:  # the published model.onnx is not the one the column tested (a review: the header said it was)
        console.print(
            "the published model is the same candidate refit on every row, test rows too: these figures are "
            "its evaluation fit's, on rows it did not train on (model card: How it was fitted)",
            soft_wrap=True,
        )
    if m.get("test_caution"):  # the model card's cautions (training/report.py)
        console.print(m["test_caution"], markup=False, soft_wrap=True)
    if m.get("signal_caution"):
        console.print(f"WARNING: {m['signal_caution']}", markup=False, soft_wrap=True)
    if result.pre.threshold is not None:
        console.print(f"decision threshold {result.pre.threshold:.4f} for class {result.pre.positive!r}")
    if result.bundle:
        console.print(
            f"published [bold]{result.bundle.name}[/] version {result.bundle.version} → "
            f"{result.bundle.path} in {m['train_seconds']:.1f} s "
            f"(ONNX parity {m.get('onnx_parity_max_abs_diff', float('nan')):.1e})"
        )
        console.print(f"model card: {result.bundle.path / CARD_FILE}", soft_wrap=True)
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
