"""The human side of a bundle: the model card (markdown) a data scientist can sign, and its plots."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.accuracy import calibration, row_log_loss
from service.bundle import CARD_FILE
from service.features import Encoded, NumericFeature, Preprocess, category_key, parse_number
from training import figures
from training.train import LEARNT, History

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # the threshold table's rows, beside the chosen one
SEGMENTS_SHOWN = 5
LOSS = {"binary": "log loss", "multiclass": "log loss", "regression": "mean squared error (standardized target)"}
PER_EPOCH = {"binary": "val AUC", "multiclass": "val accuracy", "regression": "val RMSE (std units)"}
# below these many test rows (classification: of the rarer class, or outside the commonest) a test
# figure moves by more than the gaps the verdict names: one row of `bad` more or less swings the AUC
FEW_TEST_ROWS = {"binary": 10, "multiclass": 10, "regression": 30}
# training/pipeline.py's name for the candidate that is each member's warm start, trained for no epochs
LINEAR_CANDIDATE = "linear path alone"


@dataclass
class Evidence:
    """What the card's figures are drawn from: the evaluation fit's outputs on the test rows, the
    baselines' outputs on the same rows, those rows as read, the members' curves, the development
    rows' targets."""

    y: np.ndarray  # encoded targets of the test rows (class index; regression: the value)
    out: np.ndarray  # this model's outputs on them: probabilities [N, k] or values [N, 1]
    baselines: dict[str, np.ndarray]  # name → its outputs on the same rows
    rows: pd.DataFrame  # the test rows as read (text), for segments
    histories: list[History]
    y_dev: np.ndarray  # targets of the development rows (class balance)


def example_row(pre: Preprocess, df: Any, enc: Encoded, rows: np.ndarray) -> dict[str, Any] | None:
    """The first training row (file order) with every feature present and every level in the
    vocabulary, as a JSON record of its id columns and features: the example /docs and
    GET /models/{name} show. Its levels are all in preprocess.json already, so it adds no rare
    text to the bundle, only its numbers and its id; None when no row qualifies."""
    complete = ~np.isnan(enc.num[rows]).any(axis=1) & (enc.cat[rows] != 0).all(axis=1)
    if not complete.any():
        return None
    row = df.iloc[int(rows[complete].min())]
    record: dict[str, Any] = {col: row[col] for col in pre.id_columns if col in row.index}
    for f in pre.features:
        if isinstance(f, NumericFeature) and (f.date is not None or f.unit or pre.read.decimal != "."):
            record[f.name] = str(
                row[f.name]
            ).strip()  # as the file writes it (a date, $1,234.50): the service reads it so
        elif isinstance(f, NumericFeature):
            number = parse_number(row[f.name])
            record[f.name] = int(number) if number.is_integer() and abs(number) < 2**53 else number
        else:
            record[f.name] = category_key(row[f.name])
    return record


def split_caution(pre: Preprocess, y: np.ndarray) -> str | None:
    """One line where the test split is too small to tell models apart (FEW_TEST_ROWS), else None."""
    if pre.task == "regression":
        few = f"{len(y)} row{'s' * (len(y) != 1)}" if len(y) < FEW_TEST_ROWS["regression"] else None
    else:
        counts = np.bincount(y.astype(np.int64), minlength=len(pre.labels))
        if pre.task == "binary":
            rarer = int(counts.argmin())
            n, which = int(counts[rarer]), f"of class '{pre.labels[rarer]}'"
        else:  # multiclass: accuracy is decided by the rows outside the commonest class
            common = int(counts.argmax())
            n, which = int(counts.sum() - counts[common]), f"outside class '{pre.labels[common]}'"
        few = f"{n} row{'s' * (n != 1)} {which}" if n < FEW_TEST_ROWS[pre.task] else None
    return None if few is None else f"test split: {few} — these figures cannot tell models apart"


def no_signal(pre: Preprocess, y_dev: np.ndarray, y_test: np.ndarray, out: np.ndarray) -> str | None:
    """One line where the model's per-row test loss is no lower than a constant's (the development
    rows' class shares, or their mean) beyond noise: the columns may not predict the target at all."""
    if pre.task == "regression":
        ours, theirs = (y_test - out[:, 0]) ** 2, (y_test - y_dev.mean()) ** 2
        measure, constant = "squared error", "predicting the mean"
    else:
        shares = np.bincount(y_dev.astype(np.int64), minlength=len(pre.labels)) / len(y_dev)
        ours = row_log_loss(pre.task, y_test, out)
        theirs = row_log_loss(pre.task, y_test, np.broadcast_to(shares, out.shape).copy())
        measure, constant = "log loss", "predicting the class shares"
    gain = theirs - ours
    if len(gain) < 2 or gain.mean() - 1.96 * gain.std(ddof=1) / np.sqrt(len(gain)) > 0:
        return None
    return (
        f"no signal: on the {len(gain):,} test rows its {measure} ({ours.mean():.4g}) is no lower than "
        f"{constant} ({theirs.mean():.4g}) beyond noise, so these columns may not predict {pre.target}; "
        "check the target and the data before serving it"
    )


def published_is_refit(metrics: dict[str, Any]) -> bool:
    """Whether the published model is the chosen candidate refit on every row (none above 100,000 rows)."""
    return bool((metrics.get("fits") or {}).get("refit"))


def shipped_candidate(metrics: dict[str, Any]) -> str:
    """The leaderboard's chosen candidate (what ships), or "" for a run without one."""
    return next((str(row["candidate"]) for row in metrics.get("leaderboard") or [] if row.get("chosen")), "")


# --- figures the card's tables and plots share ---------------------------------------------------


def threshold_table(y: np.ndarray, p: np.ndarray, chosen: float) -> list[dict[str, float]]:
    """Per threshold: rows flagged per 1,000, precision, recall, positives caught per 1,000."""
    table = []
    for t in sorted([t for t in THRESHOLDS if abs(t - chosen) >= 5e-4] + [chosen]):
        flagged = p >= t
        tp = int((flagged & (y == 1)).sum())
        table.append(
            {
                "threshold": t,
                "flagged_per_1000": 1000 * flagged.mean(),
                "precision": tp / flagged.sum() if flagged.any() else float("nan"),
                "recall": tp / max(int((y == 1).sum()), 1),
                "caught_per_1000": 1000 * tp / len(y),
                "chosen": t == chosen,
            }
        )
    return table


def confusion_matrix(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Counts: row = actual class, column = predicted class."""
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y.astype(np.int64), pred.astype(np.int64)), 1)
    return matrix


def predictions(pre: Preprocess, out: np.ndarray) -> np.ndarray:
    """Predicted class indices: the threshold for binary, the most probable class for multiclass."""
    if pre.task == "binary":
        return (out[:, 1] >= (0.5 if pre.threshold is None else pre.threshold)).astype(np.int64)
    return np.asarray(out.argmax(axis=1))


def row_errors(pre: Preprocess, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Each test row's error: log loss of its true class; regression: squared error."""
    if pre.task == "regression":
        return np.asarray((out[:, 0] - y) ** 2)
    return row_log_loss(pre.task, y.astype(np.int64), out)


def segments(pre: Preprocess, ev: Evidence) -> list[dict[str, Any]]:
    """Every level of each categorical feature, and each quartile of each numeric one, with enough
    test rows (≥ 30 and ≥ 3 %), by its test error (log loss; regression: RMSE), worst first."""
    errors = row_errors(pre, ev.y, ev.out)
    wrong = predictions(pre, ev.out) != ev.y if pre.task != "regression" else None
    least = max(30, int(0.03 * len(ev.y)))
    found = []
    for name, masks in _groups(pre, ev.rows, least):
        for label, mask in masks:
            if mask.sum() < least:
                continue
            error = float(errors[mask].mean())
            found.append(
                {
                    "segment": f"{name} {label}".replace("|", "\\|"),  # a table cell
                    "rows": int(mask.sum()),
                    "error": float(np.sqrt(error)) if pre.task == "regression" else error,
                    "wrong": float(wrong[mask].mean()) if wrong is not None else float("nan"),
                    "target": float(ev.y[mask].mean()),
                }
            )
    return sorted(found, key=lambda s: -s["error"])


def _groups(pre: Preprocess, rows: pd.DataFrame, least: int) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """(feature, [(label, row mask)]) for every feature present in the rows (levels with ≥ `least` rows)."""
    groups = []
    for f in pre.features:
        if f.name not in rows.columns:
            continue
        raw = rows[f.name].tolist()
        if isinstance(f, NumericFeature):
            values = np.array([_number(v) for v in raw])
            groups.append((f.name, _quartiles(values)))
        else:
            keys = np.array([category_key(v) or "(missing)" for v in raw], dtype=object)
            levels, counts = np.unique(keys, return_counts=True)
            groups.append((f.name, [(f"= {level}", keys == level) for level in levels[counts >= least]]))
    return groups


def _number(value: Any) -> float:
    try:
        return parse_number(value)
    except ValueError:
        return float("nan")


def _quartiles(values: np.ndarray) -> list[tuple[str, np.ndarray]]:
    present = values[~np.isnan(values)]
    if not len(present):
        return []
    edges = np.unique(np.quantile(present, [0, 0.25, 0.5, 0.75, 1]))
    masks = [("missing", np.isnan(values))]
    for i, (low, high) in enumerate(itertools.pairwise(edges)):
        last = i == len(edges) - 2
        mask = (values >= low) & ((values <= high) if last else (values < high))
        masks.append((f"{low:g} to {high:g}" if last else f"{low:g} to under {high:g}", mask))
    return masks


# --- plots ---------------------------------------------------------------------------------------


def write_plots(out: Path, pre: Preprocess, ev: Evidence, metrics: dict[str, Any]) -> list[str]:
    """Every plot of the card for the task; returns the file names."""
    files = [figures.loss_curves(out, ev.histories, LOSS[pre.task])]
    labels = [str(v) for v in pre.labels]
    if pre.task == "binary":
        p, threshold = ev.out[:, 1], float(pre.threshold if pre.threshold is not None else 0.5)
        others = {name: q[:, 1] for name, q in ev.baselines.items()}
        files += [
            figures.roc(out, ev.y, p, others, threshold),
            figures.precision_recall(out, ev.y, p, others, threshold),
            figures.gain_and_lift(out, ev.y, p, others, threshold),
            figures.calibration(out, calibration(ev.y, p)),
        ]
    if pre.task != "regression":
        title = (
            f"Test rows at threshold {pre.threshold:.3f}" if pre.task == "binary" else "Test rows (most probable class)"
        )
        matrix = confusion_matrix(ev.y, predictions(pre, ev.out), len(labels))
        files.append(figures.confusion(out, matrix, labels, title))
        files.append(
            figures.class_balance(
                out, labels, *(np.bincount(v.astype(np.int64), minlength=len(labels)) for v in (ev.y_dev, ev.y))
            )
        )
    else:
        files.append(figures.regression_fit(out, ev.y, ev.out[:, 0], ev.baselines, pre.target))
        files.append(figures.target_distribution(out, ev.y_dev, ev.y, pre.target))
    if metrics.get("explanations"):
        files.append(figures.importance(out, metrics["explanations"]))
    return files


def comparison_plot(out: Path, champion: int, y: np.ndarray, old: np.ndarray, new: np.ndarray) -> str:
    """ROC and calibration of the champion and this model on the same test rows, side by side."""
    from sklearn.metrics import roc_curve

    fig, (roc, cal) = figures.pyplot().subplots(1, 2, figsize=(9, 4.5))
    for label, probs, style in ((f"champion v{champion}", old, "--"), ("this model", new, "-")):
        fpr, tpr, _ = roc_curve(y, probs[:, 1])
        roc.plot(fpr, tpr, ls=style, label=label)
        bins = calibration(y, probs[:, 1])
        cal.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], ls=style, marker="o", label=label)
    for ax in (roc, cal):
        ax.plot([0, 1], [0, 1], ls=":", color="grey")
        ax.legend()
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (same test rows)")
    cal.set(xlabel="mean predicted probability", ylabel="observed rate", title="Calibration (same test rows)")
    return figures.save(fig, out / "comparison.png")


# --- the card ------------------------------------------------------------------------------------


def write_model_card(
    out: Path, name: str, version_hint: str, doc: dict[str, Any], plots: list[str], ev: Evidence | None = None
) -> None:
    """model_card.md: a plain-language summary, then the data, how it was fitted, how well it does
    against the baselines, where it is less reliable, and every plot in its section."""
    pre = Preprocess.from_json(doc["preprocess"])
    shown: list[str] = []

    def figure(file: str, caption: str) -> list[str]:
        if file not in plots:
            return []
        shown.append(file)
        return [f"![{caption}]({file})", ""]

    lines = [f"# Model card: {name} ({version_hint})", "", summary(pre, doc, ev), ""]
    lines += data_lines(pre, doc, ev) + figure("class_balance.png", "class balance")
    lines += figure("target_distribution.png", "target distribution")
    by_epochs = shipped_candidate(doc["metrics"]) != LINEAR_CANDIDATE
    curves = "loss by epoch, one panel per member" + ("" if by_epochs else " of the network (not shipped)")
    lines += fit_lines(pre, doc) + figure("loss_curves.png", curves)
    if "loss_curves.png" in plots and doc["config"].get("refit") and by_epochs:
        lines += [
            "The curves are the evaluation members'. The published members replay each one's epochs up to its "
            "best on every row; with no rows left to validate on, they have no curve.",
            "",
        ]
    lines += metric_lines(pre, doc)
    if ev is not None and pre.task == "binary":
        lines += decision_lines(pre, ev) + figure("confusion.png", "confusion matrix")
        lines += figure("roc.png", "ROC") + figure("precision_recall.png", "precision and recall")
        lines += figure("gain_lift.png", "cumulative gain and lift")
    elif ev is not None and pre.task == "multiclass":
        lines += confusion_lines(pre, ev) + figure("confusion.png", "confusion matrix")
    lines += figure("predicted_actual.png", "predicted against actual")
    lines += calibration_lines(pre, doc, ev) + figure("calibration.png", "calibration")
    if ev is not None:
        lines += segment_lines(pre, ev)
    lines += explanation_lines(doc["metrics"]) + figure("importance.png", "what moves the score")
    if doc["metrics"].get("comparison"):
        lines += comparison_lines(doc["metrics"]["comparison"]) + figure("comparison.png", "against the champion")
    lines += [f"![{p}]({p})" for p in plots if p not in shown]
    (out / CARD_FILE).write_text("\n".join(lines) + "\n")


def summary(pre: Preprocess, doc: dict[str, Any], ev: Evidence | None) -> str:
    """The card's opening paragraph, in plain words: what it predicts, how good it is against the
    baselines, and for whom it is less reliable."""
    m, data = doc["metrics"], doc["data"]
    refit = published_is_refit(m)
    what = {
        "binary": f"whether **{pre.target}** is `{pre.positive}`",
        "multiclass": f"which of {len(pre.labels)} classes **{pre.target}** takes ({', '.join(map(str, pre.labels))})",
        "regression": f"the value of **{pre.target}**",
    }[pre.task]
    text = [
        f"This model predicts {what} for a row of `{data['file']}`, from {len(pre.features)} columns. "
        f"Fitted on {data['train_rows']:,} rows and tested on {data['test_rows']:,} rows that fit never saw"
        + (" (the published model is refit on all the rows: *How it was fitted*), " if refit else ", ")
        + _standing(pre, m, m.get("test_caution") or m.get("signal_caution"))
    ]
    if pre.task == "binary" and ev is not None:
        flagged = ev.out[:, 1] >= pre.threshold
        caught = float(flagged[ev.y == 1].mean()) if (ev.y == 1).any() else float("nan")
        right = float(ev.y[flagged].mean()) if flagged.any() else float("nan")
        text.append(
            f"At its decision threshold ({pre.threshold:.3f}) it flags {1000 * flagged.mean():.0f} of every 1,000 rows; "
            f"{right:.0%} of those flagged are `{pre.positive}`, and it finds {caught:.0%} of all `{pre.positive}` rows."
        )
    worst = segments(pre, ev)[:1] if ev is not None else []
    if worst:
        w, overall = worst[0], _overall_error(pre, m)
        measure = "RMSE" if pre.task == "regression" else "log loss"
        wrong = "" if pre.task == "regression" else f", {w['wrong']:.0%} of them misclassified"
        text.append(
            f"It is least reliable for rows with {w['segment']} ({w['rows']:,} test rows{wrong}; "
            f"{measure} {w['error']:.3f} against {overall:.3f} overall)."
        )
    return " ".join(text)


def _standing(pre: Preprocess, m: dict[str, Any], caution: str | None = None) -> str:
    """How the key metric compares with the baselines', in words; with a caution, no verdict."""
    key = m["key_metric"]
    ours = m["test"][key]
    theirs = {
        m["baseline"]: m["baseline_test"].get(key),
        m.get("gbm", "gradient boosting"): m.get("gbm_test", {}).get(key),
    }
    theirs = {k: v for k, v in theirs.items() if v is not None}
    lower_better = key in ("rmse", "log_loss")
    name = {"roc_auc": "ROC AUC", "accuracy": "accuracy", "rmse": "RMSE (in the target's units)"}.get(key, key)
    meaning = {
        "roc_auc": f" (the chance that it scores a `{pre.positive}` row above a `{_negative(pre)}` one: "
        "0.5 is guessing, 1 perfect)",
        "accuracy": " (the share of rows given their actual class)",
        "rmse": f" (the typical error; the target's standard deviation is {pre.target_std:.4g})",
    }.get(key, "")
    others = ", ".join(f"{k} {v:.3f}" for k, v in theirs.items())
    if caution:  # too few test rows, or no signal: a gap between the figures is no finding
        return f"its {name} is {ours:.3f}{meaning}" + (f", against {others}" if theirs else "") + f"; {caution}."
    if not theirs:
        return f"its {name} is {ours:.3f}{meaning}."
    best_name, best = min(theirs.items(), key=lambda kv: kv[1] if lower_better else -kv[1])
    gain = (best - ours) if lower_better else (ours - best)
    if abs(gain) < (0.01 * best if key == "rmse" else 0.005):  # RMSE: within 1 % of the better one
        verdict = f"on par with the better baseline, {best_name}"
    elif gain > 0:
        verdict = f"better than both baselines, by {abs(gain):.3f} over {best_name}"
    else:
        verdict = f"worse than {best_name}, by {abs(gain):.3f}: the baseline may serve as well"
    return f"its {name} is {ours:.3f}{meaning}, against {others}: {verdict}."


def _negative(pre: Preprocess) -> str:
    return str(next((label for label in pre.labels if label != pre.positive), "other"))


def _overall_error(pre: Preprocess, m: dict[str, Any]) -> float:
    return float(m["test"]["rmse"] if pre.task == "regression" else m["test"]["log_loss"])


def _split_by(data: dict[str, Any], cfg: dict[str, Any]) -> str:
    """What chose the test rows: the seed, or a champion's (a retrain on the same file, for the gate)."""
    source = data.get("test_rows_from") or f"seed {cfg['seed']}"  # older bundles: the seed
    if source.startswith("seed "):
        return source
    rows = "test rows given to the run" if source == "given" else f"the test rows of {source}"
    return f"{rows} (seed {cfg['seed']} split the rest into folds)"


def data_lines(pre: Preprocess, doc: dict[str, Any], ev: Evidence | None) -> list[str]:
    """Where the rows came from, how they were split, what was left out, and the class balance."""
    data, cfg = doc["data"], doc["config"]
    lines = [
        "## Data",
        "",
        f"- file: `{data['file']}` (sha256 `{data['sha256'][:16]}…`), {data['rows']:,} rows "
        f"({data['dropped_missing_target']} dropped for a missing target)",
        f"- split: {data['train_rows']:,} development rows (training and validation), "
        f"{data['test_rows']:,} test rows, {_split_by(data, cfg)}",
        f"- features: {', '.join(f.name for f in pre.features)}",
        f"- left out: {', '.join(f'{k} ({v})' for k, v in data['dropped_columns'].items()) or 'none'}",
    ]
    flagged = [f"{pre.numeric[j].name} ({pre.numeric[j].missing_:.1%} blank)" for j in pre.indicated]
    if flagged:  # a model-risk reader asks how blanks were treated
        lines.append(f"- missing indicators (a blank read as a signal, beside the median): {', '.join(flagged)}")
    if pre.task == "binary":
        lines.append(
            f"- positive class: `{pre.positive}`; decision threshold {pre.threshold:.4f} "
            f"(rule: {cfg['threshold_rule']}, chosen on the validation rows)"
        )
    lines.append("")
    lines += [f"**Warning:** {w}" for w in doc["metrics"].get("warnings", [])] + [""] * bool(
        doc["metrics"].get("warnings")
    )
    if pre.columns:  # how each column of the file was read (the table the run printed)
        lines += ["| column | type | why |", "|---|---|---|"]
        for c in pre.columns:
            kind = c["type"] + (f" ({c['levels']} levels)" if c.get("levels") else "")
            warning = f" **{c['warning']}**" if c.get("warning") else ""
            lines.append(f"| `{c['column']}` | {kind} | {c.get('why', '')}{warning} |")
        lines.append("")
    if ev is not None and pre.task != "regression":
        lines += ["| class | development rows | test rows |", "|---|---|---|"]
        dev, test = (np.bincount(v.astype(np.int64), minlength=len(pre.labels)) for v in (ev.y_dev, ev.y))
        for label, d, t in zip(pre.labels, dev, test, strict=True):
            lines.append(f"| `{label}` | {d:,} ({d / dev.sum():.1%}) | {t:,} ({t / test.sum():.1%}) |")
        lines.append("")
    elif ev is not None:
        lines += ["| target | mean | std | min | median | max |", "|---|---|---|---|---|---|"]
        for where, v in (("development rows", ev.y_dev), ("test rows", ev.y)):
            lines.append(
                f"| {where} | {v.mean():.4g} | {v.std():.4g} | {v.min():.4g} | {np.median(v):.4g} | {v.max():.4g} |"
            )
        lines.append("")
    return lines


def fit_lines(pre: Preprocess, doc: dict[str, Any]) -> list[str]:
    """Which fit each figure comes from, the candidates compared, and each member's epochs."""
    m = doc["metrics"]
    lines = ["## How it was fitted", ""]
    fits = m.get("fits") or {}
    by_epochs = shipped_candidate(m) != LINEAR_CANDIDATE
    if fits:
        lines += [
            f"- **figures on this card** come from the evaluation fit: {fits['evaluation']}.",
            f"- **the published model** (`model.onnx`) is {fits['published']}.",
            "",
        ]
    screen = m.get("screen")
    if screen:
        left_out = screen["left_out"]
        lines += [
            f"- **columns read**: {len(screen['read'])} of {len(screen['read']) + len(left_out)}; the screen (no "
            f"association with the target at p < {screen['level']}) left out "
            + (
                ", ".join(f"`{c}`" for c in left_out[:20])
                + (f" and {len(left_out) - 20} more" if len(left_out) > 20 else "")
                if left_out
                else "none"
            )
            + ". A left-out column's value changes no score.",
            "",
        ]
    board = m.get("leaderboard") or []
    if board:
        keys = [k for k in ("log_loss", "roc_auc", "pr_auc", "brier", "accuracy", "rmse", "mae", "r2") if k in board[0]]
        keys = [k for k in keys if not (pre.task == "binary" and k == "accuracy")]  # at 0.5, not the threshold
        lines += [
            "Candidates compared on the out-of-fold rows (each development row scored by the member that did not "
            "train on it); the one with the lowest "
            + ("RMSE" if pre.task == "regression" else "log loss")
            + " is published.",
            "",
            "| candidate | " + " | ".join(keys) + " | chosen |",
            "|---|" + "---|" * (len(keys) + 1),
        ]
        for row in board:
            cells = " | ".join(f"{row[k]:.4f}" for k in keys)
            lines.append(f"| {row['candidate']} | {cells} | {'**yes**' if row.get('chosen') else ''} |")
        lines.append("")
    members = m.get("members") or []
    if members:
        cap, patience = doc["config"]["epochs"], doc["config"]["patience"]
        lines += [
            (
                f"Each member trains until its validation loss has not improved for {patience} epochs (at most {cap}) "
                "and keeps the weights of its best epoch. Epochs are counted from 1: best epoch N is the weights "
                "after N passes over the member's training rows, the epochs a refit replays."
            )
            if by_epochs
            else (
                "The linear path trained for no epochs. The network it was chosen over (not shipped) trained each "
                f"member until its validation loss had not improved for {patience} epochs (at most {cap}):"
            ),
            "",
            "| member | epochs run | best epoch |",
            "|---|---|---|",
            *[
                f"| {i + 1} | {row['epochs']} | {row['best_epoch']}{' (learnt)' if row.get('learnt') else ''} |"
                for i, row in enumerate(members)
            ],
            "",
        ]
        if any(row.get("learnt") for row in members):
            lines += [
                f"A member marked learnt stopped once its validation loss fell below {LEARNT:.1%} of the loss of "
                "predicting the class shares: it tells the classes apart almost surely (a leaked column, a rule).",
                "",
            ]
    return lines


def metric_lines(pre: Preprocess, doc: dict[str, Any]) -> list[str]:
    """Validation (out-of-fold) and test figures of this model beside the baselines' test figures."""
    m = doc["metrics"]
    names = [m["baseline"], m.get("gbm")]
    columns = [("this model, validation", m.get("validation", {})), ("this model, test", m["test"])]
    columns += [
        (f"{name}, test", m.get(key, {}))
        for name, key in zip(names, ("baseline_test", "gbm_test"), strict=True)
        if name
    ]
    lines = [
        "## How well it does",
        "",
        "Validation: the out-of-fold rows"
        + (" (the threshold was chosen on them" if pre.task == "binary" else "")
        + (", the calibration fitted on them: its figures there are in-sample" if m.get("calibration") else "")
        + (")" if pre.task == "binary" else "")
        + ". Test: rows no model saw (the evaluation fit's). The baselines "
        "were fitted on the same development rows and scored on the same test rows"
        + (", each with its own threshold chosen by the same rule." if pre.task == "binary" else "."),
        "",
        "| metric | " + " | ".join(c for c, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for key in m["test"]:
        lines.append(f"| {key} | " + " | ".join(_cell(values.get(key)) for _, values in columns) + " |")
    return [*lines, ""]


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float | int) else "–"


def decision_lines(pre: Preprocess, ev: Evidence) -> list[str]:
    """The confusion matrix at the chosen threshold and what other thresholds would do."""
    p = ev.out[:, 1]
    lines = ["## At the decision threshold", "", *confusion_lines(pre, ev)[2:]]
    lines += [
        "What other thresholds would do, on the test rows (per 1,000 rows scored; the chosen one in bold):",
        "",
        "| threshold | flagged per 1,000 | precision (flagged that are positive) | recall (positives found) | positives found per 1,000 |",
        "|---|---|---|---|---|",
    ]
    for row in threshold_table(ev.y, p, float(pre.threshold if pre.threshold is not None else 0.5)):
        cells = [
            f"{row['threshold']:.3f}",
            f"{row['flagged_per_1000']:.0f}",
            "–" if np.isnan(row["precision"]) else f"{row['precision']:.1%}",
            f"{row['recall']:.1%}",
            f"{row['caught_per_1000']:.0f}",
        ]
        lines.append("| " + " | ".join(f"**{c}**" if row["chosen"] else c for c in cells) + " |")
    return [*lines, ""]


def confusion_lines(pre: Preprocess, ev: Evidence) -> list[str]:
    """The confusion matrix as a table: rows actual, columns predicted."""
    labels = [str(v) for v in pre.labels]
    matrix = confusion_matrix(ev.y, predictions(pre, ev.out), len(labels))
    how = f"at threshold {pre.threshold:.4f}" if pre.task == "binary" else "the most probable class"
    lines = [
        "## Confusion matrix",
        "",
        f"Test rows, {how}; rows: actual class, columns: predicted (share of the actual class).",
        "",
        "| actual \\ predicted | " + " | ".join(f"`{v}`" for v in labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for label, counts in zip(labels, matrix, strict=True):
        total = max(int(counts.sum()), 1)
        lines.append(f"| `{label}` | " + " | ".join(f"{n:,} ({n / total:.0%})" for n in counts) + " |")
    return [*lines, ""]


CALIBRATION_FIGURES = {
    "ece": "ECE",
    "ece_floor": "ECE if calibrated",
    "brier": "Brier",
    "log_loss": "log loss",
    "slope": "slope",
    "intercept": "intercept",
}


def calibration_lines(pre: Preprocess, doc: dict[str, Any], ev: Evidence | None) -> list[str]:
    """Whether a predicted probability means what it says: bins with their rows, and the calibration's effect."""
    if pre.task == "regression" or ev is None:
        return []
    lines = ["## Calibration", ""]
    if pre.task == "binary":
        lines += [
            "Of the test rows given a probability in each bin, the share that were positive:",
            "",
            "| predicted | rows | mean predicted | observed |",
            "|---|---|---|---|",
        ]
        for b in calibration(ev.y, ev.out[:, 1]):
            lines.append(
                f"| {b['low']:.1f}–{b['high']:.1f} | {b['rows']:,} | {b['predicted']:.3f} | {b['observed']:.3f} |"
            )
        lines.append("")
    cal = doc["metrics"].get("calibration")
    if cal:
        b = cal["b"] if isinstance(cal["b"], list) else [cal["b"]]
        # slope and intercept: binary only
        keys = [k for k in CALIBRATION_FIGURES if k in cal["test_after"]]
        lines += [
            f"{cal['method']} (a {cal['a']:.3f}, b {', '.join(f'{v:.3f}' for v in b)}), on the test rows:",
            "",
            "| | " + " | ".join(CALIBRATION_FIGURES[k] for k in keys) + " |",
            "|---|" + "---|" * len(keys),
            *[
                f"| {when} | " + " | ".join(f"{cal[key][k]:.4f}" for k in keys) + " |"
                for when, key in (("before", "test_before"), ("after", "test_after"))
            ],
            "",
        ]
        if "ece_floor" in keys:
            lines += [
                "ECE if calibrated: what a perfectly calibrated model with the same probabilities would show on "
                "these rows (outcomes drawn from them), from chance alone; an ECE near or below it is no "
                "sign of miscalibration.",
                "",
            ]
        if "slope" in keys:
            lines += [
                "Slope and intercept: Cox's, the logistic regression of the outcome on the predicted log-odds; "
                "1 and 0 when calibrated, a slope above 1 where the probabilities are too timid, below 1 too sure.",
                "",
            ]
        if "published" in cal:  # the refit's own map (training/pipeline.py: matched_platt)
            pub = cal["published"]
            lines += [f"The published refit: a {pub['a']:.3f}, b {pub['b']:.3f}, {pub['why']}.", ""]
    else:
        lines += ["Not recalibrated (`--calibrate` off).", ""]
    return lines


def segment_lines(pre: Preprocess, ev: Evidence) -> list[str]:
    """The segments with the worst test error (every level of each categorical, quartiles of numerics)."""
    found = segments(pre, ev)
    if not found:
        return []
    measure = "RMSE" if pre.task == "regression" else "log loss"
    target = (
        "mean target" if pre.task == "regression" else ("positive rate" if pre.task == "binary" else "mean class index")
    )
    lines = [
        "## Where it is less reliable",
        "",
        f"Test rows grouped by each level of every categorical feature and each quartile of every numeric one "
        f"(groups of at least {max(30, int(0.03 * len(ev.y)))} rows), worst {measure} first; "
        f"all test rows: {measure} {_overall_error(pre, {'test': task_errors(pre, ev)}):.4f}."
        + (
            " A group whose outcome is closer to a coin flip has a higher log loss even for a good model: "
            "read its positive rate beside it."
            if pre.task == "binary"
            else ""
        ),
        "",
    ]
    wrong = pre.task != "regression"
    columns = ["segment", "test rows", measure] + (["misclassified"] if wrong else [])
    columns += [target] if pre.task != "multiclass" else []
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for s in found[:SEGMENTS_SHOWN]:
        cells = [s["segment"], f"{s['rows']:,}", f"{s['error']:.4f}"]
        cells += [f"{s['wrong']:.1%}"] if wrong else []
        cells += (
            [f"{s['target']:.3g}" if pre.task == "regression" else f"{s['target']:.1%}"]
            if pre.task != "multiclass"
            else []
        )
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def task_errors(pre: Preprocess, ev: Evidence) -> dict[str, float]:
    """The overall test error the segments are measured against."""
    error = float(row_errors(pre, ev.y, ev.out).mean())
    return {"rmse": float(np.sqrt(error))} if pre.task == "regression" else {"log_loss": error}


def explanation_lines(m: dict[str, Any]) -> list[str]:
    """Mean |effect| per feature on the test rows and how often each is among a record's top reasons."""
    explained = m.get("explanations")
    if not explained:
        return []
    score = str(explained["score"]).removeprefix("the ")
    lines = ["## What moves the score", "", f"Effects on the {score} ({explained['method']}).", ""]
    lines += ["| feature | mean abs effect | among a record's top 4 reasons |", "|---|---|---|"]
    ranked = sorted(explained["mean_abs_effect"].items(), key=lambda item: -item[1])
    lines += [f"| {name} | {value:.4f} | {explained['top4_share'][name]:.0%} |" for name, value in ranked]
    return [*lines, ""]


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
