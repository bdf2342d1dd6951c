"""The human side of a bundle: PNG plots and a markdown model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import CARD_FILE
from service.features import Preprocess
from training.train import History


def write_plots(out: Path, histories: list[History], pre: Preprocess, y: np.ndarray, probs: np.ndarray) -> list[str]:
    """Loss curves for every task; ROC and calibration for binary. Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = ["loss_curves.png"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, h in enumerate(histories):
        ax.plot(h.train_loss, color=f"C{i}", alpha=0.5, label=f"member {i + 1} train")
        ax.plot(h.val_loss, color=f"C{i}", ls="--", label=f"member {i + 1} validation")
        ax.axvline(h.best_epoch, color=f"C{i}", lw=0.5)
    ax.set(xlabel="epoch", ylabel="loss", title="Training curves (dashed: validation)")
    ax.legend(fontsize=6, ncol=2)
    _save(fig, out / files[0])
    if pre.task == "binary":
        files += [_roc_plot(out, y, probs[:, 1], plt), _calibration_plot(out, y, probs[:, 1], plt)]
    plt.close("all")
    return files


def importance_plot(out: Path, explanations: dict[str, Any]) -> str:
    """Mean |effect| per feature on the test split, largest on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = sorted(explanations["mean_abs_effect"].items(), key=lambda item: item[1])
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(ranked) + 1.2))
    ax.barh([name for name, _ in ranked], [value for _, value in ranked])
    ax.set(xlabel=f"mean |effect| on the {explanations['score']}", title="What moves the score (test split)")
    _save(fig, out / "importance.png")
    plt.close(fig)
    return "importance.png"


def comparison_plot(out: Path, champion: int, y: np.ndarray, old: np.ndarray, new: np.ndarray) -> str:
    """ROC and calibration of the champion and this model on the same test rows, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, (roc, cal) = plt.subplots(1, 2, figsize=(9, 4.5))
    for label, probs, style in ((f"champion v{champion}", old, "--"), ("this model", new, "-")):
        fpr, tpr, _ = roc_curve(y, probs[:, 1])
        roc.plot(fpr, tpr, ls=style, label=label)
        cal.plot(*_calibration_points(y, probs[:, 1]), ls=style, marker="o", label=label)
    for ax in (roc, cal):
        ax.plot([0, 1], [0, 1], ls=":", color="grey")
        ax.legend()
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (same test rows)")
    cal.set(xlabel="mean predicted probability", ylabel="observed rate", title="Calibration (same test rows)")
    _save(fig, out / "comparison.png")
    plt.close(fig)
    return "comparison.png"


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _roc_plot(out: Path, y: np.ndarray, p: np.ndarray, plt: Any) -> str:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label="model")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test split)")
    ax.legend()
    _save(fig, out / "roc.png")
    return "roc.png"


def _calibration_points(y: np.ndarray, p: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean predicted probability and observed rate in each non-empty tenth of [0, 1]."""
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, 9)
    kept = [b for b in range(10) if (which == b).any()]
    return [float(p[which == b].mean()) for b in kept], [float(y[which == b].mean()) for b in kept]


def _calibration_plot(out: Path, y: np.ndarray, p: np.ndarray, plt: Any) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(*_calibration_points(y, p), marker="o", label="model")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect")
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title="Calibration (test)")
    ax.legend()
    _save(fig, out / "calibration.png")
    return "calibration.png"


def write_model_card(out: Path, name: str, version_hint: str, doc: dict[str, Any], plots: list[str]) -> None:
    """model_card.md: what the model predicts, from which data, how well, against the baseline."""
    pre, data, m = doc["preprocess"], doc["data"], doc["metrics"]
    lines = [
        f"# Model card: {name} ({version_hint})",
        "",
        f"Predicts **{pre['target']}** ({pre['task']}) from {len(pre['features'])} features.",
        "",
        "## Data",
        f"- file: `{data['file']}` (sha256 `{data['sha256'][:16]}…`), {data['rows']} rows "
        f"({data['dropped_missing_target']} dropped for a missing target)",
        f"- split: {data['train_rows']} development rows (train + validation), "
        f"{data['test_rows']} test rows, seed {doc['config']['seed']}",
        f"- features: {', '.join(f['name'] for f in pre['features'])}",
        f"- left out: {', '.join(f'{k} ({v})' for k, v in data['dropped_columns'].items()) or 'none'}",
    ]
    if pre["task"] == "binary":
        lines.append(
            f"- positive class: `{pre['positive']}`; decision threshold {pre['threshold']:.4f} "
            f"(rule: {doc['config']['threshold_rule']}, chosen on validation)"
        )
    lines += ["", "## Test metrics", "", "| metric | model | baseline | gradient boosting |", "|---|---|---|---|"]
    for key, value in m["test"].items():
        others = " | ".join(f"{m.get(which, {}).get(key, float('nan')):.4f}" for which in ("baseline_test", "gbm_test"))
        lines.append(f"| {key} | {value:.4f} | {others} |")
    gbm = f"; gradient boosting: {m['gbm']}" if "gbm" in m else ""
    lines += ["", f"Baseline: {m['baseline']}{gbm}. Training took {m['train_seconds']:.1f} s.", ""]
    if m.get("comparison"):
        lines += comparison_lines(m["comparison"])
    explained = m.get("explanations")
    if explained:
        lines += ["## What moves the score", "", f"Effects on the {explained['score']} ({explained['method']}).", ""]
        lines += ["| feature | mean abs effect | among a record's top 4 reasons |", "|---|---|---|"]
        ranked = sorted(explained["mean_abs_effect"].items(), key=lambda item: -item[1])
        lines += [f"| {name} | {value:.4f} | {explained['top4_share'][name]:.0%} |" for name, value in ranked]
        lines.append("")
    lines += [f"![{p}]({p})" for p in plots]
    (out / CARD_FILE).write_text("\n".join(lines) + "\n")


def comparison_lines(c: dict[str, Any]) -> list[str]:
    """The card's side-by-side table of the champion and this model (training/gate.py)."""
    lines = ["## Against the champion", ""]
    if c["refused"]:
        return [*lines, f"Not compared: {c['refused']}.", "", f"Decision: {c['reason']}.", ""]
    lines += [
        f"Champion v{c['champion']} and this model on the same {c['rows']} test rows; difference signed so "
        f"that + is better for this model, with its 95 % paired bootstrap interval ({c['resamples']} resamples).",
        "",
        "| metric | champion | this model | difference | 95 % interval | tolerance |",
        "|---|---|---|---|---|---|",
    ]
    for key, d in c["metrics"].items():
        low, high = d["interval"]
        lines.append(
            f"| {key} | {d['champion']:.4f} | {d['challenger']:.4f} | {d['difference']:+.4f} "
            f"| [{low:+.4f}, {high:+.4f}] | {d['tolerance']:.4g} |"
        )
    return [*lines, "", f"Decision: {c['reason']}.", ""]
