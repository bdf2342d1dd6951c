"""What the published model is: the candidate chosen on out-of-fold rows, calibrated inside the graph,
refitted on every row — on real data, through real ONNX Runtime sessions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from monitoring.accuracy import ece, ece_floor
from service import bundle
from service.runtime import CPU, create_session
from tests.conftest import GERMAN, TELCO, quick_config
from training.evaluate import calibration_slope, choose_threshold
from training.pipeline import prepare_data, train


def test_the_leaderboard_ships_the_candidate_with_the_lowest_out_of_fold_loss(tmp_path: Path) -> None:
    result = train(quick_config(GERMAN, "creditability", tmp_path, refit=False), publish=False, say=lambda _: None)
    board = result.metrics["leaderboard"]
    assert [row["candidate"] for row in board] == ["network", "linear path alone"]
    chosen = [row for row in board if row["chosen"]]
    assert len(chosen) == 1 and chosen[0]["log_loss"] == min(row["log_loss"] for row in board)


def test_the_linear_candidate_is_the_logistic_regression_of_each_fold(tmp_path: Path) -> None:
    """Trained for no epochs, the network is exactly its warm start: each fold's logistic regression."""
    from training.evaluate import PENALTIES, fit_linear, linear_model, one_hot_design
    from training.model import Normalize
    from training.pipeline import fit_ensemble, resolve_linear_penalty

    cfg = quick_config(
        GERMAN, "creditability", tmp_path, hidden=[8], calibrate=False, refit=False, robust_numerics=True
    )
    prep = prepare_data(cfg, say=lambda _: None)
    cfg, losses = resolve_linear_penalty(prep, cfg)  # the penalty chosen on the first fold
    assert set(losses) == set(PENALTIES) and cfg.linear_penalty == min(losses, key=losses.__getitem__)
    candidates, _, rows = fit_ensemble(prep, cfg)
    linear = next(c for c in candidates if c.name == "linear path alone")
    # on the network's own inputs: heavy-tailed columns as their quantiles (german: the credit amount)
    x = Normalize(prep.pre)(torch.from_numpy(prep.enc.num)).numpy()
    design = one_hot_design(x, prep.enc.cat, [f.cardinality for f in prep.pre.categorical])
    assert any(f.knots for f in prep.pre.numeric)
    expected = []
    for tr, va in prep.split.folds:
        model = linear_model("binary", cfg.linear_penalty)
        fit_linear(model, design[tr], prep.target.y[tr])
        expected.append(model.predict_proba(design[va]))
    assert np.abs(linear.oof - np.concatenate(expected)).max() < 1e-4
    assert len(rows) == len(prep.split.dev)


def test_a_regression_start_is_chosen_among_least_squares_and_a_small_ridge(tmp_path: Path) -> None:
    """Least squares is unpenalized: `auto` also weighs a small ridge for regression, and a ridge start
    is exactly each fold's ridge (telco's monthly charges, a sum of its services' prices)."""
    from sklearn.linear_model import Ridge

    from training.evaluate import fit_linear, one_hot_design, penalties
    from training.model import Normalize
    from training.pipeline import fit_ensemble, resolve_linear_penalty

    cfg = quick_config(TELCO, "MonthlyCharges", tmp_path, hidden=[8], refit=False)
    prep = prepare_data(cfg, say=lambda _: None)
    _, losses = resolve_linear_penalty(prep, cfg)
    assert penalties("regression") == ("l2:1", "l2:100", "l2:0.1", "l1:0.1", "l1:0.03") and set(losses) == set(
        penalties("regression")
    )
    cfg = replace(cfg, linear_penalty="l2:100")
    candidates, _, _ = fit_ensemble(prep, cfg)
    linear = next(c for c in candidates if c.name == "linear path alone")
    x = Normalize(prep.pre)(torch.from_numpy(prep.enc.num)).numpy()
    design = one_hot_design(x, prep.enc.cat, [f.cardinality for f in prep.pre.categorical])
    y = (prep.target.y - prep.pre.target_mean) / prep.pre.target_std
    expected = []
    for tr, va in prep.split.folds:
        model = Ridge(alpha=0.01)
        fit_linear(model, design[tr], y[tr])
        expected.append(model.predict(design[va]) * prep.pre.target_std + prep.pre.target_mean)
    assert np.abs(linear.oof.ravel() - np.concatenate(expected)).max() < 1e-3 * prep.pre.target_std


def test_platt_scaling_is_in_the_graph_and_fitted_on_out_of_fold_outputs(tmp_path: Path) -> None:
    result = train(quick_config(TELCO, "Churn", tmp_path, name="churn", calibrate=True), say=lambda _: None)
    assert result.bundle is not None
    doc = json.loads((result.bundle.path / bundle.METRICS_FILE).read_text())
    cal = doc["calibration"]
    assert (
        set(cal["test_before"])
        == set(cal["test_after"])
        == {"ece", "ece_floor", "brier", "log_loss", "slope", "intercept"}
    )
    # Cox's slope and intercept: the Bernoulli likelihood's maximum over (slope, intercept) on the test outputs
    held = np.load(result.bundle.path / bundle.EVALUATION_FILE)
    y = prepare_data(quick_config(TELCO, "Churn", tmp_path, name="churn"), say=lambda _: None).target.y[held["rows"]]
    p = np.clip(held["out"][:, 1], 1e-7, 1 - 1e-7)
    z = np.log(p) - np.log1p(-p)
    nll = lambda w: np.logaddexp(0, -(2 * y - 1) * (w[0] * z + w[1])).sum()  # noqa: E731
    best = minimize(nll, [1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9}).x
    assert (cal["test_after"]["slope"], cal["test_after"]["intercept"]) == pytest.approx(tuple(best), abs=1e-3)
    assert cal["test_after"]["ece_floor"] == ece_floor(held["out"][:, 1])
    # the published graph is σ(a·z̄ + b), z̄ the members' mean logit: ONNX Runtime equals it by hand
    model = result.model
    assert model is not None and model.calibrated
    prep = prepare_data(quick_config(TELCO, "Churn", tmp_path, name="churn", calibrate=True), say=lambda _: None)
    num, cat = prep.enc.num[:500], prep.enc.cat[:500]
    session = create_session(result.bundle.path / bundle.MODEL_FILE, CPU)
    got = session.run(None, {"num": num, "cat": cat})[0][:, 1]
    with torch.no_grad():
        x, c = model.normalize(torch.from_numpy(num)), torch.from_numpy(cat)
        logits = np.stack([m(x, c).numpy()[:, 0].astype(np.float64) for m in model.members])
    pub = cal["published"]  # the refit's own a·z + b: the evaluation fit's, after matching its logits
    expected = 1 / (1 + np.exp(-(pub["a"] * logits.mean(axis=0) + pub["b"])))
    raw = 1 / (1 + np.exp(-logits.mean(axis=0)))
    assert np.abs(got - expected).max() < 1e-5
    assert not np.allclose(got, raw, atol=1e-3)  # the scaling did something
    # the refit's calibrated logits on the out-of-fold rows have the mean and spread of the evaluation
    # fit's calibrated out-of-fold logits
    assert result.out_of_fold is not None
    oof = result.out_of_fold[1][:, 1].astype(np.float64)
    evaluated = cal["a"] * (np.log(oof) - np.log1p(-oof)) + cal["b"]
    rows = prep.split.val_rows
    with torch.no_grad():
        x, c = model.normalize(torch.from_numpy(prep.enc.num[rows])), torch.from_numpy(prep.enc.cat[rows])
        refit = pub["a"] * torch.stack([m(x, c)[:, 0] for m in model.members]).mean(dim=0).double().numpy() + pub["b"]
    assert refit.mean() == pytest.approx(evaluated.mean(), abs=1e-3)
    assert refit.std() == pytest.approx(evaluated.std(), rel=1e-3)
    assert (pub["a"], pub["b"]) != pytest.approx((cal["a"], cal["b"]), abs=1e-3)  # the refit's logits spread otherwise
    # a row's score does not depend on the rows scored beside it (the file scorer's batches vary)
    alone = np.concatenate(
        [session.run(None, {"num": num[i : i + 7], "cat": cat[i : i + 7]})[0][:, 1] for i in range(0, 500, 7)]
    )
    assert np.array_equal(alone, got)


def test_a_refit_over_confident_and_shifted_is_mapped_onto_the_evaluation_fits_calibrated_logits() -> None:
    from training.pipeline import matched_platt

    z = np.random.default_rng(0).normal(-1.5, 1.2, 2_000)  # out-of-fold logits
    refit = 1.4 * z + 0.5  # the same ranking, spread wider and shifted up
    platt = torch.tensor([0.9, -0.1])
    a, b = matched_platt(platt, 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(-refit))).tolist()
    assert np.abs((a * refit + b) - (0.9 * z - 0.1)).max() < 1e-4
    assert torch.equal(matched_platt(platt, 1 / (1 + np.exp(-z)), np.full(2_000, 0.2)), platt)  # nothing to stretch


def test_multiclass_calibration_is_a_temperature_and_a_bias_per_class(tmp_path: Path) -> None:
    # Contract as a three-class target
    cfg = quick_config(TELCO, "Contract", tmp_path, name="contract", calibrate=True)
    result = train(cfg, say=lambda _: None)
    assert result.bundle is not None and result.model is not None and result.model.calibrated
    doc = json.loads((result.bundle.path / bundle.METRICS_FILE).read_text())
    cal = doc["calibration"]
    assert len(cal["b"]) == 3 and cal["a"] > 0
    assert cal["test_after"]["log_loss"] <= cal["test_before"]["log_loss"] + 0.02
    prep = prepare_data(cfg, say=lambda _: None)
    num, cat = prep.enc.num[:300], prep.enc.cat[:300]
    got = create_session(result.bundle.path / bundle.MODEL_FILE, CPU).run(None, {"num": num, "cat": cat})[0]
    with torch.no_grad():
        x, c = result.model.normalize(torch.from_numpy(num)), torch.from_numpy(cat)
        z = torch.stack([m(x, c).to(torch.float64) for m in result.model.members])
        expected = torch.softmax(cal["a"] * z + torch.tensor(cal["b"], dtype=torch.float64), dim=2).mean(dim=0)
    assert np.abs(got - expected.numpy()).max() < 1e-5


def test_platt_parameters_are_a_logistic_regression_on_the_out_of_fold_log_odds(tmp_path: Path) -> None:
    from training.pipeline import choose, fit_ensemble, fit_platt

    cfg = quick_config(TELCO, "Churn", tmp_path)
    prep = prepare_data(cfg, say=lambda _: None)
    candidates, _, rows = fit_ensemble(prep, cfg)
    chosen, _ = choose(prep.pre, candidates, prep.target.y[rows])
    y, p = prep.target.y[rows], chosen.oof[:, 1]
    a, b = fit_platt(y, p).tolist()
    logit = np.log(p) - np.log1p(-p)
    reference = LogisticRegression(C=1e6).fit(logit.reshape(-1, 1), y)
    assert a == pytest.approx(reference.coef_[0, 0], abs=1e-2) and b == pytest.approx(reference.intercept_[0], abs=1e-2)
    after = 1 / (1 + np.exp(-(a * logit + b)))
    assert log_loss(y, after) <= log_loss(y, p) + 1e-9  # in-sample it can only help
    assert ece(y, after) <= ece(y, p) + 0.01


def test_the_published_model_is_refitted_on_every_row_and_the_gate_uses_the_evaluation_fit(tmp_path: Path) -> None:
    result = train(quick_config(TELCO, "Churn", tmp_path, name="churn"), say=lambda _: None)
    assert result.bundle is not None
    doc = json.loads((result.bundle.path / bundle.METRICS_FILE).read_text())
    assert "7,043 rows" in doc["fits"]["published"] and "none of them saw" in doc["fits"]["evaluation"]
    saved = np.load(result.bundle.path / bundle.EVALUATION_FILE)
    prep = prepare_data(quick_config(TELCO, "Churn", tmp_path, name="churn"), say=lambda _: None)
    assert np.array_equal(saved["rows"], prep.split.test)
    session = create_session(result.bundle.path / bundle.MODEL_FILE, CPU)
    published = session.run(None, {"num": prep.enc.num[prep.split.test], "cat": prep.enc.cat[prep.split.test]})[0]
    assert not np.allclose(published, saved["out"], atol=1e-4)  # another fit: it learned from the test rows
    # the report's test figures are the evaluation fit's, never the refitted model's
    from training.evaluate import task_metrics

    y = prep.target.y[prep.split.test]
    assert doc["test"]["roc_auc"] == pytest.approx(task_metrics(result.pre, y, saved["out"])["roc_auc"], abs=1e-9)
    # the same file and split again: the champion is compared by its saved evaluation outputs
    again = train(quick_config(TELCO, "Churn", tmp_path, name="churn", promote="never"), say=lambda _: None)
    assert again.comparison is not None and again.comparison.outputs is not None
    _, champion_out, _ = again.comparison.outputs
    assert np.allclose(champion_out, saved["out"])


def test_a_search_is_seeded_pruned_and_its_find_competes_on_out_of_fold_rows(tmp_path: Path) -> None:
    def run(store: str) -> dict:
        cfg = quick_config(GERMAN, "creditability", tmp_path / store, tune="600s", tune_trials=6, report_plots=False)
        result = train(cfg, say=lambda _: None)
        assert result.bundle is not None
        return json.loads((result.bundle.path / bundle.METRICS_FILE).read_text())

    first, second = run("a"), run("b")
    tuning = first["tuning"]
    assert tuning["trials"] == 6 and tuning["finished"] + tuning["pruned"] == 6 and tuning["finished"] >= 3
    assert first["tuning"]["best"] == second["tuning"]["best"]  # same seed, same trials: the same find
    board = {row["candidate"]: row for row in first["leaderboard"]}
    searched = next(name for name in board if name.startswith("network, searched"))
    assert board[searched]["log_loss"] == pytest.approx(tuning["best"]["loss"])
    chosen = min(board.values(), key=lambda row: row["log_loss"])
    assert chosen["chosen"]
    if chosen is board[searched]:  # what ships is built with the find's settings
        assert first["config"]["hidden"] == tuning["best"]["hidden"]
        assert first["config"]["dropout"] == pytest.approx(tuning["best"]["dropout"])


def test_tune_takes_a_duration() -> None:
    from training.config import ConfigError, build_config, parse_seconds

    assert [parse_seconds(t) for t in ("60s", "2m", "90", "0")] == [60, 120, 90, 0]
    with pytest.raises(ConfigError, match="60s"):
        build_config(data="x.csv", target="y", tune="soon")


def test_among_many_useless_columns_the_linear_path_starts_sparse(tmp_path: Path) -> None:
    """german credit with 120 seeded noise columns, as a wide business extract: an L1 start is chosen,
    its validation loss clearly below plain logistic regression's."""
    import pandas as pd

    df = pd.read_csv(GERMAN)
    rng = np.random.default_rng(0)
    for j in range(120):
        df[f"noise_{j}"] = rng.normal(size=len(df)).round(3) if j % 2 else rng.choice(list("abcde"), len(df))
    wide = tmp_path / "german_wide.csv"
    df.to_csv(wide, index=False)
    result = train(quick_config(wide, "creditability", tmp_path, refit=False), publish=False, say=lambda _: None)
    penalty = result.metrics["linear_penalty"]
    assert penalty["chosen"].startswith("l1:")
    assert penalty["fold_loss"][penalty["chosen"]] < penalty["fold_loss"]["l2:1"] - 0.01


def test_a_heavy_tailed_column_enters_the_graph_as_its_training_quantile(tmp_path: Path) -> None:
    from training.model import Normalize

    cfg = quick_config(GERMAN, "creditability", tmp_path, name="german", robust_numerics=True)
    result = train(cfg, say=lambda _: None)
    assert result.bundle is not None and result.model is not None
    pre = result.pre
    heavy = [j for j, f in enumerate(pre.numeric) if f.knots]
    plain = [j for j, f in enumerate(pre.numeric) if not f.knots]
    assert heavy and plain  # german: the credit amount is heavy-tailed, the age is not
    norm = Normalize(pre)
    for j in heavy:
        knots = torch.tensor(pre.numeric[j].knots)
        rows = torch.zeros(len(knots) + 2, len(pre.numeric))
        rows[:, j] = torch.cat([knots, knots[:1] - 1e6, knots[-1:] * 100])  # beyond the range: 0 and 1
        q = norm.transformed(rows)[:, j]
        expected = torch.cat([torch.linspace(0, 1, len(knots)), torch.tensor([0.0, 1.0])])
        assert torch.allclose(q, expected, atol=1e-6)
    # the published graph: the same, far outside the training range too
    prep = prepare_data(cfg, say=lambda _: None)
    num, cat = prep.enc.num[:200].copy(), prep.enc.cat[:200]
    num[:100, heavy] *= 1000
    session = create_session(result.bundle.path / bundle.MODEL_FILE, CPU)
    with torch.no_grad():
        want = result.model(torch.from_numpy(num), torch.from_numpy(cat)).numpy()
    assert np.abs(session.run(None, {"num": num, "cat": cat})[0] - want).max() < 1e-5


def test_the_calibration_slope_tells_timid_from_sure_probabilities() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(-1.0, 1.5, 100_000)
    y = (rng.random(len(z)) < 1 / (1 + np.exp(-z))).astype(int)  # outcomes drawn from σ(z)
    for stretch, slope in ((1.0, 1.0), (2.0, 0.5), (0.5, 2.0)):  # σ(2z) is too sure, σ(z/2) too timid
        got = calibration_slope(y, 1 / (1 + np.exp(-stretch * z)))
        assert got["slope"] == pytest.approx(slope, rel=0.05) and got["intercept"] == pytest.approx(0.0, abs=0.03)
    assert np.isnan(calibration_slope(np.zeros(10, dtype=int), np.full(10, 0.2))["slope"])  # one class: no fit
    apart = calibration_slope(y, y * 0.6 + 0.2)  # the classes apart (a leaked column): no maximum, no figure
    assert np.isnan(apart["slope"]) and np.isnan(apart["intercept"])


@pytest.mark.parametrize("rule", ["f1", "youden", "accuracy"])
def test_the_decision_threshold_cuts_the_gap_its_rule_chose_in_the_middle(rule: str) -> None:
    """On overlapping scores the cut flags the rows the rule's best cut flags; where the classes stand
    apart (0.01-0.02 against 0.97-0.99) it sits halfway, not on the lowest validation positive."""
    rng = np.random.default_rng(0)
    z = rng.normal(-1.0, 1.5, 20_000)
    y = (rng.random(len(z)) < 1 / (1 + np.exp(-z))).astype(int)
    p = 1 / (1 + np.exp(-z))
    cut = choose_threshold(y, p, rule)
    scores = np.unique(p)
    lower, upper = scores[scores < cut].max(), scores[scores >= cut].min()
    assert cut == pytest.approx((lower + upper) / 2)
    best = {"f1": lambda f: skm.f1_score(y, f), "youden": lambda f: skm.balanced_accuracy_score(y, f)}
    score = best.get(rule, lambda f: skm.accuracy_score(y, f))
    assert score(p >= cut) >= max(score(p >= t) for t in np.quantile(p, np.linspace(0.01, 0.99, 99)))
    apart = np.r_[np.linspace(0.01, 0.02, 50), np.linspace(0.97, 0.99, 50)]
    assert choose_threshold(np.r_[np.zeros(50, int), np.ones(50, int)], apart, rule) == pytest.approx(0.495)
    assert choose_threshold(y, p, "0.3") == 0.3


def test_a_refit_calls_no_value_it_trained_on_out_of_range(tmp_path: Path) -> None:
    """The published range is the rows its members learnt from: every row after a refit, the fitted
    rows without one (a test row beyond them is then rightly out of range)."""
    import pandas as pd

    from service.features import Preprocess
    from training.data import columns_of

    df = pd.read_csv(GERMAN, dtype=str, keep_default_na=False)
    columns = columns_of(df)
    flagged = {}
    for refit in (False, True):
        cfg = quick_config(GERMAN, "creditability", tmp_path / str(refit), refit=refit, epochs=1)
        result = train(cfg, say=lambda _: None)
        assert result.bundle is not None
        pre = Preprocess.load(result.bundle.path / bundle.PREPROCESS_FILE)
        split = prepare_data(cfg, say=lambda _: None).split
        enc = pre.encode_columns(columns, len(df))
        rows = np.arange(len(df)) if refit else split.dev
        # in float32, as the model reads values and check_ranges compares them
        assert np.array_equal(np.float32([f.min_ for f in pre.numeric]), np.nanmin(enc.num[rows], axis=0))
        assert np.array_equal(np.float32([f.max_ for f in pre.numeric]), np.nanmax(enc.num[rows], axis=0))
        flagged[refit] = {row for row, found in enc.warnings.items() if any("seen in training" in w for w in found)}
        assert flagged[refit] <= set(split.test.tolist())
    assert flagged[False] and not flagged[True]  # german: test rows beyond the development rows' range


def test_a_member_that_has_learnt_the_target_stops_there(tmp_path: Path) -> None:
    """The target under another name: validation loss falls toward 0 for as long as it trains; a
    member stops once it is below 0.1 % of the class shares' loss, not after 60 epochs."""
    import pandas as pd

    df = pd.read_csv(TELCO).head(1500)
    df["churn_flag"] = (df["Churn"] == "Yes").astype(int)
    path = tmp_path / "leaked.csv"
    df.to_csv(path, index=False)
    cfg = quick_config(path, "Churn", tmp_path, epochs=60, patience=20, refit=False)
    result = train(cfg, say=lambda _: None)
    members = result.metrics["members"]
    assert all(m.get("learnt") and m["epochs"] == m["best_epoch"] < 60 for m in members), members
    for h in result.histories:
        assert h.val_loss[-1] < 1e-3 * 0.6 and h.val_loss[h.best_epoch] == min(h.val_loss)
    assert result.metrics["test"]["roc_auc"] == 1.0
    assert result.bundle is not None and "(learnt) |" in (result.bundle.path / "model_card.md").read_text()


@pytest.mark.parametrize(("ensemble", "held"), [(1, "validation rows"), (2, "out-of-fold rows")])
def test_the_run_says_which_rows_chose_the_model(tmp_path: Path, ensemble: int, held: str) -> None:
    """A newcomer's run: one member has no folds, yet the line said `chosen on out-of-fold rows`."""
    said: list[str] = []
    train(quick_config(GERMAN, "creditability", tmp_path, ensemble=ensemble), publish=False, say=said.append)
    assert any(line.startswith(f"chosen on {held}: ") for line in said), said
