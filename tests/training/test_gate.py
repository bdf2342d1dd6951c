"""The promotion gate: the champion and a new version on the same test rows, and the release decision."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from sklearn.metrics import log_loss, roc_auc_score

from monitoring.accuracy import weighted_auc
from service import bundle, release
from tests.conftest import QUICK, TELCO, quick_config
from training import gate
from training.config import ConfigError
from training.pipeline import TrainResult, prepare_data, train
from training.progress import run_training

QUIET = {"say": lambda _: None}


@pytest.fixture(scope="module")
def v1_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose churn v1 (telco, seed 0) is champion; trained once, copied for each test."""
    store = tmp_path_factory.mktemp("v1") / "models"
    result = train(quick_config(TELCO, "Churn", store, name="churn"), **QUIET)
    assert result.comparison is None and result.decision == "first version"
    return store


@pytest.fixture
def store(v1_store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(v1_store, tmp_path / "models"))


def telco_csv(path: Path, damage: str = "") -> Path:
    """The telco file, or a damaged extract of it: `five_percent` of the rows, `shuffled` informative
    columns in the rows seed 0 trains on (its test rows untouched), or `no_contract` (column dropped)."""
    df = pd.read_csv(TELCO)
    rng = np.random.default_rng(1)
    if damage == "five_percent":
        df = df.sample(frac=0.05, random_state=0)
    elif damage == "shuffled":
        test = prepare_data(quick_config(TELCO, "Churn", path.parent), say=lambda _: None).split.test
        dev = np.setdiff1d(np.arange(len(df)), test)
        for col in ("Contract", "tenure", "TotalCharges"):
            df.loc[dev, col] = rng.permutation(df.loc[dev, col].to_numpy())
    elif damage == "no_contract":
        df = df.drop(columns=["Contract"])
    df.to_csv(path, index=False)
    return path


def retrain(store: Path, data: Path, **overrides: Any) -> TrainResult:
    return train(quick_config(data, "Churn", store, name="churn", **overrides), **QUIET)


def history(store: Path) -> list[dict[str, Any]]:
    return list(release.current(store, "churn").history)


def test_the_first_version_is_champion_with_nothing_compared(store: Path) -> None:
    state = release.current(store, "churn")
    assert (state.champion, state.challenger) == (1, None)
    assert [(h["action"], h["version"], h["why"]) for h in state.history] == [("champion", 1, "first version")]
    assert "comparison" not in json.loads((store / "churn" / "1" / "metrics.json").read_text())


@pytest.mark.parametrize("damage", ["five_percent", "shuffled"])
def test_a_damaged_extract_is_published_as_challenger_not_promoted(store: Path, tmp_path: Path, damage: str) -> None:
    data = telco_csv(tmp_path / f"{damage}.csv", damage)
    out = io.StringIO()
    overrides = {"data": str(data), "target": "Churn", "models_dir": str(store), "name": "churn", **QUICK}
    result = run_training(None, overrides, Console(file=out, width=200))
    assert result.bundle is not None and result.bundle.version == 2
    state = release.current(store, "churn")
    assert (state.champion, state.challenger) == (1, 2)
    doc = json.loads((result.bundle.path / "metrics.json").read_text())["comparison"]
    auc = doc["metrics"]["roc_auc"]
    assert doc["champion"] == 1 and doc["decision"] == "challenger"
    assert auc["interval"][0] < -auc["tolerance"] and auc["interval"][0] <= auc["difference"] <= auc["interval"][1]
    assert doc["reason"].startswith("not promoted: ROC AUC −")
    shown = out.getvalue()
    assert f"{auc['difference']:+.4f}" in shown and f"[{auc['interval'][0]:+.4f}, {auc['interval'][1]:+.4f}]" in shown
    assert f"churn v2 is challenger: {doc['reason']}" in " ".join(shown.split())
    assert history(store)[-1] == {**history(store)[-1], "action": "challenger", "version": 2, "champion": 1}
    assert doc["reason"] in history(store)[-1]["why"]


def test_the_full_data_with_another_seed_is_promoted_or_not_by_the_rule(store: Path) -> None:
    result = retrain(store, TELCO, seed=1)
    c = result.comparison
    assert c is not None and c.refused is None and [d.metric for d in c.metrics] == ["roc_auc", "log_loss"]
    assert c.promote == all(d.low >= -d.tolerance for d in c.metrics)
    last = history(store)[-1]
    assert (last["action"], last["version"]) == (("promote", 2) if c.promote else ("challenger", 2))
    assert last["why"] == c.reason if c.promote else c.reason in last["why"]
    assert release.current(store, "churn").champion == (2 if c.promote else 1)
    assert result.bundle is not None
    doc = json.loads((result.bundle.path / "metrics.json").read_text())["comparison"]
    assert doc["decision"] == ("promote" if c.promote else "challenger") and doc["reason"] == c.reason


def test_retrains_of_one_file_keep_the_first_champions_test_rows_whatever_their_seeds(store: Path) -> None:
    """v2 (seed 7) was tested on v1's rows (seed 0); v3 (seed 11) must be too, and the gate must score
    v2 by its evaluation fit there, not by its refit that learnt from those rows."""
    v1_rows = np.load(store / "churn" / "1" / "evaluation.npz")["rows"]
    retrain(store, TELCO, seed=7, promote="always")
    v2 = np.load(store / "churn" / "2" / "evaluation.npz")
    v3 = retrain(store, TELCO, seed=11, promote="never")
    assert np.array_equal(v2["rows"], v1_rows)
    assert np.array_equal(np.load(store / "churn" / "3" / "evaluation.npz")["rows"], v1_rows)
    c = v3.comparison
    assert c is not None and c.champion == 2 and c.rows == len(v1_rows)
    # a training-report audit: the card said "seed 11", which does not make these rows
    v3_dir = store / "churn" / "3"
    assert json.loads((v3_dir / "metrics.json").read_text())["data"]["test_rows_from"] == "churn v2"
    assert (
        "test rows, the test rows of churn v2 (seed 11 split the rest into folds)"
        in (v3_dir / "model_card.md").read_text()
    )
    assert json.loads((store / "churn" / "1" / "metrics.json").read_text())["data"]["test_rows_from"] == "seed 0"
    y = c.outputs[0] if c.outputs is not None else None
    assert y is not None and c.metrics[0].champion == pytest.approx(roc_auc_score(y, v2["out"][:, 1]))


@pytest.mark.parametrize(("mode", "champion"), [("auto", 1), ("always", 2)])
def test_a_champion_whose_column_the_new_data_lacks_is_refused_not_a_crash(
    store: Path, tmp_path: Path, mode: str, champion: int
) -> None:
    result = retrain(store, telco_csv(tmp_path / "no_contract.csv", "no_contract"), promote=mode)
    c = result.comparison
    assert c is not None and c.metrics == [] and c.refused == "champion v1 needs column(s) the new data lacks: Contract"
    assert c.promote == (mode == "always") and "Contract" in c.reason
    assert release.current(store, "churn").champion == champion
    assert result.bundle is not None
    assert json.loads((result.bundle.path / "metrics.json").read_text())["comparison"]["refused"] == c.refused


def test_a_broken_champion_bundle_is_refused_not_a_crash(store: Path) -> None:
    (store / "churn" / "1" / "preprocess.json").write_text("{not json")
    c = retrain(store, TELCO).comparison
    assert c is not None and not c.promote and c.reason.startswith("not promoted: champion v1 could not score the rows")
    assert release.current(store, "churn").champion == 1


def test_promote_always_overrides_a_worse_model(store: Path, tmp_path: Path) -> None:
    result = retrain(store, telco_csv(tmp_path / "shuffled.csv", "shuffled"), promote="always")
    c = result.comparison
    assert c is not None and c.promote and not c.metrics[0].passes
    assert c.reason.startswith("promoted (--promote always); by the rule alone, not promoted: ROC AUC −")
    assert release.current(store, "churn").champion == 2 and history(store)[-1]["why"] == c.reason


def test_promote_never_keeps_an_equal_model_challenger(store: Path) -> None:
    result = retrain(store, TELCO, promote="never")  # same data and seed: the same model, differences 0
    c = result.comparison
    assert c is not None and not c.promote
    assert all(d.difference == d.low == d.high == 0 for d in c.metrics)
    assert c.reason.startswith("not promoted (--promote never); by the rule alone, promoted: ROC AUC +0.000")
    assert release.current(store, "churn").champion == 1
    # a name means what serves: batch scoring, feedback and monitoring take the champion, not the newest
    assert [release.resolve(store, spec).version for spec in ("churn", "churn@2", str(store / "churn"))] == [1, 2, 1]
    out = store.parent / "scored.csv"
    cli = [sys.executable, "-m", "tabserve.cli", "score", "--model", "churn", "--models-dir", str(store)]
    done = subprocess.run([*cli, "--input", str(TELCO), "--output", str(out)], capture_output=True, text=True)
    assert done.returncode == 0 and "churn v1:" in done.stdout, done.stderr
    with pytest.raises(bundle.BundleError, match="write name@version, such as churn@2"):
        release.resolve(store, "churn@latest")


def scores(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two binary models' probabilities, rounded so that many scores tie."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    old = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1).round(2)
    new = np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1).round(2)
    return y, np.c_[1 - old, old], np.c_[1 - new, new]


def test_rank_auc_equals_sklearn_on_the_rows_and_on_resamples() -> None:
    y, old, _ = scores()
    assert abs(weighted_auc(y, old[:, 1])[0] - roc_auc_score(y, old[:, 1])) < 1e-9
    rng = np.random.default_rng(3)
    picks = rng.integers(0, len(y), size=(5, len(y)))
    counts = np.stack([np.bincount(p, minlength=len(y)) for p in picks]).astype(float)
    expected = [roc_auc_score(y[p], old[p, 1]) for p in picks]
    np.testing.assert_allclose(weighted_auc(y, old[:, 1], counts), expected, rtol=0, atol=1e-9)


def test_paired_bootstrap_intervals_hold_the_point_difference() -> None:
    y, old, new = scores()
    first = gate.paired_bootstrap("binary", y, old, new)
    assert first == gate.paired_bootstrap("binary", y, old, new)  # seeded: the same interval every time
    auc, loss = first
    assert auc.low <= auc.difference <= auc.high and loss.low <= loss.difference <= loss.high
    assert abs(auc.difference - (roc_auc_score(y, new[:, 1]) - roc_auc_score(y, old[:, 1]))) < 1e-9
    assert abs(loss.champion - log_loss(y, np.clip(old[:, 1], 1e-7, 1 - 1e-7))) < 1e-9
    assert (auc.tolerance, loss.tolerance) == (0.01, 0.01)
    rng = np.random.default_rng(0)
    truth = rng.normal(10, 3, 400)
    near, far = truth + rng.normal(0, 1, 400), truth + rng.normal(0, 2, 400)
    (rmse,) = gate.paired_bootstrap("regression", truth, near[:, None], far[:, None])
    assert rmse.difference < 0 and rmse.low <= rmse.difference <= rmse.high < 0  # far is worse: negative
    assert rmse.tolerance == pytest.approx(0.02 * np.sqrt(np.mean((near - truth) ** 2)))
    (given,) = gate.paired_bootstrap("regression", truth, near[:, None], far[:, None], tolerance=1.5)
    assert given.tolerance == pytest.approx(1.5 * rmse.champion) and given.passes
    labels = rng.integers(0, 3, 400)
    probs = rng.dirichlet(np.ones(3), 400)
    (multi,) = gate.paired_bootstrap("multiclass", labels, probs, probs)
    assert multi.metric == "log_loss" and multi.difference == multi.low == multi.high == 0


def test_the_rule_in_words() -> None:
    def diff(metric: str, d: float, low: float, high: float) -> gate.MetricDiff:
        return gate.MetricDiff(metric, 0.8, 0.8 + d, d, low, high, 0.01)

    worse = [diff("roc_auc", -0.041, -0.058, -0.025), diff("log_loss", 0.0, -0.005, 0.005)]
    assert gate.rule(worse, None) == (
        False,
        "not promoted: ROC AUC −0.041 [−0.058, −0.025] reaches below the tolerance −0.01",
    )
    near = [diff("roc_auc", 0.002, -0.006, 0.01), diff("log_loss", 0.0, -0.005, 0.005)]
    assert gate.rule(near, None)[0] and not gate.rule(near, 0.005)[0]
    assert (
        gate.rule(near, 0.005)[1] == "not promoted: ROC AUC +0.002 [−0.006, +0.010] gains less than the minimum 0.005"
    )
    assert gate.verdict("never", *gate.rule(near, None))[0] is False


def test_promote_must_be_auto_always_or_never(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="promote must be one of auto, always, never"):
        quick_config(TELCO, "Churn", tmp_path, promote="sometimes")
    with pytest.raises(ConfigError, match="gate_tolerance"):
        quick_config(TELCO, "Churn", tmp_path, gate_tolerance=-0.1)


def test_a_version_judged_against_a_champion_since_replaced_is_not_promoted(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """Found by a release audit: two runs finishing together were both compared with v1 and both
    promoted, so the later replaced the earlier without ever being compared with it."""
    from tests.service.conftest import copy_store
    from training.pipeline import _decide

    store = copy_store(churn_bundle, tmp_path / "models")
    for version in (2, 3):
        shutil.copytree(churn_bundle.path, store / "churn" / str(version))
    release.decide(store, "churn", "promote", 1)
    release.decide(store, "churn", "promote", 2)  # the other run, finished first
    judged = gate.Comparison(champion=1, mode="auto", promote=True, reason="ROC AUC +0.004 over v1")
    state, said = _decide(store, quick_config(TELCO, "Churn", store, name="churn"), 3, judged)
    assert state.champion == 2 and state.challenger == 3
    assert "not promoted: v2 became champion after this version was compared with v1" in said
    forced = gate.Comparison(champion=1, mode="always", promote=True, reason="--promote always")
    always = quick_config(TELCO, "Churn", store, name="churn", promote="always")
    assert _decide(store, always, 3, forced)[0].champion == 3  # always means always
