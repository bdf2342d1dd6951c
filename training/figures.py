"""The model card's pictures (matplotlib, PNG): each function draws one figure and returns its file name."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from training.train import History

MODEL = "this model"
MODEL_STYLE = {"color": "C0", "lw": 2}
BASELINE_STYLES = [{"color": "C1", "ls": "--", "lw": 1.2}, {"color": "C2", "ls": "-.", "lw": 1.2}]
GUIDE = {"color": "grey", "ls": ":", "lw": 1}
SCATTER_ROWS = 5_000  # points in the predicted-against-actual cloud at most
LIFT_FROM = 0.02  # lift is drawn from the top 2 % of rows on


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (no display on a server)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> str:
    """Write a figure and close it; returns the file name."""
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")  # long tick labels are never cut off
    pyplot().close(fig)
    return path.name


def loss_curves(out: Path, histories: list[History], loss: str) -> str:
    """One panel per member: training and validation loss by epoch (from 1), the best epoch marked."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    cols = min(len(histories), 5)
    rows = math.ceil(len(histories) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols + 0.6, 2.6 * rows + 0.5), sharey=True, squeeze=False)
    for i, (ax, h) in enumerate(zip(axes.flat, histories, strict=False)):
        epochs = np.arange(1, len(h.val_loss) + 1)
        ax.plot(epochs, h.train_loss, color="C0", label="training rows")
        ax.plot(epochs, h.val_loss, color="C3", ls="--", label="validation rows")
        best = h.best_epoch + 1
        ax.axvline(best, **GUIDE)
        ax.plot([best], [h.val_loss[h.best_epoch]], "o", color="C3", ms=5, label="best epoch: the weights kept")
        ax.set(title=f"member {i + 1}: best epoch {best} of {len(epochs)}", xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.title.set_fontsize(9)
    for ax in axes.flat[len(histories) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel(loss)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Loss by epoch, one panel per member of the evaluation fit", fontsize=10)
    return save(fig, out / "loss_curves.png")


def roc(out: Path, y: np.ndarray, p: np.ndarray, baselines: dict[str, np.ndarray], threshold: float) -> str:
    """ROC of the model and the baselines (AUC in the legend), the decision threshold's point marked."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for (name, q), style in zip(baselines.items(), BASELINE_STYLES, strict=False):
        fpr, tpr, _ = roc_curve(y, q)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, q):.3f})", **style)
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, label=f"{MODEL} (AUC {roc_auc_score(y, p):.3f})", **MODEL_STYLE)
    flagged = p >= threshold
    point = (flagged[y == 0].mean(), flagged[y == 1].mean())
    ax.plot(*point, "o", color="black", ms=7, label=f"threshold {threshold:.3f}")
    note = f"{point[1]:.0%} of positives caught,\n{point[0]:.0%} of negatives flagged"
    ax.annotate(note, point, textcoords="offset points", xytext=(12, -28), fontsize=8)
    ax.plot([0, 1], [0, 1], label="chance (AUC 0.5)", **GUIDE)
    ax.set(xlabel="false positive rate", ylabel="true positive rate (recall)", title="ROC on the test rows")
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, out / "roc.png")


def precision_recall(
    out: Path, y: np.ndarray, p: np.ndarray, baselines: dict[str, np.ndarray], threshold: float
) -> str:
    """Precision against recall for the model and the baselines; the positive rate is what guessing gets."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for (name, q), style in zip(baselines.items(), BASELINE_STYLES, strict=False):
        precision, recall, _ = precision_recall_curve(y, q)
        ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(y, q):.3f})", **style)
    precision, recall, _ = precision_recall_curve(y, p)
    ax.plot(recall, precision, label=f"{MODEL} (AP {average_precision_score(y, p):.3f})", **MODEL_STYLE)
    flagged = p >= threshold
    point = (flagged[y == 1].mean(), y[flagged].mean() if flagged.any() else 0.0)
    ax.plot(*point, "o", color="black", ms=7, label=f"threshold {threshold:.3f}")
    ax.axhline(y.mean(), label=f"flag at random ({y.mean():.0%})", **GUIDE)
    ax.set(xlabel="recall (share of positives caught)", ylabel="precision (share of flagged that are positive)")
    ax.set(title="Precision and recall on the test rows", ylim=(0, 1.02))
    ax.legend(fontsize=8, loc="upper right")
    return save(fig, out / "precision_recall.png")


def gain_and_lift(out: Path, y: np.ndarray, p: np.ndarray, baselines: dict[str, np.ndarray], threshold: float) -> str:
    """Cumulative gain (share of positives found when contacting the top x % by score) and lift."""
    plt = pyplot()
    fig, (gain, lift) = plt.subplots(1, 2, figsize=(10, 4.5))
    curves = [(name, q, style) for (name, q), style in zip(baselines.items(), BASELINE_STYLES, strict=False)]
    for name, q, style in [*curves, (MODEL, p, MODEL_STYLE)]:
        share, found = cumulative_gain(y, q)
        gain.plot(share, found, label=name, **style)
        top = share >= LIFT_FROM  # the first few rows' lift is noise
        lift.plot(share[top], found[top] / share[top], label=name, **style)
    rate = y.mean()
    gain.plot([0, rate, 1], [0, 1, 1], color="grey", lw=1, label="perfect")
    gain.plot([0, 1], [0, 1], label="random", **GUIDE)
    lift.axhline(1, label="random", **GUIDE)
    flagged = float((p >= threshold).mean())
    for ax in (gain, lift):
        ax.axvline(flagged, color="black", lw=0.8, ls="--", label=f"flagged at threshold {threshold:.3f}")
        ax.set(xlabel="share of rows contacted, highest scores first")
        ax.legend(fontsize=8)
    gain.set(ylabel="share of all positives found", title="Cumulative gain (test rows)")
    lift.set(ylabel="positive rate among them / overall", title=f"Lift (test rows, from the top {LIFT_FROM:.0%})")
    lift.set(xlim=(0, 1), ylim=(0, None))
    return save(fig, out / "gain_lift.png")


def cumulative_gain(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of rows taken (highest scores first) and share of positives among them, from (0, 0)."""
    order = np.argsort(-p, kind="stable")
    found = np.concatenate([[0.0], np.cumsum(y[order]) / max(int(y.sum()), 1)])
    return np.arange(len(y) + 1) / len(y), found


def calibration(out: Path, bins: list[dict[str, Any]]) -> str:
    """Observed positive rate against mean predicted probability per bin, with each bin's row count."""
    plt = pyplot()
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    x = [b["predicted"] for b in bins]
    ax.plot(x, [b["observed"] for b in bins], marker="o", label=MODEL, **MODEL_STYLE)
    for b in bins:
        ax.annotate(
            f"{b['rows']}", (b["predicted"], b["observed"]), textcoords="offset points", xytext=(4, -10), fontsize=7
        )
    ax.plot([0, 1], [0, 1], label="perfectly calibrated", **GUIDE)
    ax.set(ylabel="observed positive rate", title="Calibration on the test rows (labels: rows per bin)")
    ax.legend(fontsize=8)
    counts.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["rows"] for b in bins], width=0.09, color="C0")
    counts.set(xlabel="predicted probability (bins of 0.1)", ylabel="rows", xlim=(0, 1))
    return save(fig, out / "calibration.png")


def confusion(out: Path, matrix: np.ndarray, labels: list[str], title: str) -> str:
    """A confusion matrix: counts, and each cell's share of its actual class."""
    plt = pyplot()
    size = 2.2 + 0.9 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(
            j, i, f"{n:,}\n{share[i, j]:.0%}", ha="center", va="center", color="white" if share[i, j] > 0.6 else "black"
        )
    ticks = range(len(labels))
    ax.set_xticks(ticks, [str(v) for v in labels])
    ax.set_yticks(ticks, [str(v) for v in labels])
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    ax.title.set_fontsize(9)
    return save(fig, out / "confusion.png")


def class_balance(out: Path, labels: list[str], dev: np.ndarray, test: np.ndarray) -> str:
    """Rows per class in the development and test rows (the split keeps the shares)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(labels), 3.2))
    x = np.arange(len(labels))
    for offset, (name, counts) in zip((-0.2, 0.2), (("development", dev), ("test", test)), strict=True):
        bars = ax.bar(x + offset, counts / counts.sum(), width=0.4, label=f"{name} ({counts.sum():,} rows)")
        ax.bar_label(bars, [f"{n:,}" for n in counts], fontsize=7)
    ax.set_xticks(x, [str(v) for v in labels])
    ax.set(ylabel="share of rows", title="Class balance (labels: rows)", ylim=(0, 1.1))
    ax.legend(fontsize=8)
    return save(fig, out / "class_balance.png")


def regression_fit(out: Path, y: np.ndarray, pred: np.ndarray, baselines: dict[str, np.ndarray], target: str) -> str:
    """Predicted against actual (the diagonal is perfect) and the residuals' distribution, beside the baselines'."""
    plt = pyplot()
    fig, (scatter, hist) = plt.subplots(1, 2, figsize=(10, 4.5))
    shown = np.random.default_rng(0).permutation(len(y))[:SCATTER_ROWS]  # a readable (and quick) cloud
    scatter.scatter(y[shown], pred[shown], s=6, alpha=0.4, color="C0", label=MODEL)
    low, high = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    scatter.plot([low, high], [low, high], label="perfect", **GUIDE)
    which = "test rows" if len(y) <= SCATTER_ROWS else f"{SCATTER_ROWS:,} of {len(y):,} test rows"
    scatter.set(xlabel=f"actual {target}", ylabel=f"predicted {target}", title=f"Predicted against actual ({which})")
    scatter.legend(fontsize=8)
    residuals = [(MODEL, pred - y, "C0")] + [
        (name, q[:, 0] - y, style["color"])
        for (name, q), style in zip(baselines.items(), BASELINE_STYLES, strict=False)
    ]
    edges = np.histogram_bin_edges(np.concatenate([r for _, r, _ in residuals]), bins=40)
    for name, r, color in residuals:
        hist.hist(r, bins=edges, histtype="step", color=color, lw=2 if name == MODEL else 1, label=name)
    hist.axvline(0, **GUIDE)
    hist.set(xlabel=f"predicted − actual {target}", ylabel="test rows", title="Errors (test rows)")
    hist.legend(fontsize=8)
    return save(fig, out / "predicted_actual.png")


def target_distribution(out: Path, dev: np.ndarray, test: np.ndarray, target: str) -> str:
    """The regression target's distribution in the development and test rows."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    edges = np.histogram_bin_edges(np.concatenate([dev, test]), bins=30)
    ax.hist(dev, bins=edges, density=True, alpha=0.5, label=f"development ({len(dev):,} rows)")
    ax.hist(test, bins=edges, density=True, histtype="step", lw=2, label=f"test ({len(test):,} rows)")
    ax.set(xlabel=target, ylabel="density", title=f"Distribution of {target}")
    ax.legend(fontsize=8)
    return save(fig, out / "target_distribution.png")


def importance(out: Path, explanations: dict[str, Any]) -> str:
    """Mean |effect| per feature on the test split, largest on top."""
    plt = pyplot()
    ranked = sorted(explanations["mean_abs_effect"].items(), key=lambda item: item[1])
    longest = max((len(name) for name, _ in ranked), default=0)  # the bars keep 4 inches beside long names
    fig, ax = plt.subplots(figsize=(4 + 0.08 * longest, 0.3 * len(ranked) + 1.2))
    ax.barh([name for name, _ in ranked], [value for _, value in ranked])
    ax.set(xlabel=f"mean |effect| on the {explanations['score']}", title="What moves the score (test split)")
    return save(fig, out / "importance.png")
