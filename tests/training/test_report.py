"""The model card: real trainings on the bundled data; its figures checked against metrics.json and
the evaluation fit's own test outputs (evaluation.npz)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from service import bundle
from service.features import Preprocess
from tests.conftest import GERMAN, TELCO, quick_config

BINARY_PLOTS = {
    "loss_curves.png",
    "roc.png",
    "precision_recall.png",
    "gain_lift.png",
    "calibration.png",
    "confusion.png",
    "class_balance.png",
}


def trained(tmp: Path, data: Path, target: str, name: str, **overrides: object) -> bundle.BundleRef:
    from training.pipeline import train

    cfg = quick_config(data, target, tmp, name=name, report_plots=True, **overrides)
    result = train(cfg, say=lambda _: None)
    assert result.bundle is not None
    return result.bundle


@pytest.fixture(scope="module")
def churn_card(tmp_path_factory: pytest.TempPathFactory) -> bundle.BundleRef:
    return trained(tmp_path_factory.mktemp("card"), TELCO, "Churn", "churn", calibrate=True)


def card_of(ref: bundle.BundleRef) -> str:
    return (ref.path / bundle.CARD_FILE).read_text()


def sections(card: str) -> list[str]:
    return [line[3:] for line in card.splitlines() if line.startswith("## ")]


def test_pictures_exist_and_each_is_shown(churn_card: bundle.BundleRef) -> None:
    shown = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card_of(churn_card)))
    on_disk = {p.name for p in churn_card.path.glob("*.png")}
    assert shown >= BINARY_PLOTS and shown == on_disk
    assert all((churn_card.path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in shown)


def test_binary_card_sections_and_summary(churn_card: bundle.BundleRef) -> None:
    card, m = card_of(churn_card), churn_card.metrics
    for wanted in ("Data", "How it was fitted", "How well it does", "At the decision threshold", "Calibration"):
        assert wanted in sections(card), wanted
    assert "Where it is less reliable" in sections(card)
    summary = card.split("\n\n")[1]  # the paragraph under the title
    assert f"ROC AUC is {m['test']['roc_auc']:.3f}" in summary
    assert f"logistic regression {m['baseline_test']['roc_auc']:.3f}" in summary
    assert f"LightGBM (defaults) {m['gbm_test']['roc_auc']:.3f}" in summary
    assert "least reliable for rows with" in summary


def test_metric_table_is_metrics_json(churn_card: bundle.BundleRef) -> None:
    card, m = card_of(churn_card), churn_card.metrics
    for key, value in m["test"].items():
        row = f"| {key} | {m['validation'][key]:.4f} | {value:.4f} | {m['baseline_test'][key]:.4f} | {m['gbm_test'][key]:.4f} |"
        assert row in card, row
    cal = m["calibration"]
    after = cal["test_after"]
    assert f"| after | {after['ece']:.4f} | {after['ece_floor']:.4f} | {after['brier']:.4f} |" in card
    assert f"| before | {cal['test_before']['ece']:.4f} |" in card
    assert m["fits"]["evaluation"] in card and m["fits"]["published"] in card
    chosen = [row for row in m["leaderboard"] if row["chosen"]]
    assert len(chosen) == 1 and f"| {chosen[0]['candidate']} | {chosen[0]['log_loss']:.4f} |" in card
    for i, member in enumerate(m["members"]):
        assert f"| {i + 1} | {member['epochs']} | {member['best_epoch']} |" in card


def _test_targets(ref: bundle.BundleRef) -> tuple[np.ndarray, np.ndarray, Preprocess]:
    """The evaluation fit's test outputs and those rows' true classes, from the bundle and the file."""
    pre = Preprocess.load(ref.path / bundle.PREPROCESS_FILE)
    saved = np.load(ref.path / bundle.EVALUATION_FILE)
    with TELCO.open(newline="") as fh:
        churn = np.array([row["Churn"] == pre.positive for row in csv.DictReader(fh)])
    return churn[saved["rows"]].astype(int), saved["out"], pre


def test_confusion_matrix_and_threshold_table_from_the_test_outputs(churn_card: bundle.BundleRef) -> None:
    y, out, pre = _test_targets(churn_card)
    flagged = out[:, 1] >= pre.threshold
    tn, fp = int((~flagged & (y == 0)).sum()), int((flagged & (y == 0)).sum())
    fn, tp = int((~flagged & (y == 1)).sum()), int((flagged & (y == 1)).sum())
    card = card_of(churn_card)
    assert re.search(rf"\| `No` \| {tn:,} \(\d+%\) \| {fp:,} \(\d+%\) \|", card)
    assert re.search(rf"\| `Yes` \| {fn:,} \(\d+%\) \| {tp:,} \(\d+%\) \|", card)
    chosen = f"| **{pre.threshold:.3f}** | **{1000 * flagged.mean():.0f}** | **{tp / (tp + fp):.1%}** | **{tp / (tp + fn):.1%}** |"
    assert chosen in card
    assert tp + fp + tn + fn == churn_card.metrics["data"]["test_rows"]


def test_regression_card(tmp_path: Path) -> None:
    ref = trained(tmp_path, TELCO, "tenure", "tenure")
    card, m = card_of(ref), ref.metrics
    assert m["task"] == "regression"
    assert f"RMSE (in the target's units) is {m['test']['rmse']:.3f}" in card.split("\n\n")[1]
    assert "## Where it is less reliable" in card and "| segment | test rows | RMSE | mean target |" in card
    assert {"predicted_actual.png", "target_distribution.png", "loss_curves.png"} <= {
        p.name for p in ref.path.glob("*.png")
    }
    assert (
        not (ref.path / "roc.png").exists() and "threshold" not in card.split("## How well it does")[1].split("##")[0]
    )


def test_multiclass_card(tmp_path: Path) -> None:
    ref = trained(tmp_path, TELCO, "PaymentMethod", "payment", ensemble=1)
    card = card_of(ref)
    assert ref.metrics["task"] == "multiclass"
    assert "which of 4 classes **PaymentMethod** takes" in card
    assert "## Confusion matrix" in card and (ref.path / "confusion.png").exists()
    matrix = [line for line in card.splitlines() if line.startswith("| `") and "%) |" in line]
    assert len(matrix) == 4 + 4  # the class balance table and the confusion matrix, a row per class each


def test_german_credit_card_names_its_positive_class(tmp_path: Path) -> None:
    ref = trained(tmp_path, GERMAN, "creditability", "credit")
    pre = Preprocess.load(ref.path / bundle.PREPROCESS_FILE)
    summary = card_of(ref).split("\n\n")[1]
    assert f"whether **creditability** is `{pre.positive}`" in summary and "of every 1,000 rows" in summary


def _console_run(
    tmp_path: Path, data: Path, target: str = "creditability", **overrides: object
) -> tuple[str, bundle.BundleRef]:
    """A real `tabserve train` run as the console shows it (piped), and its bundle."""
    import io

    from rich.console import Console

    from training.progress import train_with_progress

    screen = io.StringIO()
    cfg = quick_config(data, target, tmp_path, name="credit", **overrides)
    result = train_with_progress(cfg, Console(file=screen, width=200, color_system=None))
    assert result.bundle is not None
    return screen.getvalue(), result.bundle


def test_a_test_split_with_one_row_of_a_class_states_no_verdict(tmp_path: Path) -> None:
    """german credit's good rows and its first 5 bad ones: 1 bad row in the test split tells no model apart."""
    with GERMAN.open(newline="") as fh:
        header, *rows = list(csv.reader(fh))
    bad = [row for row in rows if row[-1] == "bad"][:5]
    data = tmp_path / "few_bad.csv"
    with data.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *[row for row in rows if row[-1] == "good"], *bad])
    console, ref = _console_run(tmp_path / "store", data)
    caution = "test split: 1 row of class 'bad' — these figures cannot tell models apart"
    summary = card_of(ref).split("\n\n")[1]
    assert caution in summary and caution in console
    assert not any(verdict in summary for verdict in ("on par with", "better than", "worse than"))


def test_a_test_split_large_enough_keeps_its_verdict(churn_card: bundle.BundleRef) -> None:
    summary = card_of(churn_card).split("\n\n")[1]
    assert "cannot tell models apart" not in summary and "no signal" not in summary
    assert any(verdict in summary for verdict in ("on par with", "better than", "worse than"))
    assert churn_card.metrics.get("signal_caution") is None


def test_a_target_the_columns_do_not_predict_is_said_loudly(tmp_path: Path) -> None:
    """Churn shuffled across customers: the model published is the class shares in disguise, and
    the console and the card say so instead of ranking it against the baselines."""
    with TELCO.open(newline="") as fh:
        header, *rows = list(csv.reader(fh))
    churn = [row[-1] for row in rows]
    np.random.default_rng(0).shuffle(churn)
    data = tmp_path / "shuffled.csv"
    with data.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *[[*row[:-1], c] for row, c in zip(rows, churn, strict=True)]])
    console, ref = _console_run(tmp_path / "store", data, "Churn")
    caution = ref.metrics["signal_caution"]
    assert caution.startswith("no signal: on the 1,409 test rows its log loss") and "may not predict Churn" in caution
    assert f"WARNING: {caution}" in console.replace("\n", " ")
    summary = card_of(ref).split("\n\n")[1]
    assert caution in summary and not any(v in summary for v in ("on par with", "better than", "worse than"))


def test_a_shipped_linear_path_is_named_and_not_described_as_early_stopped(tmp_path: Path) -> None:
    """A learning rate of 1 wrecks the network: the linear path alone ships, trained for no epochs."""
    console, ref = _console_run(tmp_path, GERMAN, lr=1.0)
    chosen = [row["candidate"] for row in ref.metrics["leaderboard"] if row["chosen"]]
    assert chosen == ["linear path alone"]
    assert "MLP" not in console
    # a training-report audit: the column was headed as what ships, though the refit shipped was never tested
    assert "shipped (linear path alone, evaluation fit)" in console
    assert "the published model is the same candidate refit on every row" in console.replace("\n", " ")
    versions = json.loads((ref.path / "metrics.json").read_text())["versions"]
    assert versions["scikit-learn"] and versions["lightgbm"]  # the baselines and calibration depend on them
    fitted = card_of(ref).split("## How it was fitted")[1].split("## How well it does")[0]
    assert "early-stopped" not in fitted and "epochs each took to its best" not in fitted
    assert "The linear path trained for no epochs" in fitted
    fits = ref.metrics["fits"]  # metrics.json says the same as the card
    assert "early-stopped" not in fits["evaluation"] and "epochs" not in fits["published"]
